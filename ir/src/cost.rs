//! How a target prices the IR: the trait a backend implements so that
//! extraction (`fairyc_passes::cost`) chooses per target. Gauss's
//! 3-multiplication product pays where products dominate (a GPU GEMM) and
//! may not where the products are table look-ups (a CPU LUT kernel); the
//! same e-graph extracts differently under each target's prices.

use crate::op::Op;
use crate::types::{DType, Dim, TensorType};

/// A target's prices, in one unit of work (a real floating-point operation
/// on the reference target).
pub trait TargetCost: Send + Sync + std::fmt::Debug {
    /// Work of one `op` node per row of its values (rows are the symbolic
    /// dimensions, such as `seq`), given its result and operand types.
    /// `context` is the sequence length attention is charged for.
    fn op_work(&self, op: &Op, result: &TensorType, operands: &[&TensorType], context: f64) -> f64;

    /// Work that reading one stored byte of a weight of `dtype` costs.
    fn weight_byte_cost(&self, dtype: DType) -> f64;
}

/// Elements per row of a type: the product of its fixed dimensions.
pub fn per_row(t: &TensorType) -> f64 {
    t.shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as f64,
            Dim::Sym(_) => 1.0,
        })
        .product()
}

/// Real elements per row, complex ones counting twice.
pub fn real_elements(t: &TensorType) -> f64 {
    per_row(t) * if t.dtype == DType::C64 { 2.0 } else { 1.0 }
}

/// Bytes per row of a value or weight as stored.
pub fn bytes_per_row(t: &TensorType) -> f64 {
    let per = match t.dtype {
        DType::F32 | DType::I32 => 4.0,
        DType::F16 | DType::BF16 => 2.0,
        DType::C64 => 8.0,
        DType::Code2 => 0.25,
    };
    per_row(t) * per
}

/// The reference target's prices: multiply-adds count 2 (complex 8: four
/// real products and four sums), elementwise ops per element, data movement
/// one per real element, and a stored byte `flops_per_byte` (arithmetic
/// the machine does in the time it reads one byte).
#[derive(Clone, Copy, Debug)]
pub struct FlopCost {
    pub flops_per_byte: f64,
}

impl Default for FlopCost {
    fn default() -> FlopCost {
        FlopCost {
            flops_per_byte: 8.0,
        }
    }
}

impl TargetCost for FlopCost {
    fn op_work(&self, op: &Op, ty: &TensorType, operands: &[&TensorType], context: f64) -> f64 {
        let child = |i: usize| operands[i];
        let out = real_elements(ty);
        match op {
            Op::Input { .. } | Op::Weight { .. } => 0.0,
            Op::Linear => {
                let k = match child(1).shape.dims()[1] {
                    Dim::Fixed(k) => k as f64,
                    Dim::Sym(_) => 1.0,
                };
                // `out` already counts both parts of a complex result.
                out * k * if ty.dtype == DType::C64 { 4.0 } else { 2.0 }
            }
            // Per output: an add or subtract per code and stage, no multiply.
            Op::QuantLinear {
                u_stages, w_stages, ..
            } => out * real_elements(child(0)) * (u_stages + w_stages) as f64,
            Op::Attention { .. } => 4.0 * real_elements(child(0)) * context,
            // Recomputes the attention weights, then one more product.
            Op::AttentionGrad { .. } => 6.0 * real_elements(child(0)) * context,
            // One multiply-add per weight entry and row.
            Op::LinearWeightGrad => out * if ty.dtype == DType::C64 { 4.0 } else { 2.0 },
            Op::CrossEntropy | Op::CrossEntropyGrad => 4.0 * real_elements(child(0)),
            Op::KlDiv | Op::KlDivGrad => 8.0 * real_elements(child(0)),
            Op::RmsNormGrad { .. } | Op::SiluGrad | Op::SoftmaxGrad | Op::Crelu2Grad => {
                6.0 * real_elements(child(0))
            }
            Op::Mul if ty.dtype == DType::C64 => 3.0 * out,
            Op::RmsNorm { .. } | Op::Silu | Op::Softmax => 4.0 * out,
            Op::Rope { .. } => 3.0 * out,
            _ => out,
        }
    }

    fn weight_byte_cost(&self, _dtype: DType) -> f64 {
        self.flops_per_byte
    }
}
