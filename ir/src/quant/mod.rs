//! The Fairy2i quantization math as pure functions over row-major slices.
//!
//! Equation numbers refer to the Fairy2i paper (arXiv 2512.02901, sections
//! 3.1–3.4); "the anchor" is `shared/research/fairy2i-anchor.md`, which
//! records what the authors' code does.
//!
//! - [`pairing`]: how a real vector of length `2k` becomes `k` complex
//!   numbers ([`Pairing`], [`pack`], [`unpack`], [`real_index`]);
//! - [`widely_linear`](mod@widely_linear): the lossless split of a real
//!   matrix `R` into `U`, `W` with `y = U x + W conj(x)` (eq. 3, 7) and its
//!   inverse;
//! - [`code`]: the 2-bit codes `{+1, -1, +i, -i}` and their byte packing;
//! - [`granularity`]: which entries share a scale ([`Granularity`]);
//! - [`phase`]: PhaseQuant (eq. 10–12) and recursive residual stages
//!   (eq. 13);
//! - [`pipeline`]: real matrix to deployed `A_q` in one call, including the
//!   bf16 arithmetic that reproduces the authors' codes bit for bit;
//! - [`baseline`]: real binary and ternary (BitNet b1.58) quantizers.
//!
//! # Arithmetic
//! [`Arithmetic::F32`] is the default path: the split, the codes, the scales
//! and the residuals are computed in f32 (scale sums in f64).
//! [`Arithmetic::Bf16Exact`] repeats the bf16 rounding of the authors'
//! PyTorch code (anchor, section 3a), so that bf16 masters give the same
//! codes, scales and `A_q` as their CUDA run. Both implement the same method;
//! they differ only where a value lies within bf16 rounding of a sector
//! boundary.

pub mod baseline;
pub mod code;
pub mod granularity;
pub mod ifairy;
pub mod pairing;
pub mod phase;
pub mod pipeline;
pub mod ste;
pub mod widely_linear;

pub use baseline::{binary_quant, ternary_quant, RealQuantized};
pub use code::{pack_code_rows, pack_codes, unpack_code_rows, unpack_codes, Code};
pub use granularity::Granularity;
pub use pairing::{
    pack, pack_rows, pack_rows_into, real_index, unpack, unpack_rows, unpack_rows_into, Pairing,
};
pub use phase::{
    dequantize, dequantize_sum, phase_quant, phase_quant_with, residual_quant, residual_quant_with,
    PhaseQuantized,
};
pub use pipeline::{
    fairy2i_quantize, fairy2i_reference_bf16, Fairy2iConfig, Fairy2iQuantized, Fairy2iReference,
};
pub use widely_linear::{
    widely_linear, widely_linear_inverse, widely_linear_inverse_with, widely_linear_with,
    WidelyLinear,
};

use half::bf16;

/// Errors for shapes and parameters that the quantizers cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// A slice does not hold `rows * cols` elements.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// `HeadHalves { head_dim }` needs an even, non-zero `head_dim` that
    /// divides the (padded) vector length.
    #[error("head_dim {head_dim} does not fit a paired length of {len} (it must be even, non-zero and divide it)")]
    HeadDim { head_dim: usize, len: usize },
    /// `Granularity::Group(0)`.
    #[error("group size must be at least 1")]
    GroupSize,
    /// `stages == 0` in residual quantization.
    #[error("residual quantization needs at least one stage")]
    NoStages,
    /// A code byte stream or scale table of the wrong size.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

/// How intermediate values are rounded (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Arithmetic {
    /// f32 throughout, scale means accumulated in f64. Our default.
    #[default]
    F32,
    /// Round every intermediate to bf16 as the authors' PyTorch code does
    /// (anchor, section 3a).
    Bf16Exact,
}

impl Arithmetic {
    /// Rounds `x` to the precision of this arithmetic (round to nearest,
    /// ties to even, as PyTorch's f32 -> bf16 cast).
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Arithmetic::F32 => x,
            Arithmetic::Bf16Exact => bf16::from_f32(x).to_f32(),
        }
    }

    /// The smallest scale PhaseQuant may return: 1e-6 in this precision
    /// (the authors clamp a bf16 scalar at 1e-6, which gives bf16(1e-6)).
    #[inline]
    pub fn min_scale(self) -> f32 {
        self.round(1e-6)
    }
}

/// Relative reconstruction error `||a - b|| / ||a||` (Frobenius norms in
/// f64). Returns 0 when both are zero and infinity when only `a` is.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "relative_error: lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        num += d * d;
        den += f64::from(x) * f64::from(x);
    }
    if num == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

/// Checks that a slice has `expected` elements.
pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), QuantError> {
    if got == expected {
        Ok(())
    } else {
        Err(QuantError::Length {
            what,
            expected,
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_basics() {
        assert_eq!(relative_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_error(&[3.0, 4.0], &[0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((relative_error(&[3.0, 4.0], &[3.0, 3.0]) - 0.2).abs() < 1e-12);
        assert_eq!(relative_error(&[0.0], &[0.0]), 0.0);
        assert_eq!(relative_error(&[0.0], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn bf16_rounding_is_ties_to_even() {
        let a = Arithmetic::Bf16Exact;
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to even gives 1.
        assert_eq!(a.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(a.round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(Arithmetic::F32.round(1.0 + 1.0 / 256.0), 1.0 + 1.0 / 256.0);
        assert!(a.min_scale() < 1e-6 && a.min_scale() > 0.99e-6);
    }
}
