//! The widely-linear transform (section 3.1): lossless round trip and
//! Theorem 1, `pack(R x) = U pack(x) + W conj(pack(x))`, for every pairing
//! and for odd shapes (padded with a zero channel).

mod common;

use common::{complex_error, matvec, Rng};
use fairyc_ir::quant::{
    pack, real_index, relative_error, unpack, widely_linear, widely_linear_inverse, Pairing,
};
use num_complex::Complex32;
use proptest::prelude::*;

const SHAPES: &[(usize, usize)] = &[
    (2, 2),
    (4, 6),
    (6, 4),
    (5, 7),
    (1, 3),
    (3, 1),
    (8, 16),
    (9, 12),
    (64, 96),
];

/// Every pairing that fits a vector of (unpadded) length `len`.
fn pairings(len: usize) -> Vec<Pairing> {
    let len2k = 2 * len.div_ceil(2);
    let mut out = vec![Pairing::Halves, Pairing::Adjacent];
    for head_dim in [32, 4, 2] {
        if len2k.is_multiple_of(head_dim) {
            out.push(Pairing::HeadHalves { head_dim });
            break;
        }
    }
    out
}

#[test]
fn round_trip_is_lossless() {
    let mut rng = Rng::new(1);
    for &(rows, cols) in SHAPES {
        let r = rng.normals(rows * cols);
        for rp in pairings(rows) {
            for cp in pairings(cols) {
                let (u, w, n, m) = widely_linear(&r, rows, cols, rp, cp).unwrap();
                assert_eq!((n, m), (rows.div_ceil(2), cols.div_ceil(2)));
                let back = widely_linear_inverse(&u, &w, n, m, rows, cols, rp, cp).unwrap();
                let err = relative_error(&r, &back);
                assert!(err < 1e-6, "{rows}x{cols} {rp:?}/{cp:?}: {err}");
            }
        }
    }
}

#[test]
fn complex_form_computes_r_x() {
    let mut rng = Rng::new(2);
    for &(rows, cols) in SHAPES {
        let r = rng.normals(rows * cols);
        for rp in pairings(rows) {
            for cp in pairings(cols) {
                let (u, w, n, m) = widely_linear(&r, rows, cols, rp, cp).unwrap();
                for _ in 0..3 {
                    let x = rng.normals(cols);
                    let want = pack(&matvec(&r, rows, cols, &x), rp).unwrap();
                    let xc = pack(&x, cp).unwrap();
                    let got: Vec<Complex32> = (0..n)
                        .map(|a| {
                            (0..m)
                                .map(|b| u[a * m + b] * xc[b] + w[a * m + b] * xc[b].conj())
                                .sum()
                        })
                        .collect();
                    let err = complex_error(&want, &got);
                    assert!(err < 1e-5, "{rows}x{cols} {rp:?}/{cp:?}: {err}");
                }
            }
        }
    }
}

/// The authors' block formulas on a hand-made 4x4 matrix (anchor, section 1).
#[test]
fn halves_match_the_authors_blocks() {
    let r: Vec<f32> = (0..16).map(|i| (i * i % 7) as f32 - 3.0).collect();
    let (u, w, n, m) = widely_linear(&r, 4, 4, Pairing::Halves, Pairing::Halves).unwrap();
    assert_eq!((n, m), (2, 2));
    let at = |i: usize, j: usize| r[i * 4 + j];
    for a in 0..2 {
        for b in 0..2 {
            let (a11, a12, a21, a22) = (at(a, b), at(a, b + 2), at(a + 2, b), at(a + 2, b + 2));
            assert_eq!(
                u[a * 2 + b],
                Complex32::new(0.5 * (a11 + a22), 0.5 * (a21 - a12))
            );
            assert_eq!(
                w[a * 2 + b],
                Complex32::new(0.5 * (a11 - a22), 0.5 * (a12 + a21))
            );
        }
    }
}

/// `HeadHalves` pairs channel `i` with `i + d/2` inside each head, the pairs
/// of Hugging Face's `rotate_half` RoPE.
#[test]
fn head_halves_are_rope_pairs() {
    let p = Pairing::HeadHalves { head_dim: 64 };
    for j in 0..96 {
        let (re, im) = real_index(p, 192, j);
        assert_eq!(re / 64, im / 64, "same head");
        assert_eq!(im - re, 32);
        assert_eq!(re % 64, j % 32);
    }
}

#[test]
fn pack_follows_real_index() {
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    for p in pairings(12) {
        let c = pack(&x, p).unwrap();
        for (j, z) in c.iter().enumerate() {
            let (re, im) = real_index(p, 12, j);
            assert_eq!((z.re, z.im), (x[re], x[im]));
        }
        assert_eq!(unpack(&c, p).unwrap(), x);
    }
}

#[test]
fn pairing_errors_are_reported() {
    let r = vec![0.0; 6 * 8];
    let bad = Pairing::HeadHalves { head_dim: 4 };
    assert!(widely_linear(&r, 6, 8, bad, Pairing::Halves).is_err());
    assert!(widely_linear(&r, 6, 8, Pairing::Halves, bad).is_ok());
}

proptest! {
    #[test]
    fn round_trip_any_shape(rows in 0usize..9, cols in 0usize..9, seed in any::<u64>()) {
        let r = Rng::new(seed).normals(rows * cols);
        for rp in pairings(rows) {
            for cp in pairings(cols) {
                let (u, w, n, m) = widely_linear(&r, rows, cols, rp, cp).unwrap();
                let back = widely_linear_inverse(&u, &w, n, m, rows, cols, rp, cp).unwrap();
                prop_assert!(relative_error(&r, &back) < 1e-6);
            }
        }
    }
}
