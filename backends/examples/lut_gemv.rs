//! GEMV timings of `quant_linear` (W2: 2 U + 2 conj-W stages, per-tensor
//! scales) at SmolLM2-135M's layer shapes and LLaMA-7B's: the reference
//! kernel against the look-up-table kernels of both generators (Cranelift,
//! 16-row tiles; LLVM, the host's widest shuffle), one row of activations.
//! Threads: RAYON_NUM_THREADS; rows of activations: the first argument
//! (default 1: GEMV; a prompt's many rows make it a GEMM).
//!
//! `cargo run --release -p fairyc-backends --example lut_gemv [ROWS]`

use std::time::{Duration, Instant};

use fairyc_backends::cpu::lut::LutLayer;
use fairyc_backends::cpu::CodeGen;
use fairyc_backends::reference::kernels::quant_linear::{quant_linear, StageCodes};
use fairyc_ir::Granularity;
use num_complex::Complex32;

/// Median seconds per call of each of `runs` over about a second of calls
/// taken in turn (so that all see the same drift of a shared machine).
fn time_all(runs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for r in runs.iter_mut() {
        r();
    }
    let mut times = vec![Vec::new(); runs.len()];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) || times[0].len() < 5 {
        for (r, t) in runs.iter_mut().zip(&mut times) {
            let clock = Instant::now();
            r();
            t.push(clock.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

fn main() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let llvm = CodeGen::llvm_for_host();
    let rows: usize = std::env::args()
        .nth(1)
        .map_or(1, |r| r.parse().expect("rows: a number"));
    println!(
        "threads {}; W2 (2 U + 2 W stages), per-tensor scales, {rows} rows; LLVM tiles of {} rows",
        rayon::current_num_threads(),
        llvm.rows()
    );
    println!("| real in->out | complex n x m | code MiB | reference us | cranelift us | GB/s | llvm us | GB/s | llvm / cranelift | llvm / reference |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let shapes = [
        (576, 192),
        (576, 576),
        (576, 1536),
        (1536, 576),
        (4096, 4096),
        (4096, 11008),
        (11008, 4096),
    ];
    for (real_in, real_out) in shapes {
        let (n, m): (usize, usize) = (real_out / 2, real_in / 2);
        let stages: Vec<Vec<u8>> = (0..4)
            .map(|_| (0..n * m.div_ceil(4)).map(|_| next() as u8).collect())
            .collect();
        let scales = vec![vec![0.02f32, 0.03]; 4];
        let x: Vec<Complex32> = (0..rows * m)
            .map(|_| {
                let u = |v: u64| (v >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                Complex32::new(u(next()), u(next()))
            })
            .collect();
        let codes: Vec<StageCodes> = stages
            .iter()
            .zip(&scales)
            .map(|(c, s)| StageCodes {
                packed: c,
                scales: s,
            })
            .collect();
        let (u, w) = codes.split_at(2);
        let packed: Vec<&[u8]> = stages.iter().map(|c| c.as_slice()).collect();
        let scale_refs: Vec<&[f32]> = scales.iter().map(|s| s.as_slice()).collect();
        let layer = |generator| {
            let layer = LutLayer::new(n, m, 2, &packed, Granularity::Tensor, generator).unwrap();
            let factors = layer.factors(&scale_refs).unwrap();
            (layer, factors)
        };
        let (cranelift, cranelift_factors) = layer(CodeGen::Cranelift);
        let (generated, generated_factors) = layer(llvm);
        let times = time_all(&mut [
            &mut || {
                std::hint::black_box(quant_linear(&x, m, n, u, w, Granularity::Tensor).unwrap());
            },
            &mut || {
                std::hint::black_box(cranelift.run(&x, rows, &cranelift_factors));
            },
            &mut || {
                std::hint::black_box(generated.run(&x, rows, &generated_factors));
            },
        ]);
        let bytes = (4 * n * m.div_ceil(4)) as f64;
        println!(
            "| {real_in}->{real_out} | {n}x{m} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2}x | {:.2}x |",
            bytes / (1 << 20) as f64,
            times[0] * 1e6,
            times[1] * 1e6,
            bytes / times[1] / 1e9,
            times[2] * 1e6,
            bytes / times[2] / 1e9,
            times[1] / times[2],
            times[0] / times[2]
        );
    }
}
