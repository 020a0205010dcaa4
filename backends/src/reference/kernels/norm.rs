//! RMSNorm over the last dimension.

use num_complex::Complex32;
use rayon::prelude::*;

/// `x / sqrt(mean(x²) + eps) · gain`, row by row; `x` has rows of `gain.len()`.
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    rms_norm_into(x, gain, eps, &mut y);
    y
}

/// [`rms_norm`] into `y` (of `x`'s length).
pub fn rms_norm_into(x: &[f32], gain: &[f32], eps: f32, y: &mut [f32]) {
    let n = gain.len();
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(out, row)| {
            // Accumulate in f64: rows are short and this keeps the reference exact.
            let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let inv = (1.0 / (ss / n as f64 + eps as f64).sqrt()) as f32;
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(gain) {
                *o = v * inv * g;
            }
        });
}

/// Complex RMSNorm (iFairy): `r = (mean_k(re² + im²) + eps)^(-1/2)` over each
/// row of `gain.len() / 2` complex numbers; real parts are scaled by
/// `r · gain[..n]`, imaginary parts by `r · gain[n..]`.
pub fn rms_norm_complex(x: &[Complex32], gain: &[f32], eps: f32) -> Vec<Complex32> {
    let mut y = vec![Complex32::new(0.0, 0.0); x.len()];
    rms_norm_complex_into(x, gain, eps, &mut y);
    y
}

/// [`rms_norm_complex`] into `y` (of `x`'s length).
pub fn rms_norm_complex_into(x: &[Complex32], gain: &[f32], eps: f32, y: &mut [Complex32]) {
    let n = gain.len() / 2;
    let (g_re, g_im) = gain.split_at(n);
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(out, row)| {
            let ss: f64 = row.iter().map(|v| f64::from(v.norm_sqr())).sum();
            let inv = (1.0 / (ss / n as f64 + eps as f64).sqrt()) as f32;
            for (((o, v), gr), gi) in out.iter_mut().zip(row).zip(g_re).zip(g_im) {
                *o = Complex32::new(v.re * inv * gr, v.im * inv * gi);
            }
        });
}
