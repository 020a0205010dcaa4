//! PTX for the CUDA backend, generated through LLVM's NVPTX target.
//!
//! Each [`Kernel`] is one specialised kernel: an elementwise expression
//! over broadcast operands, a row reduction, a gather, attention. They are
//! emitted as LLVM IR with inkwell, optimised at `O3` and printed as PTX
//! for `sm_90`; the driver compiles that PTX when the module loads, so the
//! machine that generates it needs no CUDA toolkit.
//!
//! LLVM 19 turns an intrinsic name it does not know into a call to an
//! undefined external function without complaint, so every `llvm.nvvm.*`
//! name goes through [`Gen::intrinsic`], which fails on an unknown one.
//! Transcendentals use the PTX approximations (`ex2.approx`,
//! `sin.approx`, `cos.approx`): LLVM 19 cannot lower `llvm.exp.f32` or
//! `llvm.sin.f32` for NVPTX without libdevice.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::types::{BasicMetadataTypeEnum, BasicType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue,
    PointerValue, ValueKind,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate, OptimizationLevel};

use fairyc_ir::{RopeLayout, UnaryFn};

pub use flash::{flash_applies, FlashPass};

/// The GPU the PTX targets (the H100 and H200).
pub const SM: &str = "sm_90";
/// Threads per block of the row kernels (a whole number of warps).
pub const ROW_THREADS: u32 = 256;
/// Threads per block of the elementwise kernels.
pub const MAP_THREADS: u32 = 256;
/// Threads per block of the attention kernels.
pub const ATTENTION_THREADS: u32 = 128;

/// One elementwise operation of an [`Expr`].
#[derive(Clone, Debug, PartialEq)]
pub enum MapOp {
    Add,
    Sub,
    Mul,
    Div,
    Unary(UnaryFn),
    Silu,
    Scale(f32),
    /// Ignores its operand's value (its shape is the output's).
    Fill(f32),
    Conj,
    CReluSquared,
    /// The gradient of `CReluSquared` at `z` for `dy`: `(2 re · Re dy, 2 im ·
    /// Im dy)`, 0 in the third quadrant.
    CReluSquaredGrad,
    /// `max_norm / sqrt(s)` where that is below 1, else 1 (`s` a squared norm).
    ClipFactor(f32),
}

/// An elementwise expression over the kernel's operands.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Operand(usize),
    Apply(MapOp, Vec<Expr>),
}

/// Element types of the data kernels read and write: f32, complex (an
/// interleaved pair of f32), i32, 2-bit codes packed four to a byte, and
/// real values rounded to bf16, two a word (written by a value's kernel
/// where only bf16 products read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    Real,
    Complex,
    Int,
    Code2,
    Bf16,
}

/// One kernel to generate.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// `out[i] = expr(operands[k][i mod len_k])`; operand `k` has element
    /// type `operands[k]` (a shorter operand repeats: suffix broadcasting).
    Map {
        expr: Expr,
        operands: Vec<Elem>,
        out: Elem,
    },
    /// RMSNorm of each row (one block a row); complex rows scale real parts
    /// by the first half of the gain and imaginary parts by the second.
    /// With `bf16` (real rows), written rounded to bf16 ([`Elem::Bf16`]).
    RmsNorm { complex: bool, bf16: bool },
    /// Softmax of each row (one block a row).
    Softmax,
    /// iFairy's activation quantizer on each row (one block a row); the
    /// real and imaginary parts of complex rows apart.
    ActQuant { complex: bool },
    /// `out[t, :] = table[ids[t], :]` (rows of `width` words).
    Embed,
    /// Rotary embedding; angles from a per-pair frequency table in f64.
    /// With `bf16` (real rows), written rounded to bf16 ([`Elem::Bf16`]):
    /// the gradient of a rotated query or key, which products read.
    Rope {
        layout: RopeLayout,
        complex: bool,
        bf16: bool,
    },
    /// Scaled dot-product attention over a KV cache ([`attention`]): one
    /// block per query row, key head and split of the keys, for heads of
    /// `d` and `dv` words and `group` query heads a key head; complex
    /// operands are real ones of twice the width (`Re(q·conj k)` is the
    /// real dot product of the interleaved parts).
    ///
    /// With `rope`, the queries are read before their rotary embedding
    /// (real, heads of `d` words, by this layout) and rotated as they load
    /// (`program::fusion::fold_ropes`).
    Attention {
        d: usize,
        dv: usize,
        group: usize,
        rope: Option<RopeLayout>,
    },
    /// `dst[r·dst_stride + dst_off + c] = src[r·src_stride + src_off + c]`
    /// on 32-bit words: slices and concatenations.
    Copy2d,
    /// A KV cache's new rows written after its rows in use, their count
    /// read on the device (`program::caches`).
    /// With `rope`, the new rows are keys read before their rotary
    /// embedding (real, by this layout), rotated as they are written.
    AppendRows { rope: Option<RopeLayout> },
    /// A permutation of axes (up to [`GATHER_RANK`]) on 32-bit words.
    Permute,
    /// `out[r, c] = x[r, index[c]]` on 32-bit words, 0 where `index[c] < 0`:
    /// `pack` and `unpack` (pairings of real channels into complex slots).
    GatherColumns,
    /// `out[p]` = f32 words `2p` and `2p + 1` rounded to bf16 (to nearest,
    /// ties to even; 0 past the end), the first in the low half: a dense
    /// product's operand for cuBLAS's bf16 inputs.
    ToBf16,
    /// `out[c] = Σ_r x[r·cols + c]` on f32 words, one block per column:
    /// `reduce_to` and the sums of the losses.
    ColumnSum,
    /// Sums of runs of consecutive f32 words, one block a run: the first
    /// pass of `reduce_to` a scalar of many words.
    RunSums,
    /// Per row of logits: `(logsumexp − logit[target], 1)` where the
    /// target is `>= 0`, else `(0, 0)`; one block a row. With `keep`, also
    /// each row's maximum and `Σ exp(logit − max)`, for the gradient of the
    /// same loss ([`Kernel::CrossEntropyGrad`] with `kept`).
    CrossEntropyRows { keep: bool },
    /// `out = sums[0] / sums[1]` (0 when nothing was scored).
    ScoredMean,
    /// `dloss · (softmax(row) − onehot(target)) / scored`; one block a row.
    /// With `bf16`, written rounded to bf16 ([`Elem::Bf16`]). With `kept`,
    /// each row's softmax statistics and the scored rows' count are read
    /// from the loss's kernels (`CrossEntropyRows { keep: true }`, and its
    /// sums) rather than computed again: one pass over the logits, not two.
    CrossEntropyGrad { bf16: bool, kept: bool },
    /// Per row of student and teacher logits: `(KL(teacher ‖ student), 1)`
    /// (summed and averaged as [`Kernel::CrossEntropyRows`]'); one block a row.
    KlDivRows,
    /// `dloss · (softmax(student) − softmax(teacher)) / rows`; one block a row.
    /// With `bf16`, written rounded to bf16 ([`Elem::Bf16`]).
    KlDivGrad { bf16: bool },
    /// The gradient of RMSNorm with respect to its input (`gain: false`;
    /// one block a row) or the per-row terms `dy·x·r` of the gain's
    /// gradient (`gain: true`, summed by [`Kernel::ColumnSum`]).
    RmsNormGrad { complex: bool, gain: bool },
    /// `out[ids[t], :] += dy[t, :]` by atomic adds into a zeroed table.
    EmbedGrad,
    /// Training's attention and its gradients without the scores in
    /// memory, on bf16 tensor-core products ([`flash`]); heads of `d` and
    /// `dv` words.
    Flash {
        pass: FlashPass,
        d: usize,
        dv: usize,
    },
    /// The flash gradients' `D = Σ dO ⊙ O` per row and head from the
    /// forward pass's output ([`flash`]'s `flash_delta`).
    FlashDelta,
    /// Softmax over each row's visible columns (a causal mask by the row's
    /// query within its segment), zeros after; one block a row: batched
    /// attention's weights between its cuBLAS products.
    MaskedSoftmax,
    /// The gradient of the real matrix from the gradient `d` of its `U` or
    /// `W` part (the adjoint of the split, eq. 7): each output element is
    /// ±½ of the real or imaginary part of one element of `d`, found
    /// through per-row and per-column pairing tables.
    WidelyLinearGrad { part: fairyc_ir::WlPart },
    /// Fairy2i's linear layer on packed 2-bit codes: `u_stages` stages
    /// applied to `x` and `w_stages` to `conj(x)`, one warp per output
    /// row, the codes decoded in registers.
    QuantLinear { u_stages: usize, w_stages: usize },
    /// [`Kernel::QuantLinear`] on int8 activations: each input row
    /// quantized with one step into shared memory, codes turned into
    /// signed bytes by byte permutes and multiplied by `dp4a`, one warp per
    /// output row (per-tensor or per-channel scales; inputs a multiple of
    /// [`quant_i8::RUN`], at most [`quant_i8::MAX_INPUTS`]). With
    /// `paired_input` it reads the real row that a `pack` would have paired
    /// (through the pack's table of source words), with `paired_output` it
    /// writes the real row an `unpack` of its output would give (through
    /// the inverse of the unpack's table): the widely-linear form's pairing
    /// folded into the product, not a launch of its own. `normed` (with
    /// `paired_input`) reads the row before its RMS norm, and normalises it
    /// as it quantizes it: the norm folded in too. `products` (at most
    /// [`quant_i8::MAX_PRODUCTS`]) products of the one input row in one
    /// launch, the row quantized once (q, k and v; gate and up). With a
    /// paired output, `residual` folds in the output's one reader where it
    /// adds a residual row (after o and down). With a paired input,
    /// `prologue` folds in the input's producer where it is elementwise
    /// (SiLU(gate)·up before down): the row is that expression over its
    /// operands, computed as it is quantized. With `tensor_cores` the
    /// products are tensor-core `mma` on codes re-packed at load (design
    /// (b), [`quant_mma`]), else `dp4a` (design (a), [`quant_i8`]).
    QuantLinearI8 {
        u_stages: usize,
        w_stages: usize,
        paired_input: bool,
        paired_output: bool,
        normed: bool,
        products: usize,
        residual: bool,
        prologue: Option<Expr>,
        tensor_cores: bool,
    },
    /// The int8 rows a [`Kernel::QuantLinearI8Rows`] reads, quantized once
    /// for all its blocks (instead of by each block): each input row (its
    /// pairing, norm and prologue folded in as in
    /// [`Kernel::QuantLinearI8`]) as int8 words in the order the `dp4a`
    /// kernel reads them, and its step; one block a row
    /// ([`quant_i8::QUANTIZE_THREADS`] threads); with `tensor_cores`, in
    /// the order the tensor-core kernel reads them.
    QuantizeRowsI8 {
        paired_input: bool,
        normed: bool,
        prologue: Option<Expr>,
        tensor_cores: bool,
    },
    /// [`Kernel::QuantLinearI8`] on rows a [`Kernel::QuantizeRowsI8`]
    /// quantized: each block copies a row's words into shared memory
    /// rather than quantizing it.
    QuantLinearI8Rows {
        u_stages: usize,
        w_stages: usize,
        paired_output: bool,
        products: usize,
        residual: bool,
        tensor_cores: bool,
    },
    /// `sum_squares` of a real tensor: runs of squares summed by many
    /// blocks, their sums by the last block to finish ([`rows`]).
    SumSquares,
    /// PhaseQuant's first pass (Fairy2i's, or iFairy's ties and floor):
    /// each group's axis sums and counts, added into f64 totals (a block
    /// per row and group of the row; per tensor, fewer).
    PhaseSums { ifairy: bool },
    /// PhaseQuant's second pass: each entry's code times its group's scale.
    PhaseDequant { ifairy: bool },
    /// `phase_codes`: Fairy2i's PhaseQuant code of each entry (as
    /// [`Kernel::PhaseDequant`] chooses it), packed as `dequant` reads
    /// them; one thread a word of codes.
    PhaseCodes,
    /// `phase_scales`' last pass: each group's `(s_re, s_im)` from the
    /// totals of [`Kernel::PhaseSums`], as [`Kernel::PhaseDequant`] takes
    /// them; one thread a group.
    PhaseScales,
    /// Fairy2i's PhaseQuant with residual stages fused: stage `stage`'s
    /// sums over the residual the earlier stages leave, each entry's
    /// residual rebuilt from their totals (as [`Kernel::PhaseSums`]).
    /// With `split`, of both halves of a real matrix's widely-linear split
    /// (`ctaid.y` the half), computed as they are read.
    PhaseStageSums { stage: usize, split: bool },
    /// The last pass of the fused stages: each entry's `stages` codes times
    /// their scales, summed.
    /// With `split`, of both halves of a real matrix's widely-linear split,
    /// written as the real form `2·(widely_linear_grad_u(U_q) +
    /// widely_linear_grad_w(W_q))`: the split,
    /// its quantizers and their adjoints in one step (one thread a slot),
    /// rounded to bf16 with `bf16` ([`Elem::Bf16`]).
    PhaseStagesDequant {
        stages: usize,
        split: bool,
        bf16: bool,
    },
    /// The real baselines' first pass: each group's sum of |w| and count
    /// over finite entries, added into f64 totals (as
    /// [`Kernel::PhaseSums`]).
    RealSums,
    /// The real baselines' second pass: each entry's binary or ternary code
    /// times its group's mean.
    RealDequant { ternary: bool },
    /// `dequant`: each code times its group's scale, one thread an element.
    Dequant,
    /// `y · (dy − Σ y·dy)` per row; one block a row.
    SoftmaxGrad,
    /// `sample`: an id drawn from each row of logits by its uniform draw
    /// at a temperature (greedy at 0); one block a row ([`sampling`]).
    Sample,
    /// The `U` or `W` part of a real matrix (eq. 3), f32 arithmetic; one
    /// thread an element, through per-slot row and column tables.
    WidelyLinear { part: fairyc_ir::WlPart },
}

/// Words of a block reduction's shared scratch: one a warp.
const SCRATCH_WORDS: u32 = ROW_THREADS / 32;

/// Output rows of [`Kernel::QuantLinear`] per block (one warp each).
pub const QUANT_ROWS_PER_BLOCK: u32 = 8;

/// Ranks [`Kernel::Permute`] handles (a complex tensor adds one).
pub const GATHER_RANK: usize = 8;

impl Kernel {
    /// The int8 product with no fold: one product of an unpaired complex
    /// row, by `dp4a` or on tensor cores.
    pub fn plain_int8(u_stages: usize, w_stages: usize, tensor_cores: bool) -> Kernel {
        Kernel::QuantLinearI8 {
            u_stages,
            w_stages,
            paired_input: false,
            paired_output: false,
            normed: false,
            products: 1,
            residual: false,
            prologue: None,
            tensor_cores,
        }
    }

    /// Whether the kernel writes its real output rounded to bf16
    /// ([`Elem::Bf16`]).
    pub fn writes_bf16(&self) -> bool {
        matches!(
            self,
            Kernel::Map {
                out: Elem::Bf16,
                ..
            } | Kernel::RmsNorm { bf16: true, .. }
                | Kernel::Rope { bf16: true, .. }
                | Kernel::CrossEntropyGrad { bf16: true, .. }
                | Kernel::KlDivGrad { bf16: true }
                | Kernel::PhaseStagesDequant { bf16: true, .. }
        )
    }

    /// The kernel's symbol: distinct kernels have distinct names.
    pub fn symbol(&self, index: usize) -> String {
        let base = match self {
            Kernel::Map { .. } => "map",
            Kernel::RmsNorm {
                complex: false,
                bf16: false,
            } => "rms_norm",
            Kernel::RmsNorm {
                complex: false,
                bf16: true,
            } => "rms_norm_bf16",
            Kernel::RmsNorm { complex: true, .. } => "rms_norm_complex",
            Kernel::Softmax => "softmax",
            Kernel::ActQuant { complex: false } => "act_quant",
            Kernel::ActQuant { complex: true } => "act_quant_complex",
            Kernel::Embed => "embed",
            Kernel::Rope { complex: true, .. } => "rope_complex",
            Kernel::Rope {
                layout: RopeLayout::Interleaved,
                bf16: false,
                ..
            } => "rope_interleaved",
            Kernel::Rope {
                layout: RopeLayout::Interleaved,
                bf16: true,
                ..
            } => "rope_interleaved_bf16",
            Kernel::Rope {
                layout: RopeLayout::HalfSplit,
                bf16: false,
                ..
            } => "rope_half_split",
            Kernel::Rope {
                layout: RopeLayout::HalfSplit,
                bf16: true,
                ..
            } => "rope_half_split_bf16",
            Kernel::Attention { rope: None, .. } => "attention",
            Kernel::Attention { rope: Some(_), .. } => "attention_roped",
            Kernel::Copy2d => "copy2d",
            Kernel::AppendRows { rope: None } => "append_rows",
            Kernel::AppendRows { rope: Some(_) } => "append_rows_roped",
            Kernel::Permute => "permute",
            Kernel::QuantLinear { .. } => "quant_linear",
            Kernel::QuantLinearI8 {
                tensor_cores: true, ..
            } => "quant_linear_mma",
            Kernel::QuantLinearI8 {
                normed: true,
                paired_output: true,
                ..
            } => "quant_linear_i8_normed",
            Kernel::QuantLinearI8 { normed: true, .. } => "quant_linear_i8_normed_input",
            Kernel::QuantLinearI8 {
                paired_input: false,
                paired_output: false,
                ..
            } => "quant_linear_i8",
            Kernel::QuantLinearI8 {
                paired_input: true,
                paired_output: false,
                ..
            } => "quant_linear_i8_paired_input",
            Kernel::QuantLinearI8 {
                paired_input: false,
                paired_output: true,
                ..
            } => "quant_linear_i8_paired_output",
            Kernel::QuantLinearI8 {
                paired_input: true,
                paired_output: true,
                ..
            } => "quant_linear_i8_paired",
            Kernel::QuantizeRowsI8 { .. } => "quantize_rows_i8",
            Kernel::QuantLinearI8Rows {
                tensor_cores: true, ..
            } => "quant_linear_mma_rows",
            Kernel::QuantLinearI8Rows { .. } => "quant_linear_i8_rows",
            Kernel::Dequant => "dequant",
            Kernel::SumSquares => "sum_squares",
            Kernel::PhaseSums { ifairy: false } => "phase_sums",
            Kernel::PhaseSums { ifairy: true } => "phase_sums_ifairy",
            Kernel::PhaseDequant { ifairy: false } => "phase_dequant",
            Kernel::PhaseDequant { ifairy: true } => "phase_dequant_ifairy",
            Kernel::PhaseCodes => "phase_codes",
            Kernel::PhaseScales => "phase_scales",
            Kernel::PhaseStageSums { split: false, .. } => "phase_stage_sums",
            Kernel::PhaseStageSums { split: true, .. } => "split_phase_stage_sums",
            Kernel::PhaseStagesDequant { split: false, .. } => "phase_stages_dequant",
            Kernel::PhaseStagesDequant {
                split: true,
                bf16: false,
                ..
            } => "split_phase_stages_dequant",
            Kernel::PhaseStagesDequant {
                split: true,
                bf16: true,
                ..
            } => "split_phase_stages_dequant_bf16",
            Kernel::RealSums => "real_sums",
            Kernel::RealDequant { ternary: false } => "binary_dequant",
            Kernel::RealDequant { ternary: true } => "ternary_dequant",
            Kernel::SoftmaxGrad => "softmax_grad",
            Kernel::Sample => "sample",
            Kernel::WidelyLinear { .. } => "widely_linear",
            Kernel::GatherColumns => "gather_columns",
            Kernel::ToBf16 => "to_bf16",
            Kernel::ColumnSum => "column_sum",
            Kernel::RunSums => "run_sums",
            Kernel::CrossEntropyRows { keep: false } => "cross_entropy_rows",
            Kernel::CrossEntropyRows { keep: true } => "cross_entropy_rows_keep",
            Kernel::ScoredMean => "scored_mean",
            Kernel::CrossEntropyGrad {
                bf16: false,
                kept: false,
            } => "cross_entropy_grad",
            Kernel::CrossEntropyGrad {
                bf16: true,
                kept: false,
            } => "cross_entropy_grad_bf16",
            Kernel::CrossEntropyGrad {
                bf16: false,
                kept: true,
            } => "cross_entropy_grad_kept",
            Kernel::CrossEntropyGrad {
                bf16: true,
                kept: true,
            } => "cross_entropy_grad_kept_bf16",
            Kernel::KlDivRows => "kl_div_rows",
            Kernel::KlDivGrad { bf16: false } => "kl_div_grad",
            Kernel::KlDivGrad { bf16: true } => "kl_div_grad_bf16",
            Kernel::RmsNormGrad { gain: false, .. } => "rms_norm_grad_input",
            Kernel::RmsNormGrad { gain: true, .. } => "rms_norm_grad_gain",
            Kernel::EmbedGrad => "embed_grad",
            Kernel::MaskedSoftmax => "masked_softmax",
            Kernel::Flash {
                pass: FlashPass::Forward,
                ..
            } => "flash_forward",
            Kernel::Flash {
                pass: FlashPass::Stats,
                ..
            } => "flash_stats",
            Kernel::Flash {
                pass: FlashPass::GradQ,
                ..
            } => "flash_grad_q",
            Kernel::Flash {
                pass: FlashPass::GradKv,
                ..
            } => "flash_grad_kv",
            Kernel::FlashDelta => "flash_delta",
            Kernel::WidelyLinearGrad { .. } => "widely_linear_grad",
        };
        format!("{base}_{index}")
    }
}

/// PTX text of a module holding `kernels`, named by [`Kernel::symbol`] with
/// their position.
pub fn ptx(kernels: &[Kernel]) -> Result<String, String> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let context = Context::create();
    let module = context.create_module("fairyc");
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    let machine = target
        .create_target_machine(
            &triple,
            SM,
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or("LLVM could not create an NVPTX target machine")?;
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let gen = Gen {
        context: &context,
        module,
        builder: context.create_builder(),
    };
    for (i, kernel) in kernels.iter().enumerate() {
        gen.kernel(kernel, &kernel.symbol(i))?;
    }
    gen.module.verify().map_err(|e| e.to_string())?;
    gen.finish(&machine)
}

/// A pointer to global memory (address space 1).
const GLOBAL: u16 = 1;
/// Shared memory (address space 3).
const SHARED: u16 = 3;
/// LLVM's PTX-kernel calling convention.
const PTX_KERNEL: u32 = 71;

struct Gen<'ctx> {
    context: &'ctx Context,
    module: Module<'ctx>,
    builder: Builder<'ctx>,
}

/// A value of an expression: real, complex as (re, im), or i32.
#[derive(Clone, Copy)]
enum Val<'ctx> {
    Real(FloatValue<'ctx>),
    Complex(FloatValue<'ctx>, FloatValue<'ctx>),
    Int(IntValue<'ctx>),
}

type Built<T> = Result<T, String>;

pub mod attention;
mod baseline;
mod elementwise;
pub mod flash;
mod layout;
mod phase;
mod quant;
pub mod quant_i8;
pub mod quant_mma;
mod rows;
mod sampling;

fn err(e: impl std::fmt::Display) -> String {
    format!("LLVM: {e}")
}

impl<'ctx> Gen<'ctx> {
    fn finish(self, machine: &TargetMachine) -> Result<String, String> {
        self.module
            .run_passes("default<O3>", machine, PassBuilderOptions::create())
            .map_err(|e| e.to_string())?;
        let buffer = machine
            .write_to_memory_buffer(&self.module, FileType::Assembly)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buffer.as_slice().to_vec()).map_err(|e| e.to_string())
    }

    fn f32(&self) -> inkwell::types::FloatType<'ctx> {
        self.context.f32_type()
    }
    fn f64(&self) -> inkwell::types::FloatType<'ctx> {
        self.context.f64_type()
    }
    fn i32(&self) -> inkwell::types::IntType<'ctx> {
        self.context.i32_type()
    }
    fn i64(&self) -> inkwell::types::IntType<'ctx> {
        self.context.i64_type()
    }
    fn global_ptr(&self) -> inkwell::types::PointerType<'ctx> {
        self.context.ptr_type(AddressSpace::from(GLOBAL))
    }

    /// Tells ptxas how `f` is launched: at most `threads` threads a block
    /// (a launch with more fails), and `blocks` blocks a multiprocessor at
    /// least, so that it keeps the registers within what that many blocks
    /// leave (`.maxntid`, `.minnctapersm`).
    fn launch_bounds(&self, f: FunctionValue<'ctx>, threads: u32, blocks: u32) -> Built<()> {
        for (key, value) in [("maxntidx", threads), ("minctasm", blocks)] {
            let note = self.context.metadata_node(&[
                f.as_global_value().as_pointer_value().into(),
                self.context.metadata_string(key).into(),
                self.i32().const_int(u64::from(value), false).into(),
            ]);
            self.module
                .add_global_metadata("nvvm.annotations", &note)
                .map_err(err)?;
        }
        Ok(())
    }

    /// Declares a kernel with parameters of the given kinds and positions
    /// the builder at its entry.
    fn declare(&self, name: &str, params: &[Param]) -> FunctionValue<'ctx> {
        let types: Vec<BasicMetadataTypeEnum> = params
            .iter()
            .map(|p| match p {
                Param::Ptr => self.global_ptr().into(),
                Param::I64 => self.i64().into(),
                Param::F32 => self.f32().into(),
            })
            .collect();
        let f =
            self.module
                .add_function(name, self.context.void_type().fn_type(&types, false), None);
        f.set_call_conventions(PTX_KERNEL);
        let entry = self.context.append_basic_block(f, "entry");
        self.builder.position_at_end(entry);
        f
    }

    /// Declares a kernel of `P` pointers then `I` integers, the most common
    /// signature, and returns it with them.
    fn declare_kernel<const P: usize, const I: usize>(&self, name: &str) -> Declared<'ctx, P, I> {
        self.declare_then(name, None)
    }

    /// [`Gen::declare_kernel`] with an f32 last (a norm's eps, a
    /// quantizer's level), returned after the integers.
    fn declare_kernel_f32<const P: usize, const I: usize>(
        &self,
        name: &str,
    ) -> DeclaredF32<'ctx, P, I> {
        let (f, ptrs, ints) = self.declare_then(name, Some(Param::F32));
        (f, ptrs, ints, self.param_float(f, (P + I) as u32))
    }

    /// A kernel of `P` pointers, `I` integers and `last`, with the first two.
    fn declare_then<const P: usize, const I: usize>(
        &self,
        name: &str,
        last: Option<Param>,
    ) -> Declared<'ctx, P, I> {
        let mut params = vec![Param::Ptr; P];
        params.extend([Param::I64; I]);
        params.extend(last);
        let f = self.declare(name, &params);
        (
            f,
            std::array::from_fn(|k| self.param_ptr(f, k as u32)),
            std::array::from_fn(|k| self.param_int(f, (P + k) as u32)),
        )
    }

    /// The declaration of an intrinsic that must exist in this LLVM.
    fn intrinsic(
        &self,
        name: &str,
        types: &[inkwell::types::BasicTypeEnum<'ctx>],
    ) -> Built<FunctionValue<'ctx>> {
        Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.module, types))
            .ok_or_else(|| format!("LLVM 19 has no intrinsic `{name}`"))
    }

    fn call(
        &self,
        f: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Built<BasicValueEnum<'ctx>> {
        match self
            .builder
            .build_call(f, args, "")
            .map_err(err)?
            .try_as_basic_value()
        {
            ValueKind::Basic(v) => Ok(v),
            ValueKind::Instruction(_) => Err("a void intrinsic used as a value".into()),
        }
    }

    fn call_void(
        &self,
        f: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Built<()> {
        self.builder.build_call(f, args, "").map_err(err)?;
        Ok(())
    }

    /// A special register (`tid.x`, `ctaid.x`, ...) as i64.
    fn sreg(&self, name: &str) -> Built<IntValue<'ctx>> {
        let f = self.intrinsic(&format!("llvm.nvvm.read.ptx.sreg.{name}"), &[])?;
        let v = self.call(f, &[])?.into_int_value();
        self.builder
            .build_int_z_extend(v, self.i64(), name)
            .map_err(err)
    }

    fn param_ptr(&self, f: FunctionValue<'ctx>, k: u32) -> PointerValue<'ctx> {
        f.get_nth_param(k).expect("declared").into_pointer_value()
    }
    fn param_int(&self, f: FunctionValue<'ctx>, k: u32) -> IntValue<'ctx> {
        f.get_nth_param(k).expect("declared").into_int_value()
    }
    fn param_float(&self, f: FunctionValue<'ctx>, k: u32) -> FloatValue<'ctx> {
        f.get_nth_param(k).expect("declared").into_float_value()
    }

    fn gep(
        &self,
        ty: impl BasicType<'ctx>,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Built<PointerValue<'ctx>> {
        // SAFETY (of the IR): callers index within the buffers the host
        // allocated for the launch's sizes.
        unsafe { self.builder.build_in_bounds_gep(ty, ptr, &[index], "") }.map_err(err)
    }

    fn load_f32(&self, ptr: PointerValue<'ctx>, index: IntValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let p = self.gep(self.f32(), ptr, index)?;
        Ok(self
            .builder
            .build_load(self.f32(), p, "")
            .map_err(err)?
            .into_float_value())
    }
    fn store_f32(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: FloatValue<'ctx>,
    ) -> Built<()> {
        let p = self.gep(self.f32(), ptr, index)?;
        self.builder.build_store(p, v).map_err(err)?;
        Ok(())
    }
    /// `ptr[index] = v` as an f32 or, with `bf16`, rounded to a bf16 (to
    /// nearest, ties to even) in an array of them ([`Elem::Bf16`]).
    fn store_real(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: FloatValue<'ctx>,
        bf16: bool,
    ) -> Built<()> {
        if !bf16 {
            return self.store_f32(ptr, index, v);
        }
        let half = self
            .builder
            .build_float_trunc(v, self.context.bf16_type(), "")
            .map_err(err)?;
        let p = self.gep(self.context.bf16_type(), ptr, index)?;
        self.builder.build_store(p, half).map_err(err)?;
        Ok(())
    }
    fn load_i32(&self, ptr: PointerValue<'ctx>, index: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        let p = self.gep(self.i32(), ptr, index)?;
        Ok(self
            .builder
            .build_load(self.i32(), p, "")
            .map_err(err)?
            .into_int_value())
    }
    fn store_i32(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: IntValue<'ctx>,
    ) -> Built<()> {
        let p = self.gep(self.i32(), ptr, index)?;
        self.builder.build_store(p, v).map_err(err)?;
        Ok(())
    }

    fn int(&self, v: u64) -> IntValue<'ctx> {
        self.i64().const_int(v, false)
    }
    fn float(&self, v: f32) -> FloatValue<'ctx> {
        self.f32().const_float(v as f64)
    }
    fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_add(a, b, "").map_err(err)
    }
    fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_sub(a, b, "").map_err(err)
    }
    fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_mul(a, b, "").map_err(err)
    }
    fn udiv(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_unsigned_div(a, b, "").map_err(err)
    }
    fn urem(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_unsigned_rem(a, b, "").map_err(err)
    }
    fn fadd(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_add(a, b, "").map_err(err)
    }
    fn fsub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_sub(a, b, "").map_err(err)
    }
    fn fmul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_mul(a, b, "").map_err(err)
    }
    fn fdiv(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_div(a, b, "").map_err(err)
    }
    fn fneg(&self, a: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_neg(a, "").map_err(err)
    }

    /// `e^x` as `2^(x·log2 e)` through `ex2.approx`.
    fn exp(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let ex2 = self.intrinsic("llvm.nvvm.ex2.approx.f", &[])?;
        let scaled = self.fmul(x, self.float(std::f32::consts::LOG2_E))?;
        Ok(self.call(ex2, &[scaled.into()])?.into_float_value())
    }

    fn sqrt(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.sqrt", &[self.f32().into()])?;
        Ok(self.call(f, &[x.into()])?.into_float_value())
    }

    fn fmax(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.maxnum", &[self.f32().into()])?;
        Ok(self.call(f, &[a.into(), b.into()])?.into_float_value())
    }

    fn fmin(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.minnum", &[self.f32().into()])?;
        Ok(self.call(f, &[a.into(), b.into()])?.into_float_value())
    }

    fn fabs(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.fabs", &[self.f32().into()])?;
        Ok(self.call(f, &[x.into()])?.into_float_value())
    }

    /// Rounds to the nearest integer, ties to even (`cvt.rni`).
    fn round_even(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.rint", &[self.f32().into()])?;
        Ok(self.call(f, &[x.into()])?.into_float_value())
    }

    /// Rounds to the nearest bf16 (ties to even) and back.
    fn round_bf16(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let half = self
            .builder
            .build_float_trunc(x, self.context.bf16_type(), "")
            .map_err(err)?;
        self.builder
            .build_float_ext(half, self.f32(), "")
            .map_err(err)
    }

    /// A loop over `i` in `start, start + step, ... < end`; `body` builds the
    /// loop's body at the builder's position.
    fn strided_loop(
        &self,
        f: FunctionValue<'ctx>,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>) -> Built<()>,
    ) -> Built<()> {
        let head = self.context.append_basic_block(f, "loop");
        let inside = self.context.append_basic_block(f, "body");
        let exit = self.context.append_basic_block(f, "exit");
        let before = self.builder.get_insert_block().expect("positioned");
        self.builder.build_unconditional_branch(head).map_err(err)?;
        self.builder.position_at_end(head);
        let i = self.builder.build_phi(self.i64(), "i").map_err(err)?;
        i.add_incoming(&[(&start, before)]);
        let iv = i.as_basic_value().into_int_value();
        let more = self.ult(iv, end)?;
        self.builder
            .build_conditional_branch(more, inside, exit)
            .map_err(err)?;
        self.builder.position_at_end(inside);
        body(iv)?;
        let next = self.add(iv, step)?;
        let latch = self.builder.get_insert_block().expect("positioned");
        i.add_incoming(&[(&next, latch)]);
        self.builder.build_unconditional_branch(head).map_err(err)?;
        self.builder.position_at_end(exit);
        Ok(())
    }

    /// A grid-stride loop over `0..n`.
    fn grid_loop(
        &self,
        f: FunctionValue<'ctx>,
        n: IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>) -> Built<()>,
    ) -> Built<()> {
        let (tid, ntid, ctaid, nctaid) = (
            self.sreg("tid.x")?,
            self.sreg("ntid.x")?,
            self.sreg("ctaid.x")?,
            self.sreg("nctaid.x")?,
        );
        let start = self.add(self.mul(ctaid, ntid)?, tid)?;
        let step = self.mul(nctaid, ntid)?;
        self.strided_loop(f, start, n, step, body)
    }

    /// A float local, allocated in the entry block (where LLVM promotes it
    /// to a register; an alloca inside a loop would grow the stack).
    fn local(&self, init: FloatValue<'ctx>) -> Built<PointerValue<'ctx>> {
        let slot = self.entry_slot(self.f32().into())?;
        self.builder.build_store(slot, init).map_err(err)?;
        Ok(slot)
    }

    /// An i32 variable starting at 0 (as [`Gen::local`]).
    fn local_int(&self) -> Built<PointerValue<'ctx>> {
        let slot = self.entry_slot(self.i32().into())?;
        self.builder
            .build_store(slot, self.i32().const_zero())
            .map_err(err)?;
        Ok(slot)
    }

    /// Stack space for a `ty`, allocated in the function's entry block.
    fn entry_slot(&self, ty: inkwell::types::BasicTypeEnum<'ctx>) -> Built<PointerValue<'ctx>> {
        let f = self
            .builder
            .get_insert_block()
            .and_then(|b| b.get_parent())
            .expect("in a function");
        let entry = f.get_first_basic_block().expect("has an entry");
        let at_entry = self.context.create_builder();
        match entry.get_first_instruction() {
            Some(first) => at_entry.position_before(&first),
            None => at_entry.position_at_end(entry),
        }
        at_entry.build_alloca(ty, "local").map_err(err)
    }

    fn get(&self, slot: PointerValue<'ctx>) -> Built<FloatValue<'ctx>> {
        Ok(self
            .builder
            .build_load(self.f32(), slot, "")
            .map_err(err)?
            .into_float_value())
    }

    fn set(&self, slot: PointerValue<'ctx>, v: FloatValue<'ctx>) -> Built<()> {
        self.builder.build_store(slot, v).map_err(err)?;
        Ok(())
    }

    fn ret(&self) -> Built<()> {
        self.builder.build_return(None).map_err(err)?;
        Ok(())
    }

    fn kernel(&self, kernel: &Kernel, name: &str) -> Built<()> {
        match kernel {
            Kernel::Map {
                expr,
                operands,
                out,
            } => self.map(name, expr, operands, *out),
            Kernel::RmsNorm { complex, bf16 } => self.rms_norm(name, *complex, *bf16),
            Kernel::Softmax => self.softmax(name),
            Kernel::ActQuant { complex } => self.act_quant(name, *complex),
            Kernel::Embed => self.embed(name),
            Kernel::Rope {
                layout,
                complex,
                bf16,
            } => self.rope(name, *layout, *complex, *bf16),
            Kernel::Attention { d, dv, group, rope } => {
                self.attention(name, (*d, *dv, *group), *rope)
            }
            Kernel::Copy2d => self.copy2d(name),
            Kernel::AppendRows { rope } => self.append_rows(name, *rope),
            Kernel::Permute => self.permute(name),
            Kernel::GatherColumns => self.gather_columns(name),
            Kernel::ColumnSum => self.column_sum(name),
            Kernel::RunSums => self.run_sums(name),
            Kernel::CrossEntropyRows { keep } => self.cross_entropy_rows(name, *keep),
            Kernel::ScoredMean => self.scored_mean(name),
            Kernel::ToBf16 => self.to_bf16(name),
            Kernel::CrossEntropyGrad { bf16, kept } => self.cross_entropy_grad(name, *bf16, *kept),
            Kernel::KlDivRows => self.kl_div_rows(name),
            Kernel::KlDivGrad { bf16 } => self.kl_div_grad(name, *bf16),
            Kernel::RmsNormGrad { complex, gain } => self.rms_norm_grad(name, *complex, *gain),
            Kernel::EmbedGrad => self.embed_grad(name),
            Kernel::MaskedSoftmax => self.masked_softmax(name),
            Kernel::Flash { pass, d, dv } => self.flash(name, *pass, *d, *dv),
            Kernel::FlashDelta => self.flash_delta(name),
            Kernel::WidelyLinearGrad { part } => self.widely_linear_grad(name, *part),
            Kernel::QuantLinear { u_stages, w_stages } => {
                self.quant_linear(name, *u_stages, *w_stages)
            }
            Kernel::QuantLinearI8 {
                u_stages,
                w_stages,
                paired_input,
                paired_output,
                normed,
                products,
                residual,
                prologue,
                tensor_cores,
            } => {
                let kernel = quant_i8::Int8Kernel {
                    stages: (*u_stages, *w_stages),
                    paired: (*paired_input, *paired_output),
                    normed: *normed,
                    products: *products,
                    residual: *residual,
                    prologue: prologue.as_ref(),
                    quantized: false,
                };
                if *tensor_cores {
                    self.quant_linear_mma(name, kernel)
                } else {
                    self.quant_linear_i8(name, kernel)
                }
            }
            Kernel::QuantizeRowsI8 {
                paired_input,
                normed,
                prologue,
                tensor_cores,
            } => {
                let layout = if *tensor_cores {
                    quant_i8::RowLayout::Chunks
                } else {
                    quant_i8::RowLayout::Runs
                };
                let input = (*paired_input, *normed);
                self.quantize_rows_i8(name, input, prologue.as_ref(), layout)
            }
            Kernel::QuantLinearI8Rows {
                u_stages,
                w_stages,
                paired_output,
                products,
                residual,
                tensor_cores,
            } => {
                let kernel = quant_i8::Int8Kernel {
                    stages: (*u_stages, *w_stages),
                    paired: (false, *paired_output),
                    normed: false,
                    products: *products,
                    residual: *residual,
                    prologue: None,
                    quantized: true,
                };
                if *tensor_cores {
                    self.quant_linear_mma(name, kernel)
                } else {
                    self.quant_linear_i8(name, kernel)
                }
            }
            Kernel::Dequant => self.dequant(name),
            Kernel::SumSquares => self.sum_squares(name),
            Kernel::PhaseSums { ifairy } => self.phase_sums(name, *ifairy),
            Kernel::PhaseDequant { ifairy } => self.phase_dequant(name, *ifairy),
            Kernel::PhaseCodes => self.phase_codes(name),
            Kernel::PhaseScales => self.phase_scales(name),
            Kernel::PhaseStageSums { stage, split } => self.phase_stage_sums(name, *stage, *split),
            Kernel::PhaseStagesDequant {
                stages,
                split: false,
                bf16: false,
            } => self.phase_stages_dequant(name, *stages),
            Kernel::PhaseStagesDequant {
                split: false,
                bf16: true,
                ..
            } => Err("complex stages are not written rounded to bf16".into()),
            Kernel::PhaseStagesDequant {
                stages,
                split: true,
                bf16,
            } => self.split_phase_stages_dequant(name, *stages, *bf16),
            Kernel::RealSums => self.real_sums(name),
            Kernel::RealDequant { ternary } => self.real_dequant(name, *ternary),
            Kernel::SoftmaxGrad => self.softmax_grad(name),
            Kernel::Sample => self.sample(name),
            Kernel::WidelyLinear { part } => self.widely_linear(name, *part),
        }
    }

    /// Block-wide reductions: shared scratch of one float per warp (blocks
    /// of at most [`ROW_THREADS`] threads).
    fn shared_scratch(&self, name: &str) -> PointerValue<'ctx> {
        let ty = self.f32().array_type(SCRATCH_WORDS);
        self.shared_array(ty, &format!("{name}_scratch"))
            .as_pointer_value()
    }

    /// A block's array in shared memory, private to the module.
    fn shared_array(
        &self,
        ty: inkwell::types::ArrayType<'ctx>,
        name: &str,
    ) -> inkwell::values::GlobalValue<'ctx> {
        let g = self
            .module
            .add_global(ty, Some(AddressSpace::from(SHARED)), name);
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g
    }

    /// Sums `v` over the warp (a butterfly: every lane gets the sum).
    fn warp_sum(&self, v: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.butterfly(v, &[16, 8, 4, 2, 1], false)
    }

    /// Combines `v` (max or sum) with the lanes `deltas` apart, one after
    /// another: every lane of each group of `Σ deltas + 1` lanes gets the
    /// result.
    fn butterfly(
        &self,
        mut v: FloatValue<'ctx>,
        deltas: &[u64],
        max: bool,
    ) -> Built<FloatValue<'ctx>> {
        let shfl = self.intrinsic("llvm.nvvm.shfl.sync.bfly.f32", &[])?;
        for &delta in deltas {
            let other = self
                .call(
                    shfl,
                    &[
                        self.i32().const_all_ones().into(),
                        v.into(),
                        self.i32().const_int(delta, false).into(),
                        self.i32().const_int(31, false).into(),
                    ],
                )?
                .into_float_value();
            v = if max {
                self.fmax(v, other)?
            } else {
                self.fadd(v, other)?
            };
        }
        Ok(v)
    }

    /// Reduces `v` over the block (sum or max); every thread gets the result.
    fn block_reduce(
        &self,
        scratch: PointerValue<'ctx>,
        v: FloatValue<'ctx>,
        max: bool,
    ) -> Built<FloatValue<'ctx>> {
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        let warp = |v| self.butterfly(v, &[16, 8, 4, 2, 1], max);
        let v = warp(v)?;
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let warp_id = self.udiv(tid, self.int(32))?;
        let f = self
            .builder
            .get_insert_block()
            .and_then(|b| b.get_parent())
            .expect("in a function");
        let write = self.context.append_basic_block(f, "write");
        let after = self.context.append_basic_block(f, "written");
        let first = self.eq_int(lane, self.int(0))?;
        self.builder
            .build_conditional_branch(first, write, after)
            .map_err(err)?;
        self.builder.position_at_end(write);
        let slot = unsafe {
            self.builder
                .build_in_bounds_gep(self.f32(), scratch, &[warp_id], "")
        }
        .map_err(err)?;
        self.builder.build_store(slot, v).map_err(err)?;
        self.builder
            .build_unconditional_branch(after)
            .map_err(err)?;
        self.builder.position_at_end(after);
        self.call_void(barrier, &[])?;
        // Every warp reads the per-warp partials (lanes past the warp count
        // take the identity) and reduces them the same way.
        let warps = self.udiv(self.sreg("ntid.x")?, self.int(32))?;
        let in_range = self.ult(lane, warps)?;
        let safe_lane = self.select(in_range, lane, self.int(0))?;
        let slot = unsafe {
            self.builder
                .build_in_bounds_gep(self.f32(), scratch, &[safe_lane], "")
        }
        .map_err(err)?;
        let partial = self
            .builder
            .build_load(self.f32(), slot, "")
            .map_err(err)?
            .into_float_value();
        let identity = if max {
            self.float(f32::NEG_INFINITY)
        } else {
            self.float(0.0)
        };
        let partial = self.select(in_range, partial, identity)?;
        let total = warp(partial)?;
        // The scratch is reused by the next reduction.
        self.call_void(barrier, &[])?;
        Ok(total)
    }

    /// Sums `term(i)` over `i` in `0..n` by this thread's share, then over
    /// the block.
    fn row_sum(
        &self,
        f: FunctionValue<'ctx>,
        scratch: PointerValue<'ctx>,
        n: IntValue<'ctx>,
        max: bool,
        term: impl Fn(IntValue<'ctx>) -> Built<FloatValue<'ctx>>,
    ) -> Built<FloatValue<'ctx>> {
        let identity = if max {
            self.float(f32::NEG_INFINITY)
        } else {
            self.float(0.0)
        };
        let acc = self.local(identity)?;
        let tid = self.sreg("tid.x")?;
        let threads = self.sreg("ntid.x")?;
        self.strided_loop(f, tid, n, threads, |i| {
            let old = self.get(acc)?;
            let t = term(i)?;
            self.set(
                acc,
                if max {
                    self.fmax(old, t)?
                } else {
                    self.fadd(old, t)?
                },
            )
        })?;
        self.block_reduce(scratch, self.get(acc)?, max)
    }

    /// An i32 as an i64 index (sign-extended).
    fn widen(&self, v: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_int_s_extend(v, self.i64(), "")
            .map_err(err)
    }

    /// Row `r`'s target in `targets` as an index, and whether it is scored
    /// (non-negative: negative targets are ignored).
    fn target(
        &self,
        targets: PointerValue<'ctx>,
        r: IntValue<'ctx>,
    ) -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
        let t = self.load_i32(targets, r)?;
        let scored = self
            .builder
            .build_int_compare(IntPredicate::SGE, t, self.i32().const_zero(), "")
            .map_err(err)?;
        Ok((self.widen(t)?, scored))
    }

    /// Token `t` of `ids` as a row index, 0 where it is outside
    /// `0..vocab`, and whether it was inside.
    fn token(
        &self,
        ids: PointerValue<'ctx>,
        t: IntValue<'ctx>,
        vocab: IntValue<'ctx>,
    ) -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
        let id = self.widen(self.load_i32(ids, t)?)?;
        // Unsigned: a negative id compares as huge.
        let known = self.ult(id, vocab)?;
        let safe = self.select(known, id, self.int(0))?;
        Ok((safe, known))
    }
}

impl<'ctx> Gen<'ctx> {
    /// Asks for the line of the i32 `ptr[index]` in L1 (`prefetch`: a
    /// hint, no value, no fault), so that a later load finds it there.
    fn prefetch_i32(&self, ptr: PointerValue<'ctx>, index: IntValue<'ctx>) -> Built<()> {
        let p = self.gep(self.i32(), ptr, index)?;
        let fn_type = self
            .context
            .void_type()
            .fn_type(&[self.global_ptr().into()], false);
        let asm = self.context.create_inline_asm(
            fn_type,
            "prefetch.global.L1 [$0];".into(),
            "l".into(),
            true,
            false,
            None,
            false,
        );
        self.builder
            .build_indirect_call(fn_type, asm, &[p.into()], "")
            .map_err(err)?;
        Ok(())
    }

    /// `v`, as a value LLVM cannot see through and that depends on
    /// `within` (a 64-bit register copy, `mov.b64`, given `within` as an
    /// operand it does not read): what is computed from it stays in the loop
    /// over `within` rather than being hoisted out and held in registers
    /// across it.
    fn loop_variant(&self, v: IntValue<'ctx>, within: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.asm_int("mov.b64 $0, $1;", "=l,l,l", &[v, within])
    }

    /// The integer result of inline PTX `text` on `args` (`constraints`
    /// LLVM's: the result's first), of the first argument's type; no side
    /// effects, so LLVM may move or merge it like any pure value.
    fn asm_int(
        &self,
        text: &str,
        constraints: &str,
        args: &[IntValue<'ctx>],
    ) -> Built<IntValue<'ctx>> {
        let ty = args[0].get_type();
        let params: Vec<BasicMetadataTypeEnum> = args.iter().map(|a| a.get_type().into()).collect();
        let fn_type = ty.fn_type(&params, false);
        let asm = self.context.create_inline_asm(
            fn_type,
            text.into(),
            constraints.into(),
            false,
            false,
            None,
            false,
        );
        let values: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        let call = self
            .builder
            .build_indirect_call(fn_type, asm, &values, "")
            .map_err(err)?;
        match call.try_as_basic_value() {
            ValueKind::Basic(v) => Ok(v.into_int_value()),
            ValueKind::Instruction(_) => Err(format!("`{text}` returned no value")),
        }
    }

    /// `ptr[index] += v` for f32 or f64 in global memory, as one
    /// `red.global.add` (inkwell's atomicrmw builder takes integers only).
    fn atomic_add(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: FloatValue<'ctx>,
    ) -> Built<()> {
        let ty = v.get_type();
        let (suffix, constraint) = if ty == self.f64() {
            ("f64", "d")
        } else {
            ("f32", "f")
        };
        let p = self.gep(ty, ptr, index)?;
        let fn_type = self
            .context
            .void_type()
            .fn_type(&[self.global_ptr().into(), ty.into()], false);
        let asm = self.context.create_inline_asm(
            fn_type,
            format!("red.global.add.{suffix} [$0], $1;"),
            format!("l,{constraint},~{{memory}}"),
            true,
            false,
            None,
            false,
        );
        self.builder
            .build_indirect_call(fn_type, asm, &[p.into(), v.into()], "")
            .map_err(err)?;
        Ok(())
    }

    /// `c ? a : b`, for values of one type (ints, floats, pointers).
    fn select<V>(&self, c: IntValue<'ctx>, a: V, b: V) -> Built<V>
    where
        V: BasicValue<'ctx> + TryFrom<BasicValueEnum<'ctx>>,
    {
        let picked = self.builder.build_select(c, a, b, "").map_err(err)?;
        V::try_from(picked).map_err(|_| "a select of one type gives that type".into())
    }

    fn i64_to_f32(&self, v: IntValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder
            .build_unsigned_int_to_float(v, self.f32(), "")
            .map_err(err)
    }

    /// Whether an i64 flag parameter (such as `per_tensor`) is non-zero.
    fn is_set(&self, flag: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_int_compare(IntPredicate::NE, flag, self.int(0), "")
            .map_err(err)
    }

    /// A two-way branch: `then` where `condition` holds, `otherwise` where
    /// it does not.
    fn when_else(
        &self,
        f: FunctionValue<'ctx>,
        condition: IntValue<'ctx>,
        then: impl FnOnce() -> Built<()>,
        otherwise: impl FnOnce() -> Built<()>,
    ) -> Built<()> {
        let (yes, no) = (
            self.context.append_basic_block(f, "then"),
            self.context.append_basic_block(f, "else"),
        );
        let after = self.context.append_basic_block(f, "after");
        self.builder
            .build_conditional_branch(condition, yes, no)
            .map_err(err)?;
        self.builder.position_at_end(yes);
        then()?;
        self.builder
            .build_unconditional_branch(after)
            .map_err(err)?;
        self.builder.position_at_end(no);
        otherwise()?;
        self.builder
            .build_unconditional_branch(after)
            .map_err(err)?;
        self.builder.position_at_end(after);
        Ok(())
    }

    /// An i64 variable starting at `init`.
    fn local_i64(&self, init: IntValue<'ctx>) -> Built<PointerValue<'ctx>> {
        let slot = self.entry_slot(self.i64().into())?;
        self.builder.build_store(slot, init).map_err(err)?;
        Ok(slot)
    }

    fn get_i64(&self, slot: PointerValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.load_int(self.i64(), slot)
    }

    fn set_i64(&self, slot: PointerValue<'ctx>, v: IntValue<'ctx>) -> Built<()> {
        self.builder.build_store(slot, v).map_err(err)?;
        Ok(())
    }

    /// `a == b`.
    fn eq_int(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_int_compare(IntPredicate::EQ, a, b, "")
            .map_err(err)
    }

    /// `a < b`, unsigned.
    fn ult(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_int_compare(IntPredicate::ULT, a, b, "")
            .map_err(err)
    }

    /// The smaller of `a` and `b`, unsigned.
    fn umin(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.select(self.ult(a, b)?, a, b)
    }

    /// `!a` of a flag.
    fn not(&self, a: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_not(a, "").map_err(err)
    }

    /// `a >= b` (ordered).
    fn fge(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_float_compare(FloatPredicate::OGE, a, b, "")
            .map_err(err)
    }

    /// `a > b` (ordered).
    fn fgt(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_float_compare(FloatPredicate::OGT, a, b, "")
            .map_err(err)
    }

    /// An integer variable's value (`slot` holds a `ty`).
    fn load_int(
        &self,
        ty: inkwell::types::IntType<'ctx>,
        slot: PointerValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        Ok(self
            .builder
            .build_load(ty, slot, "")
            .map_err(err)?
            .into_int_value())
    }

    /// `body`, run by the block that arrives last of the `blocks` counted
    /// in the 32-bit word `arrivals[index]` (0 between launches; that
    /// block sets it back to 0): it sees what every block wrote before
    /// arriving. The block's writes are out (a barrier) before its first
    /// thread counts it, between two fences: the first releases them with
    /// the arrival, the second acquires the other blocks' for the last
    /// block (`__threadfence` on both sides of the `atomicAdd`). Every
    /// thread of the block must reach it (its barriers).
    fn when_last_block(
        &self,
        f: FunctionValue<'ctx>,
        name: &str,
        (arrivals, index): (PointerValue<'ctx>, IntValue<'ctx>),
        blocks: IntValue<'ctx>,
        body: impl FnOnce() -> Built<()>,
    ) -> Built<()> {
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        self.call_void(barrier, &[])?;
        let last = self
            .shared_array(self.i32().array_type(1), &format!("{name}_last"))
            .as_pointer_value();
        let zero = self.int(0);
        let first = self.eq_int(self.sreg("tid.x")?, zero)?;
        self.when(f, first, || {
            self.fence_gpu()?;
            let before = self.fetch_add_one_u32(arrivals, index)?;
            self.fence_gpu()?;
            let is_last = self.eq_int(before, self.sub(blocks, self.int(1))?)?;
            let flag = self
                .builder
                .build_int_z_extend(is_last, self.i32(), "")
                .map_err(err)?;
            self.store_i32(last, zero, flag)
        })?;
        self.call_void(barrier, &[])?;
        let is_last = self.eq_int(self.widen(self.load_i32(last, zero)?)?, self.int(1))?;
        self.when(f, is_last, || {
            body()?;
            self.when(f, first, || {
                self.store_i32(arrivals, index, self.i32().const_zero())
            })
        })
    }

    /// `fence.acq_rel.gpu`: this thread's writes before it are seen by any
    /// thread that sees its writes after it (`__threadfence`).
    fn fence_gpu(&self) -> Built<()> {
        let fn_type = self.context.void_type().fn_type(&[], false);
        let asm = self.context.create_inline_asm(
            fn_type,
            "fence.acq_rel.gpu;".into(),
            "~{memory}".into(),
            true,
            false,
            None,
            false,
        );
        self.builder
            .build_indirect_call(fn_type, asm, &[], "")
            .map_err(err)?;
        Ok(())
    }

    /// Adds 1 to the 32-bit word `ptr[index]` atomically; its value before.
    fn fetch_add_one_u32(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        let p = self.gep(self.i32(), ptr, index)?;
        let before = self
            .builder
            .build_atomicrmw(
                inkwell::AtomicRMWBinOp::Add,
                p,
                self.i32().const_int(1, false),
                inkwell::AtomicOrdering::Monotonic,
            )
            .map_err(err)?;
        self.widen(before)
    }

    /// `ptr[index]`, read from memory past L1 (a volatile load): another
    /// block wrote it during this launch.
    fn load_f32_volatile(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Built<FloatValue<'ctx>> {
        let p = self.gep(self.f32(), ptr, index)?;
        let v = self.builder.build_load(self.f32(), p, "").map_err(err)?;
        v.as_instruction_value()
            .ok_or("a load is an instruction")?
            .set_volatile(true)
            .map_err(err)?;
        Ok(v.into_float_value())
    }

    /// A branch: `body` runs where `condition` holds.
    fn when(
        &self,
        f: FunctionValue<'ctx>,
        condition: IntValue<'ctx>,
        body: impl FnOnce() -> Built<()>,
    ) -> Built<()> {
        let then = self.context.append_basic_block(f, "then");
        let after = self.context.append_basic_block(f, "after");
        self.builder
            .build_conditional_branch(condition, then, after)
            .map_err(err)?;
        self.builder.position_at_end(then);
        body()?;
        self.builder
            .build_unconditional_branch(after)
            .map_err(err)?;
        self.builder.position_at_end(after);
        Ok(())
    }
}

/// A kernel declared by [`Gen::declare_kernel`]: the function, its
/// pointers and its integers.
type Declared<'ctx, const P: usize, const I: usize> = (
    FunctionValue<'ctx>,
    [PointerValue<'ctx>; P],
    [IntValue<'ctx>; I],
);

/// A kernel declared by [`Gen::declare_kernel_f32`]: [`Declared`] and the
/// f32.
type DeclaredF32<'ctx, const P: usize, const I: usize> = (
    FunctionValue<'ctx>,
    [PointerValue<'ctx>; P],
    [IntValue<'ctx>; I],
    FloatValue<'ctx>,
);

#[derive(Clone, Copy)]
enum Param {
    Ptr,
    I64,
    F32,
}
