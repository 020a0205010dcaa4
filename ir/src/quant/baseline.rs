//! Real-valued baselines of the paper's table: "Real-Binary" and
//! "Real-Ternary" (BitNet b1.58) quantization of a real `[rows, cols]`
//! matrix, with the same [`Granularity`] options as PhaseQuant. Means are
//! taken over the finite entries of a group.

use rayon::prelude::*;

use super::{check_len, Granularity, QuantError};

/// A quantized real matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct RealQuantized {
    /// Row-major `[rows, cols]` dequantized values `code · scale`.
    pub values: Vec<f32>,
    /// Row-major `[rows, cols]` codes: ±1 (binary) or -1, 0, +1 (ternary).
    pub codes: Vec<i8>,
    /// One scale per group (numbered as in [`Granularity`]).
    pub scales: Vec<f32>,
}

#[derive(Default)]
struct AbsSum {
    sum: f64,
    count: u64,
}

/// Mean `|w|` of each group; 0 for a group without finite entries.
fn abs_means(
    w: &[f32],
    rows: usize,
    cols: usize,
    granularity: Granularity,
) -> Result<Vec<f32>, QuantError> {
    check_len("real quantizer input", w.len(), rows * cols)?;
    granularity.validate()?;
    let sums = granularity.accumulate(
        rows,
        cols,
        |acc: &mut AbsSum, idx| {
            if w[idx].is_finite() {
                acc.sum += f64::from(w[idx].abs());
                acc.count += 1;
            }
        },
        |a, b| AbsSum {
            sum: a.sum + b.sum,
            count: a.count + b.count,
        },
    );
    Ok(sums
        .iter()
        .map(|s| {
            if s.count == 0 {
                0.0
            } else {
                (s.sum / s.count as f64) as f32
            }
        })
        .collect())
}

/// Applies `code(w, scale)` to every entry with its group's scale.
fn quantize_with(
    w: &[f32],
    cols: usize,
    granularity: Granularity,
    scales: Vec<f32>,
    code: impl Fn(f32, f32) -> i8 + Sync,
) -> RealQuantized {
    let mut codes = vec![0i8; w.len()];
    let mut values = vec![0.0f32; w.len()];
    if cols > 0 {
        let (runs, len) = granularity.runs(cols);
        codes
            .par_chunks_mut(cols)
            .zip(values.par_chunks_mut(cols))
            .zip(w.par_chunks(cols))
            .enumerate()
            .for_each(|(i, ((codes, values), w))| {
                let stretches = codes.chunks_mut(len).zip(values.chunks_mut(len));
                for (r, (codes, values)) in stretches.enumerate() {
                    let scale = scales[granularity.run_group(i, r, runs)];
                    let w = &w[r * len..];
                    for ((c, v), &x) in codes.iter_mut().zip(values).zip(w) {
                        *c = code(x, scale);
                        *v = f32::from(*c) * scale;
                    }
                }
            });
    }
    RealQuantized {
        values,
        codes,
        scales,
    }
}

/// Real-binary quantization (BinaryConnect / XNOR-Net): `sign(w) · mean|w|`
/// per group, with `sign(0) = +1` (also for -0 and NaN).
pub fn binary_quant(
    w: &[f32],
    rows: usize,
    cols: usize,
    granularity: Granularity,
) -> Result<RealQuantized, QuantError> {
    let scales = abs_means(w, rows, cols, granularity)?;
    Ok(quantize_with(w, cols, granularity, scales, |x, _| {
        if x < 0.0 {
            -1
        } else {
            1
        }
    }))
}

/// BitNet b1.58 absmean ternary quantization: `γ = mean|w|` per group,
/// `q = clamp(round(w / (γ + 1e-5)), -1, 1)` with ties to even as
/// `torch.round`, value `q · γ`. The 1e-5 keeps an all-zero group finite, as
/// in BitNet and the authors' Real-Ternary baseline. NaN gives 0.
pub fn ternary_quant(
    w: &[f32],
    rows: usize,
    cols: usize,
    granularity: Granularity,
) -> Result<RealQuantized, QuantError> {
    let scales = abs_means(w, rows, cols, granularity)?;
    Ok(quantize_with(w, cols, granularity, scales, |x, gamma| {
        // clamp(round_ties_even(t), -1, 1) without the rounding call: ±0.5
        // rounds to 0 and everything beyond rounds away from 0.
        let t = x / (gamma + 1e-5);
        if t > 0.5 {
            1
        } else if t < -0.5 {
            -1
        } else {
            0
        }
    }))
}
