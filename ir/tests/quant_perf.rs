//! Timings, not a pass/fail test. Run in release:
//! `cargo test -p fairyc-passes --release --test quant_perf -- --ignored --nocapture`

mod common;

use std::time::Instant;

use common::Rng;
use fairyc_ir::quant::{
    binary_quant, dequantize, dequantize_sum, fairy2i_quantize, phase_quant, residual_quant,
    ternary_quant, widely_linear, widely_linear_inverse, Arithmetic, Fairy2iConfig, Granularity,
    Pairing,
};

fn time<T>(label: &str, f: impl Fn() -> T) -> T {
    let _ = f(); // warm up
    let runs = 5;
    let start = Instant::now();
    for _ in 1..runs {
        let _ = f();
    }
    let out = f();
    let ms = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
    println!("{label:<40} {ms:8.2} ms");
    out
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn timings() {
    println!("threads: {}", rayon::current_num_threads());
    let (rows, cols) = (576, 1536);
    let r: Vec<f32> = Rng::new(1)
        .normals(rows * cols)
        .iter()
        .map(|x| 0.02 * x)
        .collect();
    let p = Pairing::Halves;
    let (u, w, n, m) = time("widely_linear 576x1536", || {
        widely_linear(&r, rows, cols, p, p).unwrap()
    });
    time("widely_linear_inverse 576x1536", || {
        widely_linear_inverse(&u, &w, n, m, rows, cols, p, p).unwrap()
    });
    time("phase_quant U 288x768 (tensor)", || {
        phase_quant(&u, n, m, Granularity::Tensor).unwrap()
    });
    let st = time("residual_quant U T=2 (tensor)", || {
        residual_quant(&u, n, m, 2, Granularity::Tensor).unwrap()
    });
    time("dequantize_sum T=2", || {
        dequantize_sum(&st, n, m, Granularity::Tensor, Arithmetic::F32).unwrap()
    });
    time("dequantize one stage", || {
        dequantize(&st[0], n, m, Granularity::Tensor).unwrap()
    });
    time("residual_quant U T=2 (group 64)", || {
        residual_quant(&u, n, m, 2, Granularity::Group(64)).unwrap()
    });
    for (label, arithmetic) in [
        ("fairy2i_quantize 576x1536 T=2 f32", Arithmetic::F32),
        ("fairy2i_quantize 576x1536 T=2 bf16", Arithmetic::Bf16Exact),
    ] {
        let cfg = Fairy2iConfig {
            arithmetic,
            ..Fairy2iConfig::default()
        };
        time(label, || fairy2i_quantize(&r, rows, cols, &cfg).unwrap());
    }
    time("binary_quant 576x1536 (channel)", || {
        binary_quant(&r, rows, cols, Granularity::Channel).unwrap()
    });
    time("ternary_quant 576x1536 (tensor)", || {
        ternary_quant(&r, rows, cols, Granularity::Tensor).unwrap()
    });

    // Every linear of SmolLM2-135M (30 blocks; q, k, v, o, gate, up, down)
    // plus the tied 49152x576 lm_head, W2 in f32.
    let block = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let mut rng = Rng::new(2);
    let mats: Vec<_> = block
        .iter()
        .map(|&(r, c)| (r, c, rng.normals(r * c)))
        .collect();
    let head = rng.normals(49152 * 576);
    let cfg = Fairy2iConfig::default();
    let start = Instant::now();
    let mut params = 0;
    for _ in 0..30 {
        for (r, c, a) in &mats {
            fairy2i_quantize(a, *r, *c, &cfg).unwrap();
            params += r * c;
        }
    }
    fairy2i_quantize(&head, 49152, 576, &cfg).unwrap();
    params += 49152 * 576;
    println!(
        "SmolLM2-135M linears, {:.1}M params, W2 f32: {:.2} s",
        params as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
}
