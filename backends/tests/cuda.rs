//! The CUDA backend on a GPU: the conformance suite against the reference
//! backend. Where no GPU is (CI), it says SKIPPED and passes, unless
//! `FAIRYC_REQUIRE_GPU=1` (set on the GPU machine) makes a missing GPU a
//! failure.

use std::collections::HashMap;

use fairyc_backends::conformance;
use fairyc_backends::cuda::{
    Communicator, Cuda, GpuAttention, GpuMatmul, Int8Products, RowQuantization,
};
use fairyc_backends::Tensor;
use fairyc_ir::{DType, GraphBuilder, MemoryStore, Op, Shape, TensorType};

#[path = "common/halves.rs"]
mod halves;

fn gpu_or_skip() -> bool {
    if Cuda::available() {
        return true;
    }
    assert!(
        std::env::var_os("FAIRYC_REQUIRE_GPU").is_none(),
        "FAIRYC_REQUIRE_GPU is set but no CUDA device is usable"
    );
    eprintln!("SKIPPED: no CUDA driver or device on this machine");
    false
}

/// Each case's program runs three times, on inputs scaled differently: the
/// first plainly, the second captured as a CUDA graph and launched, the
/// third a replay of that graph.
#[test]
fn conformance_suite_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    let report = conformance::run_cases_repeated(&Cuda::default(), conformance::op_cases(), 3);
    let run = report.cases - report.unsupported.len();
    let captures = fairyc_backends::cuda::captures();
    eprintln!(
        "{run} of {} cases run on the cuda backend, three times each; {} mismatches; {} captured as CUDA graphs, {} captures refused{}; not run (ops without a GPU kernel yet):",
        report.cases,
        report.failures.len(),
        captures.captured,
        captures.refused,
        captures.first_refusal.map(|e| format!(" (the first: {e})")).unwrap_or_default()
    );
    for line in &report.unsupported {
        eprintln!("  {line}");
    }
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
    assert!(run > 0, "no case ran");
    assert!(captures.captured > 0, "no run was captured as a CUDA graph");
}

/// Attention with heads of 64 words on bf16 products: cuBLAS's around the
/// softmax, and the flash kernels (the gradients from the statistics the
/// forward pass kept where the case has both, else from the statistics
/// kernel). Three runs each, as the suite's.
#[test]
fn bf16_attention_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    // Both reports print before either is asserted: one GPU run tells
    // about both.
    let mut failures = Vec::new();
    for attention in [GpuAttention::Products, GpuAttention::Flash] {
        let cuda = Cuda {
            matmul: GpuMatmul::Bf16,
            attention,
            ..Cuda::default()
        };
        let report = conformance::run_cases_repeated(&cuda, conformance::bf16_attention_cases(), 3);
        eprintln!(
            "{attention:?}: {} bf16 attention cases on the cuda backend, three runs each; {} mismatches",
            report.cases,
            report.failures.len()
        );
        for line in report.unsupported.iter().chain(&report.failures) {
            eprintln!("  {line}");
        }
        failures.extend(report.unsupported);
        failures.extend(report.failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The widely-linear pairing folded into the int8 product (the kernel
/// reads the real row through the pack's table and writes the real output
/// through the unpack's): each pairing, against the reference, with
/// `dp4a` and on tensor cores (where the shapes suit them: the PTX shows
/// which cases take that kernel), each with its rows quantized by every
/// block and by a kernel of their own. A wrong word would move its output
/// by its whole size; int8 activations move them by about 0.4% RMS.
#[test]
fn paired_int8_products_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    let mut failures = Vec::new();
    let ways = [
        (Int8Products::Dp4a, RowQuantization::InEachBlock),
        (Int8Products::Dp4a, RowQuantization::Once),
        (Int8Products::TensorCores, RowQuantization::InEachBlock),
        (Int8Products::TensorCores, RowQuantization::Once),
        (Int8Products::TensorCores, RowQuantization::default()),
    ];
    for (products, rows) in ways {
        let cuda = Cuda {
            int8_products: products,
            row_quantization: rows,
            ..Cuda::default()
        };
        let (mut on_tensor_cores, mut quantized_once) = (0, 0);
        for case in conformance::paired_quant_linear_cases() {
            let prepared = fairyc_backends::prepare(&cuda, &case.graph).expect("prepared");
            let ptx = fairyc_backends::cuda::program::graph_ptx(&prepared, &cuda).expect("PTX");
            // What the program compiled: which kernel a case launches depends
            // on its rows too (`RowQuantization::Once` takes the quantized
            // rows always).
            let mma = ptx.contains(".entry quant_linear_mma");
            on_tensor_cores += usize::from(mma);
            let once = ptx.contains(".entry quant_linear_i8_rows")
                || ptx.contains(".entry quant_linear_mma_rows");
            quantized_once += usize::from(once);
            let difference = conformance::relative_rms_difference(&cuda, &case);
            eprintln!(
                "{products:?}, {rows:?}{}{}: {}: relative RMS difference {difference:?}",
                if mma { " (tensor cores)" } else { "" },
                if once { " (rows quantized once)" } else { "" },
                case.name
            );
            match difference {
                Ok(d) if d < 0.02 => {}
                other => failures.push(format!("{products:?} {rows:?} {}: {other:?}", case.name)),
            }
        }
        eprintln!(
            "{products:?}, {rows:?}: {on_tensor_cores} cases compiled for tensor cores, {quantized_once} with a way to quantize their rows once"
        );
        if products == Int8Products::TensorCores && on_tensor_cores == 0 {
            failures.push("no case took the tensor-core kernel".into());
        }
        if rows == RowQuantization::Once && quantized_once == 0 {
            failures.push("no case quantized its rows once".into());
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Dense products in bf16, on bf16 values: each operand rounded to bf16
/// (by the backend's kernel, for cuBLAS's bf16 inputs), f32 sums.
#[test]
fn bf16_products_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    let cuda = Cuda {
        matmul: GpuMatmul::Bf16,
        ..Cuda::default()
    };
    let report = conformance::run_cases(&cuda, conformance::bf16_product_cases());
    eprintln!(
        "{} bf16 product cases on the cuda backend; {} mismatches",
        report.cases,
        report.failures.len()
    );
    let problems: Vec<&String> = report.unsupported.iter().chain(&report.failures).collect();
    assert!(report.cases > 0 && problems.is_empty(), "{problems:?}");
}

/// A value only bf16 products read is rounded by the kernel that computes
/// it (`fusion::round_in_producers`); the same value computed twice, once
/// also an output (so kept in f32 and rounded by `to_bf16` for its
/// products), gives the same products bit for bit: SiLU(gate)·up into a
/// product, the logits' gradient into the next, a normed row into a third
/// and a rotated one (a query's gradient) into a fourth. The first way's
/// logits' gradient also reads its loss's softmax statistics
/// (`fusion::keep_loss_statistics`), the second's computes them: the same
/// values. The kernels each way takes are checked on any machine.
#[test]
fn values_rounded_where_computed_match_the_rounding_kernel() {
    let (rows, width, vocab, out) = (64, 96, 40, 24);
    let ty = |dims: &[usize]| TensorType::new(DType::F32, Shape::new(dims.iter().copied()));
    let mut b = GraphBuilder::new("rounded_where_computed");
    let gate = b.input("gate", ty(&[rows, width]));
    let up = b.input("up", ty(&[rows, width]));
    let w = b.input("w", ty(&[vocab, width]));
    let v = b.input("v", ty(&[out, vocab]));
    let targets = b.input("targets", TensorType::new(DType::I32, Shape::new([rows])));
    let dloss = b.input("dloss", ty(&[]));
    let gain = b.input("gain", ty(&[width]));
    let positions = b.input("positions", TensorType::new(DType::I32, Shape::new([rows])));
    let mut products = Vec::new();
    let mut kept = Vec::new();
    for also_output in [true, false] {
        let silu = b.push(Op::Silu, &[gate]).unwrap();
        let h = b.push(Op::Mul, &[silu, up]).unwrap();
        let logits = b.push(Op::Linear, &[h, w]).unwrap();
        // The loss before its gradient, as a training step has it.
        let loss = also_output.then(|| b.push(Op::CrossEntropy, &[logits, targets]).unwrap());
        let dlogits = b
            .push(Op::CrossEntropyGrad, &[logits, targets, dloss])
            .unwrap();
        let dx = b.push(Op::Linear, &[dlogits, v]).unwrap();
        let normed = b.push(Op::RmsNorm { eps: 1e-5 }, &[gate, gain]).unwrap();
        let scores = b.push(Op::Linear, &[normed, w]).unwrap();
        let rope = Op::Rope {
            base: 10000.0,
            layout: fairyc_ir::RopeLayout::HalfSplit,
            head_dim: 32,
        };
        let rotated = b.push(rope, &[up, positions]).unwrap();
        let turned = b.push(Op::Linear, &[rotated, w]).unwrap();
        products.push([logits, dx, scores, turned]);
        if let Some(loss) = loss {
            kept.extend([h, dlogits, normed, rotated, loss]);
        }
    }
    let outputs: Vec<_> = products.iter().flatten().chain(&kept).copied().collect();
    let graph = b.finish(&outputs);
    let cuda = Cuda {
        matmul: GpuMatmul::Bf16,
        ..Cuda::default()
    };
    let prepared = fairyc_backends::prepare(&cuda, &graph).expect("prepared");
    let ptx = fairyc_backends::cuda::program::graph_ptx(&prepared, &cuda).expect("PTX");
    // A kernel's entry is its name and its index.
    let has_entry = |name: &str| {
        ptx.match_indices(&format!(".entry {name}_"))
            .any(|(at, m)| ptx[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    for (kernel, other) in [
        ("cross_entropy_grad_kept", "cross_entropy_grad_bf16"),
        ("rms_norm", "rms_norm_bf16"),
        ("rope_half_split", "rope_half_split_bf16"),
    ] {
        assert!(
            has_entry(kernel) && has_entry(other),
            "{kernel}, {other}: not both"
        );
    }
    // The kernels chosen need no GPU: checked everywhere.
    if !gpu_or_skip() {
        return;
    }
    let program =
        fairyc_backends::compile(&cuda, &graph, &MemoryStore::default(), &|_| {}).unwrap();
    let wave = |[n, m]: [usize; 2], k: f32| {
        Tensor::f32(
            vec![n, m],
            (0..n * m).map(|i| (i as f32 * k).sin()).collect(),
        )
    };
    let mut inputs = HashMap::from([
        ("gate".to_string(), wave([rows, width], 0.37)),
        ("up".to_string(), wave([rows, width], 0.11)),
        ("w".to_string(), wave([vocab, width], 0.23)),
        ("v".to_string(), wave([out, vocab], 0.71)),
        ("dloss".to_string(), Tensor::f32(vec![], vec![1.0])),
        (
            "gain".to_string(),
            Tensor::f32(vec![width], vec![0.75; width]),
        ),
    ]);
    let ids = (0..rows).map(|r| {
        if r % 7 == 3 {
            -1
        } else {
            (r * 13 % vocab) as i32
        }
    });
    inputs.insert("targets".into(), Tensor::i32(vec![rows], ids.collect()));
    let at = (0..rows as i32).map(|p| 3 * p + 1).collect();
    inputs.insert("positions".into(), Tensor::i32(vec![rows], at));
    let got = program.run(inputs).unwrap();
    let flat = |t: &Tensor| t.as_f32().unwrap().to_vec();
    for (k, what) in [
        "the product of SiLU(gate)·up",
        "the product of the logits' gradient",
        "the product of a normed row",
        "the product of a rotated row",
    ]
    .iter()
    .enumerate()
    {
        let (f32_kept, rounded) = (flat(&got[k]), flat(&got[4 + k]));
        assert!(f32_kept.iter().any(|x| *x != 0.0), "{what}: all zero");
        assert_eq!(f32_kept, rounded, "{what}");
    }
    eprintln!("bf16 operands rounded where computed: both products equal to the rounding kernel's, bit for bit");
}

/// `all_reduce` and `broadcast_from` through NCCL over every GPU the
/// machine has, one program per GPU run side by side: each gets the sum of
/// all their tensors, and the last rank's (f32, c64, and packed codes: a
/// sharded master's PhaseQuant codes, every word of them). With one GPU (a
/// group of one) it checks the plumbing the data-parallel trainer uses:
/// NCCL loaded at run time, the f32 view of the buffers, their lengths in
/// words, the program's stream.
#[test]
fn collectives_through_nccl() {
    if !gpu_or_skip() {
        return;
    }
    let ranks = Cuda::device_count();
    let group = Communicator::group(ranks).expect("NCCL communicators");
    let mut b = GraphBuilder::new("sum_over_ranks");
    let ty = TensorType::new(DType::F32, Shape::new([5, 7]));
    let x = b.input("x", ty);
    let sum = b.push(Op::AllReduce, &[x]).unwrap();
    let root = ranks - 1;
    let sent = b.push(Op::BroadcastFrom { root }, &[x]).unwrap();
    // 7 codes a row: rows of two bytes, the last word half padding.
    let z = b.input("z", TensorType::new(DType::C64, Shape::new([3, 7])));
    let codes = b
        .push(
            Op::PhaseCodes {
                arithmetic: fairyc_ir::Arithmetic::F32,
            },
            &[z],
        )
        .unwrap();
    let sent_z = b.push(Op::BroadcastFrom { root }, &[z]).unwrap();
    let sent_codes = b.push(Op::BroadcastFrom { root }, &[codes]).unwrap();
    let graph = b.finish(&[sum, sent, sent_z, sent_codes]);
    let value = |rank: usize, i: usize| (i * (rank + 1)) as f32 - 3.0;
    let complex = |rank: usize| -> Vec<num_complex::Complex32> {
        (0..21)
            .map(|i| num_complex::Complex32::new(value(rank, i), value(rank, 20 - i) * 0.5))
            .collect()
    };
    // Every program built before any runs: a rank that failed to build
    // would leave the others waiting in NCCL.
    let programs: Vec<_> = group
        .iter()
        .enumerate()
        .map(|(rank, communicator)| {
            let cuda = Cuda {
                device: rank,
                communicator: Some(communicator.clone()),
                ..Cuda::default()
            };
            fairyc_backends::compile(&cuda, &graph, &MemoryStore::default(), &|_| {}).unwrap()
        })
        .collect();
    let outputs: Vec<[Tensor; 4]> = std::thread::scope(|scope| {
        let handles: Vec<_> = programs
            .iter()
            .enumerate()
            .map(|(rank, program)| {
                scope.spawn(move || {
                    let x = Tensor::f32(vec![5, 7], (0..35).map(|i| value(rank, i)).collect());
                    let z = Tensor::c64(vec![3, 7], complex(rank));
                    let inputs = HashMap::from([("x".to_string(), x), ("z".to_string(), z)]);
                    let out = program.run(inputs).unwrap();
                    let out: [Tensor; 4] = out.try_into().expect("four outputs");
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sum: Vec<f32> = (0..35)
        .map(|i| (0..ranks).map(|rank| value(rank, i)).sum())
        .collect();
    let sent: Vec<f32> = (0..35).map(|i| value(root, i)).collect();
    let root_z = complex(root);
    let root_codes = {
        let q =
            fairyc_ir::quant::phase_quant(&root_z, 3, 7, fairyc_ir::Granularity::Tensor).unwrap();
        fairyc_ir::quant::pack_code_rows(&q.codes, 3, 7).unwrap()
    };
    for (rank, [got_sum, got_sent, got_z, got_codes]) in outputs.iter().enumerate() {
        assert_eq!(
            got_sum.as_f32().unwrap(),
            &sum,
            "all_reduce on rank {rank} of {ranks}"
        );
        assert_eq!(
            got_sent.as_f32().unwrap(),
            &sent,
            "broadcast on rank {rank} of {ranks}"
        );
        assert_eq!(
            got_z.as_c64().unwrap(),
            &root_z,
            "c64 broadcast on rank {rank}"
        );
        let fairyc_backends::Data::Codes(got_codes) = &got_codes.data else {
            panic!(
                "rank {rank}: the broadcast codes are {}",
                got_codes.dtype_name()
            )
        };
        assert_eq!(**got_codes, *root_codes, "code2 broadcast on rank {rank}");
    }
    eprintln!("all_reduce and broadcast through NCCL over {ranks} GPU(s): every rank has the sum and the root's");
}

/// Design (b), tensor-core products on re-packed codes, against design
/// (a), `dp4a`, on the same codes and rows: both quantize each row to int8
/// the same way and sum integers exactly, so they differ only in the order
/// their float scalings add up. Layers of a tile and a half (rows past the
/// layer's), tiles whose last task is partial or whose warps take
/// several tasks, input rows in one group of four, in two (the last
/// partial), and three at once over two rows of blocks; per-tensor and
/// per-channel scales.
#[test]
fn tensor_core_int8_products_match_the_dp4a_kernel() {
    use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
    use fairyc_backends::cuda::codegen::{ptx, quant_i8, quant_mma, Kernel, QUANT_ROWS_PER_BLOCK};
    use rand::{RngExt, SeedableRng};

    if !gpu_or_skip() {
        return;
    }
    let (u_stages, w_stages) = (2, 1);
    let stages = u_stages + w_stages;
    let kernels = [
        Kernel::plain_int8(u_stages, w_stages, false),
        Kernel::plain_int8(u_stages, w_stages, true),
    ];
    let context = CudaContext::new(0).expect("a context");
    let stream = context.default_stream();
    let module = context
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx(&kernels).expect("PTX")))
        .expect("the module");
    let functions: Vec<_> = kernels
        .iter()
        .enumerate()
        .map(|(i, k)| module.load_function(&k.symbol(i)).expect("the kernel"))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut failures = Vec::new();
    // (n, m, rows, per_tensor, multiprocessors of the tensor-core grid)
    let cases = [
        (24, 96, 3, 1i64, 1),
        (40, 1184, 2, 0, 1),
        (96, 288, 1, 1, 1),
        (48, 64, 6, 0, 1),
        // Three rows at once (5,504 inputs), two rows of blocks down.
        (32, 5504, 4, 0, 8),
    ];
    for (n, m, rows, per_tensor, multiprocessors) in cases {
        let mut codes = Vec::new();
        let mut tiled = Vec::new();
        let mut scales = Vec::new();
        for _ in 0..stages {
            let words: Vec<u32> = (0..n * m / 16).map(|_| rng.random()).collect();
            tiled.push(
                stream
                    .clone_htod(&quant_mma::tile_codes(&words, n, m))
                    .unwrap(),
            );
            codes.push(stream.clone_htod(&words).unwrap());
            let s: Vec<f32> = (0..2 * n).map(|_| rng.random_range(0.5f32..1.5)).collect();
            scales.push(stream.clone_htod(&s).unwrap());
        }
        let x: Vec<f32> = (0..rows * 2 * m)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let x = stream.clone_htod(&x).unwrap();
        let mut outs = Vec::new();
        for (k, function) in functions.iter().enumerate() {
            let mut out = stream.alloc_zeros::<f32>(rows * 2 * n).unwrap();
            let stage_codes = if k == 0 { &codes } else { &tiled };
            let (across, down) = if k == 0 {
                quant_i8::grid(n, rows, 4)
            } else {
                // A small cap: blocks take several tiles.
                quant_mma::grid(n, rows, m, multiprocessors)
            };
            let sizes = [rows as i64, m as i64, n as i64, per_tensor];
            let mut b = stream.launch_builder(function);
            b.arg(&x).arg(&mut out);
            for s in 0..stages {
                b.arg(&stage_codes[s]).arg(&scales[s]);
            }
            for v in &sizes {
                b.arg(v);
            }
            let config = LaunchConfig {
                grid_dim: (across, down, 1),
                block_dim: (32 * QUANT_ROWS_PER_BLOCK, 1, 1),
                shared_mem_bytes: if k == 0 {
                    (m / 2 * 4) as u32
                } else {
                    quant_mma::shared_bytes(rows, m)
                },
            };
            // SAFETY: as the kernels' signatures; sizes bound every access,
            // and the row's int8 words fill the shared memory.
            unsafe { b.launch(config) }.expect("a launch");
            outs.push(stream.clone_dtoh(&out).unwrap());
        }
        let (dp4a, mma) = (&outs[0], &outs[1]);
        let scale = dp4a.iter().map(|v| v * v).sum::<f32>().sqrt();
        let difference = dp4a
            .iter()
            .zip(mma)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt()
            / scale;
        eprintln!("{n} outputs, {m} inputs, {rows} rows, per-tensor {per_tensor}: relative RMS difference {difference:.2e}");
        if !(scale > 0.0 && difference < 1e-5) {
            failures.push(format!("{n}x{m}: {difference}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// The halves of PhaseQuant a sharded master's owner sends, on the GPU:
/// `dequant(phase_codes(w), phase_scales(w))` is the GPU's own
/// `quantize(w)`, bit for bit, for every granularity (groups that do not
/// tile the row included), on weights with ties and zeros and on an
/// all-zero matrix; and the codes are the reference's, byte for byte.
#[test]
fn phase_halves_rebuild_quantize_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    use fairyc_ir::{Arithmetic, Granularity};
    use num_complex::Complex32;
    let bits = |t: &Tensor| -> Vec<u32> {
        t.as_c64()
            .unwrap()
            .iter()
            .flat_map(|z| [z.re.to_bits(), z.im.to_bits()])
            .collect()
    };
    for granularity in [
        Granularity::Tensor,
        Granularity::Channel,
        Granularity::Group(4),
        Granularity::Group(64),
    ] {
        for (n, m, zero) in [
            (5usize, 10usize, false),
            (1, 1, false),
            (300, 41, false),
            (3, 7, true),
        ] {
            let w: Vec<Complex32> = (0..n * m)
                .map(|i| {
                    let a = ((i * 7919) % 257) as f32 / 128.0 - 1.0;
                    let b = ((i * 104729) % 263) as f32 / 131.0 - 1.0;
                    match (zero, i % 9) {
                        (true, _) | (_, 0) => Complex32::new(0.0, 0.0),
                        (_, 1) => Complex32::new(a, a),
                        (_, 2) => Complex32::new(-a, a),
                        (_, 3) => Complex32::new(a, 0.0),
                        _ => Complex32::new(a, b),
                    }
                })
                .collect();
            let graph = halves::halves_graph(n, m, granularity, Arithmetic::F32);
            let program = fairyc_backends::compile(
                &Cuda::default(),
                &graph,
                &MemoryStore::default(),
                &|_| {},
            )
            .unwrap();
            let inputs = HashMap::from([("w".to_string(), Tensor::c64(vec![n, m], w.clone()))]);
            let out = program.run(inputs).unwrap();
            let what = format!("{granularity:?} [{n}, {m}]");
            assert_eq!(bits(&out[2]), bits(&out[3]), "{what}");
            let q = fairyc_ir::quant::phase_quant(&w, n, m, granularity).unwrap();
            let want = fairyc_ir::quant::pack_code_rows(&q.codes, n, m).unwrap();
            let fairyc_backends::Data::Codes(got) = &out[0].data else {
                panic!("{what}: codes are {}", out[0].dtype_name())
            };
            assert_eq!(**got, *want, "{what}");
        }
    }
    eprintln!("dequant of phase_codes and phase_scales is quantize on the GPU, bit for bit");
}
