//! The dense products of the QAT step (docs/BENCHMARKS.md) alone, each a
//! one-node program on the cuda backend with bf16 products, timed by the
//! program's profile (`FAIRYC_PROFILE=1`: each node waited for, so the
//! host's part and the wait count too) after a first run that plans it
//! (`scripts/gpu-products.py` times PyTorch's at the same shapes). For the
//! kernels' own time, run it under Nsight Compute (`ncu --metrics
//! gpu__time_duration.sum`), as docs/BENCHMARKS.md did. With
//! `FAIRYC_GEMM_TUNE` set, the plans time cuBLASLt's candidates.
//!
//! `FAIRYC_PROFILE=1 cargo run --release -p fairyc-backends --example
//! cuda_products [RUNS]` on a machine with a GPU.

use std::collections::HashMap;

use fairyc_backends::cuda::{Cuda, GpuMatmul};
use fairyc_backends::Tensor;
use fairyc_ir::{DType, GraphBuilder, MemoryStore, Op, Shape, TensorType};

/// The step's rows (16 windows of 1024 tokens) and its products' (in, out)
/// features: SmolLM2's projections and its output layer.
const ROWS: usize = 16384;
const SHAPES: [(usize, usize); 5] = [
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
];

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    if std::env::var_os("FAIRYC_PROFILE").is_none() {
        return Err("set FAIRYC_PROFILE=1: the times come from the program's profile".into());
    }
    let runs: usize = std::env::args().nth(1).map_or(Ok(20), |a| a.parse())?;
    let cuda = Cuda {
        matmul: GpuMatmul::Bf16,
        ..Cuda::default()
    };
    println!(
        "| product (rows x in -> out) | GFLOP | profile (us per run of the node, rounding apart) |"
    );
    println!("|---|---|---|");
    for (k, n) in SHAPES {
        let mut b = GraphBuilder::new("product");
        let f32s = |dims: [usize; 2]| TensorType::new(DType::F32, Shape::new(dims));
        let x = b.input("x", f32s([ROWS, k]));
        let w = b.input("w", f32s([n, k]));
        let y = b.push(Op::Linear, &[x, w])?;
        let graph = b.finish(&[y]);
        let program = fairyc_backends::compile(&cuda, &graph, &MemoryStore::default(), &|_| {})?;
        let value = |dims: [usize; 2]| {
            let len = dims[0] * dims[1];
            Tensor::f32(
                dims.to_vec(),
                (0..len).map(|i| (i % 7) as f32 * 0.1).collect(),
            )
        };
        let inputs = HashMap::from([
            ("x".to_string(), value([ROWS, k])),
            ("w".to_string(), value([n, k])),
        ]);
        // The first run plans the product (and with FAIRYC_GEMM_TUNE times
        // its candidates): not counted.
        program.run(inputs.clone())?;
        if let Some(profile) = program.profile() {
            profile.clear();
        }
        for _ in 0..runs {
            program.run(inputs.clone())?;
        }
        let gflop = 2.0 * (ROWS * k * n) as f64 / 1e9;
        let report = program.profile().map(|p| p.report()).unwrap_or_default();
        println!(
            "| {ROWS} x {k} -> {n} | {gflop:.1} | {} |",
            report.replace('\n', " / ")
        );
    }
    Ok(())
}
