//! GEMV timings of `quant_linear` (W2: 2 U + 2 conj-W stages, per-tensor
//! scales) at SmolLM2-135M's layer shapes and LLaMA-7B's 4096x4096: the
//! reference kernel against the Cranelift look-up-table kernel, one row of
//! activations. Threads: RAYON_NUM_THREADS.
//!
//! `cargo run --release -p fairyc-backends --example lut_gemv`

use std::time::{Duration, Instant};

use fairyc_backends::cpu::lut::LutLayer;
use fairyc_backends::reference::kernels::quant_linear::{quant_linear, StageCodes};
use fairyc_ir::Granularity;
use num_complex::Complex32;

/// Median seconds per call of `a` and of `b` over about a second of calls
/// taken in turn (so that both see the same drift of a shared machine).
fn time_both(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) || ta.len() < 5 {
        let t = Instant::now();
        a();
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b();
        tb.push(t.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(ta), median(tb))
}

fn main() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    println!(
        "threads {}; W2 (2 U + 2 W stages), per-tensor scales, 1 row",
        rayon::current_num_threads()
    );
    println!("| real in->out | complex n x m | code MiB | reference us | GB/s | cranelift us | GB/s | speed-up |");
    println!("|---|---|---|---|---|---|---|---|");
    for (real_in, real_out) in [(576, 576), (576, 1536), (1536, 576), (4096, 4096)] {
        let (n, m): (usize, usize) = (real_out / 2, real_in / 2);
        let stages: Vec<Vec<u8>> = (0..4)
            .map(|_| (0..n * m.div_ceil(4)).map(|_| next() as u8).collect())
            .collect();
        let scales = vec![vec![0.02f32, 0.03]; 4];
        let x: Vec<Complex32> = (0..m)
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
        let layer = LutLayer::new(n, m, 2, &packed, Granularity::Tensor).unwrap();
        let scale_refs: Vec<&[f32]> = scales.iter().map(|s| s.as_slice()).collect();
        let factors = layer.factors(&scale_refs).unwrap();
        let (reference, lut) = time_both(
            || {
                std::hint::black_box(quant_linear(&x, m, n, u, w, Granularity::Tensor).unwrap());
            },
            || {
                std::hint::black_box(layer.run(&x, 1, &factors));
            },
        );
        let bytes = (4 * n * m.div_ceil(4)) as f64;
        println!(
            "| {real_in}->{real_out} | {n}x{m} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2} | {:.1}x |",
            bytes / (1 << 20) as f64,
            reference * 1e6,
            bytes / reference / 1e9,
            lut * 1e6,
            bytes / lut / 1e9,
            reference / lut
        );
    }
}
