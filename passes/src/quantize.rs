//! Weight quantization as a directed rewrite.
//!
//! Quantizing changes what a layer computes, so it is not an equality and
//! does not belong in an e-graph (merging a weight with its quantized form
//! would let extraction mix them). It rewrites the graph directly: each
//! widely-linear weight `U` or `W` becomes the sum of `T` PhaseQuant
//! stages, each quantizing the residual the previous ones left (eq. 13).
//! The real baselines quantize the selected real weights instead.

use std::collections::HashMap;

use fairyc_ir::{Arithmetic, BuildError, Granularity, Graph, Op, Scheme, UnaryFn};

use crate::lower::Blocks;
use crate::rebuild::rebuild;

/// What to quantize the selected layers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Fairy2i: PhaseQuant with `stages` residual stages (W1, W2, W3).
    Fairy2i { stages: usize },
    /// sign(w) · mean|w| on the real weights.
    RealBinary,
    /// BitNet b1.58 absmean ternary on the real weights.
    RealTernary,
}

/// Removes the quantizers a model defines itself (iFairy's PhaseQuant on
/// the weights and int8 on the activations): the full-precision model the
/// quantized one approximates (iFairy's "FP complex" baseline).
pub fn strip_quantizers(graph: &Graph) -> Result<Graph, BuildError> {
    rebuild(graph, |_, _, node, operands| {
        Ok(match node.op {
            Op::Quantize { .. } | Op::ActQuant { .. } if node.ty.dtype.is_numeric() => {
                Some(operands[0])
            }
            _ => None,
        })
    })
}

/// Rewrites every widely-linear weight (Fairy2i) or every selected real
/// weight (baselines) into its quantized form.
pub fn quantize(
    graph: &Graph,
    method: Method,
    granularity: Granularity,
    arithmetic: Arithmetic,
    plan: &HashMap<String, Blocks>,
) -> Result<Graph, BuildError> {
    let q = |scheme| Op::Quantize {
        scheme,
        granularity,
        arithmetic,
    };
    rebuild(graph, |b, _, node, operands| match (&node.op, method) {
        (Op::WidelyLinear { .. }, Method::Fairy2i { stages }) => {
            let w = b.push(node.op.clone(), operands)?;
            // In bf16 arithmetic every residual and every partial sum is
            // rounded, as the authors' bf16 code computes them:
            // `e2 = bf16(bf16(w − q1) − q2)`, `A_q = bf16(bf16(q1 + q2) + q3)`.
            let bf16 = arithmetic == Arithmetic::Bf16Exact;
            let round = |b: &mut fairyc_ir::GraphBuilder, v| {
                if bf16 {
                    b.push(
                        Op::Unary {
                            func: UnaryFn::RoundBf16,
                        },
                        &[v],
                    )
                } else {
                    Ok(v)
                }
            };
            let mut residual = w;
            let mut sum = None;
            for t in 0..stages {
                let stage = b.push(q(Scheme::Phase), &[residual])?;
                sum = Some(match sum {
                    None => stage,
                    Some(s) => {
                        let s = b.push(Op::Add, &[s, stage])?;
                        round(b, s)?
                    }
                });
                if t + 1 < stages {
                    let r = b.push(Op::Sub, &[residual, stage])?;
                    residual = round(b, r)?;
                }
            }
            Ok(Some(sum.unwrap_or(w)))
        }
        (Op::Linear, Method::RealBinary | Method::RealTernary) => {
            let w = graph.node(node.operands[1]);
            let selected = matches!(&w.op, Op::Weight { name } if plan.contains_key(name));
            if !selected {
                return Ok(None);
            }
            let scheme = if method == Method::RealBinary {
                Scheme::Binary
            } else {
                Scheme::Ternary
            };
            let wq = b.push(q(scheme), &operands[1..])?;
            Ok(Some(b.push(Op::Linear, &[operands[0], wq])?))
        }
        _ => Ok(None),
    })
}
