//! A graph compiled for the GPU: its kernels generated and loaded once, its
//! weights (and weight expressions, folded on the host) resident on the
//! device; each run uploads the inputs, launches a kernel (or a cuBLAS
//! product) per node on the program's own stream and downloads the outputs.
//! From the second run with the same input shapes, the run is one launch of
//! a CUDA graph captured from it ([`replay`]).

use std::collections::{HashMap, HashSet};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use fairyc_ir::infer::infer_type;
use fairyc_ir::quant::Pairing;
use fairyc_ir::{
    Arithmetic, DType, Dim, Granularity, Graph, NormOperand, Op, Scheme, Shape, TensorType,
    ValueId, WeightStore,
};
use num_complex::Complex32;

use super::codegen::{
    self, Elem, Expr, Kernel, MapOp, ATTENTION_THREADS, GATHER_RANK, MAP_THREADS, ROW_THREADS,
};
use super::{
    int8_applies, Communicator, Cuda, GpuActivations, GpuAttention, GpuMatmul, Int8Products,
    RowQuantization,
};
use crate::plan::MemoryPlan;
use crate::profile::{self, OpProfile};

mod attention;
mod caches;
mod eval;
mod fusion;
mod products;
mod quant;
pub mod replay;

pub use fusion::{QUANTIZE_ONCE_INPUTS, QUANTIZE_ONCE_ROWS};

use crate::reference::{bind_inputs, bind_shape, load_resident, load_weights};
use crate::tensor::{Data, DeviceData, Tensor};
use crate::{BackendError, Program};
use attention::Segments;

/// The words a value of `shape` and `elem` takes on the device.
fn word_count(shape: &[usize], elem: Elem) -> usize {
    match elem {
        Elem::Code2 => code_bytes(shape).div_ceil(4),
        Elem::Bf16 => shape.iter().product::<usize>().div_ceil(2),
        elem => shape.iter().product::<usize>() * words_per(elem),
    }
}

/// A tensor on the device: 32-bit words (f32, i32, complex as two f32, or
/// two bf16 where only products read it).
#[derive(Clone)]
struct DeviceTensor {
    shape: Vec<usize>,
    elem: Elem,
    words: Arc<CudaSlice<u32>>,
    /// For a buffer with room to grow along the first axis (a KV cache,
    /// `caches`): the words of it in use, shared by the tensors that view
    /// it; `None` for any other.
    room: Option<Arc<AtomicUsize>>,
}

impl DeviceTensor {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    fn word_count(&self) -> usize {
        word_count(&self.shape, self.elem)
    }
    fn dtype(&self) -> DType {
        match self.elem {
            Elem::Real => DType::F32,
            Elem::Complex => DType::C64,
            Elem::Int => DType::I32,
            Elem::Code2 => DType::Code2,
            // An f32 value, kept rounded for the products that read it.
            Elem::Bf16 => DType::F32,
        }
    }
}

/// Bytes of packed codes `[n, m]` (rows padded to whole bytes).
fn code_bytes(shape: &[usize]) -> usize {
    match shape {
        [rows @ .., m] => rows.iter().product::<usize>() * m.div_ceil(4),
        [] => 0,
    }
}

fn words_per(elem: Elem) -> usize {
    if elem == Elem::Complex {
        2
    } else {
        1
    }
}

fn elem_of(dtype: DType) -> Result<Elem, String> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(Elem::Real),
        DType::C64 => Ok(Elem::Complex),
        DType::I32 => Ok(Elem::Int),
        DType::Code2 => Ok(Elem::Code2),
    }
}

/// What runs for one node.
enum Step {
    /// Generated kernels, launched in order (indices into the program's
    /// functions).
    Kernel(Vec<usize>),
    /// An elementwise kernel with the elementwise nodes before it fused in
    /// (`fusion`), reading `operands` instead of the node's own.
    Fused {
        kernel: usize,
        operands: Vec<ValueId>,
    },
    /// `Σ_rows dyᵀ · x` through cuBLAS.
    WeightGrad,
    /// A dense product through cuBLAS.
    Gemm,
    /// `linear` of `operands[0]` by the transpose of the 2-D `operands[1]`
    /// (its weight operand's operand): cuBLAS transposes it in the product
    /// ([`fusion::fold_transposed_weights`]).
    GemmTransposedWeight { operands: Vec<ValueId> },
    /// A new shape over the same words.
    Alias,
    /// `zeros`: a buffer zeroed on the stream, no kernel.
    Zeros,
    /// Fairy2i's PhaseQuant with residual stages as one step
    /// ([`fusion::fuse_phase_stages`]): each stage's sums pass over the
    /// residual, then the codes' sum, all from `operands[0]`, the weight
    /// before quantization. With `split` (its pairings' `(row_block,
    /// col_block)`), `operands[0]` is a real master and the step its
    /// quantized real form ([`fusion::fuse_split_quantizers`]).
    PhaseStages {
        kernels: Vec<usize>,
        operands: Vec<ValueId>,
        granularity: Granularity,
        split: Option<(usize, usize)>,
    },
    /// `all_reduce` or `broadcast_from` over the data-parallel group's GPUs,
    /// through NCCL.
    Collective,
    /// The int8 `quant_linear` of node `node` with the `pack` of its input
    /// and the `unpack` of its output folded in where they are `Some`
    /// ([`fusion::fold_pairings`]): it reads `operands` (the pack's source
    /// in place of its input) and, with an unpack, is that node's step and
    /// writes its value. With `norm` (an `rms_norm` node, folded by
    /// [`fusion::fold_norms`]) the source is the norm's input, and the norm's
    /// gain is the last operand.
    PairedQuantLinear {
        kernel: usize,
        operands: Vec<ValueId>,
        node: usize,
        pack: Option<usize>,
        unpack: Option<usize>,
        norm: Option<usize>,
        /// Products of the same row launched with this one
        /// ([`fusion::group_siblings`]): their weights follow this one's in
        /// `operands` (before a norm's gain), and their values are kept for
        /// their own steps ([`Step::Ahead`]).
        siblings: Vec<Sibling>,
        /// The `add` of a residual row to the unpacked output, folded in as
        /// an epilogue ([`fusion::fold_residuals`]): the step stands at its
        /// node, and the residual is the last operand.
        residual: Option<usize>,
        /// The elementwise node whose value is the input, folded in as a
        /// prologue ([`fusion::fold_prologues`]), and its operands' count:
        /// they stand in for the input at the head of `operands`.
        prologue: Option<(usize, usize)>,
        /// The other way to run it, with its input rows quantized once
        /// ([`fusion::quantize_rows_once`]).
        quantized: Option<QuantizedRows>,
    },
    /// A value an earlier [`Step::PairedQuantLinear`] computed with its own.
    Ahead,
    /// An attention over a KV cache, or a cache's append, that reads the
    /// input of the `rope` before it (its queries, its new keys) and
    /// rotates it itself ([`fusion::fold_ropes`]): `operands` are the
    /// node's own with the rope's input in the rope's place, then the
    /// rope's positions.
    Roped {
        kernel: usize,
        operands: Vec<ValueId>,
        rope: usize,
    },
}

impl Step {
    /// The generated kernels the step launches (indices into the
    /// program's kernels), both ways of a product that has two.
    fn kernels(&self) -> Vec<usize> {
        match self {
            Step::Kernel(ks) | Step::PhaseStages { kernels: ks, .. } => ks.clone(),
            Step::Fused { kernel, .. } | Step::Roped { kernel, .. } => vec![*kernel],
            Step::PairedQuantLinear {
                kernel, quantized, ..
            } => [*kernel]
                .into_iter()
                .chain(quantized.iter().flat_map(|q| [q.quantize, q.product]))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A folded `rope`'s part in the kernel that rotates in its place
/// ([`Step::Roped`]): the positions, their count, the angles' frequencies
/// and the heads' width.
pub(super) struct RopeArgs<'a> {
    positions: &'a DeviceTensor,
    seq: i64,
    freqs: &'a CudaSlice<f64>,
    head_dim: i64,
}

/// A paired int8 product run in two launches
/// ([`fusion::quantize_rows_once`]): its input rows quantized by a kernel
/// of their own ([`Kernel::QuantizeRowsI8`]), then the products on them
/// ([`Kernel::QuantLinearI8Rows`]), rather than by each block of the
/// product. A prompt's rows take this way (at least
/// [`fusion::QUANTIZE_ONCE_ROWS`]); fewer rows (a decoding step, a batch
/// of them) only where `one_row` says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct QuantizedRows {
    pub quantize: usize,
    pub product: usize,
    pub one_row: bool,
}

/// A paired product computed in an earlier product's launch: its
/// `quant_linear` node, the node its value stands at (its folded unpack's,
/// or its own), and that unpack.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Sibling {
    pub node: usize,
    pub at: usize,
    pub unpack: Option<usize>,
}

/// A quantizer's sums passes: one, or one per residual stage, each into
/// totals of its own (a [`Step::PhaseStages`]).
#[derive(Clone, Copy)]
enum QuantizerPasses<'a> {
    One(usize),
    Staged(&'a [usize]),
}

/// A collective enqueued on NCCL's stream: the event that marks its end,
/// and its operand, kept until the program's stream has waited for that
/// (freed earlier, on the program's stream, its memory could go to a
/// kernel while NCCL still reads it).
struct InFlight {
    value: usize,
    done: CudaEvent,
    _operand: Arc<CudaSlice<u32>>,
}

/// The most blocks a quantizer's sums pass with one per-tensor group
/// takes: each adds its rows' sums into the group's f64 totals by atomics
/// on the same four words, which serialize; a block a row would be 768 of
/// them for a half of SmolLM2's MLP, each with a few hundred entries.
const PER_TENSOR_SUMS_BLOCKS: usize = 128;

/// What a cross-entropy keeps for its gradient: each row's maximum and
/// exponentials' sum, and the loss's sums (the scored rows' count the
/// second).
type KeptLoss = (CudaSlice<u32>, CudaSlice<u32>);

/// A real matrix's pairing tables, for its rows and its columns.
type SlotTables = (CudaSlice<i32>, CudaSlice<i32>);

/// A split quantizer pass's last arguments: the slot tables, then the real
/// matrix's rows and columns and the f64 words of a half's totals.
fn split_args<'a>(
    b: &mut cudarc::driver::LaunchArgs<'a>,
    split: Option<&'a SlotTables>,
    sizes: &'a [i64; 3],
) {
    if let Some((row_slots, col_slots)) = split {
        b.arg(row_slots).arg(col_slots);
        for v in sizes {
            b.arg(v);
        }
    }
}

/// A value's words, and the same rounded to bf16 (two a word).
type Rounded = (Arc<CudaSlice<u32>>, Arc<CudaSlice<u32>>);

/// Waits for the program's stream when dropped.
struct WaitForStream<'a>(&'a Arc<CudaStream>);

impl Drop for WaitForStream<'_> {
    fn drop(&mut self) {
        // A failure here is the device's own, which the run reports.
        let _ = self.0.synchronize();
    }
}

/// Makes the program's stream wait for every collective in flight when
/// dropped: what a run holds is freed only after that.
struct JoinOnDrop<'a>(&'a CudaProgram);

impl Drop for JoinOnDrop<'_> {
    fn drop(&mut self) {
        // A failure to wait is the device's own (the run reports it); the
        // group is aborted after a failed step anyway.
        let _ = self.0.join_collectives(|_| true);
    }
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        // Destroying the cuBLAS handles synchronizes the device, which would
        // invalidate another program's capture on another thread: they go
        // here, under the shared hold (the fields go after it is let go).
        let _shared = replay::device_work();
        let _ = self.join_collectives(|_| true);
        // SAFETY: each is dropped once, here, and not used after.
        unsafe {
            ManuallyDrop::drop(&mut self.blas);
            ManuallyDrop::drop(&mut self.lt);
        }
    }
}

pub struct CudaProgram {
    graph: Graph,
    plan: MemoryPlan,
    stream: Arc<CudaStream>,
    /// Dropped by `Drop`, under the device's shared hold (as `lt`).
    blas: ManuallyDrop<CudaBlas>,
    /// The generated kernels, and their loaded functions by the same index.
    kernels: Vec<Kernel>,
    functions: Vec<CudaFunction>,
    steps: Vec<Option<Step>>,
    /// The node after which each value is dead, over what the steps read.
    last_use: Vec<usize>,
    constants: HashMap<usize, DeviceTensor>,
    /// Per `rope` node: `base^(-2j/head_dim)` for each pair `j`, in f64.
    rope_freqs: HashMap<usize, CudaSlice<f64>>,
    /// Per `pack` / `unpack` node: the source word of each output word of
    /// a row (−1: zero), and the words of a source row.
    gathers: HashMap<usize, (CudaSlice<i32>, usize)>,
    /// Per [`Step::PairedQuantLinear`] (by the node it stands at): the
    /// folded pack's table of each complex input part's word in the real
    /// row, and the unpack's of each output part's, with the rows' words.
    paired: HashMap<usize, quant::PairedTables>,
    /// How many of the last outputs are state (returned on the device).
    state_outputs: usize,
    /// The KV caches' concatenations, grown in place (`caches`), each with
    /// its slot in `cache_lengths`.
    cache_slots: HashMap<usize, usize>,
    /// The state inputs those concatenations extend, with their slots and
    /// concatenation nodes.
    cache_inputs: Vec<caches::CacheInput>,
    /// Each cache's rows in use at the start of a run, on the device: what
    /// its attention and its append read, so that a captured decoding step
    /// replays at any position (at least one word).
    cache_lengths: CudaSlice<u32>,
    /// A count for each query row and key head whose keys an attention
    /// launch splits: its blocks arrive there, and the last merges their
    /// partial softmaxes and sets it back to 0 (`attention::SPLIT_TARGET`
    /// words).
    split_arrivals: CudaSlice<u32>,
    /// A word for each `sum_squares` step (by node), which its blocks count
    /// their arrivals in; 0 between launches.
    sum_arrivals: (HashMap<usize, usize>, CudaSlice<u32>),
    /// The model's context length, where its graph says: the most rows a
    /// growing cache makes room for.
    context_length: Option<usize>,
    /// A real matrix's pairing tables, by node: for a `widely_linear_grad`,
    /// each row's and column's `2·slot + imaginary`; for a `widely_linear`
    /// and a split [`Step::PhaseStages`], each slot's real and imaginary
    /// row (column).
    pairings: HashMap<usize, SlotTables>,
    resident_bytes: usize,
    /// cuBLAS's compute type for dense products.
    compute: blas_sys::cublasComputeType_t,
    /// The [`Kernel::ToBf16`] that rounds the flash kernels' operands and,
    /// where `round_products`, real products' operands for cuBLAS's bf16
    /// inputs (with bf16 products).
    to_bf16: Option<usize>,
    round_products: bool,
    /// Real products through cuBLASLt (complex ones through
    /// `cublasGemmEx`), and the fast compute type of their f32 operands.
    lt: ManuallyDrop<products::Products>,
    fast: Option<cudarc::cublaslt::sys::cublasComputeType_t>,
    /// The GPU's multiprocessors: the int8 `quant_linear`'s grid is a few
    /// blocks for each.
    multiprocessors: usize,
    profile: Option<OpProfile>,
    /// Within a run: the collectives NCCL's stream has not been joined
    /// after yet.
    in_flight: Mutex<Vec<InFlight>>,
    /// Within a run: values rounded to bf16 for products, by the words they
    /// were rounded from, so that a value several products read (a normed
    /// input of three projections, an output gradient of a product and of
    /// its weight gradient) is rounded once. An entry keeps its source
    /// alive; at the next rounding after nothing else holds the source,
    /// both are dropped (and all at the run's end).
    rounded: Mutex<Vec<Rounded>>,
    /// Within a profiled node: the time its operands' rounding took, which
    /// the profile reports apart.
    rounding_time: Mutex<std::time::Duration>,
    /// Within a run: the kernels and products enqueued, for the run's log
    /// line (whether the host's launches or the GPU's work set the pace).
    launches: AtomicUsize,
    /// Within a run: what the last attention gradient computed, for its
    /// siblings (`attention::Shared`).
    attention_cache: Mutex<Option<attention::Shared>>,
    /// For each flash `attention` node whose gradients the graph takes: the
    /// group of those gradients (`attention::flash_forward_groups`).
    flash_forward_groups: HashMap<usize, usize>,
    /// Within a run: what each such forward pass kept for its gradients'
    /// group (`attention::KeptForward`).
    kept_forward: Mutex<HashMap<usize, attention::KeptForward>>,
    /// Per cross-entropy gradient on its loss's statistics, that loss's
    /// node ([`fusion::keep_loss_statistics`]).
    loss_statistics: HashMap<usize, usize>,
    /// Within a run: what each such loss kept for its gradient, by its
    /// node.
    kept_losses: Mutex<HashMap<usize, KeptLoss>>,
    /// Per `attention_grad` node: its group of siblings and their count
    /// (`attention::attention_groups`).
    attention_groups: HashMap<usize, (usize, usize)>,
    /// The data-parallel group's NCCL communicator on this GPU, if any.
    communicator: Option<Arc<Communicator>>,
    /// Runs captured as a CUDA graph and replayed (`replay`); `None`
    /// where they are not.
    replay: Option<Mutex<replay::Replay>>,
}

/// How many runs a sum to one scalar is split into: enough blocks to keep
/// every multiprocessor reading.
const SUM_RUNS: usize = 1024;

/// A cuBLAS call's status as a result.
fn blas_result(status: blas_sys::cublasStatus_t) -> Result<(), BackendError> {
    match status {
        blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        status => Err(BackendError::new(format!("cuBLAS: {status:?}"))),
    }
}

pub(super) fn driver(e: impl std::fmt::Display) -> BackendError {
    BackendError::new(format!("CUDA: {e}"))
}

/// The kernels that run `op`, in order, if generated ones do.
fn kernels_for(op: &Op, operands: &[Elem], out: Elem) -> Option<Vec<Kernel>> {
    let complex = out == Elem::Complex || operands.first() == Some(&Elem::Complex);
    Some(match op {
        Op::ReduceTo { .. } => vec![Kernel::ColumnSum, Kernel::RunSums],
        Op::CrossEntropy => vec![
            Kernel::CrossEntropyRows { keep: false },
            Kernel::ColumnSum,
            Kernel::ScoredMean,
        ],
        Op::CrossEntropyGrad => vec![Kernel::CrossEntropyGrad {
            bf16: false,
            kept: false,
        }],
        Op::SumSquares => vec![Kernel::SumSquares],
        Op::KlDiv => vec![Kernel::KlDivRows, Kernel::ColumnSum, Kernel::ScoredMean],
        Op::KlDivGrad => vec![Kernel::KlDivGrad { bf16: false }],
        Op::Quantize {
            scheme: Scheme::Phase,
            arithmetic: Arithmetic::F32,
            ..
        } => vec![
            Kernel::PhaseSums { ifairy: false },
            Kernel::PhaseDequant { ifairy: false },
        ],
        Op::Quantize {
            scheme: Scheme::PhaseIfairy,
            ..
        } => vec![
            Kernel::PhaseSums { ifairy: true },
            Kernel::PhaseDequant { ifairy: true },
        ],
        // The halves of `quantize {scheme = phase}` in f32, by its kernels'
        // code choice and scales.
        Op::PhaseCodes {
            arithmetic: Arithmetic::F32,
        } => vec![Kernel::PhaseCodes],
        Op::PhaseScales {
            arithmetic: Arithmetic::F32,
            ..
        } => vec![Kernel::PhaseSums { ifairy: false }, Kernel::PhaseScales],
        Op::Quantize {
            scheme: scheme @ (Scheme::Binary | Scheme::Ternary),
            ..
        } => vec![
            Kernel::RealSums,
            Kernel::RealDequant {
                ternary: *scheme == Scheme::Ternary,
            },
        ],
        Op::RmsNormGrad { which, .. } => {
            let gain = *which == NormOperand::Gain;
            let grad = Kernel::RmsNormGrad { complex, gain };
            if gain {
                vec![grad, Kernel::ColumnSum]
            } else {
                vec![grad]
            }
        }
        Op::EmbedGrad { .. } => vec![Kernel::EmbedGrad],
        // Batched: cuBLAS products around these (`program::attention`).
        Op::Attention {
            segment: Some(_), ..
        } => vec![Kernel::MaskedSoftmax],
        Op::AttentionGrad { .. } => vec![Kernel::MaskedSoftmax, Kernel::SoftmaxGrad],
        Op::WidelyLinearGrad { part, .. } => vec![Kernel::WidelyLinearGrad { part: *part }],
        op => vec![kernel_for(op, operands, out)?],
    })
}

/// The one kernel that runs `op`, if a generated one does.
fn kernel_for(op: &Op, operands: &[Elem], out: Elem) -> Option<Kernel> {
    let x = || Expr::Operand(0);
    let map = |op: MapOp, arity: usize| Kernel::Map {
        expr: Expr::Apply(op, (0..arity).map(Expr::Operand).collect()),
        operands: operands.to_vec(),
        out,
    };
    Some(match op {
        Op::Add => map(MapOp::Add, 2),
        Op::Sub => map(MapOp::Sub, 2),
        Op::Mul => map(MapOp::Mul, 2),
        Op::Div => map(MapOp::Div, 2),
        Op::Unary { func } => map(MapOp::Unary(*func), 1),
        Op::Silu => map(MapOp::Silu, 1),
        Op::Scale { factor } => map(MapOp::Scale(*factor), 1),
        Op::Fill { value } => Kernel::Map {
            expr: Expr::Apply(MapOp::Fill(*value), vec![x()]),
            operands: operands.to_vec(),
            out,
        },
        Op::Conj => map(MapOp::Conj, 1),
        Op::ClipFactor { max_norm } => map(MapOp::ClipFactor(*max_norm), 1),
        Op::CReluSquared => map(MapOp::CReluSquared, 1),
        Op::Crelu2Grad => map(MapOp::CReluSquaredGrad, 2),
        Op::RmsNorm { .. } => Kernel::RmsNorm {
            complex: out == Elem::Complex,
            bf16: false,
        },
        Op::Softmax => Kernel::Softmax,
        Op::SoftmaxGrad => Kernel::SoftmaxGrad,
        Op::Sample { .. } => Kernel::Sample,
        Op::ActQuant { .. } => Kernel::ActQuant {
            complex: out == Elem::Complex,
        },
        Op::Embed => Kernel::Embed,
        Op::Rope { layout, .. } => Kernel::Rope {
            layout: *layout,
            complex: out == Elem::Complex,
            bf16: false,
        },
        Op::Slice { .. } | Op::Concat { .. } | Op::Pad { .. } => Kernel::Copy2d,
        Op::Transpose { .. } => Kernel::Permute,
        Op::Pack { .. } | Op::Unpack { .. } => Kernel::GatherColumns,
        Op::QuantLinear {
            u_stages, w_stages, ..
        } => Kernel::QuantLinear {
            u_stages: *u_stages,
            w_stages: *w_stages,
        },
        Op::Dequant { .. } => Kernel::Dequant,
        Op::WidelyLinear {
            part,
            arithmetic: Arithmetic::F32,
            ..
        } => Kernel::WidelyLinear { part: *part },
        _ => return None,
    })
}

/// Whether the CUDA backend runs `op` (the table's ops it has kernels for).
pub fn runs(op: &Op) -> bool {
    matches!(
        op,
        Op::Linear | Op::Reshape { .. } | Op::LinearWeightGrad | Op::Zeros
            // Over a KV cache: kernels built for its heads' widths.
            | Op::Attention { segment: None, .. }
    ) || op.is_collective()
        || kernels_for(op, &[Elem::Real, Elem::Real], Elem::Real).is_some()
}

/// The kernel (one per distinct specialisation) or other step of each node
/// the program computes (`None` for inputs and resident values).
fn select_kernels(
    graph: &Graph,
    plan: &MemoryPlan,
    activations: GpuActivations,
    fold: Fold,
    choices: Choices,
) -> Result<(Vec<Kernel>, Vec<Option<Step>>), BackendError> {
    let Choices {
        fuse,
        flash,
        collective,
        tensor_cores,
        row_quantization,
        round_products,
    } = choices;
    // One kernel per distinct specialisation.
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut steps = Vec::with_capacity(graph.nodes.len());
    let growing = caches::growing_caches(graph, crate::state::state_names(graph).len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let folded_on_host = plan.resident[i] && fold == Fold::Host;
        if folded_on_host || matches!(node.op, Op::Input { .. } | Op::Weight { .. }) {
            steps.push(None);
            continue;
        }
        if growing.contains(&i) {
            let append = kernel_index(&mut kernels, Kernel::AppendRows { rope: None });
            steps.push(Some(Step::Kernel(vec![append])));
            continue;
        }
        let elems = node
            .operands
            .iter()
            .map(|v| elem_of(graph.node(*v).ty.dtype))
            .chain([elem_of(node.ty.dtype)])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BackendError::new(format!("%{i} = {}: {e}", node.op.mnemonic())))?;
        let (out, operands) = elems.split_last().expect("the output's element");
        let step = match &node.op {
            Op::Linear => Step::Gemm,
            Op::LinearWeightGrad => Step::WeightGrad,
            Op::Reshape { .. } => Step::Alias,
            Op::Zeros => Step::Zeros,
            op if op.is_collective() && collective => Step::Collective,
            Op::BroadcastFrom { root } if *root != 0 => {
                return Err(BackendError::new(format!(
                    "%{i}: a broadcast from rank {root} on a GPU that is a rank alone"
                )))
            }
            // A rank alone: its own sum and root.
            op if op.is_collective() => Step::Alias,
            op => {
                let int8 = match op {
                    Op::QuantLinear {
                        u_stages,
                        w_stages,
                        granularity,
                    } if activations == GpuActivations::Int8 => {
                        let codes = &graph.node(node.operands[1]).ty.shape;
                        let m = codes.dims().get(1).and_then(|d| d.clone().fixed());
                        m.filter(|&m| int8_applies(*granularity, m))
                            .map(|_| vec![Kernel::plain_int8(*u_stages, *w_stages, false)])
                    }
                    _ => None,
                };
                let wanted = int8
                    .or_else(|| {
                        flash
                            .then(|| attention::flash_kernels(graph, node))
                            .flatten()
                    })
                    .or_else(|| attention::cache_kernels(graph, node))
                    .or_else(|| kernels_for(op, operands, *out))
                    .ok_or_else(|| BackendError::Unsupported {
                        backend: "cuda",
                        op: op.mnemonic(),
                        value: format!("%{i} in @{}", graph.name),
                    })?;
                let indices = wanted
                    .into_iter()
                    .map(|kernel| kernel_index(&mut kernels, kernel))
                    .collect();
                Step::Kernel(indices)
            }
        };
        steps.push(Some(step));
    }
    let every_width = row_quantization == RowQuantization::Once;
    let quantize_once = move |graph: &Graph, _: &MemoryPlan, kernels: &mut _, steps: &mut _| {
        fusion::quantize_rows_once(graph, kernels, steps, every_width)
    };
    // The fusion passes in the order they run, each where it is on.
    let passes: [(&str, bool, &FusionPass); 14] = [
        (
            "split_quantizers",
            fuse.split_quantizers,
            &fusion::fuse_split_quantizers,
        ),
        (
            "phase_stages",
            fuse.phase_stages,
            &fusion::fuse_phase_stages,
        ),
        ("elementwise", fuse.elementwise, &fusion::fuse_elementwise),
        ("pairings", fuse.pairings, &fusion::fold_pairings),
        ("norms", fuse.norms, &fusion::fold_norms),
        ("prologues", fuse.prologues, &fusion::fold_prologues),
        ("residuals", fuse.residuals, &fusion::fold_residuals),
        ("siblings", fuse.siblings, &fusion::group_siblings),
        ("ropes", fuse.ropes, &fusion::fold_ropes),
        ("transposed_weights", true, &fusion::fold_transposed_weights),
        ("tensor_cores", tensor_cores, &fusion::use_tensor_cores),
        // After `tensor_cores`: the quantized rows' product takes its
        // design (and so the codes' layout) from the step's kernel.
        (
            "quantize_once",
            fuse.quantize_once && row_quantization != RowQuantization::InEachBlock,
            &quantize_once,
        ),
        (
            "loss_statistics",
            fuse.loss_statistics,
            &fusion::keep_loss_statistics,
        ),
        // Last: the products' operands are final.
        (
            "roundings",
            fuse.roundings && round_products,
            &fusion::round_in_producers,
        ),
    ];
    let check = |after: &str, kernels: &[Kernel], steps: &[Option<Step>]| {
        fusion::check_plan(graph, plan, kernels, steps)
            .map_err(|e| BackendError::new(format!("@{}, {after}: {e}", graph.name)))
    };
    check("the kernels chosen", &kernels, &steps)?;
    for (name, on, pass) in passes {
        if on {
            pass(graph, plan, &mut kernels, &mut steps);
            check(&format!("after the fusion pass `{name}`"), &kernels, &steps)?;
        }
    }
    Ok((kernels, steps))
}

/// A fusion pass: rewrites the steps of a graph's nodes and the kernels
/// they launch ([`fusion`]).
type FusionPass = dyn Fn(&Graph, &MemoryPlan, &mut Vec<Kernel>, &mut [Option<Step>]);

/// `kernel`'s index in `kernels`, added if it is not there yet: one kernel
/// per distinct specialisation.
fn kernel_index(kernels: &mut Vec<Kernel>, kernel: Kernel) -> usize {
    match kernels.iter().position(|k| *k == kernel) {
        Some(k) => k,
        None => {
            kernels.push(kernel);
            kernels.len() - 1
        }
    }
}

/// What a program's kernels are chosen with, beside the graph.
#[derive(Clone, Copy)]
struct Choices {
    /// Which of the `fusion` passes run.
    fuse: Fusions,
    /// Training's attention by the flash kernels where they apply.
    flash: bool,
    /// Whether `all_reduce` adds over a group of GPUs (else the GPU is a
    /// rank alone, and its operand the sum).
    collective: bool,
    /// The paired int8 products on tensor cores where they can be
    /// ([`Int8Products::TensorCores`]).
    tensor_cores: bool,
    /// Where the paired int8 products quantize their input rows.
    row_quantization: RowQuantization,
    /// Real products on operands rounded to bf16.
    round_products: bool,
}

/// The `fusion` passes a program runs: all, unless `FAIRYC_NO_FUSION` is set:
/// to the passes to leave out (`norms,pairings`), or to anything else (`1`)
/// for none, to measure what each gives. Set but empty, it leaves out none,
/// as a shell's `FAIRYC_NO_FUSION=$passes` with no passes means.
#[derive(Clone, Copy)]
struct Fusions {
    /// A quantized master's split, stages and real form as a few passes
    /// ([`fusion::fuse_split_quantizers`]).
    split_quantizers: bool,
    /// bf16 products' operands rounded by the kernels that compute them
    /// ([`fusion::round_in_producers`]).
    roundings: bool,
    /// A cross-entropy's gradient on its loss's softmax statistics
    /// ([`fusion::keep_loss_statistics`]).
    loss_statistics: bool,
    /// PhaseQuant's stages as a few passes ([`fusion::fuse_phase_stages`]).
    phase_stages: bool,
    /// Chains of elementwise nodes as one kernel each.
    elementwise: bool,
    /// The widely-linear pack and unpack inside the int8 products.
    pairings: bool,
    /// RMS norms inside the paired int8 products that read them.
    norms: bool,
    /// The paired int8 products of one row as one launch.
    siblings: bool,
    /// RoPE inside the attention over a KV cache and the cache's append.
    ropes: bool,
    /// Residual adds as the paired int8 products' epilogues.
    residuals: bool,
    /// Elementwise inputs as the paired int8 products' prologues.
    prologues: bool,
    /// The paired int8 products' input rows quantized once, by a kernel of
    /// their own ([`fusion::quantize_rows_once`]).
    quantize_once: bool,
}

impl Fusions {
    const ALL: Fusions = Fusions {
        split_quantizers: true,
        roundings: true,
        loss_statistics: true,
        phase_stages: true,
        elementwise: true,
        pairings: true,
        norms: true,
        siblings: true,
        ropes: true,
        residuals: true,
        prologues: true,
        quantize_once: true,
    };

    fn from_env() -> Fusions {
        let off = std::env::var_os("FAIRYC_NO_FUSION");
        Fusions::leaving_out(off.map(|v| v.to_string_lossy().into_owned()).as_deref())
    }

    /// The passes `FAIRYC_NO_FUSION`'s value `off` leaves on.
    fn leaving_out(off: Option<&str>) -> Fusions {
        let Some(off) = off else {
            return Fusions::ALL;
        };
        const NAMES: [&str; 12] = [
            "split_quantizers",
            "roundings",
            "loss_statistics",
            "phase_stages",
            "elementwise",
            "pairings",
            "norms",
            "siblings",
            "ropes",
            "residuals",
            "prologues",
            "quantize_once",
        ];
        if off.trim().is_empty() {
            return Fusions::ALL;
        }
        let named: Vec<&str> = off.split(',').map(str::trim).collect();
        let some = named.iter().all(|n| NAMES.contains(n));
        if !some {
            tracing::info!("FAIRYC_NO_FUSION={off}: every fusion pass is off");
        }
        let on = |name: &str| some && !named.contains(&name);
        Fusions {
            split_quantizers: on("split_quantizers"),
            roundings: on("roundings"),
            loss_statistics: on("loss_statistics"),
            phase_stages: on("phase_stages"),
            elementwise: on("elementwise"),
            pairings: on("pairings"),
            norms: on("norms"),
            siblings: on("siblings"),
            ropes: on("ropes"),
            residuals: on("residuals"),
            prologues: on("prologues"),
            quantize_once: on("quantize_once"),
        }
    }
}

/// Where a program evaluates its weight expressions (the nodes that depend
/// on weights alone: a quantized model's derived weights, a trainer's
/// quantized masters) once at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fold {
    /// On the GPU, by the same kernels as the rest: the weights go up as
    /// they are.
    Device,
    /// On the host by the reference kernels (where one of them has no GPU
    /// kernel), the results go up.
    Host,
}

impl Fold {
    fn of(graph: &Graph, plan: &MemoryPlan) -> Fold {
        let all_run = graph.nodes.iter().enumerate().all(|(i, node)| {
            !plan.resident[i] || matches!(node.op, Op::Weight { .. }) || runs(&node.op)
        });
        if all_run {
            Fold::Device
        } else {
            Fold::Host
        }
    }
}

/// The kernels and steps a program of a prepared graph takes with
/// `options`' activations and int8 products (fused, attention by products,
/// a GPU alone).
fn default_selection(
    graph: &Graph,
    options: &Cuda,
) -> Result<(Vec<Kernel>, Vec<Option<Step>>), BackendError> {
    let plan = MemoryPlan::new(graph, 1);
    let fold = Fold::of(graph, &plan);
    let choices = Choices {
        fuse: Fusions::ALL,
        flash: false,
        collective: false,
        tensor_cores: options.int8_products == Int8Products::TensorCores,
        row_quantization: options.row_quantization,
        round_products: rounds_products(options),
    };
    select_kernels(graph, &plan, options.activations, fold, choices)
}

/// Whether bf16 products take their operands rounded to bf16 by kernels of
/// ours, so that cuBLAS runs its bf16 kernels; with FAIRYC_BF16_IN_CUBLAS
/// set, cuBLAS rounds the f32 operands itself, to measure the two.
fn rounds_products(options: &Cuda) -> bool {
    options.matmul == GpuMatmul::Bf16 && std::env::var_os("FAIRYC_BF16_IN_CUBLAS").is_none()
}

/// The PTX module the CUDA backend generates for a prepared graph (what
/// [`CudaProgram::new`] loads with `options`); needs no GPU.
pub fn graph_ptx(graph: &Graph, options: &Cuda) -> Result<String, BackendError> {
    let (kernels, _) = default_selection(graph, options)?;
    codegen::ptx(&kernels).map_err(BackendError::new)
}

/// Device `ordinal`'s context, set up once: the process keeps it, so that
/// programs built one after another (a trainer builds one a step) do not
/// set it up again.
pub(super) fn device_context(ordinal: usize) -> Result<Arc<CudaContext>, BackendError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<CudaContext>>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(context) = contexts.get(&ordinal) {
        return Ok(context.clone());
    }
    let context = CudaContext::new(ordinal).map_err(driver)?;
    // A program orders its work itself, so cudarc need not create two
    // events for every allocation and wait on them (no difference measured
    // on the QAT step).
    // SAFETY: without cudarc's events, work on two streams must be ordered
    // by hand. A program's kernels, copies and frees are on its own
    // stream; a buffer one program made and another reads (a state output,
    // an input) is complete when the maker's run returns, and freed (on the
    // maker's stream) only after the reader's stream is done with it
    // (`WaitForStream` at the end of each run); NCCL's stream waits for an event of the program's before
    // each collective (`Communicator::with_f32`), and the program's stream
    // waits for the collective's event before the first reader of its
    // result, keeping its operand until then (`InFlight`,
    // `join_collectives`), also when a run fails (`JoinOnDrop`).
    unsafe { context.disable_event_tracking() };
    keep_freed_memory(&context)?;
    contexts.insert(ordinal, context.clone());
    Ok(context)
}

/// The device's memory pool, which stream-ordered allocations draw on.
fn default_pool(
    context: &Arc<CudaContext>,
) -> Result<cudarc::driver::sys::CUmemoryPool, BackendError> {
    let mut pool = std::mem::MaybeUninit::uninit();
    // SAFETY: the device is the context's; the call writes the pool's
    // handle, read only once it succeeded.
    unsafe {
        cudarc::driver::sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), context.cu_device())
            .result()
            .map(|()| pool.assume_init())
    }
    .map_err(driver)
}

/// Gives the memory the device's pool keeps cached back to the driver.
fn trim_freed_memory(context: &Arc<CudaContext>) -> Result<(), BackendError> {
    let pool = default_pool(context)?;
    // SAFETY: a pool may be trimmed any time.
    unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }
        .result()
        .map_err(driver)
}

/// Makes the device's memory pool (which stream-ordered allocations draw
/// on) keep what is freed instead of handing it back to the driver at each
/// synchronisation, its default: a program frees and allocates thousands
/// of buffers a run, and a buffer the pool must map anew costs far more
/// than one it reuses. With FAIRYC_RELEASE_MEMORY set (to anything) the
/// pool keeps its default, to measure that.
fn keep_freed_memory(context: &Arc<CudaContext>) -> Result<(), BackendError> {
    use cudarc::driver::sys;
    if std::env::var_os("FAIRYC_RELEASE_MEMORY").is_some() {
        return Ok(());
    }
    context.bind_to_thread().map_err(driver)?;
    let pool = default_pool(context)?;
    let mut threshold = u64::MAX;
    // SAFETY: the attribute takes a u64 passed by pointer.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .map_err(driver)
}

/// The module of `ptx` on device `ordinal`, loaded once per distinct PTX
/// and device: a program built again from the same graph (each training
/// step) takes its kernels without the driver compiling them again. A
/// process holds one module per graph it has run (a trainer: two) and
/// device.
fn load_module(
    context: &Arc<CudaContext>,
    ordinal: usize,
    ptx: String,
) -> Result<Arc<CudaModule>, BackendError> {
    type Modules = HashMap<(usize, String), Arc<CudaModule>>;
    static MODULES: OnceLock<Mutex<Modules>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (ordinal, ptx);
    if let Some(module) = modules.get(&key) {
        return Ok(module.clone());
    }
    let module = context
        .load_module(Ptx::from_src(key.1.clone()))
        .map_err(driver)?;
    modules.insert(key, module.clone());
    Ok(module)
}

impl CudaProgram {
    pub fn new(
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
        options: Cuda,
    ) -> Result<CudaProgram, BackendError> {
        let (activations, ordinal) = (options.activations, options.device);
        let plan = MemoryPlan::new(&graph, 1);
        let fold = Fold::of(&graph, &plan);
        let host_constants = match fold {
            Fold::Device => {
                fairyc_ir::verify_weights(&graph, store)?;
                load_weights(&graph, store, on_weight)?
            }
            Fold::Host => load_resident(&graph, store, on_weight, &plan)?,
        };
        let _shared = replay::device_work();
        let context = device_context(ordinal)?;
        // A stream of the program's own: runs are captured as CUDA graphs
        // (`replay`), which the legacy default stream does not allow.
        let stream = context.new_stream().map_err(driver)?;
        let blas = CudaBlas::new(stream.clone()).map_err(driver)?;

        let round_products = rounds_products(&options);
        let choices = Choices {
            fuse: Fusions::from_env(),
            flash: options.attention == GpuAttention::Flash,
            collective: options.communicator.is_some(),
            tensor_cores: options.int8_products == Int8Products::TensorCores,
            row_quantization: options.row_quantization,
            round_products,
        };
        let (mut kernels, steps) = select_kernels(&graph, &plan, activations, fold, choices)?;
        let loss_statistics = (0..graph.nodes.len())
            .filter_map(|g| match &steps[g] {
                Some(Step::Kernel(k))
                    if matches!(kernels[k[0]], Kernel::CrossEntropyGrad { kept: true, .. }) =>
                {
                    Some((g, fusion::loss_of_gradient(&graph, g)?))
                }
                _ => None,
            })
            .collect();
        let flash = kernels.iter().any(|k| matches!(k, Kernel::Flash { .. }));
        let to_bf16 = (round_products || flash).then(|| {
            kernels.push(Kernel::ToBf16);
            kernels.len() - 1
        });
        let ptx = codegen::ptx(&kernels).map_err(BackendError::new)?;
        let module = load_module(&context, ordinal, ptx)?;
        let functions = kernels
            .iter()
            .enumerate()
            .map(|(k, kernel)| module.load_function(&kernel.symbol(k)).map_err(driver))
            .collect::<Result<Vec<_>, _>>()?;

        let lt = products::Products::new(&stream)?;
        let mut constants = HashMap::new();
        for (i, t) in &host_constants {
            let d = upload(&stream, t).map_err(|e| BackendError::new(format!("%{i}: {e}")))?;
            constants.insert(*i, d);
        }
        drop(host_constants);
        let mut rope_freqs = HashMap::new();
        let folded: HashSet<usize> = steps
            .iter()
            .filter_map(|s| match s {
                Some(Step::Roped { rope, .. }) => Some(*rope),
                _ => None,
            })
            .collect();
        for (i, node) in graph.nodes.iter().enumerate() {
            let computed = matches!(steps.get(i), Some(Some(_))) || folded.contains(&i);
            if let (true, Op::Rope { base, head_dim, .. }) = (computed, &node.op) {
                let freqs: Vec<f64> = (0..(head_dim / 2).max(1))
                    .map(|j| (*base as f64).powf(-2.0 * j as f64 / *head_dim as f64))
                    .collect();
                rope_freqs.insert(i, stream.clone_htod(&freqs).map_err(driver)?);
            }
        }
        let mut gathers = HashMap::new();
        let mut pairings = HashMap::new();
        // Each slot's real and imaginary row (column) of a real matrix of
        // shape `r`, paired by `(row_block, col_block)`.
        let slot_tables = |i: usize, (row_block, col_block), r: &[usize]| {
            let table = |block: usize, len: usize| -> Result<CudaSlice<i32>, BackendError> {
                let slots: Vec<i32> = Pairing::from_block(block)
                    .table(2 * len.div_ceil(2))
                    .map_err(|e| BackendError::new(format!("%{i}: {e}")))?
                    .into_iter()
                    .flat_map(|(re, im)| [re as i32, im as i32])
                    .collect();
                stream.clone_htod(&slots).map_err(driver)
            };
            Ok::<_, BackendError>((table(row_block, r[0])?, table(col_block, r[1])?))
        };
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Some(Step::PhaseStages {
                operands,
                split: Some((row_block, col_block)),
                ..
            }) = &steps[i]
            {
                let Some(r) = graph.node(operands[0]).ty.shape.concrete() else {
                    return Err(BackendError::new(format!(
                        "%{i}: a quantized master needs a fixed shape on the GPU"
                    )));
                };
                pairings.insert(i, slot_tables(i, (*row_block, *col_block), &r)?);
                continue;
            }
            if !matches!(steps[i], Some(Step::Kernel(_))) {
                continue;
            }
            if let Op::WidelyLinearGrad {
                row_block,
                col_block,
                ..
            } = &node.op
            {
                let dims = |v: usize| graph.node(node.operands[v]).ty.shape.concrete();
                let (Some(r), Some(d)) = (dims(0), dims(1)) else {
                    return Err(BackendError::new(format!(
                        "%{i} = widely_linear_grad: the GPU needs fixed shapes"
                    )));
                };
                let table =
                    |block: usize, len: usize, keep: usize| -> Result<Vec<i32>, BackendError> {
                        Ok(Pairing::from_block(block)
                            .inverse_table(2 * len)
                            .map_err(|e| BackendError::new(format!("%{i}: {e}")))?[..keep]
                            .iter()
                            .map(|&(slot, imag)| (2 * slot + usize::from(imag)) as i32)
                            .collect())
                    };
                let rows = table(*row_block, d[0], r[0])?;
                let cols = table(*col_block, d[1], r[1])?;
                pairings.insert(
                    i,
                    (
                        stream.clone_htod(&rows).map_err(driver)?,
                        stream.clone_htod(&cols).map_err(driver)?,
                    ),
                );
                continue;
            }
            if let Op::WidelyLinear {
                row_block,
                col_block,
                ..
            } = &node.op
            {
                let Some(r) = graph.node(node.operands[0]).ty.shape.concrete() else {
                    return Err(BackendError::new(format!(
                        "%{i} = widely_linear: the GPU needs fixed shapes"
                    )));
                };
                pairings.insert(i, slot_tables(i, (*row_block, *col_block), &r)?);
                continue;
            }
            let (index, in_words) = match &node.op {
                Op::Pack { block } | Op::Unpack { block } => {
                    let x = &graph.node(node.operands[0]).ty;
                    let Some(Dim::Fixed(cols)) = x.shape.last().cloned() else {
                        return Err(BackendError::new(format!(
                            "%{i} = {}: the GPU needs a fixed last dimension, not {}",
                            node.op.mnemonic(),
                            x.shape
                        )));
                    };
                    pairing_index(&node.op, Pairing::from_block(*block), cols)
                        .map_err(|e| BackendError::new(format!("%{i}: {e}")))?
                }
                _ => continue,
            };
            gathers.insert(i, (stream.clone_htod(&index).map_err(driver)?, in_words));
        }
        let paired = quant::paired_tables(&graph, &steps, &stream)?;
        let state_outputs = crate::state::state_names(&graph).len();
        let (cache_slots, cache_inputs) = caches::cache_slots(&graph, state_outputs);
        let cache_lengths = stream
            .alloc_zeros::<u32>(cache_inputs.len().max(1))
            .map_err(driver)?;
        let split_arrivals = stream
            .alloc_zeros::<u32>(attention::SPLIT_TARGET)
            .map_err(driver)?;
        let sum_slots: HashMap<usize, usize> = (0..graph.nodes.len())
            .filter(|&i| {
                matches!(steps[i], Some(Step::Kernel(_)))
                    && matches!(graph.nodes[i].op, Op::SumSquares)
            })
            .enumerate()
            .map(|(slot, i)| (i, slot))
            .collect();
        let sum_arrivals = stream
            .alloc_zeros::<u32>(sum_slots.len().max(1))
            .map_err(driver)?;
        let context_length = graph.context_length();
        let last_use = fusion::last_uses(&graph, &plan, &steps);
        let attention_groups = attention::attention_groups(&graph);
        let flash_forward_groups =
            attention::flash_forward_groups(&graph, &steps, &kernels, &attention_groups);
        let profile = OpProfile::from_env();
        let replay = replay::Replay::new(profile.is_some(), options.communicator.is_some());
        let multiprocessors = stream
            .context()
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(driver)? as usize;
        let mut program = CudaProgram {
            graph,
            plan,
            stream,
            blas: ManuallyDrop::new(blas),
            kernels,
            functions,
            steps,
            last_use,
            constants,
            rope_freqs,
            gathers,
            paired,
            state_outputs,
            cache_slots,
            cache_inputs,
            cache_lengths,
            split_arrivals,
            sum_arrivals: (sum_slots, sum_arrivals),
            context_length,
            pairings,
            resident_bytes: 0,
            profile,
            attention_cache: Mutex::new(None),
            flash_forward_groups,
            kept_forward: Mutex::new(HashMap::new()),
            loss_statistics,
            kept_losses: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(Vec::new()),
            rounded: Mutex::new(Vec::new()),
            rounding_time: Mutex::new(std::time::Duration::ZERO),
            launches: AtomicUsize::new(0),
            attention_groups,
            communicator: options.communicator.clone(),
            replay: replay.map(Mutex::new),
            to_bf16,
            round_products,
            lt: ManuallyDrop::new(lt),
            fast: products::fast_compute(options.matmul),
            multiprocessors,
            compute: match options.matmul {
                GpuMatmul::F32 => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                GpuMatmul::Tf32 => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                GpuMatmul::Bf16 => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
            },
        };
        if fold == Fold::Device {
            program.fold_constants()?;
        }
        let padding = program.tile_tensor_core_codes()?;
        program.resident_bytes = 4 * padding
            + program
                .constants
                .values()
                .map(|d| d.word_count() * 4)
                .sum::<usize>();
        Ok(program)
    }

    /// Evaluates the weight expressions on the device in graph order, each
    /// value freed after its last reader among them; keeps those the
    /// input-dependent nodes or the outputs read.
    fn fold_constants(&mut self) -> Result<(), BackendError> {
        let graph = &self.graph;
        let resident = &self.plan.resident;
        let mut kept = vec![false; graph.nodes.len()];
        let mut last_constant_use = vec![None; graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            for v in &node.operands {
                if resident[i] {
                    last_constant_use[v.0] = Some(i);
                } else {
                    kept[v.0] = true;
                }
            }
        }
        for v in &graph.outputs {
            kept[v.0] = true;
        }
        let no_bindings = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let Some(step) = self.steps[i].as_ref().filter(|_| resident[i]) else {
                continue;
            };
            let args: Vec<&DeviceTensor> = node
                .operands
                .iter()
                .map(|v| {
                    self.constants
                        .get(&v.0)
                        .expect("weights and folds come first")
                })
                .collect();
            let error =
                |e: String| BackendError::new(format!("%{i} = {}: {e}", node.op.mnemonic()));
            let ty = concrete_type(&node.op, &args, &no_bindings).map_err(error)?;
            let value = self.eval(i, step, &args, &ty)?;
            self.constants.insert(i, value);
            for v in &node.operands {
                if last_constant_use[v.0] == Some(i) && !kept[v.0] {
                    self.constants.remove(&v.0);
                }
            }
        }
        self.constants.retain(|i, _| kept[*i]);
        Ok(())
    }

    fn alloc(&self, words: usize) -> Result<CudaSlice<u32>, BackendError> {
        // SAFETY: every word is written by the node's kernel before it is read.
        unsafe { self.stream.alloc::<u32>(words.max(1)) }.map_err(driver)
    }

    fn launch<'a>(
        &'a self,
        k: usize,
        grid: u32,
        block: u32,
        args: impl FnOnce(&mut cudarc::driver::LaunchArgs<'a>),
    ) -> Result<(), BackendError> {
        self.launch_with_shared(k, (grid, 1), block, 0, args)
    }

    /// [`CudaProgram::launch`] with `shared` bytes of dynamic shared memory,
    /// on a grid of `across` by `down` blocks.
    fn launch_with_shared<'a>(
        &'a self,
        k: usize,
        (across, down): (u32, u32),
        block: u32,
        shared: u32,
        args: impl FnOnce(&mut cudarc::driver::LaunchArgs<'a>),
    ) -> Result<(), BackendError> {
        if across == 0 || down == 0 {
            return Ok(());
        }
        let mut builder = self.stream.launch_builder(&self.functions[k]);
        args(&mut builder);
        let config = LaunchConfig {
            grid_dim: (across, down, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: the arguments match the kernel's generated signature
        // (codegen documents each), and the sizes passed bound every access.
        unsafe { builder.launch(config) }.map_err(driver)?;
        self.launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Elementwise kernel `k` into `out` (`len` elements): operands repeat
    /// to the output's length.
    fn elementwise(
        &self,
        k: usize,
        args: &[&DeviceTensor],
        out: &CudaSlice<u32>,
        len: usize,
    ) -> Result<(), BackendError> {
        let lens: Vec<i64> = args.iter().map(|a| a.len() as i64).collect();
        let n = len as i64;
        self.launch(k, Self::grid(len), MAP_THREADS, |b| {
            b.arg(out);
            for a in args {
                b.arg(&*a.words);
            }
            b.arg(&n);
            for l in &lens {
                b.arg(l);
            }
        })
    }

    /// A quantizer's passes over `x[n, m]`: its sums passes add group sums
    /// into f64 totals (a block per row and group of the row, or per
    /// tensor fewer, each over rows a grid apart), then `last` writes
    /// `out` from them (one thread an entry; for `phase_scales`, a group). With `split` (the real `x`'s
    /// slot tables) they go over both halves of `x`'s widely-linear split
    /// (the second down the grid), and `out` is its quantized real form (a
    /// split [`Step::PhaseStages`]).
    fn quantizer_passes(
        &self,
        passes: QuantizerPasses,
        last: usize,
        x: &DeviceTensor,
        granularity: Granularity,
        out: &CudaSlice<u32>,
        split: Option<&SlotTables>,
    ) -> Result<(), BackendError> {
        let one;
        let sums_passes = match passes {
            QuantizerPasses::One(k) => {
                one = [k];
                &one[..]
            }
            QuantizerPasses::Staged(ks) => ks,
        };
        let (rows, cols) = (x.shape[0], x.shape[1]);
        // A split's halves are `[n, m]` complex.
        let (n, m) = match split {
            Some(_) => (rows.div_ceil(2), cols.div_ceil(2)),
            None => (rows, cols),
        };
        let [groups_per_row, group_len, per_tensor] = scale_groups(granularity, m);
        let groups = if per_tensor != 0 {
            1
        } else {
            n * groups_per_row as usize
        };
        let halves = if split.is_some() { 2 } else { 1 };
        // f64 totals: two words each, up to four a group and pass (PhaseQuant's
        // axis sums and counts; the real baselines use two), for each half.
        let half_words = 4 * groups * sums_passes.len();
        let mut sums = self.alloc(2 * half_words * halves)?;
        self.stream.memset_zeros(&mut sums).map_err(driver)?;
        let mut sizes = vec![n as i64, m as i64, groups_per_row, group_len, per_tensor];
        if let QuantizerPasses::Staged(_) = passes {
            // The f64 totals between one stage's and the next's.
            sizes.push(4 * groups as i64);
        }
        let split_sizes = [rows, cols, half_words].map(|v| v as i64);
        // One block a (row, group of the row); per tensor, at most
        // `PER_TENSOR_SUMS_BLOCKS`, each over rows a grid apart.
        let units = n * groups_per_row as usize;
        let blocks = if per_tensor != 0 {
            units.min(PER_TENSOR_SUMS_BLOCKS)
        } else {
            units
        } as u32;
        for &pass in sums_passes {
            self.launch_with_shared(pass, (blocks, halves as u32), ROW_THREADS, 0, |b| {
                b.arg(&sums).arg(&*x.words);
                for v in &sizes {
                    b.arg(v);
                }
                split_args(b, split, &split_sizes);
            })?;
        }
        // The scales alone are a thread a group; the rest a thread an entry.
        let items = match self.kernels[last] {
            Kernel::PhaseScales => groups,
            _ => n * m,
        };
        self.launch(last, Self::grid(items), MAP_THREADS, |b| {
            b.arg(out).arg(&*x.words).arg(&sums);
            for v in &sizes {
                b.arg(v);
            }
            split_args(b, split, &split_sizes);
        })
    }

    /// Grid size of a grid-stride kernel over `n` items.
    fn grid(n: usize) -> u32 {
        n.div_ceil(MAP_THREADS as usize).min(132 * 64) as u32
    }

    /// Runs the nodes on `inputs` (on the device already) and gives the
    /// graph's outputs; everything else the run made is freed by then.
    fn nodes(
        &self,
        inputs: &HashMap<String, DeviceTensor>,
        bindings: &HashMap<String, usize>,
    ) -> Result<Vec<DeviceTensor>, BackendError> {
        let started = std::time::Instant::now();
        let mut values: Vec<Option<DeviceTensor>> = vec![None; self.graph.nodes.len()];
        // Inputs and weights (evaluated at load) first: a grouped product
        // reads its siblings' weights before the run reaches their nodes.
        for (i, node) in self.graph.nodes.iter().enumerate() {
            values[i] = match &node.op {
                Op::Input { name } => Some(inputs[name].clone()),
                _ if self.plan.resident[i] => self.constants.get(&i).cloned(),
                _ => None,
            };
        }
        // Dropped before `values` (on an error too): no value is freed
        // while a collective may still write or read it.
        let _joined = JoinOnDrop(self);
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let Some(step) = &self.steps[i] else {
                continue;
            };
            if matches!(node.op, Op::Input { .. })
                || self.plan.resident[i]
                || matches!(step, Step::Ahead)
            {
                continue;
            }
            let op = &node.op;
            self.join_collectives(|v| self.reads(i).iter().any(|r| r.0 == v))?;
            let args: Vec<&DeviceTensor> = self
                .reads(i)
                .iter()
                .map(|v| values[v.0].as_ref().expect("operands are computed first"))
                .collect();
            let error = |e: String| BackendError::new(format!("%{i} = {}: {e}", op.mnemonic()));
            let started = self.profile.as_ref().map(|_| std::time::Instant::now());
            let (value, ahead) = match step {
                Step::PairedQuantLinear { .. } => self.paired_products(i, step, &args)?,
                _ => {
                    let ty = self.step_type(i, step, &args, bindings).map_err(error)?;
                    (self.eval(i, step, &args, &ty)?, Vec::new())
                }
            };
            if let (Some(profile), Some(started)) = (&self.profile, started) {
                // A node's time is its kernels' to the end, less its
                // operands' rounding (a line of its own).
                self.wait_for_profile(profile)?;
                let rounding = std::mem::take(
                    &mut *self.rounding_time.lock().unwrap_or_else(|e| e.into_inner()),
                );
                let took = started.elapsed().saturating_sub(rounding);
                // A paired product is timed as the product.
                let op = match step {
                    Step::PairedQuantLinear { node, .. } => &self.graph.nodes[*node].op,
                    _ => op,
                };
                profile.record(profile::label(op, &value.shape), took);
            }
            values[i] = Some(value);
            if let Step::PairedQuantLinear { siblings, .. } = step {
                for (sibling, value) in siblings.iter().zip(ahead) {
                    values[sibling.at] = Some(value);
                }
            }
            for v in self.reads(i) {
                if self.last_use[v.0] == i {
                    values[v.0] = None;
                }
            }
        }
        // The host's part: when it is nearly the whole run, the launches set
        // the pace and the GPU waits for them.
        tracing::debug!(
            enqueued_ms = started.elapsed().as_secs_f64() * 1e3,
            "cuda nodes"
        );
        self.forget_kept();
        self.forget_rounded();
        self.join_collectives(|_| true)?;
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|v| values[v.0].clone().expect("outputs are kept"))
            .collect())
    }

    /// The type of node `i`'s value as its step computes it from `args`.
    fn step_type(
        &self,
        i: usize,
        step: &Step,
        args: &[&DeviceTensor],
        bindings: &HashMap<String, usize>,
    ) -> Result<TensorType, String> {
        let node = &self.graph.nodes[i];
        match step {
            // Its own operands were fused away: the shape of a value it reads
            // of its static shape, else its static shape bound.
            Step::Fused { operands, .. } => operands
                .iter()
                .zip(args)
                .find(|(v, _)| self.graph.node(**v).ty.shape == node.ty.shape)
                .map(|(_, a)| Ok(a.shape.clone()))
                .unwrap_or_else(|| bind_shape(&node.ty.shape, bindings))
                .map(|dims| TensorType::new(node.ty.dtype, Shape::new(dims))),
            // Its rope's input has the rope's type; the positions follow.
            Step::Roped { .. } => concrete_type(&node.op, &args[..args.len() - 1], bindings),
            // The quantized weight has its source's shape.
            Step::PhaseStages { .. } => Ok(TensorType::new(
                node.ty.dtype,
                Shape::new(args[0].shape.clone()),
            )),
            // `x[.., k]` by `w[k, n]`: `[.., n]`.
            Step::GemmTransposedWeight { .. } => {
                let (x, w) = (&args[0].shape, &args[1].shape);
                let dims = x[..x.len() - 1].iter().chain(&w[1..]).copied();
                Ok(TensorType::new(node.ty.dtype, Shape::new(dims)))
            }
            // Of a fixed shape, as declared.
            Step::Zeros => Ok(node.ty.clone()),
            _ => concrete_type(&node.op, args, bindings),
        }
    }

    /// A [`Step::PairedQuantLinear`] at node `i` on `args`: its value, and
    /// each sibling's, from one launch. Each product's rows are the input's
    /// by the codes' rows: complex, or real (twice as many words) where the
    /// unpack is folded in.
    fn paired_products(
        &self,
        i: usize,
        step: &Step,
        args: &[&DeviceTensor],
    ) -> Result<(DeviceTensor, Vec<DeviceTensor>), BackendError> {
        let Step::PairedQuantLinear {
            kernel,
            node,
            unpack,
            norm,
            siblings,
            residual,
            prologue,
            quantized,
            ..
        } = step
        else {
            unreachable!("called for paired steps")
        };
        let product_of = |n: usize| match self.graph.nodes[n].op {
            Op::QuantLinear {
                u_stages,
                w_stages,
                granularity,
            } => (u_stages + w_stages, granularity),
            _ => unreachable!("a paired step is a quant_linear's"),
        };
        let tables = self
            .paired
            .get(&i)
            .expect("each paired step has its tables");
        // The operands after the weights: [gain], [residual].
        let mut args = args;
        let mut extra = || {
            let (last, rest) = args.split_last().expect("the extras are operands");
            args = rest;
            *last
        };
        // Products with a residual launch alone (`fusion::group_siblings`).
        debug_assert!(residual.is_none() || siblings.is_empty());
        let residual_row = residual.map(|_| extra());
        let norm = match norm.map(|n| &self.graph.nodes[n].op) {
            Some(&Op::RmsNorm { eps }) => Some((extra(), eps)),
            _ => None,
        };
        let (inputs, weights) = args.split_at(prologue.map_or(1, |(_, operands)| operands));
        let (stages, _) = product_of(*node);
        // Each product's node, and the node its value stands at.
        let products: Vec<(usize, usize)> = std::iter::once((*node, i))
            .chain(siblings.iter().map(|s| (s.node, s.at)))
            .collect();
        let mut values = Vec::with_capacity(products.len());
        for (weights, &(_, at)) in weights.chunks(2 * stages).zip(&products) {
            let n = weights[0].shape[0] * if unpack.is_some() { 2 } else { 1 };
            let rows = &inputs[0].shape[..inputs[0].shape.len() - 1];
            let shape: Vec<usize> = rows.iter().copied().chain([n]).collect();
            let elem = elem_of(self.graph.nodes[at].ty.dtype).map_err(BackendError::new)?;
            let words = self.alloc(shape.iter().product::<usize>() * words_per(elem))?;
            values.push((shape, elem, words));
        }
        let layers: Vec<quant::QuantLayer> = weights
            .chunks(2 * stages)
            .zip(&products)
            .zip(&values)
            .enumerate()
            .map(
                |(l, ((weights, &(node, _)), (_, _, out)))| quant::QuantLayer {
                    weights,
                    granularity: product_of(node).1,
                    out,
                    output: tables.outputs.get(l).map(|t| &**t),
                    residual: residual_row,
                },
            )
            .collect();
        let input = quant::QuantInput {
            inputs,
            table: tables.input.as_deref(),
            norm,
        };
        self.quant_linear(*kernel, quantized.as_ref(), input, &layers)?;
        let mut values = values.into_iter().map(|(shape, elem, words)| DeviceTensor {
            shape,
            elem,
            words: Arc::new(words),
            room: None,
        });
        let own = values
            .next()
            .expect("a paired step computes its own product");
        Ok((own, values.collect()))
    }

    /// The run's result from its outputs on the device: the state outputs
    /// (the last ones: a KV cache, a trainer's masters and moments) stay
    /// there for the next run, as `keep` makes them; the others come to the
    /// host.
    fn outputs(
        &self,
        outputs: Vec<DeviceTensor>,
        keep: impl Fn(&DeviceTensor) -> Result<DeviceTensor, BackendError>,
    ) -> Result<Vec<Tensor>, BackendError> {
        let kept_from = outputs.len().saturating_sub(self.state_outputs);
        outputs
            .iter()
            .enumerate()
            .map(|(k, t)| {
                if k >= kept_from {
                    Ok(Tensor {
                        shape: t.shape.clone(),
                        data: Data::Device(DeviceData(Arc::new(keep(t)?))),
                    })
                } else {
                    download(&self.stream, t)
                }
            })
            .collect()
    }

    /// The `rope` node's part in the step that rotates in its place, with
    /// its positions' value.
    fn rope_args<'a>(&'a self, rope: usize, positions: &'a DeviceTensor) -> RopeArgs<'a> {
        let Op::Rope { head_dim, .. } = self.graph.nodes[rope].op else {
            unreachable!("a roped step's rope is a rope node");
        };
        RopeArgs {
            positions,
            seq: positions.len().max(1) as i64,
            freqs: &self.rope_freqs[&rope],
            head_dim: head_dim as i64,
        }
    }

    /// The values node `i`'s step reads.
    fn reads(&self, i: usize) -> &[ValueId] {
        fusion::reads(&self.graph, &self.steps, i)
    }

    /// Makes the program's stream wait for the collectives in flight whose
    /// result (node index) `joined` names; their operands are freed after.
    fn join_collectives(&self, joined: impl Fn(usize) -> bool) -> Result<(), BackendError> {
        // A GPU alone has none: no lock before each of its nodes.
        if self.communicator.is_none() {
            return Ok(());
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if in_flight.is_empty() {
            return Ok(());
        }
        let mut kept = Vec::with_capacity(in_flight.len());
        let mut failed = Ok(());
        for collective in in_flight.drain(..) {
            if joined(collective.value) {
                if let Err(e) = self.stream.wait(&collective.done) {
                    failed = Err(driver(e));
                }
            } else if !collective.done.is_complete() {
                // Still running: its operand stays. (One that is done needs
                // no wait and frees its operand now, so that the buckets'
                // operands do not all live to the end of the backward pass.)
                kept.push(collective);
            }
        }
        *in_flight = kept;
        failed
    }

    /// Frees the values rounded for products.
    fn forget_rounded(&self) {
        self.rounded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Frees what nodes kept for later ones: the last attention gradient's
    /// for its siblings, flash forward passes' and losses' for their
    /// gradients.
    fn forget_kept(&self) {
        *self
            .attention_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.kept_forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.kept_losses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// `out[c] = Σ_r src[r·cols + c]`, one block per column.
    fn column_sum(
        &self,
        k: usize,
        out: &mut CudaSlice<u32>,
        src: &CudaSlice<u32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        let sizes = [rows as i64, cols as i64];
        self.launch(k, cols as u32, ROW_THREADS, |b| {
            b.arg(&*out).arg(src).arg(&sizes[0]).arg(&sizes[1]);
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn copy2d(
        &self,
        k: usize,
        out: &mut CudaSlice<u32>,
        src: &DeviceTensor,
        rows: usize,
        cols: usize,
        (dst_stride, dst_off): (usize, usize),
        (src_stride, src_off): (usize, usize),
    ) -> Result<(), BackendError> {
        let values = [rows, cols, dst_stride, dst_off, src_stride, src_off].map(|v| v as i64);
        self.launch(k, Self::grid(rows * cols), MAP_THREADS, |b| {
            b.arg(&*out).arg(&*src.words);
            for v in &values {
                b.arg(v);
            }
        })
    }

    /// `y[m, n] = x[m, k] · w[n, k]ᵀ` (row-major) as the column-major
    /// product `yᵀ = w · xᵀ` with `w` transposed.
    fn linear(
        &self,
        x: &DeviceTensor,
        w: &DeviceTensor,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let (n, k) = (w.shape[0], w.shape[1]);
        let m: usize = x.shape[..x.shape.len() - 1].iter().product();
        let t = blas_sys::cublasOperation_t::CUBLAS_OP_T;
        let no = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        self.gemm(x.elem, (t, no), (n, m, k), (w, k), (x, k), (out, n))
    }

    /// `out[.., n] = x[.., k] · w[k, n]`, the `linear` of `x` by `wᵀ`:
    /// `w` is, column-major, the `n×k` matrix the product takes as it is.
    fn linear_by_transpose(
        &self,
        x: &DeviceTensor,
        w: &DeviceTensor,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let (k, n) = (w.shape[0], w.shape[1]);
        let m: usize = x.shape[..x.shape.len() - 1].iter().product();
        let no = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        self.gemm(x.elem, (no, no), (n, m, k), (w, n), (x, k), (out, n))
    }

    /// `dw[n, k] = Σ_rows dy[.., n]ᵀ · x[.., k]`: the column-major product
    /// `dwᵀ(k×n) = xᵀ · dy` (x as the k×m matrix it is column-major, dy
    /// transposed from its n×m column-major form), with no conjugation.
    fn weight_grad(
        &self,
        dy: &DeviceTensor,
        x: &DeviceTensor,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let n = dy.shape.last().copied().unwrap_or(1);
        let k = x.shape.last().copied().unwrap_or(1);
        let m = dy.len().checked_div(n).unwrap_or(0);
        let t = blas_sys::cublasOperation_t::CUBLAS_OP_T;
        let no = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        self.gemm(x.elem, (no, t), (k, n, m), (x, k), (dy, n), (out, k))
    }

    /// cuBLAS's column-major `c(m×n) = op(a) · op(b)` over `k`, with the
    /// leading dimensions given beside each matrix: cuBLASLt for real
    /// elements (on operands rounded to bf16 with bf16 products), cgemm for
    /// complex ones. An empty product over `k` leaves zeros.
    #[allow(clippy::type_complexity)]
    fn gemm(
        &self,
        elem: Elem,
        (transa, transb): (blas_sys::cublasOperation_t, blas_sys::cublasOperation_t),
        (m, n, k): (usize, usize, usize),
        (a, lda): (&DeviceTensor, usize),
        (b, ldb): (&DeviceTensor, usize),
        (c, ldc): (&mut CudaSlice<u32>, usize),
    ) -> Result<(), BackendError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            self.stream.memset_zeros(c).map_err(driver)?;
            return Ok(());
        }
        let rounded = match (self.to_bf16.filter(|_| self.round_products), elem) {
            (Some(kernel), Elem::Real | Elem::Bf16) => {
                Some((self.bf16(kernel, a)?, self.bf16(kernel, b)?))
            }
            _ => None,
        };
        let (a, b) = match &rounded {
            Some((a, b)) => (&**a, &**b),
            None if a.elem == Elem::Bf16 || b.elem == Elem::Bf16 => {
                return Err(BackendError::new(
                    "an operand rounded to bf16 for an f32 product",
                ))
            }
            None => (&*a.words, &*b.words),
        };
        if matches!(elem, Elem::Real | Elem::Bf16) {
            let t = blas_sys::cublasOperation_t::CUBLAS_OP_T;
            let product = products::Product {
                transa: transa == t,
                transb: transb == t,
                m,
                n,
                k,
                lda,
                ldb,
                ldc,
                bf16: rounded.is_some(),
                fast: self.fast,
            };
            self.launches.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the callers pass the matrices' true sizes and
            // leading dimensions, and the buffers hold them (rounded, half
            // the words).
            return unsafe { self.lt.run(&self.stream, product, a, b, c) };
        }
        // Complex elements: cgemm.
        let (pa, _ra) = a.device_ptr(&self.stream);
        let (pb, _rb) = b.device_ptr(&self.stream);
        let (pc, _rc) = c.device_ptr_mut(&self.stream);
        let [m, n, k, lda, ldb, ldc] = [m, n, k, lda, ldb, ldc].map(|v| v as i32);
        let handle = *self.blas.handle();
        let data = blas_sys::cudaDataType_t::CUDA_C_32F;
        // alpha = 1 and beta = 0, as complex numbers.
        let (one, zero) = ([1.0f32, 0.0], [0.0f32, 0.0]);
        // SAFETY: the callers pass the matrices' true sizes and leading
        // dimensions; the buffers hold them; the scalars are of the
        // compute type's scale type (complex f32).
        let status = unsafe {
            blas_sys::cublasGemmEx(
                handle,
                transa,
                transb,
                m,
                n,
                k,
                one.as_ptr().cast(),
                pa as *const std::ffi::c_void,
                data,
                lda,
                pb as *const std::ffi::c_void,
                data,
                ldb,
                zero.as_ptr().cast(),
                pc as *mut std::ffi::c_void,
                data,
                ldc,
                self.compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        blas_result(status)
    }

    /// Whether `step` writes its value rounded to bf16 ([`Elem::Bf16`]).
    fn writes_bf16(&self, step: &Step) -> bool {
        let last = match step {
            Step::Kernel(k) | Step::PhaseStages { kernels: k, .. } => k.last(),
            Step::Fused { kernel, .. } => Some(kernel),
            _ => None,
        };
        last.is_some_and(|&k| self.kernels[k].writes_bf16())
    }

    /// Waits for the stream's work where the profile times it (not with
    /// `FAIRYC_PROFILE=host`, which times the host's part alone).
    fn wait_for_profile(&self, profile: &OpProfile) -> Result<(), BackendError> {
        if profile.host_only() {
            return Ok(());
        }
        self.stream.synchronize().map_err(driver)
    }

    /// `x`'s f32 words rounded to bf16, two a word ([`Kernel::ToBf16`]),
    /// once a run for each value (kept while the value lives: attention's
    /// operands from its forward pass to its gradients).
    fn bf16(&self, kernel: usize, x: &DeviceTensor) -> Result<Arc<CudaSlice<u32>>, BackendError> {
        if x.elem == Elem::Bf16 {
            return Ok(x.words.clone());
        }
        let mut rounded = self.rounded.lock().unwrap_or_else(|e| e.into_inner());
        rounded.retain(|(source, _)| Arc::strong_count(source) > 1);
        if let Some((_, done)) = rounded.iter().find(|(s, _)| Arc::ptr_eq(s, &x.words)) {
            return Ok(done.clone());
        }
        let started = match &self.profile {
            Some(profile) => {
                self.wait_for_profile(profile)?;
                Some(std::time::Instant::now())
            }
            None => None,
        };
        let n = x.word_count();
        let pairs = n.div_ceil(2);
        let out = self.alloc(pairs)?;
        let (pairs, n) = (pairs as i64, n as i64);
        self.launch(kernel, Self::grid(pairs as usize), MAP_THREADS, |b| {
            b.arg(&out).arg(&*x.words).arg(&pairs).arg(&n);
        })?;
        if let (Some(profile), Some(started)) = (&self.profile, started) {
            self.wait_for_profile(profile)?;
            let took = started.elapsed();
            profile.record("to_bf16 (operands of products and attention)".into(), took);
            *self.rounding_time.lock().unwrap_or_else(|e| e.into_inner()) += took;
        }
        let out = Arc::new(out);
        rounded.push((x.words.clone(), out.clone()));
        Ok(out)
    }

    /// Checks token ids bound to inputs against the tables they index (a
    /// kernel cannot report an id past the vocabulary).
    fn check_ids(&self, inputs: &HashMap<String, Tensor>) -> Result<(), BackendError> {
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let vocab = match &node.op {
                Op::Embed => self.graph.node(node.operands[1]).ty.shape.dims()[0].clone(),
                Op::EmbedGrad { vocab } => Dim::Fixed(*vocab),
                _ => continue,
            };
            let Op::Input { name } = &self.graph.node(node.operands[0]).op else {
                continue;
            };
            let (Some(ids), Dim::Fixed(vocab)) = (inputs.get(name).and_then(|t| t.as_i32()), vocab)
            else {
                continue;
            };
            if let Some(id) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
                return Err(BackendError::new(format!(
                    "%{i} = {}: token id {id} is outside the vocabulary of {vocab}",
                    node.op.mnemonic()
                )));
            }
        }
        Ok(())
    }
}

/// For `pack` of real rows of `cols` channels: the channel of each word of
/// the complex output row (re, im per slot; −1 for the padding channel of
/// an odd width). For `unpack` of complex rows to `cols` channels: the word
/// (2·slot + imaginary) of each channel. Returns the index and the words of
/// an input row.
fn pairing_index(op: &Op, pairing: Pairing, cols: usize) -> Result<(Vec<i32>, usize), String> {
    match op {
        Op::Pack { .. } => {
            let k = cols.div_ceil(2);
            let table = pairing.table(2 * k).map_err(|e| e.to_string())?;
            let channel = |c: usize| if c < cols { c as i32 } else { -1 };
            Ok((
                table
                    .iter()
                    .flat_map(|&(re, im)| [channel(re), channel(im)])
                    .collect(),
                cols,
            ))
        }
        _ => {
            // `unpack` of `[.., k]` complex gives `[.., 2k]` channels.
            let inverse = pairing.inverse_table(2 * cols).map_err(|e| e.to_string())?;
            Ok((
                inverse
                    .iter()
                    .map(|&(slot, imag)| (2 * slot + usize::from(imag)) as i32)
                    .collect(),
                2 * cols,
            ))
        }
    }
}

/// Copies a host tensor to the device as words; a tensor already there
/// (one this backend returned) is taken as it is.
fn upload(stream: &Arc<CudaStream>, t: &Tensor) -> Result<DeviceTensor, String> {
    let Some((elem, words)) = host_words(t) else {
        return on_device(t);
    };
    Ok(DeviceTensor {
        shape: t.shape.clone(),
        elem,
        words: Arc::new(stream.clone_htod(&words).map_err(|e| e.to_string())?),
        room: None,
    })
}

/// A tensor this backend left on the device.
fn on_device(t: &Tensor) -> Result<DeviceTensor, String> {
    match &t.data {
        Data::Device(d) => {
            d.0.downcast_ref::<DeviceTensor>()
                .cloned()
                .ok_or_else(|| "a device tensor of another backend".to_string())
        }
        _ => Err("a host tensor, where a device tensor was expected".to_string()),
    }
}

/// A host tensor's words as the device holds them (at least one word);
/// `None` for a tensor on a device.
fn host_words(t: &Tensor) -> Option<(Elem, Vec<u32>)> {
    let (elem, words): (Elem, Vec<u32>) = match &t.data {
        Data::Device(_) => return None,
        Data::F32(v) => (Elem::Real, v.iter().map(|x| x.to_bits()).collect()),
        Data::C64(v) => (
            Elem::Complex,
            v.iter()
                .flat_map(|z| [z.re.to_bits(), z.im.to_bits()])
                .collect(),
        ),
        Data::I32(v) => (Elem::Int, v.iter().map(|&x| x as u32).collect()),
        Data::Codes(packed) => (
            Elem::Code2,
            packed
                .chunks(4)
                .map(|b| {
                    let mut word = [0u8; 4];
                    word[..b.len()].copy_from_slice(b);
                    u32::from_le_bytes(word)
                })
                .collect(),
        ),
    };
    Some((elem, if words.is_empty() { vec![0] } else { words }))
}

fn download(stream: &Arc<CudaStream>, t: &DeviceTensor) -> Result<Tensor, BackendError> {
    // Only the words in use (a growing cache has room after them), into a
    // vector the tensor then takes as it is: a decoding step's logits are
    // tens of megabytes at hundreds of rows.
    let words = match t.word_count() {
        0 => Vec::new(),
        n => stream.clone_dtoh(&t.words.slice(..n)).map_err(driver)?,
    };
    let shape = t.shape.clone();
    Ok(match t.elem {
        Elem::Real => Tensor::f32(shape, bytemuck::allocation::cast_vec(words)),
        Elem::Complex => Tensor::c64(
            shape,
            bytemuck::allocation::try_cast_vec(words).unwrap_or_else(|(_, words)| {
                words
                    .chunks_exact(2)
                    .map(|p| Complex32::new(f32::from_bits(p[0]), f32::from_bits(p[1])))
                    .collect()
            }),
        ),
        Elem::Int => Tensor::i32(shape, bytemuck::allocation::cast_vec(words)),
        // Two bf16 a word, the first in the low half: each the high half of
        // its f32.
        Elem::Bf16 => Tensor::f32(
            shape,
            words
                .iter()
                .flat_map(|w| [f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000)])
                .take(t.len())
                .collect(),
        ),
        Elem::Code2 => {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            Tensor::codes(
                shape,
                fairyc_ir::SharedBytes::new(bytes[..code_bytes(&t.shape)].to_vec()),
            )
        }
    })
}

/// The concrete type of node `i` from its operands' concrete types.
fn concrete_type(
    op: &Op,
    operands: &[&DeviceTensor],
    bindings: &HashMap<String, usize>,
) -> Result<TensorType, String> {
    let op = match op {
        Op::Reshape { shape } => Op::Reshape {
            shape: Shape::new(bind_shape(shape, bindings)?),
        },
        op => op.clone(),
    };
    let types: Vec<TensorType> = operands
        .iter()
        .map(|t| TensorType::new(t.dtype(), Shape::new(t.shape.clone())))
        .collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    infer_type(&op, &refs)
}

impl Program for CudaProgram {
    fn graph(&self) -> &Graph {
        &self.graph
    }

    fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    fn run(&self, inputs: HashMap<String, Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let started = std::time::Instant::now();
        self.launches.store(0, Ordering::Relaxed);
        // Nothing an earlier run (one that failed midway) left is reused.
        self.forget_kept();
        self.forget_rounded();
        self.join_collectives(|_| true)?;
        let bindings = bind_inputs(&self.graph, &inputs)?;
        self.check_ids(&inputs)?;
        self.write_cache_lengths(&inputs)?;
        let signature = self.signature(&inputs);
        let mut on_device = HashMap::with_capacity(inputs.len());
        // Dropped before the inputs, on an error too: a caller's buffer
        // whose last holder was this run is freed (on the stream of the
        // program that made it) only once this program's stream is done
        // with it.
        let _finished = WaitForStream(&self.stream);
        let outputs = match self.replayed(&inputs, &bindings, &signature)? {
            Some(outputs) => outputs,
            None => {
                let (outputs, layouts) = {
                    let _shared = replay::device_work();
                    for (name, t) in &inputs {
                        let d = upload(&self.stream, t)
                            .map_err(|e| BackendError::new(format!("input \"{name}\": {e}")))?;
                        on_device.insert(name.clone(), d);
                    }
                    // The host tensors' memory goes now; the device buffers
                    // stay in `on_device`.
                    drop(inputs);
                    let outputs = self.nodes(&on_device, &bindings)?;
                    let layouts = outputs.iter().map(|t| (t.shape.clone(), t.elem)).collect();
                    (self.outputs(outputs, |t| Ok(t.clone()))?, layouts)
                };
                // After the shared hold is let go: `replayed` takes the
                // program's replay lock before the device's.
                self.ran_plainly(signature, layouts);
                outputs
            }
        };
        self.stream.synchronize().map_err(driver)?;
        tracing::debug!(
            launches = self.launches.load(Ordering::Relaxed),
            done_ms = started.elapsed().as_secs_f64() * 1e3,
            "cuda run"
        );
        Ok(outputs)
    }

    fn resident_weight_bytes(&self) -> usize {
        self.resident_bytes
    }

    fn profile(&self) -> Option<&OpProfile> {
        self.profile.as_ref()
    }

    fn fetch(&self, t: Tensor) -> Result<Tensor, BackendError> {
        match &t.data {
            Data::Device(d) => {
                let _shared = replay::device_work();
                let on_device =
                    d.0.downcast_ref::<DeviceTensor>()
                        .ok_or_else(|| BackendError::new("a device tensor of another backend"))?;
                download(&self.stream, on_device)
            }
            _ => Ok(t),
        }
    }
}

/// How the kernels on codes find a scale: groups per row, columns per
/// group, and whether one pair serves the tensor.
fn scale_groups(granularity: Granularity, m: usize) -> [i64; 3] {
    let (groups_per_row, group_len) = match granularity {
        Granularity::Group(g) => (m.div_ceil(g.max(1)), g.max(1)),
        Granularity::Tensor | Granularity::Channel => (1, m.max(1)),
    };
    [
        groups_per_row as i64,
        group_len as i64,
        i64::from(granularity == Granularity::Tensor),
    ]
}

#[cfg(test)]
mod tests {
    use super::Fusions;

    /// `FAIRYC_NO_FUSION`: unset or empty, every pass runs; a list of
    /// names, all but those; anything else, none.
    #[test]
    fn fusion_switches_leave_out_what_they_name() {
        for off in [None, Some(""), Some(" ")] {
            let all = Fusions::leaving_out(off);
            assert!(all.norms && all.pairings && all.quantize_once, "{off:?}");
        }
        let some = Fusions::leaving_out(Some("norms, pairings"));
        assert!(!some.norms && !some.pairings);
        assert!(some.siblings && some.elementwise && some.roundings);
        let none = Fusions::leaving_out(Some("1"));
        assert!(!none.norms && !none.elementwise && !none.quantize_once);
    }
}
