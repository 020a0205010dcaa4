//! The CUDA backend: kernels generated as PTX through LLVM ([`codegen`]),
//! run through the CUDA driver API ([`program`]).

pub mod codegen;
pub mod collective;
pub mod program;

use std::sync::Arc;

use fairyc_ir::{Granularity, Graph, Op, WeightStore};
use num_complex::Complex32;

pub use collective::Communicator;
pub use program::replay::{captures, Captures};

use crate::{Backend, BackendError, Program, Tolerance};

/// The CUDA backend (`--backend cuda`): one GPU (`device`, the first by
/// default), through the driver API; the CUDA libraries are loaded when it
/// first compiles a graph, so a binary built without the CUDA toolkit runs
/// it where a GPU is.
#[derive(Clone, Debug, Default)]
pub struct Cuda {
    pub activations: GpuActivations,
    pub int8_products: Int8Products,
    pub row_quantization: RowQuantization,
    pub matmul: GpuMatmul,
    pub attention: GpuAttention,
    /// The CUDA device's ordinal.
    pub device: usize,
    /// Where the GPU is one data-parallel rank of several: its NCCL
    /// communicator ([`Communicator::group`]), through which `all_reduce`
    /// adds over the group. Without it a GPU is a rank alone.
    pub communicator: Option<Arc<Communicator>>,
}

/// What the quantized layers (`quant_linear`) take as activations on the
/// GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuActivations {
    /// Each input row as int8 with one step for the row (its largest real
    /// or imaginary part over 127), multiplied on tensor cores or by
    /// `dp4a` ([`Int8Products`]) where [`int8_applies`]; f32 elsewhere.
    #[default]
    Int8,
    /// f32 as they are, each code's product in f32: exact, slower.
    F32,
}

/// How the int8 products ([`GpuActivations::Int8`]) multiply a model's
/// codes by the quantized row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int8Products {
    /// `dp4a` integer dot products on the codes' permuted bytes, a warp an
    /// output row ([`codegen::quant_i8`], design (a)).
    Dp4a,
    /// Tensor-core `mma` on the same bytes, a block's warps sharing a tile
    /// of 16 output rows, up to four input rows at once
    /// ([`codegen::quant_mma`], design (b)), for the paired products whose
    /// codes are weights of the program that they alone read (re-packed
    /// into fragment order once, at load) and whose shapes suit it
    /// ([`codegen::quant_mma::applies`]); `dp4a` elsewhere. The default:
    /// prompts run 3-5 times as fast as on `dp4a`, and a decoding step
    /// within a few percent of it either way (docs/BENCHMARKS.md).
    #[default]
    TensorCores,
}

/// Where the paired int8 products (`dp4a` or tensor cores) quantize their
/// input rows to int8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RowQuantization {
    /// Once, by a kernel of their own before the product, for a prompt's
    /// rows (at least [`program::QUANTIZE_ONCE_ROWS`]) and for fewer rows
    /// of at least [`program::QUANTIZE_ONCE_INPUTS`] inputs; by each of
    /// the product's blocks otherwise.
    #[default]
    ByWidth,
    /// Once, by a kernel of their own, for every paired int8 product at
    /// every width and row count.
    Once,
    /// By each of the product's blocks: one launch, each row quantized by
    /// every block that takes it.
    InEachBlock,
}

/// How training's attention (over segments) and its gradients run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuAttention {
    /// cuBLAS products (in [`GpuMatmul`]'s arithmetic) around generated
    /// softmax kernels, the weights and their gradients in memory.
    #[default]
    Products,
    /// The flash kernels ([`codegen::flash`]): bf16 tensor-core products
    /// with f32 sums whatever [`GpuMatmul`] says, the weights never in
    /// memory; where the heads do not suit them (16 to 128 words, whole
    /// 16s), products as above. `fairyc train`'s default with bf16
    /// products; the backend's default stays products, which f32 products
    /// hold to the reference.
    Flash,
}

/// The arithmetic of the products cuBLAS runs (`linear`, its weight
/// gradient, and training's batched attention), whose operands and results
/// stay f32. The backend's default is f32 (what the conformance suite
/// holds to the reference); `fairyc train` defaults to bf16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuMatmul {
    /// f32 products: the reference's results to rounding.
    #[default]
    F32,
    /// Tensor cores on operands rounded to TF32 (10-bit mantissas), f32
    /// sums.
    Tf32,
    /// Tensor cores on operands rounded to bf16 (8-bit mantissas), f32
    /// sums: training's usual arithmetic, the fastest.
    Bf16,
}

/// Whether the int8 kernel runs a layer of `m` complex inputs with these
/// scales: whole code words a row (their int8 words within a launch's
/// shared memory), and one scale pair per tensor or row.
pub fn int8_applies(granularity: Granularity, m: usize) -> bool {
    m.is_multiple_of(codegen::quant_i8::RUN)
        && m <= codegen::quant_i8::MAX_INPUTS
        && matches!(granularity, Granularity::Tensor | Granularity::Channel)
}

impl Cuda {
    /// Whether a CUDA device can be used here (driver loaded, a device
    /// present).
    pub fn available() -> bool {
        Cuda::device_count() > 0
    }

    /// How many CUDA devices this machine has (0 without a driver).
    pub fn device_count() -> usize {
        // cudarc panics on its first call when the driver library is
        // missing: look for the library first.
        // SAFETY: loading libcuda runs only its initialisers, and the
        // handle is dropped at once.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return 0;
        }
        cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }
}

impl Backend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn supports(&self, op: &Op) -> bool {
        program::runs(op)
    }

    fn compile(
        &self,
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Box<dyn Program>, BackendError> {
        // cudarc panics when it cannot load the driver library: ask first.
        if !Cuda::available() {
            return Err(BackendError::new(
                "the cuda backend found no CUDA driver (libcuda) or no GPU on this machine",
            ));
        }
        if self.device >= Cuda::device_count() {
            return Err(BackendError::new(format!(
                "the cuda backend has no device {} (this machine has {})",
                self.device,
                Cuda::device_count()
            )));
        }
        Ok(Box::new(program::CudaProgram::new(
            graph,
            store,
            on_weight,
            self.clone(),
        )?))
    }

    /// `quant_linear` on int8 activations is within their rounding (half a
    /// step of the row's, where the int8 kernel runs); the rest is the
    /// reference's arithmetic in another order.
    fn tolerance(&self, op: &Op) -> Tolerance {
        match (op, self.activations) {
            (Op::QuantLinear { .. }, GpuActivations::Int8) => Tolerance::QuantizedActivations {
                rel: 1e-4,
                step: int8_steps,
                weight_error: |_, _, _, _| 0.0,
            },
            // On bf16 inputs (`conformance::bf16_attention_cases`) bf16
            // products' scores are exact to f32 sums; what they round is
            // the weights P and dS before the second product, by at most
            // u = 2⁻⁹ relative each. An output is a weighted sum whose
            // weights sum to at most a few, of terms at most 1: an error
            // of a few u (~1e-2 with room).
            (Op::Attention { .. } | Op::AttentionGrad { .. }, _)
                if self.matmul == GpuMatmul::Bf16 || self.attention == GpuAttention::Flash =>
            {
                Tolerance::Relative(1e-2)
            }
            _ => Tolerance::default(),
        }
    }
}

/// The int8 step of each input of one row of `quant_linear`'s input.
fn int8_steps(m: usize, granularity: Granularity, row: &[Complex32]) -> Vec<f32> {
    if !int8_applies(granularity, m) {
        return vec![0.0; m];
    }
    let largest = row
        .iter()
        .fold(0.0f32, |a, z| a.max(z.re.abs()).max(z.im.abs()));
    vec![largest / 127.0; m]
}
