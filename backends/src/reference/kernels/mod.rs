//! The reference backend's kernels: plain, multi-threaded Rust on f32 and
//! complex f32. They define what every faster backend must reproduce.

pub mod attention;
pub mod elementwise;
pub mod grad;
pub mod layout;
pub mod linear;
pub mod norm;
pub mod quant_linear;
pub mod rope;
pub mod sampling;

use num_complex::Complex32;
use num_traits::Zero;
use std::ops::{Add, Mul, Sub};

/// Element types the arithmetic kernels are generic over.
pub trait Element:
    Copy + Send + Sync + Zero + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + 'static
{
    /// `Re(self · conj(other))`: the dot product attention scores use, which
    /// is the ordinary product for real numbers.
    fn re_mul_conj(self, other: Self) -> f32;
    fn scale(self, s: f32) -> Self;
}

impl Element for f32 {
    fn re_mul_conj(self, other: f32) -> f32 {
        self * other
    }
    fn scale(self, s: f32) -> f32 {
        self * s
    }
}

impl Element for Complex32 {
    fn re_mul_conj(self, other: Complex32) -> f32 {
        self.re * other.re + self.im * other.im
    }
    fn scale(self, s: f32) -> Complex32 {
        self * s
    }
}
