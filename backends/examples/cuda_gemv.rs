//! Kernel-level timings of the GPU's quantized GEMV (issue 18, table a), in
//! one run: the int8 kernel (each block quantizes the input row into shared
//! memory, codes turned into bytes by `prmt`, products by `dp4a`) and the f32 kernel on W2 codes
//! (two stages on x, two on conj x, per-tensor scales) at SmolLM2's and
//! LLaMA-7B's layer shapes, beside cuBLAS's bf16 GEMV of the same real
//! layer and a device-to-device copy, each timed by CUDA events over many
//! launches (launch gaps included, as decode sees them).
//!
//! `cargo run --release -p fairyc-backends --example cuda_gemv [ITERATIONS]`
//! on a machine with a GPU; `--ptx` prints the kernels' PTX instead.

use std::sync::Arc;

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use fairyc_backends::cuda::codegen::{ptx, Kernel, QUANT_ROWS_PER_BLOCK};
use rand::RngExt;

/// Real layer shapes (in, out): SmolLM2-135M's, then LLaMA-7B's.
const SHAPES: [(usize, usize); 8] = [
    (576, 192),
    (576, 576),
    (576, 1536),
    (1536, 576),
    (4096, 4096),
    (4096, 11008),
    (11008, 4096),
    (4096, 32000),
];

const STAGES: usize = 4;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let kernels = [
        Kernel::QuantLinearI8 {
            u_stages: 2,
            w_stages: 2,
        },
        Kernel::QuantLinear {
            u_stages: 2,
            w_stages: 2,
        },
    ];
    let text = ptx(&kernels)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--ptx") {
        println!("{text}");
        return Ok(());
    }
    let iterations: usize = args.first().map_or(Ok(200), |a| a.parse())?;
    let context = CudaContext::new(0)?;
    let stream = context.default_stream();
    let module = context.load_module(Ptx::from_src(text))?;
    let functions: Vec<CudaFunction> = kernels
        .iter()
        .enumerate()
        .map(|(i, k)| module.load_function(&k.symbol(i)))
        .collect::<std::result::Result<_, _>>()?;
    let blas = CudaBlas::new(stream.clone())?;

    let copy = copy_bandwidth(&stream, iterations.min(50))?;
    println!(
        "device {}; {iterations} launches each; copy {:.0} GB/s (read + write, 1 GiB device to device)",
        context.name()?,
        copy / 1e9
    );
    println!(
        "| real in->out | W2 code bytes | int8 us | int8 GB/s | int8 % of copy | f32 us | f32 % of copy | bf16 cuBLAS us | bf16 GB/s | bf16 % of copy | int8 vs f32 (relative RMS) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rng = rand::rng();
    for (real_in, real_out) in SHAPES {
        let (n, m) = (real_out / 2, real_in / 2);
        let code_words = n * m / 16;
        let mut codes = Vec::new();
        let mut scales = Vec::new();
        for _ in 0..STAGES {
            let words: Vec<u32> = (0..code_words).map(|_| rng.random()).collect();
            codes.push(stream.clone_htod(&words)?);
            scales.push(
                stream
                    .clone_htod(&[rng.random_range(0.5f32..1.5), rng.random_range(0.5f32..1.5)])?,
            );
        }
        let x: Vec<f32> = (0..2 * m).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = stream.clone_htod(&x)?;
        let mut out_i8 = stream.alloc_zeros::<f32>(2 * n)?;
        let mut out_f32 = stream.alloc_zeros::<f32>(2 * n)?;
        let sizes = [1i64, n as i64, m as i64];
        let grid = n.div_ceil(QUANT_ROWS_PER_BLOCK as usize) as u32;
        let config = |grid: u32, block: u32, shared: usize| LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let block = 32 * QUANT_ROWS_PER_BLOCK;
        let int8 = time(&stream, iterations, || {
            let mut b = stream.launch_builder(&functions[0]);
            b.arg(&mut out_i8).arg(&x);
            for s in 0..STAGES {
                b.arg(&codes[s]).arg(&scales[s]);
            }
            let per_tensor = 1i64;
            b.arg(&sizes[0])
                .arg(&sizes[1])
                .arg(&sizes[2])
                .arg(&per_tensor);
            // SAFETY: as `quant_linear_i8`'s signature, sizes bound every
            // access; the row's int8 words fill the shared memory.
            unsafe { b.launch(config(grid, block, m / 2 * 4)) }?;
            Ok(())
        })?;
        let f32_kernel = time(&stream, iterations, || {
            let mut b = stream.launch_builder(&functions[1]);
            b.arg(&mut out_f32).arg(&x);
            for s in 0..STAGES {
                b.arg(&codes[s]).arg(&scales[s]);
            }
            let rest = [1i64, m as i64, 1];
            b.arg(&sizes[0]).arg(&sizes[1]).arg(&sizes[2]);
            b.arg(&rest[0]).arg(&rest[1]).arg(&rest[2]);
            // SAFETY: as `quant_linear`'s signature, sizes bound every access.
            unsafe { b.launch(config(grid, block, 0)) }?;
            Ok(())
        })?;
        let bf16 = bf16_gemv(&stream, &blas, real_in, real_out, iterations)?;
        let (got, want) = (stream.clone_dtoh(&out_i8)?, stream.clone_dtoh(&out_f32)?);
        let rms = relative_rms(&got, &want);
        let code_bytes = (STAGES * n * m / 4) as f64;
        let bf16_bytes = (real_in * real_out * 2) as f64;
        let percent = |bytes: f64, seconds: f64| 100.0 * bytes / seconds / copy;
        println!(
            "| {real_in}->{real_out} | {:.2} MB | {:.1} | {:.0} | {:.0}% | {:.1} | {:.0}% | {:.1} | {:.0} | {:.0}% | {rms:.4} |",
            code_bytes / 1e6,
            int8 * 1e6,
            code_bytes / int8 / 1e9,
            percent(code_bytes, int8),
            f32_kernel * 1e6,
            percent(code_bytes, f32_kernel),
            bf16 * 1e6,
            bf16_bytes / bf16 / 1e9,
            percent(bf16_bytes, bf16),
        );
    }
    Ok(())
}

/// Seconds per call of `launch`, from CUDA events around `iterations`
/// calls after a warm-up.
fn time(
    stream: &Arc<CudaStream>,
    iterations: usize,
    mut launch: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..10 {
        launch()?;
    }
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags)?;
    for _ in 0..iterations {
        launch()?;
    }
    let end = stream.record_event(flags)?;
    end.synchronize()?;
    Ok(f64::from(start.elapsed_ms(&end)?) / 1e3 / iterations as f64)
}

/// Bytes per second a device-to-device copy of 1 GiB moves, reads and
/// writes counted.
fn copy_bandwidth(stream: &Arc<CudaStream>, iterations: usize) -> Result<f64> {
    let words = 1usize << 28;
    let from = stream.alloc_zeros::<u32>(words)?;
    let mut to = stream.alloc_zeros::<u32>(words)?;
    let seconds = time(stream, iterations, || {
        stream.memcpy_dtod(&from, &mut to)?;
        Ok(())
    })?;
    Ok(2.0 * 4.0 * words as f64 / seconds)
}

/// Seconds per cuBLAS bf16 GEMV `y = A x` of a real `[out, in]` matrix.
fn bf16_gemv(
    stream: &Arc<CudaStream>,
    blas: &CudaBlas,
    real_in: usize,
    real_out: usize,
    iterations: usize,
) -> Result<f64> {
    let a: CudaSlice<half::bf16> = stream.alloc_zeros(real_in * real_out)?;
    let x: CudaSlice<half::bf16> = stream.alloc_zeros(real_in)?;
    let mut y: CudaSlice<half::bf16> = stream.alloc_zeros(real_out)?;
    let config = GemmConfig {
        // Row-major A is column-major Aᵀ: y = (Aᵀ)ᵀ x.
        transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
        transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
        m: real_out as i32,
        n: 1,
        k: real_in as i32,
        alpha: half::bf16::ONE,
        lda: real_in as i32,
        ldb: real_in as i32,
        beta: half::bf16::ZERO,
        ldc: real_out as i32,
    };
    time(stream, iterations, || {
        // SAFETY: the sizes match the buffers allocated above.
        unsafe { blas.gemm(config, &a, &x, &mut y) }?;
        Ok(())
    })
}

fn relative_rms(got: &[f32], want: &[f32]) -> f32 {
    let diff: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let size: f32 = want.iter().map(|b| b * b).sum();
    (diff / size.max(f32::MIN_POSITIVE)).sqrt()
}
