//! Elementwise and row-wise kernels.

use num_complex::Complex32;
use rayon::prelude::*;

use super::Element;

/// Chunk size for parallel elementwise loops: large enough to amortise
/// rayon's scheduling.
const CHUNK: usize = 1 << 14;

/// `unary`'s functions on real elements.
pub fn unary(x: &[f32], func: fairyc_ir::UnaryFn) -> Vec<f32> {
    use fairyc_ir::UnaryFn;
    let f: fn(f32) -> f32 = match func {
        UnaryFn::Neg => |v| -v,
        UnaryFn::RoundBf16 => |v| fairyc_ir::Arithmetic::Bf16Exact.round(v),
        UnaryFn::Exp => f32::exp,
        UnaryFn::Sqrt => f32::sqrt,
        UnaryFn::Recip => f32::recip,
        UnaryFn::Sigmoid => |v| 1.0 / (1.0 + (-v).exp()),
    };
    let mut y = x.to_vec();
    y.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
    y
}

pub fn silu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    silu_into(x, &mut y);
    y
}

/// [`silu`] into `y` (of `x`'s length).
pub fn silu_into(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
    y.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c {
            *v /= 1.0 + (-*v).exp();
        }
    });
}

/// `a ∘ b` where `b`'s shape is a suffix of `a`'s (so `b` repeats).
pub fn broadcast<T: Element>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut y = a.to_vec();
    broadcast_into(a, b, f, &mut y);
    y
}

/// [`broadcast`] into `y` (of `a`'s length).
pub fn broadcast_into<T: Element>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync, y: &mut [T]) {
    let n = b.len();
    y.copy_from_slice(a);
    if n == 0 {
        return;
    }
    y.par_chunks_mut(n.max(CHUNK / n * n)).for_each(|c| {
        for (i, v) in c.iter_mut().enumerate() {
            *v = f(*v, b[i % n]);
        }
    });
}

/// Softmax over rows of `cols` elements.
pub fn softmax(x: &[f32], cols: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(cols).for_each(|row| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            total += *v;
        }
        for v in row.iter_mut() {
            *v /= total;
        }
    });
    y
}

/// iFairy's CReLU²: 0 in the third quadrant (both parts negative),
/// otherwise `re² + i·im²`.
pub fn crelu_squared(z: &[Complex32]) -> Vec<Complex32> {
    z.iter()
        .map(|c| {
            if c.re < 0.0 && c.im < 0.0 {
                Complex32::new(0.0, 0.0)
            } else {
                Complex32::new(c.re * c.re, c.im * c.im)
            }
        })
        .collect()
}

pub fn conj(z: &[Complex32]) -> Vec<Complex32> {
    z.iter().map(|c| c.conj()).collect()
}
