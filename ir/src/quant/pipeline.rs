//! A real matrix to its Fairy2i form in one call: split (eq. 3), residual
//! PhaseQuant of `U` and `W` (eq. 10–13), merge back (eq. 7).

use half::bf16;

use super::{
    dequantize_sum, residual_quant_with, widely_linear_inverse_with, widely_linear_with,
    Arithmetic, Granularity, Pairing, PhaseQuantized, QuantError,
};

/// How [`fairy2i_quantize`] quantizes one linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fairy2iConfig {
    /// Residual stages `T` (eq. 13); Fairy2i-W2 uses 2.
    pub stages: usize,
    /// Scale granularity; the paper uses [`Granularity::Tensor`].
    pub granularity: Granularity,
    /// Pairing of the output channels (rows of `R`).
    pub row_pairing: Pairing,
    /// Pairing of the input channels (columns of `R`).
    pub col_pairing: Pairing,
    /// Rounding of intermediates; [`Arithmetic::F32`] by default.
    pub arithmetic: Arithmetic,
}

impl Default for Fairy2iConfig {
    /// Fairy2i-W2 in our default arithmetic: two stages, per-tensor scales,
    /// halves pairing, f32.
    fn default() -> Self {
        Fairy2iConfig {
            stages: 2,
            granularity: Granularity::Tensor,
            row_pairing: Pairing::Halves,
            col_pairing: Pairing::Halves,
            arithmetic: Arithmetic::F32,
        }
    }
}

/// A quantized linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fairy2iQuantized {
    /// Complex output width `ceil(rows / 2)`.
    pub n: usize,
    /// Complex input width `ceil(cols / 2)`.
    pub m: usize,
    /// The stages of `U`, `[n, m]` each.
    pub u: Vec<PhaseQuantized>,
    /// The stages of `W`, `[n, m]` each.
    pub w: Vec<PhaseQuantized>,
    /// The deployed real matrix `A_q = R_lin(ΣÛ) + R_conj(ΣŴ)`, `[rows, cols]`.
    pub a_q: Vec<f32>,
}

/// Quantizes the real `[rows, cols]` matrix `r`: `U`, `W` by eq. 3, `T`
/// residual PhaseQuant stages of each, and the deployed `A_q` by eq. 7. Odd
/// dimensions are padded with a zero channel (section 3.1, remark) and
/// dropped again from `A_q`; the codes and scales cover the padded shape.
pub fn fairy2i_quantize(
    r: &[f32],
    rows: usize,
    cols: usize,
    cfg: &Fairy2iConfig,
) -> Result<Fairy2iQuantized, QuantError> {
    let arith = cfg.arithmetic;
    let (u, w, n, m) = widely_linear_with(r, rows, cols, cfg.row_pairing, cfg.col_pairing, arith)?;
    let uq = residual_quant_with(&u, n, m, cfg.stages, cfg.granularity, arith)?;
    let wq = residual_quant_with(&w, n, m, cfg.stages, cfg.granularity, arith)?;
    let u_sum = dequantize_sum(&uq, n, m, cfg.granularity, arith)?;
    let w_sum = dequantize_sum(&wq, n, m, cfg.granularity, arith)?;
    let a_q = widely_linear_inverse_with(
        &u_sum,
        &w_sum,
        n,
        m,
        rows,
        cols,
        cfg.row_pairing,
        cfg.col_pairing,
        arith,
    )?;
    Ok(Fairy2iQuantized {
        n,
        m,
        u: uq,
        w: wq,
        a_q,
    })
}

/// `(A_q, stages of U, stages of W)` of [`fairy2i_reference_bf16`].
pub type Fairy2iReference = (Vec<bf16>, Vec<PhaseQuantized>, Vec<PhaseQuantized>);

/// The authors' deployed weight for a bf16 master `[rows, cols]`: halves
/// pairing, per-tensor scales, `stages` residual stages, every step in the
/// bf16 arithmetic of their PyTorch code (anchor, section 3a). Gives the
/// `A_q` that their `InferenceOptimizedComplexPhase` writes into the layer
/// (`stages` 1–4 are their V1–V4), and the codes and bf16 scales behind it.
/// The authors skip odd-sized layers; here odd dimensions are padded as in
/// [`fairy2i_quantize`].
pub fn fairy2i_reference_bf16(
    a_bf16: &[bf16],
    rows: usize,
    cols: usize,
    stages: usize,
) -> Result<Fairy2iReference, QuantError> {
    let a: Vec<f32> = a_bf16.iter().map(|x| x.to_f32()).collect();
    let cfg = Fairy2iConfig {
        stages,
        arithmetic: Arithmetic::Bf16Exact,
        ..Fairy2iConfig::default()
    };
    let q = fairy2i_quantize(&a, rows, cols, &cfg)?;
    // Every entry of A_q is already a bf16 value: the conversion is exact.
    let a_q = q.a_q.iter().map(|&x| bf16::from_f32(x)).collect();
    Ok((a_q, q.u, q.w))
}
