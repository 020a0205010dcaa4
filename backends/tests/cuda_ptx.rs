//! The CUDA backend's kernels as PTX: generated on any machine (no GPU
//! or CUDA toolkit needed), each an `.entry`, with no call left to an
//! undefined function, and assembled for sm_90 by NVIDIA's ptxas.

#[path = "common/ptxas.rs"]
mod ptxas;

use fairyc_backends::cuda::codegen::{
    ptx, quant_i8, quant_mma, Elem, Expr, FlashPass, Kernel, MapOp, QUANT_ROWS_PER_BLOCK,
};
use fairyc_ir::{RopeLayout, UnaryFn, WlPart};

fn every_kernel() -> Vec<Kernel> {
    let x = || Expr::Operand(0);
    let mut kernels = vec![
        Kernel::RmsNorm {
            complex: false,
            bf16: false,
        },
        Kernel::RmsNorm {
            complex: false,
            bf16: true,
        },
        Kernel::RmsNorm {
            complex: true,
            bf16: false,
        },
        Kernel::Softmax,
        Kernel::Embed,
        Kernel::Rope {
            layout: RopeLayout::Interleaved,
            complex: false,
            bf16: false,
        },
        Kernel::Rope {
            layout: RopeLayout::HalfSplit,
            complex: false,
            bf16: false,
        },
        Kernel::Rope {
            layout: RopeLayout::HalfSplit,
            complex: false,
            bf16: true,
        },
        Kernel::Rope {
            layout: RopeLayout::HalfSplit,
            complex: true,
            bf16: false,
        },
        // SmolLM2's heads (64 words, 3 query heads a key head, queries
        // rotated as they load), LLaMA-7B's (128, 1) and a width that is
        // not a multiple of 32 (a partial span of lanes).
        Kernel::Attention {
            d: 64,
            dv: 64,
            group: 3,
            rope: Some(RopeLayout::HalfSplit),
        },
        Kernel::Attention {
            d: 128,
            dv: 128,
            group: 1,
            rope: None,
        },
        Kernel::Attention {
            d: 40,
            dv: 40,
            group: 2,
            rope: Some(RopeLayout::Interleaved),
        },
        Kernel::Copy2d,
        Kernel::AppendRows { rope: None },
        Kernel::AppendRows {
            rope: Some(RopeLayout::HalfSplit),
        },
        Kernel::Permute,
        Kernel::QuantLinear {
            u_stages: 2,
            w_stages: 2,
        },
        Kernel::QuantLinear {
            u_stages: 0,
            w_stages: 1,
        },
        Kernel::plain_int8(2, 2, false),
        Kernel::plain_int8(2, 2, true),
        Kernel::QuantLinearI8 {
            u_stages: 1,
            w_stages: 1,
            paired_input: true,
            paired_output: true,
            normed: false,
            products: 1,
            residual: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8 {
            u_stages: 2,
            w_stages: 2,
            paired_input: true,
            paired_output: true,
            normed: true,
            products: 1,
            residual: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8 {
            u_stages: 1,
            w_stages: 1,
            paired_input: true,
            paired_output: false,
            normed: true,
            products: 1,
            residual: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8 {
            u_stages: 2,
            w_stages: 2,
            paired_input: true,
            paired_output: true,
            normed: true,
            products: 3,
            residual: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8 {
            u_stages: 1,
            w_stages: 1,
            paired_input: true,
            paired_output: true,
            normed: false,
            products: 1,
            residual: true,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8 {
            u_stages: 2,
            w_stages: 2,
            paired_input: true,
            paired_output: true,
            normed: false,
            products: 1,
            residual: true,
            prologue: Some(Expr::Apply(
                MapOp::Mul,
                vec![
                    Expr::Apply(MapOp::Silu, vec![Expr::Operand(0)]),
                    Expr::Operand(1),
                ],
            )),
            tensor_cores: false,
        },
        // Design (b) with the folds the decoding step uses.
        Kernel::QuantLinearI8 {
            u_stages: 2,
            w_stages: 2,
            paired_input: true,
            paired_output: true,
            normed: true,
            products: 3,
            residual: false,
            prologue: None,
            tensor_cores: true,
        },
        Kernel::QuantLinearI8 {
            u_stages: 2,
            w_stages: 2,
            paired_input: true,
            paired_output: true,
            normed: false,
            products: 1,
            residual: true,
            prologue: Some(Expr::Apply(
                MapOp::Mul,
                vec![
                    Expr::Apply(MapOp::Silu, vec![Expr::Operand(0)]),
                    Expr::Operand(1),
                ],
            )),
            tensor_cores: true,
        },
        // The decoding step's rows quantized once, then its products on
        // them: q-k-v's (normed), o's, gate-up's and down's (SiLU(gate)·up).
        Kernel::QuantizeRowsI8 {
            paired_input: true,
            normed: true,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantizeRowsI8 {
            paired_input: true,
            normed: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantizeRowsI8 {
            paired_input: false,
            normed: false,
            prologue: None,
            tensor_cores: false,
        },
        Kernel::QuantizeRowsI8 {
            paired_input: true,
            normed: false,
            prologue: Some(Expr::Apply(
                MapOp::Mul,
                vec![
                    Expr::Apply(MapOp::Silu, vec![Expr::Operand(0)]),
                    Expr::Operand(1),
                ],
            )),
            tensor_cores: false,
        },
        Kernel::QuantLinearI8Rows {
            u_stages: 2,
            w_stages: 2,
            paired_output: true,
            products: 3,
            residual: false,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8Rows {
            u_stages: 2,
            w_stages: 2,
            paired_output: true,
            products: 1,
            residual: true,
            tensor_cores: false,
        },
        Kernel::QuantLinearI8Rows {
            u_stages: 1,
            w_stages: 0,
            paired_output: false,
            products: 1,
            residual: false,
            tensor_cores: false,
        },
        // Design (b) on rows quantized once, in its fragments' order.
        Kernel::QuantizeRowsI8 {
            paired_input: true,
            normed: true,
            prologue: None,
            tensor_cores: true,
        },
        Kernel::QuantLinearI8Rows {
            u_stages: 2,
            w_stages: 2,
            paired_output: true,
            products: 3,
            residual: false,
            tensor_cores: true,
        },
        Kernel::GatherColumns,
        Kernel::ColumnSum,
        Kernel::CrossEntropyRows { keep: false },
        Kernel::CrossEntropyRows { keep: true },
        Kernel::ScoredMean,
        Kernel::CrossEntropyGrad {
            bf16: false,
            kept: false,
        },
        Kernel::CrossEntropyGrad {
            bf16: true,
            kept: false,
        },
        Kernel::CrossEntropyGrad {
            bf16: true,
            kept: true,
        },
        Kernel::Dequant,
        Kernel::SumSquares,
        Kernel::PhaseSums { ifairy: false },
        Kernel::PhaseDequant { ifairy: false },
        Kernel::PhaseSums { ifairy: true },
        Kernel::PhaseDequant { ifairy: true },
        Kernel::PhaseCodes,
        Kernel::PhaseScales,
        Kernel::PhaseStageSums {
            stage: 0,
            split: false,
        },
        Kernel::PhaseStageSums {
            stage: 2,
            split: false,
        },
        Kernel::PhaseStagesDequant {
            stages: 3,
            split: false,
            bf16: false,
        },
        Kernel::PhaseStageSums {
            stage: 0,
            split: true,
        },
        Kernel::PhaseStageSums {
            stage: 2,
            split: true,
        },
        Kernel::PhaseStagesDequant {
            stages: 1,
            split: true,
            bf16: false,
        },
        Kernel::PhaseStagesDequant {
            stages: 3,
            split: true,
            bf16: false,
        },
        Kernel::PhaseStagesDequant {
            stages: 2,
            split: true,
            bf16: true,
        },
        Kernel::RealSums,
        Kernel::RealDequant { ternary: false },
        Kernel::RealDequant { ternary: true },
        Kernel::SoftmaxGrad,
        Kernel::Sample,
        Kernel::KlDivRows,
        Kernel::KlDivGrad { bf16: false },
        Kernel::KlDivGrad { bf16: true },
        Kernel::EmbedGrad,
        Kernel::WidelyLinear { part: WlPart::U },
        Kernel::WidelyLinear { part: WlPart::W },
        Kernel::WidelyLinearGrad { part: WlPart::U },
        Kernel::WidelyLinearGrad { part: WlPart::W },
    ];
    for complex in [false, true] {
        for gain in [false, true] {
            kernels.push(Kernel::RmsNormGrad { complex, gain });
        }
    }
    kernels.push(Kernel::MaskedSoftmax);
    kernels.push(Kernel::RunSums);
    kernels.push(Kernel::ToBf16);
    kernels.push(Kernel::FlashDelta);
    // SmolLM2's heads (64) and LLaMA's (128), the widest flash_applies takes.
    for (d, dv) in [(64, 64), (128, 128)] {
        for pass in [
            FlashPass::Forward,
            FlashPass::Stats,
            FlashPass::GradQ,
            FlashPass::GradKv,
        ] {
            kernels.push(Kernel::Flash { pass, d, dv });
        }
    }
    for func in [
        UnaryFn::Neg,
        UnaryFn::RoundBf16,
        UnaryFn::Exp,
        UnaryFn::Sqrt,
        UnaryFn::Recip,
        UnaryFn::Sigmoid,
    ] {
        kernels.push(Kernel::Map {
            expr: Expr::Apply(MapOp::Unary(func), vec![x()]),
            operands: vec![Elem::Real],
            out: Elem::Real,
        });
    }
    // A fused chain: 0.5·(x·s + y) over three operands.
    kernels.push(Kernel::Map {
        expr: Expr::Apply(
            MapOp::Scale(0.5),
            vec![Expr::Apply(
                MapOp::Add,
                vec![
                    Expr::Apply(MapOp::Mul, vec![x(), Expr::Operand(1)]),
                    Expr::Operand(2),
                ],
            )],
        ),
        operands: vec![Elem::Real; 3],
        out: Elem::Real,
    });
    // SiLU(gate)·up rounded to bf16 for the product that reads it.
    kernels.push(Kernel::Map {
        expr: Expr::Apply(
            MapOp::Mul,
            vec![Expr::Apply(MapOp::Silu, vec![x()]), Expr::Operand(1)],
        ),
        operands: vec![Elem::Real; 2],
        out: Elem::Bf16,
    });
    kernels.push(Kernel::Map {
        expr: Expr::Apply(MapOp::CReluSquaredGrad, vec![x(), Expr::Operand(1)]),
        operands: vec![Elem::Complex, Elem::Complex],
        out: Elem::Complex,
    });
    for op in [MapOp::Add, MapOp::Sub, MapOp::Mul] {
        for elem in [Elem::Real, Elem::Complex] {
            kernels.push(Kernel::Map {
                expr: Expr::Apply(op.clone(), vec![x(), Expr::Operand(1)]),
                operands: vec![elem, elem],
                out: elem,
            });
        }
    }
    for (op, elem) in [
        (MapOp::Conj, Elem::Complex),
        (MapOp::CReluSquared, Elem::Complex),
        (MapOp::Silu, Elem::Real),
        (MapOp::Scale(0.5), Elem::Complex),
        (MapOp::Fill(2.0), Elem::Complex),
        (MapOp::ClipFactor(1.0), Elem::Real),
        (MapOp::Unary(UnaryFn::Neg), Elem::Int),
    ] {
        kernels.push(Kernel::Map {
            expr: Expr::Apply(op, vec![x()]),
            operands: vec![elem],
            out: elem,
        });
    }
    kernels
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm_90() {
    let kernels = every_kernel();
    let text = ptx(&kernels).expect("PTX");
    assert!(text.contains(".target sm_90"), "{text}");
    for (i, k) in kernels.iter().enumerate() {
        let entry = format!(".entry {}(", k.symbol(i));
        assert!(text.contains(&entry), "no {entry} in the PTX");
    }
    // An intrinsic LLVM 19 does not know would be an undefined function.
    assert!(!text.contains(".extern .func"), "{text}");
    // The int8 kernel's products are integer dot products on permuted
    // bytes, with no float work per weight.
    let int8 = text
        .split(".entry ")
        .find(|k| k.starts_with("quant_linear_i8"))
        .expect("the int8 kernel");
    assert!(
        int8.contains("dp4a.s32.s32") && int8.contains("prmt.b32"),
        "{int8}"
    );
    // Design (b): the same permuted bytes into s8 tensor-core products.
    let mma = text
        .split(".entry ")
        .find(|k| k.starts_with("quant_linear_mma"))
        .expect("the tensor-core kernel");
    assert!(
        mma.contains("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32")
            && mma.contains("prmt.b32")
            && !mma.contains("dp4a"),
        "{mma}"
    );
    // The flash kernels' products are bf16 tensor-core products on
    // fragments `ldmatrix` takes from the shared tiles, which stay in
    // registers (no local memory); `flash_delta` is a row sum and takes none.
    let products = |k: &&str| k.starts_with("flash_") && !k.starts_with("flash_delta");
    for flash in text.split(".entry ").filter(products) {
        assert!(
            flash.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
            "{flash}"
        );
        assert!(
            flash.contains("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"),
            "{flash}"
        );
        assert!(!flash.contains(".local"), "{flash}");
    }
}

/// What the driver will do with the PTX on the GPU, done here: ptxas
/// assembles every kernel for sm_90 with no registers spilled to local
/// memory (the flash gradients spilled up to 56 bytes when they read their
/// operands from global memory a word at a time, before their shared tiles),
/// and the int8 products within the registers their grid assumes.
#[test]
fn every_kernel_assembles_for_sm_90_without_spills() {
    let kernels = every_kernel();
    let text = ptx(&kernels).expect("PTX");
    let Some(report) = ptxas::assemble_for_sm_90(&text, "every_kernel") else {
        return;
    };
    assert_eq!(report.len(), kernels.len(), "a report per kernel");
    let mut over = Vec::new();
    // The int8 products' grid counts on this many threads running on a
    // multiprocessor (65,536 registers) at once.
    let int8_threads_per_multiprocessor =
        (quant_i8::BLOCKS_PER_MULTIPROCESSOR * QUANT_ROWS_PER_BLOCK as usize * 32) as u32;
    for (i, kernel) in kernels.iter().enumerate() {
        let symbol = kernel.symbol(i);
        let r = report
            .iter()
            .find(|r| r.name == symbol)
            .unwrap_or_else(|| panic!("no report for {symbol}"));
        eprintln!(
            "{symbol:<24} {:>3} registers, {:>3} bytes spilled, {:>3} of stack",
            r.registers, r.spill_bytes, r.stack_bytes
        );
        if r.stack_bytes > 0 {
            over.push(format!("{symbol}: {} bytes", r.stack_bytes));
        }
        let threads = match kernel {
            Kernel::QuantLinearI8 {
                tensor_cores: true, ..
            }
            | Kernel::QuantLinearI8Rows {
                tensor_cores: true, ..
            } => {
                (quant_mma::MMA_BLOCKS_PER_MULTIPROCESSOR * QUANT_ROWS_PER_BLOCK as usize * 32)
                    as u32
            }
            Kernel::QuantLinearI8 { .. } | Kernel::QuantLinearI8Rows { .. } => {
                int8_threads_per_multiprocessor
            }
            // A block of its threads runs at all.
            Kernel::QuantizeRowsI8 { .. } => quant_i8::QUANTIZE_THREADS,
            _ => 0,
        };
        if r.registers * threads > 65_536 {
            over.push(format!("{symbol}: {} registers", r.registers));
        }
    }
    assert!(over.is_empty(), "spills or too many registers: {over:?}");
}
