//! The flags `fairyc`'s commands share: how to compile a model before
//! using it (`QuantArgs`) and what runs it (`BackendArgs`).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use fairyc::compile::Precision;
use fairyc::{
    Activations, Backend, Cranelift, Cuda, GpuActivations, Int8Products, Llvm, Reference,
    RowQuantization,
};
use fairyc_ir::{Arithmetic, Granularity};
use fairyc_passes::cost::CostModel;
use fairyc_passes::egraph::Limits;
use fairyc_passes::lower::{LowerOptions, Pairing};
use fairyc_passes::pipeline::CompileOptions;
use fairyc_passes::quantize::Method;
use fairyc_passes::simplify::SimplifyOptions;

/// How to compile a model before using it.
#[derive(Args, Clone)]
pub(crate) struct QuantArgs {
    /// Quantize the linear layers inside the blocks: w1, w2, w3 (Fairy2i
    /// PhaseQuant with 1-3 residual stages: T bits per real parameter),
    /// binary or ternary (the real baselines), complex (the exact
    /// widely-linear form, unquantized), native (only the quantization the
    /// model itself defines, as iFairy's), float (without the model's own
    /// quantizers: iFairy in full precision), or none.
    #[arg(long, default_value = "none")]
    quant: QuantChoice,
    /// Scale granularity: tensor (the paper's), channel, or group:G.
    #[arg(long, default_value = "tensor", value_parser = parse_granularity)]
    scales: Granularity,
    /// How real channels pair into complex numbers: paper (first/second
    /// half, as the authors) or rope (q/k/v outputs pair RoPE's pairs, so
    /// RoPE and attention run in complex form).
    #[arg(long, value_enum, default_value_t = PairingArg::Paper)]
    pairing: PairingArg,
    /// Quantize lm_head (the output projection) too, as the authors do:
    /// the default; `--lm-head false` keeps it unquantized.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    lm_head: bool,
    /// Rounding of the split and PhaseQuant: f32 (ours), or bf16 to
    /// reproduce the codes the authors' bf16 code deploys.
    #[arg(long, value_enum, default_value_t = ArithmeticArg::F32)]
    pub(crate) arithmetic: ArithmeticArg,
    /// Rows per weight read that the cost model assumes (1: decoding;
    /// hundreds: prompts and training, where Gauss's product pays).
    #[arg(long, default_value_t = 1.0)]
    cost_tokens: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantChoice {
    None,
    Native,
    Float,
    Complex,
    W1,
    W2,
    W3,
    Binary,
    Ternary,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum EmbeddingsArg {
    Source,
    F32,
    F16,
    Bf16,
    Q8,
}

impl EmbeddingsArg {
    pub(crate) fn precision(self) -> Precision {
        use fairyc_frontend::fairy::Storage;
        match self {
            EmbeddingsArg::Source => Precision::Source,
            EmbeddingsArg::F32 => Precision::Matrices(Storage::F32),
            EmbeddingsArg::F16 => Precision::Matrices(Storage::F16),
            EmbeddingsArg::Bf16 => Precision::Matrices(Storage::Bf16),
            EmbeddingsArg::Q8 => Precision::Matrices(Storage::Q8),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SteArg {
    Identity,
    ScaleAware,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ArithmeticArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum PairingArg {
    Paper,
    Rope,
}

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    match s {
        "tensor" => Ok(Granularity::Tensor),
        "channel" => Ok(Granularity::Channel),
        _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
            Some(Ok(g)) if g > 0 => Ok(Granularity::Group(g)),
            _ => Err(format!(
                "expected tensor, channel or group:G with G > 0, got `{s}`"
            )),
        },
    }
}

/// A count of at least 1.
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got `{s}`")),
    }
}

/// A positive number of seconds that a `Duration` holds.
pub(crate) fn seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>().map(std::time::Duration::try_from_secs_f64) {
        Ok(Ok(d)) if !d.is_zero() => Ok(d),
        _ => Err(format!("expected a positive number of seconds, got `{s}`")),
    }
}

impl QuantArgs {
    /// `--quant native` keeps the quantizers a model defines itself and
    /// `--quant float` removes them: on a model that defines none, either
    /// would silently leave it unquantized, so it is an error.
    pub(crate) fn check_own_quantizers(&self, graph: &fairyc_ir::Graph) -> Result<()> {
        let flag = match self.quant {
            QuantChoice::Native => "native",
            QuantChoice::Float => "float",
            _ => return Ok(()),
        };
        let own = graph.nodes.iter().any(|n| {
            matches!(
                n.op,
                fairyc_ir::Op::Quantize { .. }
                    | fairyc_ir::Op::ActQuant { .. }
                    | fairyc_ir::Op::Dequant { .. }
                    | fairyc_ir::Op::QuantLinear { .. }
            )
        });
        if !own {
            bail!("--quant {flag}: the model defines no quantizers of its own (native ones are iFairy's); choose w1, w2, w3, binary or ternary to quantize it");
        }
        Ok(())
    }

    /// The pass options, or `None` when the model is used as imported.
    pub(crate) fn options(&self) -> Option<CompileOptions> {
        let method = match self.quant {
            QuantChoice::None => return None,
            QuantChoice::Native | QuantChoice::Float | QuantChoice::Complex => None,
            QuantChoice::W1 => Some(Method::Fairy2i { stages: 1 }),
            QuantChoice::W2 => Some(Method::Fairy2i { stages: 2 }),
            QuantChoice::W3 => Some(Method::Fairy2i { stages: 3 }),
            QuantChoice::Binary => Some(Method::RealBinary),
            QuantChoice::Ternary => Some(Method::RealTernary),
        };
        let real_baseline = matches!(method, Some(Method::RealBinary | Method::RealTernary));
        let native = matches!(self.quant, QuantChoice::Native | QuantChoice::Float);
        Some(CompileOptions {
            strip_quantizers: matches!(self.quant, QuantChoice::Float),
            widely_linear: !real_baseline && !native,
            method,
            granularity: self.scales,
            lower: LowerOptions {
                pairing: match self.pairing {
                    PairingArg::Paper => Pairing::Paper,
                    PairingArg::Rope => Pairing::Rope,
                },
                arithmetic: match self.arithmetic {
                    ArithmeticArg::F32 => Arithmetic::F32,
                    ArithmeticArg::Bf16 => Arithmetic::Bf16Exact,
                },
                lm_head: self.lm_head,
            },
            simplify: SimplifyOptions {
                identities: true,
                gauss: true,
                cost: CostModel {
                    tokens: self.cost_tokens,
                    ..CostModel::default()
                },
            },
            limits: Limits::default(),
        })
    }
}

/// What runs the model: the reference backend (f32 kernels, exact), the
/// CPU backends whose quantized layers run look-up-table kernels on int
/// activations generated by Cranelift (128-bit vectors) or LLVM (the host's
/// widest: AVX2, AVX-512), or the GPU backend (PTX generated through LLVM
/// and cuBLAS, on the first CUDA device).
#[derive(Args, Clone, Copy)]
pub(crate) struct BackendArgs {
    /// Default: llvm where the host runs it (it decodes fastest).
    #[arg(long, value_enum, default_value_t = BackendArg::fastest())]
    backend: BackendArg,
    /// Where the model runs: `cuda` is `--backend cuda`; `cpu` the
    /// fastest CPU backend (as `fairyc train --device`).
    #[arg(long, value_enum, conflicts_with = "backend")]
    device: Option<DeviceArg>,
    /// Bits of the activations the CPU backends' look-up tables take: 7
    /// (integers up to 63 per block of inputs, one pass: fastest) or 14
    /// (the rounding error again, a second pass: twice the look-ups, about
    /// a 126th of the error).
    #[arg(long, value_enum, default_value_t = ActivationBits::Seven)]
    activation_bits: ActivationBits,
    /// What the cuda backend's quantized layers take: int8 (each row with
    /// one step, products on tensor cores or by dp4a: fastest) or f32
    /// (exact).
    #[arg(long, value_enum, default_value_t = GpuActivationsArg::Int8)]
    gpu_activations: GpuActivationsArg,
    /// How the cuda backend's int8 layers multiply: tensor-cores (mma on
    /// tiles of 16 rows and up to four input rows at once, the codes
    /// re-packed at load: prompts 3-5x as fast) or dp4a (a warp an output
    /// row: a decoding step at LLaMA-7B's widths about 3% faster, at
    /// SmolLM2's 3% slower; docs/BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = Int8ProductsArg::TensorCores)]
    int8_products: Int8ProductsArg,
    /// Where the cuda backend's int8 layers quantize their input rows:
    /// by-width (once, by a kernel of their own, for prompts of 16 rows or
    /// more and for rows of 1,024 complex inputs or more; by each block of
    /// the product otherwise), once, or in-each-block.
    #[arg(long, value_enum, default_value_t = RowQuantizationArg::ByWidth)]
    row_quantization: RowQuantizationArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum Int8ProductsArg {
    Dp4a,
    TensorCores,
}

#[derive(Clone, Copy, ValueEnum)]
enum RowQuantizationArg {
    ByWidth,
    Once,
    InEachBlock,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GpuAttentionArg {
    Products,
    Flash,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GpuMatmulArg {
    Bf16,
    Tf32,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum GpuActivationsArg {
    Int8,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActivationBits {
    #[value(name = "7")]
    Seven,
    #[value(name = "14")]
    Fourteen,
}

impl BackendArgs {
    /// The backend chosen, by `--device` where given.
    pub(crate) fn chosen(self) -> BackendArg {
        match self.device {
            Some(DeviceArg::Cuda) => BackendArg::Cuda,
            Some(DeviceArg::Cpu) => BackendArg::fastest(),
            None => self.backend,
        }
    }

    pub(crate) fn backend(self) -> Box<dyn Backend> {
        let activations = match self.activation_bits {
            ActivationBits::Seven => Activations::Bits7,
            ActivationBits::Fourteen => Activations::Bits14,
        };
        match self.chosen() {
            BackendArg::Reference => Box::new(Reference::default()),
            BackendArg::Cranelift => Box::new(Cranelift { activations }),
            BackendArg::Llvm => Box::new(Llvm { activations }),
            BackendArg::Cuda => Box::new(Cuda {
                activations: match self.gpu_activations {
                    GpuActivationsArg::Int8 => GpuActivations::Int8,
                    GpuActivationsArg::F32 => GpuActivations::F32,
                },
                int8_products: match self.int8_products {
                    Int8ProductsArg::TensorCores => Int8Products::TensorCores,
                    Int8ProductsArg::Dp4a => Int8Products::Dp4a,
                },
                row_quantization: match self.row_quantization {
                    RowQuantizationArg::ByWidth => RowQuantization::ByWidth,
                    RowQuantizationArg::Once => RowQuantization::Once,
                    RowQuantizationArg::InEachBlock => RowQuantization::InEachBlock,
                },
                ..Cuda::default()
            }),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BackendArg {
    Reference,
    Cranelift,
    Llvm,
    Cuda,
}

impl BackendArg {
    pub(crate) fn fastest() -> BackendArg {
        if fairyc_backends::cpu::llvm::host_supported() {
            BackendArg::Llvm
        } else {
            BackendArg::Reference
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DeviceArg {
    Cpu,
    Cuda,
}
