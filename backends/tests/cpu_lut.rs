//! The CPU backends' look-up-table `quant_linear` against the reference
//! kernel on random shapes (sizes that are not multiples of the group, the
//! block or the tile included), within the bound its quantized activations
//! imply; the kernels of both generators, at every tile width the host
//! runs, compute the same integer sums in the same order, so their outputs
//! are identical.

use fairyc_backends::cpu::llvm::host_rows;
use fairyc_backends::cpu::lut::{Blocks, LutLayer};
use fairyc_backends::cpu::mad::{self, MadWeights};
use fairyc_backends::cpu::CodeGen;
use fairyc_backends::reference::kernels::quant_linear::{quant_linear, StageCodes};
use fairyc_ir::quant::{dequantize, unpack_code_rows, PhaseQuantized};
use fairyc_ir::Granularity;
use num_complex::Complex32;
use rand::{rngs::StdRng, RngExt, SeedableRng};

#[test]
fn lut_quant_linear_is_within_the_activation_bound() {
    let mut rng = StdRng::seed_from_u64(16);
    let shapes = [
        (1usize, 1usize, 1usize),
        (1, 16, 64),
        (3, 17, 65),
        (2, 33, 130),
        (1, 40, 7),
        (4, 5, 301),
        (1, 288, 288),
        // Runs of 16 rows, a partial tile, enough work to split over threads.
        (37, 130, 300),
    ];
    let mut worst = 0.0f32;
    for &(rows, n, m) in &shapes {
        for granularity in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(5),
            Granularity::Group(64),
            Granularity::Group(100),
        ] {
            for (u_stages, w_stages) in [(1, 0), (0, 1), (2, 2), (3, 1)] {
                let stages = u_stages + w_stages;
                let groups = match granularity {
                    Granularity::Tensor => 0,
                    Granularity::Channel => n,
                    Granularity::Group(g) => n * m.div_ceil(g),
                };
                let codes: Vec<Vec<u8>> = (0..stages)
                    .map(|_| {
                        let codes: Vec<_> = (0..n * m)
                            .map(|_| fairyc_ir::quant::Code::from_bits(rng.random::<u8>() & 3))
                            .collect();
                        fairyc_ir::quant::pack_code_rows(&codes, n, m).unwrap()
                    })
                    .collect();
                let scales: Vec<Vec<f32>> = (0..stages)
                    .map(|_| {
                        (0..2 * groups.max(1))
                            .map(|_| 0.1 + rng.random::<f32>())
                            .collect()
                    })
                    .collect();
                // Activations of uneven sizes, some blocks much larger.
                let x: Vec<Complex32> = (0..rows * m)
                    .map(|j| {
                        let big = if j % 37 < 3 { 20.0 } else { 1.0 };
                        Complex32::new(rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5) * big
                    })
                    .collect();
                let stage_codes: Vec<StageCodes> = codes
                    .iter()
                    .zip(&scales)
                    .map(|(c, s)| StageCodes {
                        packed: c,
                        scales: s,
                    })
                    .collect();
                let (u, w) = stage_codes.split_at(u_stages);
                let want = quant_linear(&x, m, n, u, w, granularity).unwrap();
                let packed: Vec<&[u8]> = codes.iter().map(|c| c.as_slice()).collect();
                let scale_refs: Vec<&[f32]> = scales.iter().map(|s| s.as_slice()).collect();
                let run = |generator| {
                    let layer =
                        LutLayer::new(n, m, u_stages, &packed, granularity, generator).unwrap();
                    layer.run_lut(&x, rows, &layer.factors(&scale_refs).unwrap())
                };
                let got = run(CodeGen::Cranelift);
                for rows in [16, 32, 64].into_iter().filter(|&r| r <= host_rows()) {
                    assert_eq!(
                        run(CodeGen::Llvm { rows }),
                        got,
                        "LLVM with {rows}-row tiles against Cranelift"
                    );
                }
                // Σ_t |ŵ_t[i, j]|, then the bound per output.
                let mut magnitude = vec![0.0f32; n * m];
                for (c, s) in codes.iter().zip(&scales) {
                    let q = PhaseQuantized {
                        codes: unpack_code_rows(c, n, m).unwrap(),
                        scales: s.clone(),
                    };
                    for (a, w) in magnitude
                        .iter_mut()
                        .zip(dequantize(&q, n, m, granularity).unwrap())
                    {
                        *a += w.norm();
                    }
                }
                let blocks = Blocks::new(m, granularity);
                for r in 0..rows {
                    let steps = blocks.steps(&x[r * m..][..m]);
                    for i in 0..n {
                        let bound: f32 = magnitude[i * m..][..m]
                            .iter()
                            .zip(&steps)
                            .map(|(w, s)| w * s / 2.0)
                            .sum();
                        let (g, e) = (got[r * n + i], want[r * n + i]);
                        let slack = 1e-4 * e.norm().max(1.0);
                        let err = (g.re - e.re).abs().max((g.im - e.im).abs());
                        assert!(
                            err <= bound + slack,
                            "{rows}x[{n}, {m}] {granularity:?} U{u_stages} W{w_stages}: \
                             output {r},{i}: {g} vs {e}, bound {bound}"
                        );
                        worst = worst.max(err / bound.max(f32::MIN_POSITIVE));
                    }
                }
            }
        }
    }
    eprintln!("largest error / bound: {worst}");
}

/// The multiply kernel (many rows, per-tensor scales, AVX-512 VNNI hosts)
/// against the reference: its activations round to 8 bits per block and
/// each real weight of the layer's 2 × 2 blocks by at most
/// [`MadWeights::error`], so each part of an output may be off by
/// `Σ_j Σ_t |ŵ_t[i, j]| · step_j / 2 + error · Σ_j (|x_j.re| + |x_j.im| + step_j)`.
#[test]
fn mad_quant_linear_is_within_its_bound() {
    if !mad::host_supports() || host_rows() != mad::TILE {
        eprintln!("SKIPPED: the host has no AVX-512 VNNI");
        return;
    }
    let mut rng = StdRng::seed_from_u64(17);
    let shapes = [
        (1usize, 1usize, 1usize),
        (7, 64, 64),
        (13, 130, 300),
        (37, 70, 45),
        (70, 200, 130),
    ];
    let mut worst = 0.0f32;
    for &(rows, n, m) in &shapes {
        for (u_stages, w_stages) in [(1, 0), (0, 1), (1, 1), (2, 2), (3, 1), (3, 3)] {
            let stages = u_stages + w_stages;
            let codes: Vec<Vec<u8>> = (0..stages)
                .map(|_| {
                    let codes: Vec<_> = (0..n * m)
                        .map(|_| fairyc_ir::quant::Code::from_bits(rng.random::<u8>() & 3))
                        .collect();
                    fairyc_ir::quant::pack_code_rows(&codes, n, m).unwrap()
                })
                .collect();
            // Later stages smaller, as residual stages are.
            let scales: Vec<Vec<f32>> = (0..stages)
                .map(|t| {
                    (0..2)
                        .map(|_| (0.1 + rng.random::<f32>()) / (1 + t % 3) as f32)
                        .collect()
                })
                .collect();
            let x: Vec<Complex32> = (0..rows * m)
                .map(|j| {
                    let big = if j % 37 < 3 { 20.0 } else { 1.0 };
                    Complex32::new(rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5) * big
                })
                .collect();
            let stage_codes: Vec<StageCodes> = codes
                .iter()
                .zip(&scales)
                .map(|(c, s)| StageCodes {
                    packed: c,
                    scales: s,
                })
                .collect();
            let (u, w) = stage_codes.split_at(u_stages);
            let want = quant_linear(&x, m, n, u, w, Granularity::Tensor).unwrap();
            let packed: Vec<&[u8]> = codes.iter().map(|c| c.as_slice()).collect();
            let scale_refs: Vec<&[f32]> = scales.iter().map(|s| s.as_slice()).collect();
            let generator = CodeGen::Llvm { rows: mad::TILE };
            let layer =
                LutLayer::new(n, m, u_stages, &packed, Granularity::Tensor, generator).unwrap();
            let got = layer
                .run_mad(&x, rows, &layer.factors(&scale_refs).unwrap())
                .unwrap();
            let error = MadWeights::new(u_stages, &scale_refs).unwrap().error();
            let mut magnitude = vec![0.0f32; n * m];
            for (c, s) in codes.iter().zip(&scales) {
                let q = PhaseQuantized {
                    codes: unpack_code_rows(c, n, m).unwrap(),
                    scales: s.clone(),
                };
                for (a, w) in magnitude
                    .iter_mut()
                    .zip(dequantize(&q, n, m, Granularity::Tensor).unwrap())
                {
                    *a += w.norm();
                }
            }
            let blocks = Blocks::new(m, Granularity::Tensor);
            let quantized = mad::Activations8::new(&blocks, &x, m, rows);
            for r in 0..rows {
                let row = &x[r * m..][..m];
                let steps = quantized.steps(&blocks, m, r);
                let weight_part: f32 = row
                    .iter()
                    .zip(&steps)
                    .map(|(v, s)| error * (v.re.abs() + v.im.abs() + s))
                    .sum();
                for i in 0..n {
                    let bound: f32 = magnitude[i * m..][..m]
                        .iter()
                        .zip(&steps)
                        .map(|(w, s)| w * s / 2.0)
                        .sum::<f32>()
                        + weight_part;
                    let (g, e) = (got[r * n + i], want[r * n + i]);
                    let slack = 1e-4 * e.norm().max(1.0);
                    let err = (g.re - e.re).abs().max((g.im - e.im).abs());
                    assert!(
                        err <= bound + slack,
                        "{rows}x[{n}, {m}] U{u_stages} W{w_stages}: output {r},{i}: {g} vs {e}, bound {bound}"
                    );
                    worst = worst.max(err / bound.max(f32::MIN_POSITIVE));
                }
            }
        }
    }
    eprintln!("largest error / bound: {worst}");
}
