//! PhaseQuant (section 3.2, eq. 10–12) and recursive residual quantization
//! (section 3.3, eq. 13).
//!
//! Every entry is projected on `{+1, -1, +i, -i}` by angle ([`Code::nearest`],
//! eq. 10). Each group of [`Granularity`] gets two scales (eq. 11):
//! `s_re` = mean `|Re w|` over its entries coded `±1`, `s_im` = mean `|Im w|`
//! over its entries coded `±i`. A scale is clamped below at 1e-6, which is
//! also the value of an empty set; non-finite entries are left out of the
//! means, so scales are positive and finite for any input. The dequantized
//! entry is exactly `±s_re` or `±i s_im` (eq. 12).

use std::borrow::Cow;

use num_complex::Complex32;
use rayon::prelude::*;

use super::{check_len, Arithmetic, Code, Granularity, QuantError};

/// One PhaseQuant stage of an `[n, m]` complex matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseQuantized {
    /// Row-major `[n, m]` codes.
    pub codes: Vec<Code>,
    /// Row-major `[groups, 2]`: `(s_re, s_im)` of each group (numbered as in
    /// [`Granularity`]).
    pub scales: Vec<f32>,
}

impl PhaseQuantized {
    /// `(s_re, s_im)` of a group.
    pub fn scale(&self, group: usize) -> (f32, f32) {
        (self.scales[2 * group], self.scales[2 * group + 1])
    }
}

/// Sums for eq. 11 over one group.
#[derive(Debug, Default, Clone, Copy)]
struct AxisSums {
    re: f64,
    n_re: u64,
    im: f64,
    n_im: u64,
}

impl AxisSums {
    fn merge(self, o: AxisSums) -> AxisSums {
        AxisSums {
            re: self.re + o.re,
            n_re: self.n_re + o.n_re,
            im: self.im + o.im,
            n_im: self.n_im + o.n_im,
        }
    }
}

/// A mean of `count` magnitudes summing to `sum`, as a scale.
fn scale_of(sum: f64, count: u64, arith: Arithmetic) -> f32 {
    let floor = arith.min_scale();
    if count == 0 {
        return floor;
    }
    let s = match arith {
        Arithmetic::F32 => (sum / count as f64) as f32,
        // PyTorch's CUDA mean: an f32 sum times an f32 factor 1/N, then the
        // cast to bf16. The f64 sum stands in for its tree reduction.
        Arithmetic::Bf16Exact => {
            let s = sum as f32 * (1.0 / count as f32);
            arith.round(if s.is_finite() {
                s
            } else {
                (sum / count as f64) as f32
            })
        }
    };
    // Only bf16 rounding of a mean near f32::MAX can overflow; cap it at the
    // largest bf16. NaN cannot occur (non-finite entries are skipped) but
    // would fall to the floor too.
    if s.is_nan() || s < floor {
        floor
    } else if s.is_finite() {
        s
    } else {
        half::bf16::MAX.to_f32()
    }
}

/// PhaseQuant of a row-major `[n, m]` complex matrix in f32 (eq. 10–12).
pub fn phase_quant(
    w: &[Complex32],
    n: usize,
    m: usize,
    granularity: Granularity,
) -> Result<PhaseQuantized, QuantError> {
    phase_quant_with(w, n, m, granularity, Arithmetic::F32)
}

/// [`phase_quant`] in the given arithmetic. With [`Arithmetic::Bf16Exact`]
/// the entries are rounded to bf16 first, the codes are taken on the bf16
/// values, and each scale is the mean accumulated in f32 and rounded to bf16,
/// clamped at bf16(1e-6) (anchor, section 3a, steps 2–3).
pub fn phase_quant_with(
    w: &[Complex32],
    n: usize,
    m: usize,
    granularity: Granularity,
    arith: Arithmetic,
) -> Result<PhaseQuantized, QuantError> {
    check_len("phase_quant input", w.len(), n * m)?;
    granularity.validate()?;
    let w: Cow<[Complex32]> = match arith {
        Arithmetic::F32 => Cow::Borrowed(w),
        Arithmetic::Bf16Exact => Cow::Owned(w.par_iter().map(|&x| round_c(arith, x)).collect()),
    };
    let codes: Vec<Code> = w.par_iter().map(|x| Code::nearest(x.re, x.im)).collect();
    let sums = granularity.accumulate(
        n,
        m,
        |acc: &mut AxisSums, idx| {
            let x = w[idx];
            if codes[idx].is_imag() {
                if x.im.is_finite() {
                    acc.im += f64::from(x.im.abs());
                    acc.n_im += 1;
                }
            } else if x.re.is_finite() {
                acc.re += f64::from(x.re.abs());
                acc.n_re += 1;
            }
        },
        AxisSums::merge,
    );
    let scales = sums
        .iter()
        .flat_map(|s| [scale_of(s.re, s.n_re, arith), scale_of(s.im, s.n_im, arith)])
        .collect();
    Ok(PhaseQuantized { codes, scales })
}

/// The dequantized matrix `Ŵ = s_re B_re + i s_im B_im` (eq. 12) of one stage.
pub fn dequantize(
    q: &PhaseQuantized,
    n: usize,
    m: usize,
    granularity: Granularity,
) -> Result<Vec<Complex32>, QuantError> {
    let mut out = vec![Complex32::new(0.0, 0.0); n * m];
    combine_dequantized(q, n, m, granularity, &mut out, |o, d| *o = d)?;
    Ok(out)
}

/// Applies `f(target, ŵ)` to every entry of `target` with the matching
/// dequantized entry of `q`, without materializing `Ŵ`.
fn combine_dequantized(
    q: &PhaseQuantized,
    n: usize,
    m: usize,
    granularity: Granularity,
    target: &mut [Complex32],
    f: impl Fn(&mut Complex32, Complex32) + Sync,
) -> Result<(), QuantError> {
    check_len("dequantize codes", q.codes.len(), n * m)?;
    check_len("dequantize target", target.len(), n * m)?;
    let groups = granularity.num_groups(n, m)?;
    if q.scales.len() != 2 * groups {
        return Err(QuantError::Mismatch {
            what: "dequantize scales",
            expected: 2 * groups,
            got: q.scales.len(),
        });
    }
    if m == 0 {
        return Ok(());
    }
    let (runs, len) = granularity.runs(m);
    target
        .par_chunks_mut(m)
        .zip(q.codes.par_chunks(m))
        .enumerate()
        .for_each(|(i, (target, codes))| {
            // One scale pair per run: no group lookup per entry.
            for (r, (target, codes)) in target.chunks_mut(len).zip(codes.chunks(len)).enumerate() {
                let (s_re, s_im) = q.scale(granularity.run_group(i, r, runs));
                for (t, c) in target.iter_mut().zip(codes) {
                    f(t, c.scaled(s_re, s_im));
                }
            }
        });
    Ok(())
}

/// Recursive residual quantization in f32 (eq. 13): stage `t` quantizes
/// `R(t)` with fresh scales, `R(0) = W`, `R(t+1) = R(t) − Ŵ(t)`. The
/// deployed weight is `Σ Ŵ(t)` ([`dequantize_sum`]). `stages = 1` is plain
/// [`phase_quant`].
pub fn residual_quant(
    w: &[Complex32],
    n: usize,
    m: usize,
    stages: usize,
    granularity: Granularity,
) -> Result<Vec<PhaseQuantized>, QuantError> {
    residual_quant_with(w, n, m, stages, granularity, Arithmetic::F32)
}

/// [`residual_quant`] in the given arithmetic. With
/// [`Arithmetic::Bf16Exact`] each residual is rounded to bf16,
/// `e1 = bf16(w − q1)`, `e2 = bf16(e1 − q2)`, … (anchor, section 3a, step 4).
pub fn residual_quant_with(
    w: &[Complex32],
    n: usize,
    m: usize,
    stages: usize,
    granularity: Granularity,
    arith: Arithmetic,
) -> Result<Vec<PhaseQuantized>, QuantError> {
    if stages == 0 {
        return Err(QuantError::NoStages);
    }
    check_len("residual_quant input", w.len(), n * m)?;
    let mut residual: Vec<Complex32> = w.par_iter().map(|&x| round_c(arith, x)).collect();
    let mut out = Vec::with_capacity(stages);
    for t in 0..stages {
        let q = phase_quant_with(&residual, n, m, granularity, arith)?;
        if t + 1 < stages {
            combine_dequantized(&q, n, m, granularity, &mut residual, |r, d| {
                *r = round_c(arith, *r - d)
            })?;
        }
        out.push(q);
    }
    Ok(out)
}

/// The deployed weight `Σ_t Ŵ(t)` of residual stages (eq. 13), summed left
/// to right; with [`Arithmetic::Bf16Exact`] each partial sum is rounded to
/// bf16, `bf16(bf16(q1 + q2) + q3)` (anchor, section 3a, step 4). No stages
/// give zeros.
pub fn dequantize_sum(
    stages: &[PhaseQuantized],
    n: usize,
    m: usize,
    granularity: Granularity,
    arith: Arithmetic,
) -> Result<Vec<Complex32>, QuantError> {
    let mut sum = vec![Complex32::new(0.0, 0.0); n * m];
    for (t, q) in stages.iter().enumerate() {
        if t == 0 {
            combine_dequantized(q, n, m, granularity, &mut sum, |s, d| *s = d)?;
        } else {
            combine_dequantized(q, n, m, granularity, &mut sum, |s, d| {
                *s = round_c(arith, *s + d)
            })?;
        }
    }
    Ok(sum)
}

/// Rounds both parts of a complex number.
#[inline]
fn round_c(arith: Arithmetic, x: Complex32) -> Complex32 {
    Complex32::new(arith.round(x.re), arith.round(x.im))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_floor_and_cap() {
        assert_eq!(scale_of(0.0, 0, Arithmetic::F32), 1e-6);
        assert_eq!(scale_of(0.0, 5, Arithmetic::F32), 1e-6);
        assert_eq!(scale_of(3.0, 2, Arithmetic::F32), 1.5);
        let huge = f64::from(f32::MAX) * 4.0;
        assert_eq!(scale_of(huge, 4, Arithmetic::F32), f32::MAX);
        let s = scale_of(huge, 4, Arithmetic::Bf16Exact);
        assert!(s.is_finite() && s > 3e38);
        assert_eq!(
            scale_of(0.0, 0, Arithmetic::Bf16Exact),
            half::bf16::from_f32(1e-6).to_f32()
        );
    }

    #[test]
    fn bf16_scale_rounds_the_mean() {
        // Mean 1 + 2^-9 rounds to 1 in bf16.
        let s = scale_of(2.0 + 2.0 / 512.0, 2, Arithmetic::Bf16Exact);
        assert_eq!(s, 1.0);
        assert_eq!(
            scale_of(2.0 + 2.0 / 512.0, 2, Arithmetic::F32),
            1.0 + 1.0 / 512.0
        );
    }
}
