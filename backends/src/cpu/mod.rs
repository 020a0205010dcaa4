//! The CPU backends: `quant_linear` runs a table-look-up kernel generated
//! for the host ([`kernel`] describes it; [`cranelift`] emits it with
//! 128-bit vectors, [`llvm`] with the widest the host has: 256-bit AVX2,
//! 512-bit AVX-512; [`lut`] lays out its data); prompts' rows run
//! integer multiply-adds instead where the host has AVX-512 VNNI
//! ([`mad`]); every other op runs the reference executor's kernels, except
//! attention ([`attention`]).
//!
//! Their activations are quantized to integers per block
//! ([`activations`]), so their
//! `quant_linear` is not exact: [`Backend::tolerance`] gives the bound.

pub mod activations;
pub mod attention;
pub mod cranelift;
pub mod kernel;
pub mod llvm;
pub mod lut;
pub mod mad;

/// A JIT-compiled kernel (see the calling convention in [`kernel`]).
pub type KernelFn = unsafe extern "C" fn(
    tables: *const u8,
    act_scales: *const f32,
    codes: *const u8,
    scales: *const f32,
    out: *mut f32,
    groups: u64,
    blocks_per_group: u64,
);

/// Which code generator emits the look-up-table kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeGen {
    /// Cranelift: fast to compile, 128-bit vectors.
    Cranelift,
    /// LLVM, with tiles of `rows` (16, 32 or 64: the byte width of the
    /// shuffle it uses).
    Llvm { rows: usize },
}

impl CodeGen {
    /// LLVM with the host's widest byte shuffle (AVX-512BW, AVX2 or SSSE3).
    pub fn llvm_for_host() -> CodeGen {
        CodeGen::Llvm {
            rows: llvm::host_rows(),
        }
    }

    /// Rows per tile of this generator's kernels.
    pub fn rows(self) -> usize {
        match self {
            CodeGen::Cranelift => cranelift::ROWS,
            CodeGen::Llvm { rows } => rows,
        }
    }

    /// The compiled kernel of `desc`, compiled on first use. Kernels live
    /// as long as the process: a model needs a handful (one per stage count
    /// and block size).
    pub fn kernel(self, desc: kernel::LutKernel) -> Result<KernelFn, String> {
        static KERNELS: OnceLock<Mutex<HashMap<(CodeGen, kernel::LutKernel), KernelFn>>> =
            OnceLock::new();
        let mut cache = KERNELS
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| "the kernel cache is poisoned".to_string())?;
        if let Some(f) = cache.get(&(self, desc)) {
            return Ok(*f);
        }
        let f = match self {
            CodeGen::Cranelift => cranelift::compile(desc)?,
            CodeGen::Llvm { .. } => llvm::compile(desc)?,
        };
        cache.insert((self, desc), f);
        Ok(f)
    }
}

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use fairyc_ir::{Granularity, Graph, Op, WeightStore};
use num_complex::Complex32;

use crate::reference::{Executor, Kernels, NodeKernel};
use crate::tensor::{Data, Recycled, Tensor};
use crate::{Backend, BackendError, Program, Tolerance};
pub use activations::Activations;
use activations::Blocks;
use lut::{Factors, LutLayer};

/// The CPU backend with Cranelift-generated kernels (`--backend cranelift`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cranelift {
    pub activations: Activations,
}

/// The CPU backend with LLVM-generated kernels (`--backend llvm`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Llvm {
    pub activations: Activations,
}

impl Backend for Llvm {
    fn name(&self) -> &'static str {
        "llvm"
    }

    fn supports(&self, _op: &Op) -> bool {
        true
    }

    fn compile(
        &self,
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Box<dyn Program>, BackendError> {
        let kernels = LutKernels(CodeGen::llvm_for_host(), self.activations);
        compile_with(kernels, graph, store, on_weight)
    }

    fn tolerance(&self, op: &Op) -> Tolerance {
        lut_tolerance(op, CodeGen::llvm_for_host(), self.activations)
    }
}

impl Backend for Cranelift {
    fn name(&self) -> &'static str {
        "cranelift"
    }

    fn supports(&self, _op: &Op) -> bool {
        true
    }

    fn compile(
        &self,
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Box<dyn Program>, BackendError> {
        let kernels = LutKernels(CodeGen::Cranelift, self.activations);
        compile_with(kernels, graph, store, on_weight)
    }

    fn tolerance(&self, op: &Op) -> Tolerance {
        lut_tolerance(op, CodeGen::Cranelift, self.activations)
    }
}

/// The reference executor with look-up-table kernels for `quant_linear`
/// (and the CPU's own attention).
fn compile_with(
    kernels: LutKernels,
    graph: Graph,
    store: &dyn WeightStore,
    on_weight: &(dyn Fn(&str) + Sync),
) -> Result<Box<dyn Program>, BackendError> {
    Ok(Box::new(Executor::with_kernels(
        graph,
        store,
        on_weight,
        Some(&kernels),
    )?))
}

/// `quant_linear` on int activations is within their bound (and, where
/// the multiply kernel may run, its weights' rounding); every other op is
/// the reference's.
fn lut_tolerance(op: &Op, generator: CodeGen, activations: Activations) -> Tolerance {
    type Steps = fn(usize, Granularity, &[Complex32]) -> Vec<f32>;
    type WeightError = fn(usize, usize, Granularity, &[&[f32]]) -> f32;
    let step: Steps = match activations {
        Activations::Bits7 => steps_7,
        Activations::Bits14 => steps_14,
    };
    // Per generator and activations: the weights' rounding where the
    // multiply kernel may run (`mad::applies` decides per layer).
    let weight_error: WeightError = match (generator.rows(), activations) {
        (mad::TILE, Activations::Bits7) => mad_weight_error,
        _ => exact_weights,
    };
    match op {
        Op::QuantLinear { .. } => Tolerance::QuantizedActivations {
            rel: 1e-4,
            step,
            weight_error,
        },
        _ => Tolerance::default(),
    }
}

fn exact_weights(_: usize, _: usize, _: Granularity, _: &[&[f32]]) -> f32 {
    0.0
}

/// The weights' rounding where [`LutLayer::run`] multiplies.
fn mad_weight_error(
    rows: usize,
    u_stages: usize,
    granularity: Granularity,
    scales: &[&[f32]],
) -> f32 {
    let multiplies =
        rows >= mad::MIN_ROWS && mad::applies(mad::TILE, granularity, Activations::Bits7);
    match multiplies
        .then(|| mad::MadWeights::new(u_stages, scales))
        .flatten()
    {
        Some(weights) => weights.error(),
        None => 0.0,
    }
}

/// The step of each input's integers in one row of `quant_linear`'s input.
fn steps_7(m: usize, granularity: Granularity, row: &[Complex32]) -> Vec<f32> {
    Activations::Bits7.steps(&Blocks::new(m, granularity), row)
}

fn steps_14(m: usize, granularity: Granularity, row: &[Complex32]) -> Vec<f32> {
    Activations::Bits14.steps(&Blocks::new(m, granularity), row)
}

/// Prepares the look-up-table kernel for `quant_linear` nodes whose codes
/// are weights (known at load), from the given generator, quantizing
/// activations as the second says.
struct LutKernels(CodeGen, Activations);

impl Kernels for LutKernels {
    fn prepare(
        &self,
        op: &Op,
        constants: &[Option<&Tensor>],
    ) -> Result<Option<Box<dyn NodeKernel>>, String> {
        let (u_stages, granularity) = match *op {
            Op::QuantLinear {
                u_stages,
                granularity,
                ..
            } => (u_stages, granularity),
            // Segmented attention (training batches) runs on the reference's.
            Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
                segment: None,
            } => {
                return Ok(Some(Box::new(attention::AttentionNode {
                    heads,
                    kv_heads,
                    scale,
                    causal,
                })))
            }
            _ => return Ok(None),
        };
        let mut stages = Vec::new();
        let mut shape = None;
        for t in constants[1..].iter().step_by(2) {
            match t {
                Some(Tensor {
                    shape: s,
                    data: Data::Codes(packed),
                }) => {
                    shape = Some((s[0], s[1]));
                    stages.push(&packed[..]);
                }
                _ => return Ok(None),
            }
        }
        let Some((n, m)) = shape else {
            return Ok(None);
        };
        let layer =
            LutLayer::new(n, m, u_stages, &stages, granularity, self.0)?.with_activations(self.1);
        // Scales that are weights too are laid out once, here.
        let scales: Option<Vec<&[f32]>> = constants[2..]
            .iter()
            .step_by(2)
            .map(|t| t.and_then(|t| t.as_f32()))
            .collect();
        let factors = scales.map(|s| layer.factors(&s)).transpose()?;
        Ok(Some(Box::new(LutNode {
            layer,
            factors,
            n,
            m,
        })))
    }
}

struct LutNode {
    layer: LutLayer,
    factors: Option<Factors>,
    n: usize,
    m: usize,
}

impl NodeKernel for LutNode {
    fn run(&self, args: &[Option<&Tensor>], out: &mut Recycled) -> Result<Tensor, String> {
        let input = args[0].ok_or("the input is missing")?;
        let x = input
            .as_c64()
            .ok_or_else(|| format!("input must be c64, got {}", input.dtype_name()))?;
        let lead = &input.shape[..input.shape.len() - 1];
        let rows = lead.iter().product();
        if x.len() != rows * self.m {
            return Err(format!(
                "input has {} elements, want {rows} rows of {}",
                x.len(),
                self.m
            ));
        }
        let computed;
        let factors = match &self.factors {
            Some(f) => f,
            None => {
                let scales = args[2..]
                    .iter()
                    .step_by(2)
                    .map(|t| {
                        let t = t.ok_or("scales are missing")?;
                        t.as_f32()
                            .ok_or_else(|| format!("scales must be f32, got {}", t.dtype_name()))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                computed = self.layer.factors(&scales)?;
                &computed
            }
        };
        let mut y = out.c64s(rows * self.n);
        self.layer.run_into(x, rows, factors, &mut y);
        let mut shape = out.shape(&input.shape);
        *shape.last_mut().expect("an input of rank 1 at least") = self.n;
        Ok(Tensor::c64(shape, y))
    }

    fn bytes(&self) -> usize {
        self.layer.bytes()
    }
}
