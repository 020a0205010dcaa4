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
    let mut y = vec![0.0; x.len()];
    rope_into(x, positions, width, head_dim, base, layout, &mut y);
    y
}

/// [`rope`] into `y` (of `x`'s length).
pub fn rope_into(
    x: &[f32],
    positions: &[i32],
    width: usize,
    head_dim: usize,
    base: f32,
    layout: RopeLayout,
    y: &mut [f32],
) {
    let seq = positions.len();
    let half = head_dim / 2;
    y.copy_from_slice(x);
    y.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
        let mut table = Angles::new(positions[r % seq], head_dim, base);
        let angles = table.get();
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
}

/// The most pairs of a head whose angles stay on the stack.
const STACK_PAIRS: usize = 256;

/// cos/sin of one position's pairs, computed in f64 (on the stack for heads
/// up to 512 wide: a call allocates nothing).
struct Angles {
    stack: [(f32, f32); STACK_PAIRS],
    heap: Vec<(f32, f32)>,
    half: usize,
}

impl Angles {
    fn new(position: i32, head_dim: usize, base: f32) -> Angles {
        let half = head_dim / 2;
        let mut angles = Angles {
            stack: [(0.0, 0.0); STACK_PAIRS],
            heap: Vec::new(),
            half,
        };
        if half > STACK_PAIRS {
            angles.heap.resize(half, (0.0, 0.0));
        }
        let out = if half > STACK_PAIRS {
            &mut angles.heap[..]
        } else {
            &mut angles.stack[..half]
        };
        for (j, a) in out.iter_mut().enumerate() {
            let freq = (base as f64).powf(-2.0 * j as f64 / head_dim as f64);
            let theta = position as f64 * freq;
            *a = (theta.cos() as f32, theta.sin() as f32);
        }
        angles
    }

    fn get(&mut self) -> &[(f32, f32)] {
        if self.half > STACK_PAIRS {
            &self.heap
        } else {
            &self.stack[..self.half]
        }
    }
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
    let mut y = vec![Complex32::new(0.0, 0.0); z.len()];
    rope_complex_into(z, positions, width, head_dim, base, &mut y);
    y
}

/// [`rope_complex`] into `y` (of `z`'s length).
pub fn rope_complex_into(
    z: &[Complex32],
    positions: &[i32],
    width: usize,
    head_dim: usize,
    base: f32,
    y: &mut [Complex32],
) {
    let seq = positions.len();
    let half = head_dim / 2;
    y.copy_from_slice(z);
    y.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
        let mut table = Angles::new(positions[r % seq], head_dim, base);
        let angles = table.get();
        for head in row.chunks_mut(half) {
            for (v, &(c, s)) in head.iter_mut().zip(angles) {
                *v *= Complex32::new(c, s);
            }
        }
    });
}
