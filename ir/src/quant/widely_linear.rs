//! The lossless widely-linear reparameterization (section 3.1).
//!
//! With output slot `a` on real rows `(ra, ia)` and input slot `b` on real
//! columns `(rb, ib)` (see [`Pairing`]), the four blocks of eq. 3 are
//! `R11 = R[ra, rb]`, `R12 = R[ra, ib]`, `R21 = R[ia, rb]`, `R22 = R[ia, ib]`
//! and
//!
//! ```text
//! U = ½(R11 + R22) + i·½(R21 − R12),   W = ½(R11 − R22) + i·½(R12 + R21)   (3)
//! ```
//!
//! so that `pack(R x) = U pack(x) + W conj(pack(x))` (eq. 4). The inverse is
//! eq. 7, `R = R_lin(U) + R_conj(W)`:
//! `R11 = Re U + Re W`, `R12 = Im W − Im U`, `R21 = Im U + Im W`,
//! `R22 = Re U − Re W`.

use num_complex::Complex32;
use rayon::prelude::*;

use super::{check_len, Arithmetic, Pairing, QuantError};

/// `(U, W, n, m)`: the complex matrices `[n, m]` of a widely-linear layer.
pub type WidelyLinear = (Vec<Complex32>, Vec<Complex32>, usize, usize);

/// Splits the real `[rows, cols]` matrix `r` into `U`, `W` of shape
/// `[n, m] = [ceil(rows / 2), ceil(cols / 2)]` (eq. 3), exactly up to f32
/// rounding of the halved sums. An odd dimension is padded with one zero
/// channel at its end before pairing (section 3.1, remark).
pub fn widely_linear(
    r: &[f32],
    rows: usize,
    cols: usize,
    row_pairing: Pairing,
    col_pairing: Pairing,
) -> Result<WidelyLinear, QuantError> {
    widely_linear_with(r, rows, cols, row_pairing, col_pairing, Arithmetic::F32)
}

/// [`widely_linear`] in the given arithmetic. With
/// [`Arithmetic::Bf16Exact`] each block sum or difference is rounded to bf16
/// and then halved, `Re U = bf16(½ · bf16(R11 + R22))` and so on (anchor,
/// section 3a, step 1); the entries of `r` are rounded to bf16 first (a no-op
/// for bf16 masters).
pub fn widely_linear_with(
    r: &[f32],
    rows: usize,
    cols: usize,
    row_pairing: Pairing,
    col_pairing: Pairing,
    arith: Arithmetic,
) -> Result<WidelyLinear, QuantError> {
    check_len("widely_linear input", r.len(), rows * cols)?;
    let (n, m) = (rows.div_ceil(2), cols.div_ceil(2));
    let row_slots = row_pairing.table(2 * n)?;
    let col_slots = col_pairing.table(2 * m)?;
    let mut u = vec![Complex32::new(0.0, 0.0); n * m];
    let mut w = u.clone();
    if n == 0 || m == 0 {
        return Ok((u, w, n, m));
    }
    // A padded row or column reads as zero.
    let row = |i: usize| r.get(i * cols..(i + 1) * cols).unwrap_or(&[]);
    let at = |row: &[f32], c: usize| arith.round(row.get(c).copied().unwrap_or(0.0));
    // ½(a + b). In f32 halving first keeps huge inputs finite (same result
    // for normal numbers); bf16 follows the authors' order.
    let half = |a: f32, b: f32| match arith {
        Arithmetic::F32 => 0.5 * a + 0.5 * b,
        Arithmetic::Bf16Exact => arith.round(0.5 * arith.round(a + b)),
    };
    u.par_chunks_mut(m)
        .zip(w.par_chunks_mut(m))
        .zip(row_slots.par_iter())
        .for_each(|((u_row, w_row), &(ra, ia))| {
            let (top, bottom) = (row(ra), row(ia));
            for ((u, w), &(rb, ib)) in u_row.iter_mut().zip(w_row.iter_mut()).zip(&col_slots) {
                let (r11, r12) = (at(top, rb), at(top, ib));
                let (r21, r22) = (at(bottom, rb), at(bottom, ib));
                *u = Complex32::new(half(r11, r22), half(r21, -r12));
                *w = Complex32::new(half(r11, -r22), half(r12, r21));
            }
        });
    Ok((u, w, n, m))
}

/// The inverse of [`widely_linear`] (eq. 7): rebuilds the real
/// `[rows, cols]` matrix from `U`, `W` of shape `[n, m]`, dropping the
/// padded channels. `rows` and `cols` must round up to `2n` and `2m`.
#[allow(clippy::too_many_arguments)] // the brief's signature: both shapes, both pairings
pub fn widely_linear_inverse(
    u: &[Complex32],
    w: &[Complex32],
    n: usize,
    m: usize,
    rows: usize,
    cols: usize,
    row_pairing: Pairing,
    col_pairing: Pairing,
) -> Result<Vec<f32>, QuantError> {
    widely_linear_inverse_with(
        u,
        w,
        n,
        m,
        rows,
        cols,
        row_pairing,
        col_pairing,
        Arithmetic::F32,
    )
}

/// [`widely_linear_inverse`] in the given arithmetic. With
/// [`Arithmetic::Bf16Exact`] every block is rounded to bf16, as the
/// authors' merge `A11_q = W_re_q + U_re_q` on bf16 tensors (anchor,
/// section 3a, step 5).
#[allow(clippy::too_many_arguments)]
pub fn widely_linear_inverse_with(
    u: &[Complex32],
    w: &[Complex32],
    n: usize,
    m: usize,
    rows: usize,
    cols: usize,
    row_pairing: Pairing,
    col_pairing: Pairing,
    arith: Arithmetic,
) -> Result<Vec<f32>, QuantError> {
    check_len("widely_linear_inverse U", u.len(), n * m)?;
    check_len("widely_linear_inverse W", w.len(), n * m)?;
    check_len("widely_linear_inverse rows", rows.div_ceil(2), n)?;
    check_len("widely_linear_inverse cols", cols.div_ceil(2), m)?;
    let row_src = row_pairing.inverse_table(2 * n)?;
    let col_src = col_pairing.inverse_table(2 * m)?;
    let mut r = vec![0.0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return Ok(r);
    }
    r.par_chunks_mut(cols)
        .zip(row_src.par_iter())
        .for_each(|(out, &(a, row_im))| {
            let (u_row, w_row) = (&u[a * m..(a + 1) * m], &w[a * m..(a + 1) * m]);
            for (x, &(b, col_im)) in out.iter_mut().zip(&col_src) {
                let (u, w) = (u_row[b], w_row[b]);
                *x = arith.round(match (row_im, col_im) {
                    (false, false) => w.re + u.re, // R11
                    (false, true) => w.im - u.im,  // R12
                    (true, false) => w.im + u.im,  // R21
                    (true, true) => u.re - w.re,   // R22
                });
            }
        });
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's 2x2 case: R = [[a, b], [c, d]] with n = m = 1.
    #[test]
    fn two_by_two_by_hand() {
        let r = [1.0, 2.0, 3.0, 4.0];
        let (u, w, n, m) = widely_linear(&r, 2, 2, Pairing::Halves, Pairing::Halves).unwrap();
        assert_eq!((n, m), (1, 1));
        // Re U = (1 + 4)/2, Im U = (3 - 2)/2, Re W = (1 - 4)/2, Im W = (2 + 3)/2.
        assert_eq!(u, vec![Complex32::new(2.5, 0.5)]);
        assert_eq!(w, vec![Complex32::new(-1.5, 2.5)]);
        let back =
            widely_linear_inverse(&u, &w, 1, 1, 2, 2, Pairing::Halves, Pairing::Halves).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn padding_of_a_single_real_entry() {
        // [[5]] padded to [[5, 0], [0, 0]]: U = W = 2.5.
        let (u, w, n, m) = widely_linear(&[5.0], 1, 1, Pairing::Adjacent, Pairing::Halves).unwrap();
        assert_eq!(
            (n, m, u[0], w[0]),
            (1, 1, Complex32::new(2.5, 0.0), Complex32::new(2.5, 0.0))
        );
        let back =
            widely_linear_inverse(&u, &w, 1, 1, 1, 1, Pairing::Adjacent, Pairing::Halves).unwrap();
        assert_eq!(back, vec![5.0]);
    }

    #[test]
    fn shape_errors() {
        assert!(matches!(
            widely_linear(&[0.0; 5], 2, 3, Pairing::Halves, Pairing::Halves),
            Err(QuantError::Length { .. })
        ));
        let z = [Complex32::new(0.0, 0.0); 2];
        assert!(matches!(
            widely_linear_inverse(&z, &z, 1, 2, 2, 2, Pairing::Halves, Pairing::Halves),
            Err(QuantError::Length { .. })
        ));
    }
}
