//! iFairy's quantizers (Fairy±i, arXiv 2508.05571), as its model code runs
//! them in every forward pass (../shared/research/ifairy-architecture.md §5).
//!
//! PhaseQuant differs from Fairy2i's in two details: ties follow what
//! PyTorch's CPU `atan2` gives, and scales are floored at 1e-5. An empty
//! sector makes the authors' scale `mean(∅) = NaN` and every weight NaN;
//! here it gets the floor instead, and [`IfairyQuantized::empty_sector`]
//! says so, so that callers can warn.

use num_complex::Complex32;
use rayon::prelude::*;

use super::{check_len, Code, PhaseQuantized, QuantError};

/// The smallest iFairy weight scale and activation range.
pub const FLOOR: f32 = 1e-5;

/// iFairy's projection: the larger of `|re|`, `|im|` wins; ties as PyTorch's
/// CPU `atan2`: (+,+) and (+,-) to `+1`, (-,+) to `-1`, (-,-) to `-i`; zero to `+1`.
pub fn nearest_ifairy(re: f32, im: f32) -> Code {
    let (ar, ai) = (re.abs(), im.abs());
    if ai > ar {
        return if im > 0.0 { Code::PlusI } else { Code::MinusI };
    }
    if ar > ai || re > 0.0 || ar == 0.0 {
        return if re < 0.0 {
            Code::MinusOne
        } else {
            Code::PlusOne
        };
    }
    // A tie with re < 0: -1 above the real axis, -i below.
    if im > 0.0 {
        Code::MinusOne
    } else {
        Code::MinusI
    }
}

/// One iFairy PhaseQuant of an `[n, m]` matrix: per-tensor scales.
pub struct IfairyQuantized {
    pub quantized: PhaseQuantized,
    /// No weight fell on one of the axes (the authors' code gives NaN).
    pub empty_sector: bool,
}

/// iFairy PhaseQuant: codes by [`nearest_ifairy`], `s_re` the mean `|re|`
/// over the ±1 entries and `s_im` the mean `|im|` over the ±i entries, each
/// at least [`FLOOR`].
pub fn phase_quant_ifairy(
    w: &[Complex32],
    n: usize,
    m: usize,
) -> Result<IfairyQuantized, QuantError> {
    check_len("phase_quant_ifairy input", w.len(), n * m)?;
    let codes: Vec<Code> = w.par_iter().map(|x| nearest_ifairy(x.re, x.im)).collect();
    let (mut re, mut n_re, mut im, mut n_im) = (0.0f64, 0u64, 0.0f64, 0u64);
    for (x, c) in w.iter().zip(&codes) {
        if c.is_imag() {
            im += f64::from(x.im.abs());
            n_im += 1;
        } else {
            re += f64::from(x.re.abs());
            n_re += 1;
        }
    }
    let scale = |sum: f64, count: u64| {
        let mean = if count == 0 {
            0.0
        } else {
            (sum / count as f64) as f32
        };
        if mean.is_finite() {
            mean.max(FLOOR)
        } else {
            FLOOR
        }
    };
    Ok(IfairyQuantized {
        quantized: PhaseQuantized {
            codes,
            scales: vec![scale(re, n_re), scale(im, n_im)],
        },
        empty_sector: n_re == 0 || n_im == 0,
    })
}

/// Symmetric absmax activation quantization of each row of `cols` values
/// to `bits` bits, returned dequantized: `α = q / max(max|x|, 1e-5)` with
/// `q = 2^(bits-1) - 1`, `n = clamp(round_half_even(x·α), -q-1, q)`,
/// `x̂ = n / α`. For iFairy, `bits = 8` on the real and the imaginary parts
/// separately.
pub fn act_quant(x: &[f32], cols: usize, bits: u32) -> Vec<f32> {
    let q = ((1u32 << (bits - 1)) - 1) as f32;
    let mut y = x.to_vec();
    y.par_chunks_mut(cols.max(1)).for_each(|row| {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let alpha = q / max.max(FLOOR);
        for v in row.iter_mut() {
            *v = (*v * alpha).round_ties_even().clamp(-q - 1.0, q) / alpha;
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_zero_and_axes() {
        assert_eq!(nearest_ifairy(1.0, 1.0), Code::PlusOne);
        assert_eq!(nearest_ifairy(1.0, -1.0), Code::PlusOne);
        assert_eq!(nearest_ifairy(-1.0, 1.0), Code::MinusOne);
        assert_eq!(nearest_ifairy(-1.0, -1.0), Code::MinusI);
        assert_eq!(nearest_ifairy(0.0, 0.0), Code::PlusOne);
        assert_eq!(nearest_ifairy(-0.5, 0.2), Code::MinusOne);
        assert_eq!(nearest_ifairy(0.2, -0.5), Code::MinusI);
        assert_eq!(nearest_ifairy(0.1, 0.5), Code::PlusI);
    }

    #[test]
    fn scales_floor_and_empty_sector() {
        let w = [Complex32::new(3.0, 1.0), Complex32::new(-1.0, 0.5)];
        let q = phase_quant_ifairy(&w, 1, 2).unwrap();
        assert_eq!(q.quantized.codes, [Code::PlusOne, Code::MinusOne]);
        assert_eq!(q.quantized.scales, [2.0, FLOOR]);
        assert!(q.empty_sector);
        let tiny = [Complex32::new(1e-7, 0.0), Complex32::new(0.0, 2e-6)];
        let q = phase_quant_ifairy(&tiny, 2, 1).unwrap();
        assert_eq!(q.quantized.scales, [FLOOR, FLOOR]);
        assert!(!q.empty_sector);
    }

    #[test]
    fn activation_quant_clamps_and_rounds_half_even() {
        // max 127 → α = 1: values round half to even and stay in range.
        let y = act_quant(&[127.0, 2.5, -3.5, 0.5], 4, 8);
        assert_eq!(y, [127.0, 2.0, -4.0, 0.0]);
        // Each row has its own range; an all-zero row stays zero.
        let y = act_quant(&[1.0, -0.5, 0.0, 0.0], 2, 8);
        assert_eq!(y[0], 1.0);
        assert!((y[1] + 0.5).abs() < 1.0 / 127.0);
        assert_eq!(&y[2..], [0.0, 0.0]);
    }
}
