//! GEMV timings of `quant_linear` (W2: 2 U + 2 conj-W stages, per-tensor
//! scales) at SmolLM2-135M's layer shapes and LLaMA-7B's: the reference
//! kernel against the look-up-table kernels of both generators (Cranelift,
//! 16-row tiles; LLVM, the host's widest shuffle), one row of activations;
//! beside them an f32 and an int8 GEMV of the same real shape (vectorised
//! Rust for the host's widest vectors), and the bandwidth of a 1 GiB copy.
//! Threads: RAYON_NUM_THREADS; rows of activations: the first argument
//! (default 1: GEMV; a prompt's many rows make it a GEMM).
//!
//! `cargo run --release -p fairyc-backends --example lut_gemv [ROWS]`

use std::time::{Duration, Instant};

use fairyc_backends::cpu::lut::LutLayer;
use fairyc_backends::cpu::mad;
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

/// `y = W x` for a row-major f32 `W`: the dense baseline.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+fma", "x86_64+avx2+fma"))]
fn gemv_f32(w: &[f32], x: &[f32], y: &mut [f32]) {
    for (y, row) in y.iter_mut().zip(w.chunks_exact(x.len())) {
        let mut lanes = [0.0f32; 16];
        for (a, b) in row.chunks_exact(16).zip(x.chunks_exact(16)) {
            for l in 0..16 {
                lanes[l] += a[l] * b[l];
            }
        }
        *y = lanes.iter().sum();
    }
}

/// `y = W x` on int8 weights and activations, i32 sums: what an int8
/// kernel streams.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vnni", "x86_64+avx2+fma"))]
fn gemv_i8(w: &[i8], x: &[i8], y: &mut [i32]) {
    for (y, row) in y.iter_mut().zip(w.chunks_exact(x.len())) {
        let mut lanes = [0i32; 64];
        for (a, b) in row.chunks_exact(64).zip(x.chunks_exact(64)) {
            for l in 0..64 {
                lanes[l] += i32::from(a[l]) * i32::from(b[l]);
            }
        }
        *y = lanes.iter().sum();
    }
}

/// Bytes per second one thread copies (read and write counted), 1 GiB.
fn copy_bandwidth() -> f64 {
    let src = vec![1u8; 1 << 30];
    let mut dst = vec![0u8; 1 << 30];
    (0..3)
        .map(|_| {
            let clock = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            2.0 * src.len() as f64 / clock.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
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
    if rows == 1 {
        println!(
            "one thread copies {:.1} GB/s (read + write, 1 GiB)",
            copy_bandwidth() / 1e9
        );
        println!("| real in->out | complex n x m | code MiB | reference us | cranelift us | GB/s | llvm us | GB/s | f32 us | GB/s | int8 us | GB/s | llvm / cranelift | llvm / reference | llvm / f32 | llvm / int8 |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    } else {
        println!("| real in->out | complex n x m | reference us | cranelift us | llvm look-ups us | multiply-add us | GMAC/s | look-ups / multiply-add | reference / multiply-add |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    let shapes = [
        (576, 49152),
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
        // The dense baselines at the same real shape (GEMV only).
        let dense = if rows == 1 { real_in * real_out } else { 0 };
        let w32: Vec<f32> = (0..dense)
            .map(|_| next() as u16 as f32 / 65536.0 - 0.5)
            .collect();
        let w8: Vec<i8> = (0..dense).map(|_| next() as i8).collect();
        let (x32, x8) = (vec![0.25f32; real_in], vec![3i8; real_in]);
        let (mut y32, mut y8) = (vec![0.0f32; real_out], vec![0i32; real_out]);
        let mut reference_run = || {
            std::hint::black_box(quant_linear(&x, m, n, u, w, Granularity::Tensor).unwrap());
        };
        let mut cranelift_run = || {
            std::hint::black_box(cranelift.run(&x, rows, &cranelift_factors));
        };
        let mut llvm_run = || {
            std::hint::black_box(generated.run_lut(&x, rows, &generated_factors));
        };
        let mut mad_run = || {
            let y = generated.run_mad(&x, rows, &generated_factors);
            std::hint::black_box(y.expect("the multiply kernel runs on this host"));
        };
        let mut f32_run = || gemv_f32(&w32, &x32, std::hint::black_box(&mut y32));
        let mut i8_run = || gemv_i8(&w8, &x8, std::hint::black_box(&mut y8));
        let mut runs: Vec<&mut dyn FnMut()> =
            vec![&mut reference_run, &mut cranelift_run, &mut llvm_run];
        if rows == 1 {
            runs.push(&mut f32_run);
            runs.push(&mut i8_run);
        } else if mad::host_supports() {
            runs.push(&mut mad_run);
        } else {
            println!("(no AVX-512 VNNI: no multiply-add kernel)");
            return;
        }
        let times = time_all(&mut runs);
        if rows > 1 {
            let macs = (rows * real_in * real_out) as f64;
            let cells = [
                format!("{real_in}->{real_out}"),
                format!("{n}x{m}"),
                format!("{:.1}", times[0] * 1e6),
                format!("{:.1}", times[1] * 1e6),
                format!("{:.1}", times[2] * 1e6),
                format!("{:.1}", times[3] * 1e6),
                format!("{:.1}", macs / times[3] / 1e9),
                format!("{:.2}x", times[2] / times[3]),
                format!("{:.2}x", times[0] / times[3]),
            ];
            println!("| {} |", cells.join(" | "));
            continue;
        }
        let bytes = (4 * n * m.div_ceil(4)) as f64;
        let mut cells = vec![
            format!("{real_in}->{real_out}"),
            format!("{n}x{m}"),
            format!("{:.2}", bytes / (1 << 20) as f64),
            format!("{:.1}", times[0] * 1e6),
            format!("{:.1}", times[1] * 1e6),
            format!("{:.2}", bytes / times[1] / 1e9),
            format!("{:.1}", times[2] * 1e6),
            format!("{:.2}", bytes / times[2] / 1e9),
        ];
        if rows == 1 {
            cells.extend([
                format!("{:.1}", times[3] * 1e6),
                format!("{:.2}", (4 * dense) as f64 / times[3] / 1e9),
                format!("{:.1}", times[4] * 1e6),
                format!("{:.2}", dense as f64 / times[4] / 1e9),
            ]);
        }
        let ratios = [times[1], times[0]]
            .into_iter()
            .chain(times[3..].iter().copied());
        cells.extend(ratios.map(|t| format!("{:.2}x", t / times[2])));
        println!("| {} |", cells.join(" | "));
    }
}
