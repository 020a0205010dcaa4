//! RMSNorm over the last dimension.

use rayon::prelude::*;

/// `x / sqrt(mean(x²) + eps) · gain`, row by row; `x` has rows of `gain.len()`.
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f32) -> Vec<f32> {
    let n = gain.len();
    let mut y = vec![0.0; x.len()];
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
    y
}
