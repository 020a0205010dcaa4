//! Kernel-level timings of the GPU's quantized GEMV (issue 18, table a), in
//! one run: the int8 kernels (each block quantizes the input row into shared
//! memory, codes turned into bytes by `prmt`; products by `dp4a`, design
//! (a), or by tensor-core `mma` on codes re-packed into fragment order,
//! design (b); and `dp4a` on a row quantized once by a kernel before it,
//! the two launches timed together) and the f32 kernel on W2 codes
//! (two stages on x, two on conj x, per-tensor scales) at SmolLM2's and
//! LLaMA-7B's layer shapes, beside cuBLAS's bf16 GEMV of the same real
//! layer and a device-to-device copy, each timed by CUDA events over many
//! launches (launch gaps included, as decode sees them). Each launch reads
//! the next of enough copies of the weights to fill twice the L2 cache, so
//! that the weights come from memory as in a model's decoding step, not
//! from the cache the previous launch filled. A second table times the
//! int8 kernel's grid capped at 1, 2 and 4 blocks a multiprocessor and
//! uncapped (one warp per output row).
//!
//! `cargo run --release -p fairyc-backends --example cuda_gemv [ITERATIONS]`
//! on a machine with a GPU; `--ptx` prints the kernels' PTX instead.

use std::sync::Arc;

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use fairyc_backends::cuda::codegen::{ptx, quant_i8, quant_mma, Kernel, QUANT_ROWS_PER_BLOCK};
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
        Kernel::plain_int8(2, 2, false),
        Kernel::QuantLinear {
            u_stages: 2,
            w_stages: 2,
        },
        Kernel::plain_int8(2, 2, true),
        Kernel::QuantizeRowsI8 {
            paired_input: false,
            normed: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8Rows {
            u_stages: 2,
            w_stages: 2,
            paired_output: false,
            products: 1,
            residual: false,
            tensor_cores: false,
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
    let multiprocessors =
        context.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
    let l2 = context.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize;
    println!(
        "device {} ({multiprocessors} multiprocessors, {} MB of L2); {iterations} launches each; copy {:.0} GB/s (read + write, 1 GiB device to device)",
        context.name()?,
        l2 / 1_000_000,
        copy / 1e9
    );
    println!(
        "| real in->out | W2 code bytes | int8 us | int8 GB/s | int8 % of copy | mma us | mma % of copy | row quantized once: us | once % of copy | f32 us | f32 % of copy | bf16 cuBLAS us | bf16 GB/s | bf16 % of copy | int8 vs f32 (relative RMS) | mma vs int8 | once vs int8 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rng = rand::rng();
    let mut by_grid = Vec::new();
    for (real_in, real_out) in SHAPES {
        let (n, m) = (real_out / 2, real_in / 2);
        let code_words = n * m / 16;
        // Copies of the weights that together fill twice the L2 cache.
        let copies = (2 * l2).div_ceil(STAGES * 4 * code_words).clamp(1, 4096);
        let mut codes = Vec::new();
        let mut tiled = Vec::new();
        let tile_words = quant_mma::tile_words(n, m);
        let mut scales = Vec::new();
        for _ in 0..STAGES {
            let words: Vec<u32> = (0..code_words).map(|_| rng.random()).collect();
            let repeated: Vec<u32> = (0..copies).flat_map(|_| words.iter().copied()).collect();
            codes.push(stream.clone_htod(&repeated)?);
            let tiles = quant_mma::tile_codes(&words, n, m);
            let repeated: Vec<u32> = (0..copies).flat_map(|_| tiles.iter().copied()).collect();
            tiled.push(stream.clone_htod(&repeated)?);
            scales.push(
                stream
                    .clone_htod(&[rng.random_range(0.5f32..1.5), rng.random_range(0.5f32..1.5)])?,
            );
        }
        let copy_of = |s: usize, i: usize| {
            let c = i % copies;
            codes[s].slice(c * code_words..(c + 1) * code_words)
        };
        let x: Vec<f32> = (0..2 * m).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = stream.clone_htod(&x)?;
        let mut out_i8 = stream.alloc_zeros::<f32>(2 * n)?;
        let mut out_f32 = stream.alloc_zeros::<f32>(2 * n)?;
        let mut out_mma = stream.alloc_zeros::<f32>(2 * n)?;
        let mut out_once = stream.alloc_zeros::<f32>(2 * n)?;
        let mut row_words = stream.alloc_zeros::<u32>(m / 2)?;
        let mut row_step = stream.alloc_zeros::<f32>(1)?;
        let sizes = [1i64, n as i64, m as i64];
        let config = |grid: u32, block: u32, shared: usize| LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let block = 32 * QUANT_ROWS_PER_BLOCK;
        // An int8 kernel (design (a) or (b): the same parameters) on the
        // next copy of each stage's codes (`words` a copy), into `out`.
        let time_int8 = |function: &CudaFunction,
                         codes: &[CudaSlice<u32>],
                         words: usize,
                         out: &mut CudaSlice<f32>,
                         grid: u32| {
            time(&stream, iterations, |i| {
                let c = i % copies;
                let views: Vec<_> = codes
                    .iter()
                    .map(|stage| stage.slice(c * words..(c + 1) * words))
                    .collect();
                let mut b = stream.launch_builder(function);
                // x, then the one product's output, codes and scales; rows
                // and m, then its n and per_tensor.
                b.arg(&x).arg(&mut *out);
                for s in 0..STAGES {
                    b.arg(&views[s]).arg(&scales[s]);
                }
                let per_tensor = 1i64;
                b.arg(&sizes[0])
                    .arg(&sizes[2])
                    .arg(&sizes[1])
                    .arg(&per_tensor);
                // SAFETY: as the int8 kernels' signature, sizes bound every
                // access; the row's int8 words fill the shared memory.
                unsafe { b.launch(config(grid, block, m / 2 * 4)) }?;
                Ok(())
            })
        };
        let int8 = time_int8(
            &functions[0],
            &codes,
            code_words,
            &mut out_i8,
            quant_i8::grid(n, 1, multiprocessors).0,
        )?;
        let mma = time_int8(
            &functions[2],
            &tiled,
            tile_words,
            &mut out_mma,
            quant_mma::grid(n, 1, m, multiprocessors).0,
        )?;
        // The row quantized by a kernel of its own, then the product on it.
        let once = time(&stream, iterations, |i| {
            let views: Vec<_> = (0..STAGES).map(|s| copy_of(s, i)).collect();
            let mut b = stream.launch_builder(&functions[3]);
            b.arg(&x).arg(&mut row_words).arg(&mut row_step);
            b.arg(&sizes[0]).arg(&sizes[2]);
            // SAFETY: as `quantize_rows_i8`'s signature: one row of m inputs.
            unsafe { b.launch(config(1, quant_i8::QUANTIZE_THREADS, 0)) }?;
            let mut b = stream.launch_builder(&functions[4]);
            b.arg(&row_words).arg(&row_step).arg(&mut out_once);
            for s in 0..STAGES {
                b.arg(&views[s]).arg(&scales[s]);
            }
            let per_tensor = 1i64;
            b.arg(&sizes[0])
                .arg(&sizes[2])
                .arg(&sizes[1])
                .arg(&per_tensor);
            let grid = quant_i8::grid(n, 1, multiprocessors).0;
            // SAFETY: as the int8 kernel's signature with the quantized
            // row's words and step first.
            unsafe { b.launch(config(grid, block, m / 2 * 4)) }?;
            Ok(())
        })?;
        let uncapped = n.div_ceil(QUANT_ROWS_PER_BLOCK as usize);
        let grids = [1, 2, 4]
            .map(|b| uncapped.min(b * multiprocessors))
            .to_vec();
        let swept = grids
            .iter()
            .chain([&uncapped])
            .map(|&g| time_int8(&functions[0], &codes, code_words, &mut out_i8, g as u32))
            .collect::<Result<Vec<_>>>()?;
        let f32_kernel = time(&stream, iterations, |i| {
            let views: Vec<_> = (0..STAGES).map(|s| copy_of(s, i)).collect();
            let mut b = stream.launch_builder(&functions[1]);
            b.arg(&mut out_f32).arg(&x);
            for s in 0..STAGES {
                b.arg(&views[s]).arg(&scales[s]);
            }
            let rest = [1i64, m as i64, 1];
            b.arg(&sizes[0]).arg(&sizes[1]).arg(&sizes[2]);
            b.arg(&rest[0]).arg(&rest[1]).arg(&rest[2]);
            // SAFETY: as `quant_linear`'s signature, sizes bound every access.
            unsafe { b.launch(config(uncapped as u32, block, 0)) }?;
            Ok(())
        })?;
        let bf16 = bf16_gemv(&stream, &blas, (real_in, real_out), l2, iterations)?;
        let (got, want) = (stream.clone_dtoh(&out_i8)?, stream.clone_dtoh(&out_f32)?);
        let rms = relative_rms(&got, &want);
        let mma_rms = relative_rms(&stream.clone_dtoh(&out_mma)?, &got);
        let once_rms = relative_rms(&stream.clone_dtoh(&out_once)?, &got);
        let code_bytes = (STAGES * n * m / 4) as f64;
        let bf16_bytes = (real_in * real_out * 2) as f64;
        let percent = |bytes: f64, seconds: f64| 100.0 * bytes / seconds / copy;
        println!(
            "| {real_in}->{real_out} | {:.2} MB | {:.1} | {:.0} | {:.0}% | {:.1} | {:.0}% | {:.1} | {:.0}% | {:.1} | {:.0}% | {:.1} | {:.0} | {:.0}% | {rms:.4} | {mma_rms:.1e} | {once_rms:.1e} |",
            code_bytes / 1e6,
            int8 * 1e6,
            code_bytes / int8 / 1e9,
            percent(code_bytes, int8),
            mma * 1e6,
            percent(code_bytes, mma),
            once * 1e6,
            percent(code_bytes, once),
            f32_kernel * 1e6,
            percent(code_bytes, f32_kernel),
            bf16 * 1e6,
            bf16_bytes / bf16 / 1e9,
            percent(bf16_bytes, bf16),
        );
        let cells: Vec<String> = swept
            .iter()
            .map(|t| format!("{:.1} ({:.0}%)", t * 1e6, percent(code_bytes, *t)))
            .collect();
        by_grid.push(format!("| {real_in}->{real_out} | {} |", cells.join(" | ")));
    }
    println!();
    println!("int8 kernel by grid: us (% of copy)");
    println!("| real in->out | 1 block a multiprocessor | 2 | 4 | one warp a row |");
    println!("|---|---|---|---|---|");
    for line in by_grid {
        println!("{line}");
    }
    Ok(())
}

/// Seconds per call of `launch` (given the call's number), from CUDA
/// events around `iterations` calls after a warm-up.
fn time(
    stream: &Arc<CudaStream>,
    iterations: usize,
    mut launch: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    for i in 0..10 {
        launch(i)?;
    }
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags)?;
    for i in 0..iterations {
        launch(i)?;
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
    let seconds = time(stream, iterations, |_| {
        stream.memcpy_dtod(&from, &mut to)?;
        Ok(())
    })?;
    Ok(2.0 * 4.0 * words as f64 / seconds)
}

/// Seconds per cuBLAS bf16 GEMV `y = A x` of a real `[out, in]` matrix,
/// each call on the next of enough copies of `A` to fill twice the L2.
fn bf16_gemv(
    stream: &Arc<CudaStream>,
    blas: &CudaBlas,
    (real_in, real_out): (usize, usize),
    l2: usize,
    iterations: usize,
) -> Result<f64> {
    let size = real_in * real_out;
    let copies = (2 * l2).div_ceil(2 * size).clamp(1, 4096);
    let a: CudaSlice<half::bf16> = stream.alloc_zeros(copies * size)?;
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
    time(stream, iterations, |i| {
        let c = i % copies;
        let a = a.slice(c * size..(c + 1) * size);
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
