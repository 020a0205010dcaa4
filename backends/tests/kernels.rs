//! Reference kernels against direct formulas on small random inputs.

use fairyc_backends::reference::kernels::attention::{attention, AttentionShape};
use fairyc_backends::reference::kernels::{
    elementwise, layout, linear::linear, norm::rms_norm, rope::rope,
};
use fairyc_ir::RopeLayout;
use num_complex::Complex32;
use rand::{rngs::StdRng, RngExt, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn linear_matches_naive_for_real_and_complex() {
    let mut rng = StdRng::seed_from_u64(1);
    for &(m, k, n) in &[(1, 7, 5), (3, 64, 33), (17, 130, 70)] {
        let x = rand_vec(&mut rng, m * k);
        let w = rand_vec(&mut rng, n * k);
        let naive: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|j| x[i / n * k + j] * w[i % n * k + j]).sum())
            .collect();
        close(&linear(&x, &w, m, k, n), &naive, 1e-5);
        let xc: Vec<Complex32> = x
            .chunks(1)
            .zip(w.iter().cycle())
            .map(|(a, &b)| Complex32::new(a[0], b))
            .collect();
        let wc: Vec<Complex32> = w
            .iter()
            .zip(x.iter().cycle())
            .map(|(&a, &b)| Complex32::new(b, -a))
            .collect();
        let y = linear(&xc, &wc, m, k, n);
        for i in 0..m * n {
            let want: Complex32 = (0..k).map(|j| xc[i / n * k + j] * wc[i % n * k + j]).sum();
            assert!((y[i] - want).norm() < 1e-4, "{} vs {}", y[i], want);
        }
    }
}

#[test]
fn rms_norm_matches_formula() {
    let x = [1.0f32, -2.0, 3.0, 0.5, 0.0, 4.0];
    let g = [0.5f32, 2.0, 1.0];
    let y = rms_norm(&x, &g, 1e-5);
    for r in 0..2 {
        let row = &x[r * 3..r * 3 + 3];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / 3.0 + 1e-5).sqrt();
        let want: Vec<f32> = row.iter().zip(&g).map(|(v, g)| v / rms * g).collect();
        close(&y[r * 3..r * 3 + 3], &want, 1e-6);
    }
}

#[test]
fn rope_layouts_are_permutations_of_each_other() {
    // Interleaved RoPE on [a0, b0, a1, b1] equals half-split RoPE on
    // [a0, a1, b0, b1], with the same permutation of the output.
    let mut rng = StdRng::seed_from_u64(2);
    let (seq, heads, d) = (5, 3, 8);
    let x = rand_vec(&mut rng, seq * heads * d);
    let pos: Vec<i32> = vec![0, 1, 7, 100, 4095];
    let perm = |v: &[f32]| -> Vec<f32> {
        v.chunks(d)
            .flat_map(|h| {
                (0..d / 2)
                    .map(|j| h[2 * j])
                    .chain((0..d / 2).map(|j| h[2 * j + 1]))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let a = rope(&x, &pos, heads * d, d, 10000.0, RopeLayout::Interleaved);
    let b = rope(
        &perm(&x),
        &pos,
        heads * d,
        d,
        10000.0,
        RopeLayout::HalfSplit,
    );
    close(&perm(&a), &b, 1e-6);
    // Position 0 is the identity; position p rotates pair 0 by p radians.
    close(&a[..heads * d], &x[..heads * d], 0.0);
    let (c, s) = (1.0f32.cos(), 1.0f32.sin());
    let (x0, x1) = (x[heads * d], x[heads * d + 1]);
    close(
        &a[heads * d..heads * d + 2],
        &[x0 * c - x1 * s, x0 * s + x1 * c],
        1e-6,
    );
}

fn naive_attention(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape) -> Vec<f32> {
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let seq = q.len() / qw;
    let kv = k.len() / kw;
    let mut out = vec![0.0; seq * s.heads * s.head_dim];
    for i in 0..seq {
        for h in 0..s.heads {
            let kh = h / (s.heads / s.kv_heads);
            let n = if s.causal { kv - seq + i + 1 } else { kv };
            let sc: Vec<f32> = (0..n)
                .map(|j| {
                    (0..s.head_dim)
                        .map(|c| q[i * qw + h * s.head_dim + c] * k[j * kw + kh * s.head_dim + c])
                        .sum::<f32>()
                        * s.scale
                })
                .collect();
            let m = sc.iter().cloned().fold(f32::MIN, f32::max);
            let z: f32 = sc.iter().map(|x| (x - m).exp()).sum();
            for c in 0..s.head_dim {
                out[(i * s.heads + h) * s.head_dim + c] = (0..n)
                    .map(|j| (sc[j] - m).exp() / z * v[j * kw + kh * s.head_dim + c])
                    .sum();
            }
        }
    }
    out
}

#[test]
fn grouped_causal_attention_with_a_cache_prefix() {
    let mut rng = StdRng::seed_from_u64(3);
    let s = AttentionShape {
        heads: 6,
        kv_heads: 2,
        head_dim: 4,
        value_dim: 4,
        scale: 0.5,
        causal: true,
    };
    let (seq, kv) = (3, 7);
    let q = rand_vec(&mut rng, seq * 24);
    let k = rand_vec(&mut rng, kv * 8);
    let v = rand_vec(&mut rng, kv * 8);
    close(
        &attention(&q, &k, &v, s),
        &naive_attention(&q, &k, &v, s),
        1e-5,
    );
    let s = AttentionShape { causal: false, ..s };
    close(
        &attention(&q, &k, &v, s),
        &naive_attention(&q, &k, &v, s),
        1e-5,
    );
}

#[test]
fn complex_attention_equals_real_attention_on_unpacked_heads() {
    // Re(q·conj(k)) is the real dot product of [re, im] vectors, and the
    // complex weighted sum of v is the real one on [re, im].
    let mut rng = StdRng::seed_from_u64(4);
    let (seq, heads, d) = (4, 2, 3);
    let c = |rng: &mut StdRng, n| -> Vec<Complex32> {
        rand_vec(rng, 2 * n)
            .chunks(2)
            .map(|p| Complex32::new(p[0], p[1]))
            .collect()
    };
    let (q, k, v) = (
        c(&mut rng, seq * heads * d),
        c(&mut rng, seq * heads * d),
        c(&mut rng, seq * heads * d),
    );
    let s = AttentionShape {
        heads,
        kv_heads: heads,
        head_dim: d,
        value_dim: d,
        scale: 0.7,
        causal: true,
    };
    let z = attention(&q, &k, &v, s);
    let split = |x: &[Complex32]| -> Vec<f32> {
        x.chunks(d)
            .flat_map(|h| {
                h.iter()
                    .map(|c| c.re)
                    .chain(h.iter().map(|c| c.im))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let s2 = AttentionShape {
        head_dim: 2 * d,
        value_dim: 2 * d,
        ..s
    };
    let r = attention(&split(&q), &split(&k), &split(&v), s2);
    close(&split(&z), &r, 1e-5);
}

#[test]
fn layout_kernels() {
    let x: Vec<i32> = (0..24).collect();
    let t = layout::transpose(&x, &[2, 3, 4], &[2, 0, 1]);
    assert_eq!(t[..6], [0, 4, 8, 12, 16, 20]);
    assert_eq!(layout::transpose(&t, &[4, 2, 3], &[1, 2, 0]), x);
    let s = layout::slice(&x, &[2, 3, 4], 1, 1, 3);
    assert_eq!(
        s,
        [4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23]
    );
    let c = layout::concat(&[(&x[..6], &[2, 3][..]), (&x[6..8], &[2, 1][..])], 1);
    assert_eq!(c, [0, 1, 2, 6, 3, 4, 5, 7]);
    assert_eq!(layout::embed(&x, 4, &[6, 0]).unwrap_err(), 6);
    assert_eq!(layout::embed(&x, 4, &[-1]).unwrap_err(), -1);
    assert_eq!(
        layout::embed(&x, 4, &[2, 0]).unwrap(),
        [8, 9, 10, 11, 0, 1, 2, 3]
    );
    let z = [Complex32::new(0.0, 2.0)];
    assert_eq!(elementwise::conj(&z)[0], Complex32::new(0.0, -2.0));
    close(
        &elementwise::softmax(&[0.0, 0.0, 1000.0, 1000.0], 2),
        &[0.5; 4],
        0.0,
    );
    close(
        &elementwise::silu(&[0.0, 1.0]),
        &[0.0, 1.0 / (1.0 + (-1.0f32).exp())],
        1e-7,
    );
}

#[test]
fn complex_rope_is_interleaved_rope_on_adjacent_pairs() {
    // The iFairy spec: RoPE on complex slots equals GPT-J (interleaved) RoPE
    // on [r0, i0, r1, i1, ...].
    use fairyc_backends::reference::kernels::rope::rope_complex;
    let mut rng = StdRng::seed_from_u64(5);
    let (seq, heads, d) = (4, 3, 6);
    let z: Vec<Complex32> = rand_vec(&mut rng, 2 * seq * heads * d)
        .chunks(2)
        .map(|p| Complex32::new(p[0], p[1]))
        .collect();
    let pos = [0, 3, 17, 300];
    let got = rope_complex(&z, &pos, heads * d, 2 * d, 10000.0);
    let flat: Vec<f32> = z.iter().flat_map(|c| [c.re, c.im]).collect();
    let want = rope(
        &flat,
        &pos,
        2 * heads * d,
        2 * d,
        10000.0,
        RopeLayout::Interleaved,
    );
    let got_flat: Vec<f32> = got.iter().flat_map(|c| [c.re, c.im]).collect();
    close(&got_flat, &want, 1e-6);
}

#[test]
fn complex_rms_norm_and_crelu_squared_follow_the_spec() {
    use fairyc_backends::reference::kernels::norm::rms_norm_complex;
    let z = [Complex32::new(3.0, 4.0), Complex32::new(0.0, 0.0)];
    let gain = [2.0, 1.0, 0.5, 1.0];
    // mean |z|² = 12.5: r = 1/sqrt(12.5 + eps).
    let y = rms_norm_complex(&z, &gain, 0.0);
    let r = 1.0 / 12.5f32.sqrt();
    assert!((y[0] - Complex32::new(3.0 * r * 2.0, 4.0 * r * 0.5)).norm() < 1e-6);
    let a = elementwise::crelu_squared(&[
        Complex32::new(-1.0, -2.0),
        Complex32::new(-1.0, 2.0),
        Complex32::new(3.0, -0.5),
        Complex32::new(0.0, -1.0),
    ]);
    assert_eq!(
        a,
        [
            Complex32::new(0.0, 0.0),
            Complex32::new(1.0, 4.0),
            Complex32::new(9.0, 0.25),
            Complex32::new(0.0, 1.0)
        ]
    );
}

/// `quant_linear` from packed codes equals its definition on dense weights:
/// `Σ_t dequant(u_t)·x + Σ_t dequant(w_t)·conj(x)`, for every granularity,
/// widths that are not multiples of four or of the group, and empty batches.
#[test]
fn quant_linear_equals_the_dense_widely_linear_product() {
    use fairyc_backends::reference::kernels::quant_linear::{quant_linear, StageCodes};
    use fairyc_ir::quant::{dequantize, pack_code_rows, Code, PhaseQuantized};
    use fairyc_ir::Granularity;
    use num_complex::Complex32;
    let mut rng = StdRng::seed_from_u64(7);
    for granularity in [
        Granularity::Tensor,
        Granularity::Channel,
        Granularity::Group(3),
        Granularity::Group(8),
    ] {
        // Below 8 rows the code walk, from 8 on tiles through gemm (more
        // than one tile of 64 output rows in the second to last).
        for (rows, n, m, u_stages, w_stages) in [
            (0, 3, 5, 1, 1),
            (1, 4, 9, 2, 2),
            (3, 5, 13, 3, 3),
            (2, 6, 16, 0, 1),
            (9, 70, 13, 2, 1),
            (12, 3, 16, 0, 2),
        ] {
            let groups = granularity.num_groups(n, m).unwrap();
            let stages: Vec<(PhaseQuantized, Vec<u8>)> = (0..u_stages + w_stages)
                .map(|_| {
                    let codes: Vec<Code> = (0..n * m)
                        .map(|_| Code::from_bits((rng.random::<f32>() * 4.0) as u8))
                        .collect();
                    let packed = pack_code_rows(&codes, n, m).unwrap();
                    let scales = rand_vec(&mut rng, 2 * groups);
                    (PhaseQuantized { codes, scales }, packed)
                })
                .collect();
            let x: Vec<Complex32> = (0..rows * m)
                .map(|_| Complex32::new(rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5))
                .collect();
            let packed: Vec<StageCodes> = stages
                .iter()
                .map(|(q, p)| StageCodes {
                    packed: p,
                    scales: &q.scales,
                })
                .collect();
            let (u, w) = packed.split_at(u_stages);
            let got = quant_linear(&x, m, n, u, w, granularity).unwrap();
            let mut want = vec![Complex32::new(0.0, 0.0); rows * n];
            for (t, (q, _)) in stages.iter().enumerate() {
                let dense = dequantize(q, n, m, granularity).unwrap();
                for r in 0..rows {
                    for i in 0..n {
                        for j in 0..m {
                            let xj = x[r * m + j];
                            let xj = if t < u_stages { xj } else { xj.conj() };
                            want[r * n + i] += dense[i * m + j] * xj;
                        }
                    }
                }
            }
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).norm() <= 1e-4 * w.norm().max(1.0),
                    "{granularity:?} rows {rows} [{n}, {m}]: {g} vs {w}"
                );
            }
        }
    }
}
