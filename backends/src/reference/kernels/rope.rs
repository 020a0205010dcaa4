//! Rotary position embedding.

use fairyc_ir::RopeLayout;
use num_complex::Complex32;
use rayon::prelude::*;

/// Rotates each head of `x[.., seq, width]` by its position's angles:
/// pair j of a head turns by `pos · base^(-2j/head_dim)`.
pub fn rope(
    x: &[f32],
    positions: &[i32],
    width: usize,
    head_dim: usize,
    base: f32,
    layout: RopeLayout,
) -> Vec<f32> {
    let seq = positions.len();
    let half = head_dim / 2;
    let table = angles(positions, head_dim, base);
    let mut y = x.to_vec();
    y.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
        let angles = &table[(r % seq) * half..][..half];
        for head in row.chunks_mut(head_dim) {
            for (j, &(c, s)) in angles.iter().enumerate() {
                let (a, b) = match layout {
                    RopeLayout::Interleaved => (2 * j, 2 * j + 1),
                    RopeLayout::HalfSplit => (j, j + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    });
    y
}

/// cos/sin per (position, pair), computed in f64 once per call.
fn angles(positions: &[i32], head_dim: usize, base: f32) -> Vec<(f32, f32)> {
    positions
        .iter()
        .flat_map(|&p| {
            (0..head_dim / 2).map(move |j| {
                let freq = (base as f64).powf(-2.0 * j as f64 / head_dim as f64);
                let theta = p as f64 * freq;
                (theta.cos() as f32, theta.sin() as f32)
            })
        })
        .collect()
}

/// RoPE on complex slots: slot j of each head (of `head_dim / 2` slots)
/// is multiplied by `e^{i·pos·base^(-2j/head_dim)}`. This equals real
/// RoPE on the unpacked channels whenever the pairing matches RoPE's pairs.
pub fn rope_complex(
    z: &[Complex32],
    positions: &[i32],
    width: usize,
    head_dim: usize,
    base: f32,
) -> Vec<Complex32> {
    let seq = positions.len();
    let half = head_dim / 2;
    let table = angles(positions, head_dim, base);
    let mut y = z.to_vec();
    y.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
        let angles = &table[(r % seq) * half..][..half];
        for head in row.chunks_mut(half) {
            for (v, &(c, s)) in head.iter_mut().zip(angles) {
                *v *= Complex32::new(c, s);
            }
        }
    });
    y
}
