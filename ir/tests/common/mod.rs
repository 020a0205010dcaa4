//! Shared helpers for the quant tests: a seeded generator and reference
//! arithmetic in f64.
#![allow(dead_code)] // each test binary uses a subset

use fairyc_ir::quant::relative_error;
use num_complex::Complex32;

/// SplitMix64: small, seeded, good enough for test matrices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (1.0 - self.unit(), self.unit());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    pub fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal()).collect()
    }

    pub fn complex_normals(&mut self, len: usize) -> Vec<Complex32> {
        (0..len)
            .map(|_| Complex32::new(self.normal(), self.normal()))
            .collect()
    }
}

/// `||a - b|| / ||a||` of complex vectors.
pub fn complex_error(a: &[Complex32], b: &[Complex32]) -> f64 {
    let flat = |v: &[Complex32]| v.iter().flat_map(|c| [c.re, c.im]).collect::<Vec<_>>();
    relative_error(&flat(a), &flat(b))
}

/// `R x` for a row-major `[rows, cols]` matrix, accumulated in f64.
pub fn matvec(r: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    (0..rows)
        .map(|i| {
            let row = &r[i * cols..(i + 1) * cols];
            row.iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>() as f32
        })
        .collect()
}
