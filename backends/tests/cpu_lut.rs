//! The CPU backends' `quant_linear` kernels against the reference kernel on
//! random shapes (sizes that are not multiples of the group, the block or
//! the tile included), within the bound their quantized activations (and,
//! for the multiply kernel, rounded weights) imply. The look-up kernels of
//! both generators, at every tile width the host runs, compute the same
//! integer sums in the same order, so their outputs are identical.

use fairyc_backends::cpu::activations::Blocks;
use fairyc_backends::cpu::llvm::host_rows;
use fairyc_backends::cpu::lut::LutLayer;
use fairyc_backends::cpu::mad::{self, MadWeights};
use fairyc_backends::cpu::CodeGen;
use fairyc_backends::reference::kernels::quant_linear::{quant_linear, StageCodes};
use fairyc_ir::quant::{dequantize, unpack_code_rows, PhaseQuantized};
use fairyc_ir::Granularity;
use num_complex::Complex32;
use rand::{rngs::StdRng, RngExt, SeedableRng};

/// A random layer: packed codes and scales per stage, U stages first.
struct Layer {
    n: usize,
    m: usize,
    u_stages: usize,
    granularity: Granularity,
    codes: Vec<Vec<u8>>,
    scales: Vec<Vec<f32>>,
}

impl Layer {
    /// Scales from `scale(stage)` for each of the granularity's groups.
    fn random(
        rng: &mut StdRng,
        (n, m): (usize, usize),
        (u_stages, w_stages): (usize, usize),
        granularity: Granularity,
        scale: impl Fn(&mut StdRng, usize) -> f32,
    ) -> Layer {
        let groups = match granularity {
            Granularity::Tensor => 1,
            Granularity::Channel => n,
            Granularity::Group(g) => n * m.div_ceil(g),
        };
        let stages = u_stages + w_stages;
        let codes = (0..stages)
            .map(|_| {
                let codes: Vec<_> = (0..n * m)
                    .map(|_| fairyc_ir::quant::Code::from_bits(rng.random::<u8>() & 3))
                    .collect();
                fairyc_ir::quant::pack_code_rows(&codes, n, m).unwrap()
            })
            .collect();
        let scales = (0..stages)
            .map(|t| (0..2 * groups).map(|_| scale(rng, t)).collect())
            .collect();
        Layer {
            n,
            m,
            u_stages,
            granularity,
            codes,
            scales,
        }
    }

    fn packed(&self) -> Vec<&[u8]> {
        self.codes.iter().map(|c| c.as_slice()).collect()
    }

    fn scale_refs(&self) -> Vec<&[f32]> {
        self.scales.iter().map(|s| s.as_slice()).collect()
    }

    /// The reference kernel's outputs for `x`.
    fn reference(&self, x: &[Complex32]) -> Vec<Complex32> {
        let stages: Vec<StageCodes> = self
            .codes
            .iter()
            .zip(&self.scales)
            .map(|(c, s)| StageCodes {
                packed: c,
                scales: s,
            })
            .collect();
        let (u, w) = stages.split_at(self.u_stages);
        quant_linear(x, self.m, self.n, u, w, self.granularity).unwrap()
    }

    /// `Σ_t |ŵ_t[i, j]|` per weight.
    fn magnitudes(&self) -> Vec<f32> {
        let (n, m) = (self.n, self.m);
        let mut magnitude = vec![0.0f32; n * m];
        for (c, s) in self.codes.iter().zip(&self.scales) {
            let q = PhaseQuantized {
                codes: unpack_code_rows(c, n, m).unwrap(),
                scales: s.clone(),
            };
            for (a, w) in magnitude
                .iter_mut()
                .zip(dequantize(&q, n, m, self.granularity).unwrap())
            {
                *a += w.norm();
            }
        }
        magnitude
    }

    /// Checks `got` against `want` output by output: each part within
    /// `Σ_j magnitude[i, j] · step_j / 2 + extra(row)` (beyond a relative
    /// 1e-4); returns the largest error over its bound.
    fn check(
        &self,
        x: &[Complex32],
        (got, want): (&[Complex32], &[Complex32]),
        steps: impl Fn(usize) -> Vec<f32>,
        extra: impl Fn(&[Complex32], &[f32]) -> f32,
        what: &str,
    ) -> f32 {
        let (n, m) = (self.n, self.m);
        let magnitude = self.magnitudes();
        let mut worst = 0.0f32;
        for r in 0..x.len() / m.max(1) {
            let steps = steps(r);
            let extra = extra(&x[r * m..][..m], &steps);
            for i in 0..n {
                let bound: f32 = magnitude[i * m..][..m]
                    .iter()
                    .zip(&steps)
                    .map(|(w, s)| w * s / 2.0)
                    .sum::<f32>()
                    + extra;
                let (g, e) = (got[r * n + i], want[r * n + i]);
                let slack = 1e-4 * e.norm().max(1.0);
                let err = (g.re - e.re).abs().max((g.im - e.im).abs());
                assert!(
                    err <= bound + slack,
                    "{what}: output {r},{i}: {g} vs {e}, bound {bound}"
                );
                worst = worst.max(err / bound.max(f32::MIN_POSITIVE));
            }
        }
        worst
    }
}

/// Activations of uneven sizes, some blocks much larger.
fn activations(rng: &mut StdRng, rows: usize, m: usize) -> Vec<Complex32> {
    (0..rows * m)
        .map(|j| {
            let big = if j % 37 < 3 { 20.0 } else { 1.0 };
            Complex32::new(rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5) * big
        })
        .collect()
}

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
            for stages in [(1, 0), (0, 1), (2, 2), (3, 1)] {
                let layer = Layer::random(&mut rng, (n, m), stages, granularity, |rng, _| {
                    0.1 + rng.random::<f32>()
                });
                let x = activations(&mut rng, rows, m);
                let want = layer.reference(&x);
                let (packed, scales) = (layer.packed(), layer.scale_refs());
                let run = |generator| {
                    let lut = LutLayer::new(n, m, layer.u_stages, &packed, granularity, generator)
                        .unwrap();
                    lut.run_lut(&x, rows, &lut.factors(&scales).unwrap())
                };
                let got = run(CodeGen::Cranelift);
                for rows in [16, 32, 64].into_iter().filter(|&r| r <= host_rows()) {
                    assert_eq!(
                        run(CodeGen::Llvm { rows }),
                        got,
                        "LLVM with {rows}-row tiles against Cranelift"
                    );
                }
                let blocks = Blocks::new(m, granularity);
                worst = worst.max(layer.check(
                    &x,
                    (&got, &want),
                    |r| blocks.steps(&x[r * m..][..m]),
                    |_, _| 0.0,
                    &format!("{rows}x[{n}, {m}] {granularity:?} {stages:?}"),
                ));
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
        for stages in [(1, 0), (0, 1), (1, 1), (2, 2), (3, 1), (3, 3)] {
            // Later stages smaller, as residual stages are.
            let layer = Layer::random(&mut rng, (n, m), stages, Granularity::Tensor, |rng, t| {
                (0.1 + rng.random::<f32>()) / (1 + t % 3) as f32
            });
            let x = activations(&mut rng, rows, m);
            let want = layer.reference(&x);
            let (packed, scales) = (layer.packed(), layer.scale_refs());
            let generator = CodeGen::Llvm { rows: mad::TILE };
            let lut = LutLayer::new(
                n,
                m,
                layer.u_stages,
                &packed,
                Granularity::Tensor,
                generator,
            )
            .unwrap();
            let got = lut
                .run_mad(&x, rows, &lut.factors(&scales).unwrap())
                .unwrap();
            let error = MadWeights::new(layer.u_stages, &scales).unwrap().error();
            let blocks = Blocks::new(m, Granularity::Tensor);
            let quantized = mad::Activations8::new(&blocks, &x, m, rows);
            worst = worst.max(layer.check(
                &x,
                (&got, &want),
                |r| quantized.steps(&blocks, m, r),
                |row, steps| {
                    row.iter()
                        .zip(steps)
                        .map(|(v, s)| error * (v.re.abs() + v.im.abs() + s))
                        .sum()
                },
                &format!("{rows}x[{n}, {m}] {stages:?}"),
            ));
        }
    }
    eprintln!("largest error / bound: {worst}");
}

/// Several programs' layers at once, each run on a pool thread (as the
/// executor runs a program): a thread waiting on its parallel tasks runs
/// other calls meanwhile, which must neither find the kernels' per-thread
/// scratch taken nor change the results.
#[test]
fn calls_nested_by_work_stealing_keep_their_results() {
    let mut rng = StdRng::seed_from_u64(18);
    // Enough work that every call splits over threads, both kernels.
    let (n, m) = (512, 512);
    let layer = Layer::random(&mut rng, (n, m), (2, 2), Granularity::Tensor, |rng, _| {
        0.1 + rng.random::<f32>()
    });
    let (packed, scales) = (layer.packed(), layer.scale_refs());
    let lut = LutLayer::new(
        n,
        m,
        2,
        &packed,
        Granularity::Tensor,
        CodeGen::llvm_for_host(),
    )
    .unwrap();
    let factors = lut.factors(&scales).unwrap();
    let inputs: Vec<(usize, Vec<Complex32>)> = [4usize, 24, 4, 24]
        .into_iter()
        .map(|rows| (rows, activations(&mut rng, rows, m)))
        .collect();
    let want: Vec<Vec<Complex32>> = inputs
        .iter()
        .map(|(rows, x)| lut.run(x, *rows, &factors))
        .collect();
    std::thread::scope(|scope| {
        for ((rows, x), want) in inputs.iter().zip(&want) {
            let (lut, factors) = (&lut, &factors);
            scope.spawn(move || {
                for _ in 0..20 {
                    let got = rayon::scope(|_| lut.run(x, *rows, factors));
                    assert_eq!(&got, want, "{rows} rows");
                }
            });
        }
    });
}
