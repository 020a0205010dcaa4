//! The bf16-exact path (anchor, section 3a): the authors' PyTorch arithmetic
//! in bf16, step by step.

mod common;

use common::Rng;
use fairyc_ir::quant::{
    dequantize_sum, fairy2i_quantize, fairy2i_reference_bf16, relative_error,
    widely_linear_inverse_with, widely_linear_with, Arithmetic, Code, Fairy2iConfig, Granularity,
    Pairing,
};
use half::bf16;
use num_complex::Complex32;

fn bf(x: f32) -> bf16 {
    bf16::from_f32(x)
}

/// A block sum that rounds in bf16 flips a code. With
/// `A = [[1, 0], [1, 2^-8]]`: `A11 + A22 = 1 + 2^-8` is a bf16 tie and rounds
/// to 1, so `U = 0.5 + 0.5i`, a diagonal tie coded +i; in f32
/// `U = 0.50195 + 0.5i`, coded +1. `W = 0.49805 + 0.5i` (coded +i) is the
/// same in both.
#[test]
fn a_rounded_block_sum_flips_a_code() {
    let a = [1.0, 0.0, 1.0, 1.0 / 256.0];
    let p = Pairing::Halves;
    let (u16, w16, ..) = widely_linear_with(&a, 2, 2, p, p, Arithmetic::Bf16Exact).unwrap();
    let (u32, w32, ..) = widely_linear_with(&a, 2, 2, p, p, Arithmetic::F32).unwrap();
    let u_re = 0.5 + 1.0 / 512.0;
    assert_eq!(u16[0], Complex32::new(0.5, 0.5));
    assert_eq!(u32[0], Complex32::new(u_re, 0.5));
    assert_eq!(w16, w32);
    assert_eq!(w16[0], Complex32::new(0.5 - 1.0 / 512.0, 0.5));

    let a16: Vec<bf16> = a.iter().map(|&x| bf(x)).collect();
    let (a_q, uq, wq) = fairy2i_reference_bf16(&a16, 2, 2, 1).unwrap();
    assert_eq!(uq[0].codes, vec![Code::PlusI]);
    assert_eq!(uq[0].scales, vec![bf(1e-6).to_f32(), 0.5]);
    assert_eq!(wq[0].codes, vec![Code::PlusI]);
    // U_q = W_q = 0.5i: A11 = Re W + Re U = 0, A12 = Im W - Im U = 0,
    // A21 = Im W + Im U = 1, A22 = Re U - Re W = 0.
    assert_eq!(a_q, [0.0, 0.0, 1.0, 0.0].map(bf).to_vec());

    let cfg = Fairy2iConfig {
        stages: 1,
        ..Fairy2iConfig::default()
    };
    let f = fairy2i_quantize(&a, 2, 2, &cfg).unwrap();
    assert_eq!(f.u[0].codes, vec![Code::PlusOne]);
    assert_eq!(f.w[0].codes, vec![Code::PlusI]);
    // U_q = 0.50195, W_q = 0.5i.
    assert_eq!(f.a_q, vec![u_re, 0.5, 0.5, u_re]);
}

/// bf16 scales: a mean that is not a bf16 value is rounded, and the
/// dequantized entries are exactly that bf16 value.
#[test]
fn scales_are_rounded_to_bf16() {
    // U entries 1, 1, 1 + 2^-7 on the real axis: mean 1 + 2^-7/3, rounds to 1.
    let w = [1.0, 1.0, 1.0 + 1.0 / 128.0].map(|x| Complex32::new(x, 0.0));
    let q =
        fairyc_ir::quant::phase_quant_with(&w, 1, 3, Granularity::Tensor, Arithmetic::Bf16Exact)
            .unwrap();
    assert_eq!(q.scales[0], 1.0);
    let q = fairyc_ir::quant::phase_quant(&w, 1, 3, Granularity::Tensor).unwrap();
    assert_eq!(q.scales[0], 1.0 + 1.0 / 384.0);
}

/// A_q of the bf16 path is the bf16 merge of the bf16-rounded stage sums.
#[test]
fn a_q_is_the_merge_of_rounded_stage_sums() {
    let (rows, cols) = (32, 48);
    let a: Vec<bf16> = Rng::new(11)
        .normals(rows * cols)
        .iter()
        .map(|&x| bf(0.02 * x))
        .collect();
    let af: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
    for stages in 1..=3 {
        let (a_q, uq, wq) = fairy2i_reference_bf16(&a, rows, cols, stages).unwrap();
        let (n, m) = (rows / 2, cols / 2);
        let g = Granularity::Tensor;
        let u_sum = dequantize_sum(&uq, n, m, g, Arithmetic::Bf16Exact).unwrap();
        let w_sum = dequantize_sum(&wq, n, m, g, Arithmetic::Bf16Exact).unwrap();
        // Stage sums are bf16 values.
        for z in u_sum.iter().chain(&w_sum) {
            assert_eq!(bf(z.re).to_f32(), z.re);
            assert_eq!(bf(z.im).to_f32(), z.im);
        }
        let merged = widely_linear_inverse_with(
            &u_sum,
            &w_sum,
            n,
            m,
            rows,
            cols,
            Pairing::Halves,
            Pairing::Halves,
            Arithmetic::Bf16Exact,
        )
        .unwrap();
        let a_qf: Vec<f32> = a_q.iter().map(|x| x.to_f32()).collect();
        assert_eq!(a_qf, merged);
        // Same method as the f32 path: errors agree to a few per cent.
        let cfg = Fairy2iConfig {
            stages,
            ..Fairy2iConfig::default()
        };
        let f = fairy2i_quantize(&af, rows, cols, &cfg).unwrap();
        let (e16, e32) = (relative_error(&af, &a_qf), relative_error(&af, &f.a_q));
        assert!((e16 - e32).abs() < 0.05 * e32, "T={stages}: {e16} vs {e32}");
    }
}

// --- an independent, deliberately plain re-implementation of section 3a ---

/// The authors' PhaseQuantSTE on bf16 tensors, entry by entry: the codeword
/// maximizing `Re(w conj(i^k))`, a tie to the counter-clockwise one; scales
/// as an f32 mean times 1/N cast to bf16 and clamped at 1e-6.
fn naive_phase_quant(re: &[bf16], im: &[bf16]) -> (Vec<bf16>, Vec<bf16>) {
    let mut k = Vec::new();
    for (&r, &i) in re.iter().zip(im) {
        let (r, i) = (r.to_f32(), i.to_f32());
        let score = [r, i, -r, -i];
        let best = score.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let cands: Vec<usize> = (0..4).filter(|&j| score[j] == best).collect();
        k.push(match cands.len() {
            1 => cands[0],
            2 if cands == [0, 3] => 0,
            2 => cands[1],
            _ => 0,
        });
    }
    let mean = |vals: Vec<f32>| -> bf16 {
        if vals.is_empty() {
            return bf(1e-6);
        }
        let sum: f64 = vals.iter().map(|&v| f64::from(v)).sum();
        let s = bf(sum as f32 * (1.0 / vals.len() as f32));
        if s.to_f32() < 1e-6 {
            bf(1e-6)
        } else {
            s
        }
    };
    let s_re = mean(
        k.iter()
            .zip(re)
            .filter(|(k, _)| *k % 2 == 0)
            .map(|(_, v)| v.to_f32().abs())
            .collect(),
    );
    let s_im = mean(
        k.iter()
            .zip(im)
            .filter(|(k, _)| *k % 2 == 1)
            .map(|(_, v)| v.to_f32().abs())
            .collect(),
    );
    let zero = bf(0.0);
    let q_re = k.iter().map(|&k| [s_re, zero, -s_re, zero][k]).collect();
    let q_im = k.iter().map(|&k| [zero, s_im, zero, -s_im][k]).collect();
    (q_re, q_im)
}

/// V1..V4: residual stages and left-to-right stage sums, all in bf16.
fn naive_residual(re: &[bf16], im: &[bf16], stages: usize) -> (Vec<bf16>, Vec<bf16>) {
    let (mut e_re, mut e_im) = (re.to_vec(), im.to_vec());
    let mut sum: Option<(Vec<bf16>, Vec<bf16>)> = None;
    for _ in 0..stages {
        let (q_re, q_im) = naive_phase_quant(&e_re, &e_im);
        e_re = e_re.iter().zip(&q_re).map(|(&e, &q)| e - q).collect();
        e_im = e_im.iter().zip(&q_im).map(|(&e, &q)| e - q).collect();
        sum = Some(match sum {
            None => (q_re, q_im),
            Some((s_re, s_im)) => (
                s_re.iter().zip(&q_re).map(|(&s, &q)| s + q).collect(),
                s_im.iter().zip(&q_im).map(|(&s, &q)| s + q).collect(),
            ),
        });
    }
    sum.unwrap()
}

/// The whole layer: split in bf16 (`half`'s operators round every result to
/// bf16, as PyTorch's bf16 kernels do), quantize, merge in bf16.
fn naive_layer(a: &[bf16], rows: usize, cols: usize, stages: usize) -> Vec<bf16> {
    let (n, m) = (rows / 2, cols / 2);
    let at = |i: usize, j: usize| a[i * cols + j];
    let half = bf(0.5);
    let (mut u_re, mut u_im, mut w_re, mut w_im) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        for j in 0..m {
            let (a11, a12, a21, a22) = (at(i, j), at(i, j + m), at(i + n, j), at(i + n, j + m));
            u_re.push(half * (a11 + a22));
            u_im.push(half * (a21 - a12));
            w_re.push(half * (a11 - a22));
            w_im.push(half * (a12 + a21));
        }
    }
    let (u_re, u_im) = naive_residual(&u_re, &u_im, stages);
    let (w_re, w_im) = naive_residual(&w_re, &w_im, stages);
    let mut out = vec![bf(0.0); rows * cols];
    for i in 0..n {
        for j in 0..m {
            let c = i * m + j;
            out[i * cols + j] = w_re[c] + u_re[c];
            out[i * cols + j + m] = w_im[c] - u_im[c];
            out[(i + n) * cols + j] = w_im[c] + u_im[c];
            out[(i + n) * cols + j + m] = -w_re[c] + u_re[c];
        }
    }
    out
}

#[test]
fn matches_a_plain_reimplementation_bit_for_bit() {
    let mut rng = Rng::new(12);
    for &(rows, cols) in &[(2, 2), (8, 6), (40, 64), (96, 160)] {
        // Weights on a coarse grid so that ties, zeros and bf16-rounding
        // block sums are common, plus ordinary small weights.
        let coarse: Vec<bf16> = (0..rows * cols)
            .map(|_| bf(((rng.unit() * 9.0).floor() as f32 - 4.0) / 8.0))
            .collect();
        let fine: Vec<bf16> = rng
            .normals(rows * cols)
            .iter()
            .map(|&x| bf(0.03 * x))
            .collect();
        for a in [coarse, fine] {
            for stages in 1..=4 {
                let (a_q, _, _) = fairy2i_reference_bf16(&a, rows, cols, stages).unwrap();
                let want = naive_layer(&a, rows, cols, stages);
                let differ = a_q
                    .iter()
                    .zip(&want)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(differ, 0, "{rows}x{cols} T={stages}");
            }
        }
    }
}

/// The f32 and bf16 paths differ near sector boundaries only: on bf16
/// masters their A_q mostly agree to bf16 precision.
#[test]
fn f32_and_bf16_paths_differ_slightly() {
    let (rows, cols) = (64, 96);
    let a: Vec<bf16> = Rng::new(13)
        .normals(rows * cols)
        .iter()
        .map(|&x| bf(0.02 * x))
        .collect();
    let af: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
    let (a_q, ..) = fairy2i_reference_bf16(&a, rows, cols, 2).unwrap();
    let a_q: Vec<f32> = a_q.iter().map(|x| x.to_f32()).collect();
    let f = fairy2i_quantize(&af, rows, cols, &Fairy2iConfig::default()).unwrap();
    let gap = relative_error(&f.a_q, &a_q);
    assert!(gap > 0.0 && gap < 0.1, "{gap}");
}
