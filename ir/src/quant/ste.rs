//! Straight-through gradients of the quantizers (training, section 3.2).
//!
//! A quantized weight is `q = s · b(w)` per group: codes `b` that are
//! piecewise constant in `w` and scales `s` that are means of `|w|`. The
//! codes' true derivative is zero almost everywhere, so QAT replaces it by
//! the identity (the straight-through estimator). Two variants:
//!
//! - **identity** (the authors' code, anchor section 2: the scales are
//!   computed under `no_grad`/`detach`): `dL/dw = dL/dq`. Nothing to
//!   compute; the gradient pass passes `dq` through.
//! - **scale-aware** (the paper's text, eq. 11 read as a differentiable
//!   function of `w`): `dL/dw = dL/dq + (the gradient through the scales)`,
//!   the codes held constant. This module computes that sum.
//!
//! Gradients follow the convention `g = ∂L/∂Re + i ∂L/∂Im`.
//!
//! **PhaseQuant.** In a group, `S_re` is the set of entries coded `±1`
//! (`b_re = ±1`), `s_re = mean_{S_re} |Re w|`, and `q_j = s_re b_re,j` for
//! `j ∈ S_re`. Then `∂L/∂s_re = Σ_{j∈S_re} Re(g_j) b_re,j` and
//! `∂s_re/∂Re w_k = sign(Re w_k) / |S_re|` for `k ∈ S_re`, so
//! `Re dw_k += sign(Re w_k) · Σ_{j∈S_re} Re(g_j) b_re,j / |S_re|`; the same
//! with `Im` for the `±i` entries. A scale clamped to its floor (an empty
//! set or a mean below 1e-6) is constant and adds nothing.
//!
//! **Real binary and ternary.** `γ = mean |w|` over the group,
//! `q_j = γ c_j` with `c_j ∈ {±1}` (binary) or `{-1, 0, 1}` (ternary; the
//! threshold's dependence on `γ` only moves the piecewise-constant codes),
//! so `dw_k += sign(w_k) · Σ_j g_j c_j / n`.
//!
//! Non-finite entries are left out of the means, as in the quantizers, and
//! get the identity gradient alone. `sign(0) = 0` (the subgradient of `|x|`
//! at 0 that is symmetric).

use num_complex::Complex32;

use super::{binary_quant, phase_quant_with, ternary_quant, Arithmetic, Granularity, QuantError};

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The scale-aware straight-through gradient of PhaseQuant of the
/// `[n, m]` complex matrix `w`, given the gradient `g` of its dequantized
/// values. The codes, sets and clamped scales are those the quantizer
/// computes in `arith`; the derivative of the means is taken in exact
/// arithmetic.
pub fn phase_quant_grad(
    w: &[Complex32],
    g: &[Complex32],
    n: usize,
    m: usize,
    granularity: Granularity,
    arith: Arithmetic,
) -> Result<Vec<Complex32>, QuantError> {
    let q = phase_quant_with(w, n, m, granularity, arith)?;
    let groups = granularity.num_groups(n, m)?;
    // Per group: (Σ Re g b_re, |S_re|, Σ Im g b_im, |S_im|).
    let mut sums = vec![(0.0f64, 0u64, 0.0f64, 0u64); groups];
    for (idx, (x, d)) in w.iter().zip(g).enumerate() {
        let s = &mut sums[granularity.group_of(idx / m, idx % m, m)];
        let (br, bi) = q.codes[idx].parts();
        if q.codes[idx].is_imag() {
            if x.im.is_finite() {
                s.2 += f64::from(d.im * bi);
                s.3 += 1;
            }
        } else if x.re.is_finite() {
            s.0 += f64::from(d.re * br);
            s.1 += 1;
        }
    }
    let floor = arith.min_scale();
    let mut out = g.to_vec();
    for (idx, (x, d)) in w.iter().zip(out.iter_mut()).enumerate() {
        let grp = granularity.group_of(idx / m, idx % m, m);
        let (s_re, s_im) = q.scale(grp);
        let (a_re, n_re, a_im, n_im) = sums[grp];
        if q.codes[idx].is_imag() {
            if x.im.is_finite() && s_im > floor {
                d.im += sign(x.im) * (a_im / n_im as f64) as f32;
            }
        } else if x.re.is_finite() && s_re > floor {
            d.re += sign(x.re) * (a_re / n_re as f64) as f32;
        }
    }
    Ok(out)
}

/// The scale-aware straight-through gradient of the real binary
/// (`ternary = false`) or ternary quantizer of the `[rows, cols]` matrix `w`.
pub fn real_quant_grad(
    w: &[f32],
    g: &[f32],
    rows: usize,
    cols: usize,
    granularity: Granularity,
    ternary: bool,
) -> Result<Vec<f32>, QuantError> {
    let q = if ternary {
        ternary_quant(w, rows, cols, granularity)?
    } else {
        binary_quant(w, rows, cols, granularity)?
    };
    let groups = granularity.num_groups(rows, cols)?;
    let mut sums = vec![(0.0f64, 0u64); groups];
    for (idx, (x, d)) in w.iter().zip(g).enumerate() {
        if x.is_finite() {
            let s = &mut sums[granularity.group_of(idx / cols, idx % cols, cols)];
            s.0 += f64::from(d * f32::from(q.codes[idx]));
            s.1 += 1;
        }
    }
    Ok(w.iter()
        .zip(g)
        .enumerate()
        .map(|(idx, (x, d))| {
            let (a, count) = sums[granularity.group_of(idx / cols, idx % cols, cols)];
            if x.is_finite() {
                d + sign(*x) * (a / count as f64) as f32
            } else {
                *d
            }
        })
        .collect())
}
