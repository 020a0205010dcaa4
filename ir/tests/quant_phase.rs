//! PhaseQuant (section 3.2) on hand-made cases against eq. 10-12, and
//! property tests of the projection and the scales.

use fairyc_ir::quant::{
    dequantize, phase_quant, phase_quant_with, Arithmetic, Code, Granularity, PhaseQuantized,
    QuantError,
};
use num_complex::Complex32;
use proptest::prelude::*;

fn c(re: f32, im: f32) -> Complex32 {
    Complex32::new(re, im)
}

fn quant(w: &[Complex32], n: usize, m: usize, g: Granularity) -> (PhaseQuantized, Vec<Complex32>) {
    let q = phase_quant(w, n, m, g).unwrap();
    let deq = dequantize(&q, n, m, g).unwrap();
    (q, deq)
}

#[test]
fn sector_interiors() {
    use Code::*;
    let w = [
        c(2.0, 1.0),   // 26.6°: +1
        c(2.0, -1.0),  // -26.6°: +1
        c(1.0, 3.0),   // 71.6°: +i
        c(-1.0, 3.0),  // 108.4°: +i
        c(-4.0, 1.0),  // 166.0°: -1
        c(-4.0, -1.0), // -166.0°: -1
        c(1.0, -5.0),  // -78.7°: -i
        c(-1.0, -5.0), // -101.3°: -i
    ];
    let (q, deq) = quant(&w, 1, 8, Granularity::Tensor);
    let want = [
        PlusOne, PlusOne, PlusI, PlusI, MinusOne, MinusOne, MinusI, MinusI,
    ];
    assert_eq!(q.codes, want);
    // s_re = mean(2, 2, 4, 4) = 3, s_im = mean(3, 3, 5, 5) = 4 (eq. 11).
    assert_eq!(q.scales, vec![3.0, 4.0]);
    // eq. 12: exactly ±s_re or ±i s_im.
    let expect = [
        c(3.0, 0.0),
        c(3.0, 0.0),
        c(0.0, 4.0),
        c(0.0, 4.0),
        c(-3.0, 0.0),
        c(-3.0, 0.0),
        c(0.0, -4.0),
        c(0.0, -4.0),
    ];
    assert_eq!(deq, expect);
}

#[test]
fn diagonal_ties_go_counter_clockwise() {
    use Code::*;
    let w = [c(1.0, 1.0), c(1.0, -1.0), c(-1.0, 1.0), c(-1.0, -1.0)];
    let (q, _) = quant(&w, 2, 2, Granularity::Tensor);
    // π/4 -> +i, -π/4 -> +1, 3π/4 -> -1, -3π/4 -> -i.
    assert_eq!(q.codes, vec![PlusI, PlusOne, MinusOne, MinusI]);
    // Ties of any magnitude, also subnormal and infinite.
    for x in [1e-40f32, 0.5, 3e38, f32::INFINITY] {
        assert_eq!(Code::nearest(x, x), PlusI);
        assert_eq!(Code::nearest(x, -x), PlusOne);
        assert_eq!(Code::nearest(-x, x), MinusOne);
        assert_eq!(Code::nearest(-x, -x), MinusI);
    }
}

#[test]
fn zero_is_plus_one_and_joins_the_real_scale() {
    let w = [c(0.0, 0.0), c(3.0, 1.0), c(-0.0, -0.0), c(0.0, 2.0)];
    let (q, deq) = quant(&w, 1, 4, Granularity::Tensor);
    use Code::*;
    assert_eq!(q.codes, vec![PlusOne, PlusOne, PlusOne, PlusI]);
    // s_re = mean(|0|, 3, |0|) = 1: zeros count in the mean as in the
    // authors' mask; s_im = 2.
    assert_eq!(q.scales, vec![1.0, 2.0]);
    assert_eq!(deq[0], c(1.0, 0.0));
}

#[test]
fn no_weight_on_the_imaginary_axis() {
    let w = [c(1.0, 0.0), c(-3.0, 0.5), c(2.0, -1.0)];
    let (q, deq) = quant(&w, 3, 1, Granularity::Tensor);
    assert!(q.codes.iter().all(|c| !c.is_imag()));
    assert_eq!(q.scales, vec![2.0, 1e-6]);
    assert!(deq.iter().all(|z| z.re.is_finite() && z.im.is_finite()));
    // All zeros: both scales clamp, nothing is NaN.
    let (q, deq) = quant(&[c(0.0, 0.0); 6], 2, 3, Granularity::Tensor);
    assert_eq!(q.scales, vec![1e-6, 1e-6]);
    assert!(deq.iter().all(|z| *z == c(1e-6, 0.0)));
}

#[test]
fn hand_computed_scales() {
    // Real-coded |re|: 0.5, 1.5, 0.25 -> 0.75; imag-coded |im|: 2, 0.1 -> 1.05.
    let w = [
        c(0.5, 0.2),
        c(-1.5, 1.0),
        c(0.3, 2.0),
        c(0.25, 0.0),
        c(0.05, -0.1),
    ];
    let (q, _) = quant(&w, 1, 5, Granularity::Tensor);
    assert_eq!(q.scales, vec![0.75, 1.05]);
}

#[test]
fn per_channel_scales() {
    // Row 0: re-coded 1, 3 -> 2; im-coded 4 -> 4.
    // Row 1: re-coded 0.5, 0, 1 -> 0.5; nothing im-coded -> 1e-6.
    let w = [
        c(1.0, 0.0),
        c(-3.0, 2.0),
        c(0.0, -4.0),
        c(0.5, 0.25),
        c(0.0, 0.0),
        c(-1.0, 0.0),
    ];
    let g = Granularity::Channel;
    let (q, deq) = quant(&w, 2, 3, g);
    assert_eq!(q.scales, vec![2.0, 4.0, 0.5, 1e-6]);
    assert_eq!(q.scale(1), (0.5, 1e-6));
    assert_eq!(deq[2], c(0.0, -4.0));
    assert_eq!(deq[5], c(-0.5, 0.0));
}

#[test]
fn per_group_scales_with_a_short_last_group() {
    // One row of 5 in groups of 2: [0, 1], [2, 3], [4].
    let w = [
        c(1.0, 0.0),
        c(3.0, 0.0),
        c(0.0, 2.0),
        c(-1.0, 0.5),
        c(0.0, -6.0),
        // Row 2 of the same matrix.
        c(-2.0, 0.0),
        c(0.0, 1.0),
        c(5.0, 5.0),
        c(1.0, -1.0),
        c(7.0, 0.0),
    ];
    let g = Granularity::Group(2);
    assert_eq!(g.num_groups(2, 5), Ok(6));
    let (q, deq) = quant(&w, 2, 5, g);
    #[rustfmt::skip]
    let want = vec![
        2.0, 1e-6, // (1, 3) real
        1.0, 2.0,  // -1 real, 2 imag
        1e-6, 6.0, // -6 imag
        2.0, 1.0,  // -2 real, 1 imag
        1.0, 5.0,  // (5, 5) tie -> +i, (1, -1) tie -> +1
        7.0, 1e-6,
    ];
    assert_eq!(q.scales, want);
    assert_eq!(deq[7], c(0.0, 5.0));
    assert_eq!(deq[8], c(1.0, 0.0));
    assert_eq!(deq[4], c(0.0, -6.0));
}

#[test]
fn group_larger_than_a_row_is_per_channel() {
    let w: Vec<Complex32> = (0..12)
        .map(|i| c(i as f32 - 5.0, (i * 7 % 5) as f32 - 2.0))
        .collect();
    let (a, _) = quant(&w, 3, 4, Granularity::Group(100));
    let (b, _) = quant(&w, 3, 4, Granularity::Channel);
    assert_eq!(a, b);
}

#[test]
fn shape_and_parameter_errors() {
    let w = [c(1.0, 0.0); 6];
    assert!(matches!(
        phase_quant(&w, 2, 2, Granularity::Tensor),
        Err(QuantError::Length { .. })
    ));
    assert_eq!(
        phase_quant(&w, 2, 3, Granularity::Group(0)),
        Err(QuantError::GroupSize)
    );
    let q = phase_quant(&w, 2, 3, Granularity::Tensor).unwrap();
    assert!(matches!(
        dequantize(&q, 2, 3, Granularity::Channel),
        Err(QuantError::Mismatch { .. })
    ));
}

#[test]
fn non_finite_entries_do_not_poison_scales() {
    let w = [
        c(f32::INFINITY, 0.0),
        c(2.0, 0.0),
        c(f32::NAN, 1.0),
        c(0.0, -3.0),
    ];
    let (q, _) = quant(&w, 1, 4, Granularity::Tensor);
    assert_eq!(q.codes[0], Code::PlusOne);
    assert_eq!(q.codes[2], Code::PlusOne);
    assert_eq!(q.scales, vec![2.0, 3.0]);
}

// --- properties ---

/// Finite floats of every magnitude: zeros, subnormals, normals up to MAX.
fn finite() -> impl Strategy<Value = f32> {
    use proptest::num::f32::*;
    prop_oneof![
        4 => -10.0f32..10.0,
        2 => POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
        1 => Just(0.0f32),
    ]
}

/// Complex entries, a quarter of them exact diagonal ties.
fn entry() -> impl Strategy<Value = Complex32> {
    prop_oneof![
        3 => (finite(), finite()).prop_map(|(a, b)| c(a, b)),
        1 => (finite(), any::<bool>()).prop_map(|(a, flip)| c(a, if flip { -a } else { a })),
    ]
}

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Channel),
        (1usize..5).prop_map(Granularity::Group),
    ]
}

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<Complex32>, Granularity)> {
    (1usize..5, 1usize..9, granularity()).prop_flat_map(|(n, m, g)| {
        (
            Just(n),
            Just(m),
            prop::collection::vec(entry(), n * m),
            Just(g),
        )
    })
}

/// The codewords `i^k` maximizing `Re(w conj(i^k))` (eq. 10).
fn best_codewords(w: Complex32) -> Vec<u8> {
    let score = [w.re, w.im, -w.re, -w.im]; // Re(w conj(i^k)), k = 0..3
    let best = score.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    (0..4u8).filter(|&k| score[k as usize] == best).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn codes_are_nearest_by_angle((n, m, w, g) in matrix()) {
        let q = phase_quant(&w, n, m, g).unwrap();
        for (x, code) in w.iter().zip(&q.codes) {
            let best = best_codewords(*x);
            let k = code.bits();
            match best.len() {
                1 => prop_assert_eq!(k, best[0]),
                // A tie between i^k and i^(k+1): the counter-clockwise one.
                2 => prop_assert!(best.contains(&k) && best.contains(&((k + 3) % 4)), "{:?} -> {:?}", x, code),
                _ => prop_assert_eq!(*code, Code::PlusOne), // zero
            }
        }
    }

    #[test]
    fn scales_are_the_axis_means((n, m, w, g) in matrix()) {
        for arith in [Arithmetic::F32, Arithmetic::Bf16Exact] {
            let q = phase_quant_with(&w, n, m, g, arith).unwrap();
            prop_assert_eq!(q.scales.len(), 2 * g.num_groups(n, m).unwrap());
            prop_assert!(q.scales.iter().all(|s| s.is_finite() && *s >= arith.min_scale()));
        }
        let q = phase_quant(&w, n, m, g).unwrap();
        let groups = g.num_groups(n, m).unwrap();
        let mut sums = vec![[0.0f64; 4]; groups];
        for i in 0..n {
            for j in 0..m {
                let (x, code) = (w[i * m + j], q.codes[i * m + j]);
                let s = &mut sums[g.group_of(i, j, m)];
                if code.is_imag() {
                    s[2] += f64::from(x.im.abs());
                    s[3] += 1.0;
                } else {
                    s[0] += f64::from(x.re.abs());
                    s[1] += 1.0;
                }
            }
        }
        for (grp, s) in sums.iter().enumerate() {
            for axis in 0..2 {
                let mean = if s[2 * axis + 1] == 0.0 { 0.0 } else { s[2 * axis] / s[2 * axis + 1] };
                let want = (mean as f32).max(1e-6);
                prop_assert_eq!(q.scales[2 * grp + axis], want);
            }
        }
    }

    #[test]
    fn dequantized_values_are_signed_scales((n, m, w, g) in matrix()) {
        let q = phase_quant(&w, n, m, g).unwrap();
        let deq = dequantize(&q, n, m, g).unwrap();
        for i in 0..n {
            for j in 0..m {
                let (s_re, s_im) = q.scale(g.group_of(i, j, m));
                let (code, z) = (q.codes[i * m + j], deq[i * m + j]);
                let (b_re, b_im) = code.parts();
                prop_assert_eq!(z, c(s_re * b_re, s_im * b_im));
                let magnitude = if code.is_imag() { z.im.abs() } else { z.re.abs() };
                prop_assert_eq!(magnitude, if code.is_imag() { s_im } else { s_re });
            }
        }
    }
}
