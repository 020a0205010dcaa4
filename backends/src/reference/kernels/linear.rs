//! `y = x · wᵀ` through the `gemm` crate (real and complex alike).

use gemm::{gemm, Parallelism};

/// `x[m, k] · w[n, k]ᵀ -> [m, n]`, all row-major.
pub fn linear<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    x: &[T],
    w: &[T],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<T> {
    assert_eq!(x.len(), m * k, "linear: input size");
    assert_eq!(w.len(), n * k, "linear: weight size");
    let mut y = vec![T::zero(); m * n];
    if m == 0 || n == 0 {
        return y;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k > 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the pointers cover m×n, m×k and n×k elements as the strides
    // describe (checked above), and `y` does not alias the inputs.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            // wᵀ as a k×n matrix: column j is row j of w.
            w.as_ptr(),
            k as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    y
}
