//! Reverse-mode automatic differentiation as an IR pass: the core of the
//! training graph.
//!
//! [`gradients`] appends to a forward graph the nodes that compute the
//! gradient of a scalar loss with respect to chosen values (usually
//! weights), by the standard reverse sweep: nodes are visited in reverse
//! topological order (the reverse of SSA order), each node's gradient is
//! turned into its operands' gradients by the op's rule, and the
//! contributions of a value read several times are summed with `add`.
//! Only values that lie between a parameter and the loss get gradients;
//! none flows into integer inputs (token ids, positions, targets), codes,
//! or constants (`fill`). [`crate::optimizer`] builds the training steps
//! on top (SGD, AdamW, over several GPUs).
//!
//! # The complex convention
//!
//! For a real loss `L` and a complex value `z = a + ib`, the gradient is
//! `g = ∂L/∂a + i ∂L/∂b` (PyTorch's convention). Identifying `C` with `R²`,
//! this is the ordinary real gradient, so
//!
//! - `dL = Re(conj(g) · dz)`: `g` is the adjoint under the real inner
//!   product `Re<a, b> = Re Σ conj(a) b`, the one under which `R²ⁿ ≅ Cⁿ`
//!   is an isometry;
//! - `-g` is the steepest-descent direction, so SGD is `z -= lr · g` as for
//!   real parameters, and a real parameter that feeds complex values (the
//!   Fairy2i master weights `R`) gets its ordinary real gradient.
//!
//! Rules follow from `dL = Re(conj(g_y) dy)`:
//!
//! - `y = x · w` (one product): `dy = dx w + x dw`, so
//!   `Re(conj(g_y) dx w) = Re(conj(g_y conj(w)) dx)`, i.e. `g_x = g_y conj(w)`
//!   and likewise `g_w = g_y conj(x)`. For `linear`, `y[.., n] = Σ_k x[.., k]
//!   W[n, k]`, this gives `dx = dy · conj(W)` in row form, which is
//!   `linear(dy, transpose(conj(W)))`, and `dW = Σ_rows dyᵀ · conj(x)`, which
//!   is `linear_weight_grad(dy, conj(x))`. `mul` is the same with the
//!   product elementwise. Real values skip the `conj`.
//! - `y = conj(z)`: `Re y = Re z`, `Im y = -Im z`, so `g_z = conj(g_y)`.
//! - `pack` only renames real numbers as real and imaginary parts (a
//!   permutation, plus one zero channel for an odd length), so its adjoint
//!   is the inverse permutation: `unpack` of the same block (dropping the
//!   padded channel), and `unpack`'s adjoint is `pack`.
//! - `widely_linear` is real-linear in `R` (eq. 3); its adjoint is half of
//!   eq. 7 applied to `dU` (or `dW`) alone: `widely_linear_grad`.
//! - `rope` multiplies by `e^{iθ}` (complex) or rotates pairs by `θ` (real):
//!   the adjoint is the rotation by `-θ`: `rope` at negated positions.
//! - `attention`'s scores are `scale · Re(q conj(k))`, real, so the scores'
//!   gradient flows back to `q` as `scale · dS · k` (see
//!   `attention_grad`); `add`, `sub`, `scale` (by a real) and the data
//!   movement ops are real-linear with the obvious adjoints (`reduce_to`
//!   undoes a broadcast, `pad` a `slice`, slices a `concat`).
//!
//! # Quantizers
//!
//! `quantize` is piecewise constant; training uses a straight-through
//! estimator ([`Ste`]). [`Ste::Identity`] is the authors' code (scales
//! detached, anchor section 2): the gradient passes to the quantizer's
//! input unchanged. [`Ste::ScaleAware`] is the paper's eq. 11 taken as a
//! function of the weights: the identity plus the gradient through the
//! scales (`quantize_grad`; derived in `fairyc_ir::quant::ste`). With
//! residual stages (eq. 13), `q₁ + Q(w − q₁)`, the identity gives `dw = dq`
//! through the whole stack, as in the authors' code.

use fairyc_ir::{
    verify, Arithmetic, AttentionOperand, BuildError, DType, Dim, Graph, GraphBuilder, NormOperand,
    Op, Scheme, TensorType, UnaryFn, ValueId, VerifyError,
};

use crate::rebuild::eliminate_dead_code;

/// How gradients pass through `quantize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ste {
    /// The gradient of the quantized weight, unchanged (scales detached).
    #[default]
    Identity,
    /// The identity plus the gradient through the scales' dependence on the
    /// weights (codes held constant).
    ScaleAware,
}

/// Options of [`gradients`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GradOptions {
    pub ste: Ste,
}

/// Why a gradient graph cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    #[error("{0} is not a value of graph @{1}")]
    Unknown(ValueId, String),
    #[error("the loss {0} must be a scalar f32[], found {1}")]
    Loss(ValueId, TensorType),
    #[error("{0} is {1}: only real and complex float values have gradients")]
    NotDifferentiable(ValueId, TensorType),
    #[error("{value} = {op} lies between the loss and the parameters but has no gradient rule")]
    NoRule { op: &'static str, value: ValueId },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the gradient graph does not verify: {0}")]
    Verify(#[from] VerifyError),
    #[error("an optimizer step: {0}")]
    Step(String),
}

/// The forward graph with the backward nodes appended. Its outputs are
/// `[loss, d(wrt_0), d(wrt_1), ...]`, each gradient of its value's type (a
/// parameter the loss does not depend on gets zeros); nodes no output needs
/// are dropped, and the result is verified.
pub fn gradients(
    graph: &Graph,
    loss: ValueId,
    wrt: &[ValueId],
    options: &GradOptions,
) -> Result<Graph, GradError> {
    let (mut b, grads) = backward(graph, loss, wrt, options)?;
    let mut outputs = vec![loss];
    for (&v, d) in wrt.iter().zip(grads) {
        outputs.push(match d {
            Some(d) => d,
            None => b.push(Op::Fill { value: 0.0 }, &[v])?,
        });
    }
    finish(b, &outputs)
}

/// Drops the nodes no output needs and verifies the result.
pub(crate) fn finish(b: GraphBuilder, outputs: &[ValueId]) -> Result<Graph, GradError> {
    let result = eliminate_dead_code(&b.finish(outputs));
    verify(&result)?;
    Ok(result)
}

/// The reverse sweep: a builder holding the forward graph (same ids) and
/// the backward nodes, and the gradient of each of `wrt` (`None` where the
/// loss does not depend on it).
pub(crate) fn backward(
    graph: &Graph,
    loss: ValueId,
    wrt: &[ValueId],
    options: &GradOptions,
) -> Result<(GraphBuilder, Vec<Option<ValueId>>), GradError> {
    let n = graph.nodes.len();
    if let Some(v) = std::iter::once(&loss).chain(wrt).find(|v| v.0 >= n) {
        return Err(GradError::Unknown(*v, graph.name.clone()));
    }
    let loss_ty = graph.ty(loss);
    if loss_ty.dtype != DType::F32 || loss_ty.shape.rank() != 0 {
        return Err(GradError::Loss(loss, loss_ty.clone()));
    }
    if let Some(&v) = wrt.iter().find(|&&v| !graph.ty(v).dtype.is_numeric()) {
        return Err(GradError::NotDifferentiable(v, graph.ty(v).clone()));
    }
    // The forward graph, node for node (same ids).
    let mut b = GraphBuilder::like(graph);
    for node in &graph.nodes {
        b.copy(node, &node.operands)?;
    }
    // Active values: float values on a path from a parameter to the loss.
    let mut from_wrt = vec![false; n];
    for v in wrt {
        from_wrt[v.0] = true;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        from_wrt[i] |= node.operands.iter().any(|v| from_wrt[v.0]);
    }
    let mut to_loss = vec![false; n];
    to_loss[loss.0] = true;
    for i in (0..n).rev() {
        if to_loss[i] {
            for v in &graph.nodes[i].operands {
                to_loss[v.0] = true;
            }
        }
    }
    let active = |v: ValueId| from_wrt[v.0] && to_loss[v.0] && graph.ty(v).dtype.is_numeric();

    let mut grads: Vec<Option<ValueId>> = vec![None; n];
    grads[loss.0] = Some(b.push(Op::Fill { value: 1.0 }, &[loss])?);
    for i in (0..=loss.0).rev() {
        let Some(g) = grads[i] else { continue };
        let node = &graph.nodes[i];
        let need: Vec<bool> = node.operands.iter().map(|&v| active(v)).collect();
        if !need.contains(&true) {
            continue;
        }
        for (k, d) in rule(&mut b, graph, ValueId(i), g, &need, options)? {
            let v = node.operands[k];
            grads[v.0] = Some(match grads[v.0] {
                None => d,
                Some(acc) => b.push(Op::Add, &[acc, d])?,
            });
        }
    }
    Ok((b, wrt.iter().map(|v| grads[v.0]).collect()))
}

/// `conj(v)` for a complex value, `v` itself for a real one.
fn conj_if(b: &mut GraphBuilder, v: ValueId) -> Result<ValueId, BuildError> {
    if b.ty(v).dtype == DType::C64 {
        b.push(Op::Conj, &[v])
    } else {
        Ok(v)
    }
}

/// `g` summed down to `to`'s shape (the adjoint of a suffix broadcast).
fn reduce(b: &mut GraphBuilder, g: ValueId, to: &TensorType) -> Result<ValueId, BuildError> {
    if b.ty(g).shape == to.shape {
        Ok(g)
    } else {
        b.push(
            Op::ReduceTo {
                shape: to.shape.clone(),
            },
            &[g],
        )
    }
}

fn fixed(d: &Dim) -> usize {
    d.clone()
        .fixed()
        .expect("the type rules require this dimension to be fixed")
}

/// The gradient contributions `(operand index, gradient)` of node `id`,
/// whose result has gradient `g`, to the operands marked in `need`.
fn rule(
    b: &mut GraphBuilder,
    graph: &Graph,
    id: ValueId,
    g: ValueId,
    need: &[bool],
    options: &GradOptions,
) -> Result<Vec<(usize, ValueId)>, GradError> {
    let node = graph.node(id);
    let x = &node.operands;
    let ty = |k: usize| graph.ty(x[k]).clone();
    let mut out = Vec::new();
    match &node.op {
        Op::Embed => {
            let vocab = fixed(&ty(1).shape.dims()[0]);
            out.push((1, b.push(Op::EmbedGrad { vocab }, &[x[0], g])?));
        }
        Op::Linear => {
            if need[0] {
                let w = conj_if(b, x[1])?;
                let wt = b.push(Op::Transpose { perm: vec![1, 0] }, &[w])?;
                out.push((0, b.push(Op::Linear, &[g, wt])?));
            }
            if need[1] {
                let xc = conj_if(b, x[0])?;
                out.push((1, b.push(Op::LinearWeightGrad, &[g, xc])?));
            }
        }
        Op::RmsNorm { eps } => {
            for (k, which) in [(0, NormOperand::Input), (1, NormOperand::Gain)] {
                if need[k] {
                    let op = Op::RmsNormGrad { eps: *eps, which };
                    out.push((k, b.push(op, &[x[0], x[1], g])?));
                }
            }
        }
        Op::Rope {
            base,
            layout,
            head_dim,
        } => {
            // The adjoint of a rotation is the rotation at minus the position.
            let back = b.push(Op::Unary { func: UnaryFn::Neg }, &[x[1]])?;
            let op = Op::Rope {
                base: *base,
                layout: *layout,
                head_dim: *head_dim,
            };
            out.push((0, b.push(op, &[g, back])?));
        }
        Op::Attention {
            heads,
            kv_heads,
            scale,
            causal,
            segment,
        } => {
            let which = [
                AttentionOperand::Q,
                AttentionOperand::K,
                AttentionOperand::V,
            ];
            for (k, which) in which.into_iter().enumerate() {
                if need[k] {
                    let op = Op::AttentionGrad {
                        which,
                        heads: *heads,
                        kv_heads: *kv_heads,
                        scale: *scale,
                        causal: *causal,
                        segment: *segment,
                    };
                    out.push((k, b.push(op, &[x[0], x[1], x[2], g])?));
                }
            }
        }
        Op::Silu => out.push((0, b.push(Op::SiluGrad, &[x[0], g])?)),
        Op::CReluSquared => out.push((0, b.push(Op::Crelu2Grad, &[x[0], g])?)),
        Op::Softmax => out.push((0, b.push(Op::SoftmaxGrad, &[id, g])?)),
        // Rounding is passed straight through, as the quantizers are.
        Op::Unary {
            func: UnaryFn::RoundBf16,
        } => out.push((0, g)),
        Op::Add | Op::Sub => {
            if need[0] {
                out.push((0, g));
            }
            if need[1] {
                let mut d = reduce(b, g, &ty(1))?;
                if node.op == Op::Sub {
                    d = b.push(Op::Scale { factor: -1.0 }, &[d])?;
                }
                out.push((1, d));
            }
        }
        Op::Mul => {
            if need[0] {
                let other = conj_if(b, x[1])?;
                out.push((0, b.push(Op::Mul, &[g, other])?));
            }
            if need[1] {
                let other = conj_if(b, x[0])?;
                let d = b.push(Op::Mul, &[g, other])?;
                out.push((1, reduce(b, d, &ty(1))?));
            }
        }
        Op::Reshape { .. } => {
            let shape = ty(0).shape;
            out.push((0, b.push(Op::Reshape { shape }, &[g])?));
        }
        Op::Transpose { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            out.push((0, b.push(Op::Transpose { perm: inverse }, &[g])?));
        }
        Op::Slice { axis, start, end } => {
            let n = fixed(&ty(0).shape.dims()[*axis]);
            let op = Op::Pad {
                axis: *axis,
                before: *start,
                after: n - end,
            };
            out.push((0, b.push(op, &[g])?));
        }
        Op::Concat { axis } => {
            let mut start = 0;
            for (k, &needed) in need.iter().enumerate() {
                let len = fixed(&ty(k).shape.dims()[*axis]);
                if needed {
                    let op = Op::Slice {
                        axis: *axis,
                        start,
                        end: start + len,
                    };
                    out.push((k, b.push(op, &[g])?));
                }
                start += len;
            }
        }
        Op::Pack { block } => {
            let t = ty(0);
            let len = fixed(t.shape.last().expect("pack's input has a last dimension"));
            let mut d = b.push(Op::Unpack { block: *block }, &[g])?;
            if len % 2 == 1 {
                let op = Op::Slice {
                    axis: t.shape.rank() - 1,
                    start: 0,
                    end: len,
                };
                d = b.push(op, &[d])?;
            }
            out.push((0, d));
        }
        Op::Unpack { block } => out.push((0, b.push(Op::Pack { block: *block }, &[g])?)),
        Op::Conj => out.push((0, b.push(Op::Conj, &[g])?)),
        Op::WidelyLinear {
            part,
            row_block,
            col_block,
            ..
        } => {
            let op = Op::WidelyLinearGrad {
                part: *part,
                row_block: *row_block,
                col_block: *col_block,
            };
            out.push((0, b.push(op, &[x[0], g])?));
        }
        // The adjoint of the split is linear in `d`, and its own adjoint is
        // the split; `r` only gives the shape.
        Op::WidelyLinearGrad {
            part,
            row_block,
            col_block,
        } => {
            if need[1] {
                let op = Op::WidelyLinear {
                    part: *part,
                    row_block: *row_block,
                    col_block: *col_block,
                    arithmetic: Arithmetic::F32,
                };
                out.push((1, b.push(op, &[g])?));
            }
        }
        Op::Quantize {
            scheme,
            granularity,
            arithmetic,
        } if !(options.ste == Ste::ScaleAware && *scheme == Scheme::PhaseIfairy) => out.push((
            0,
            match options.ste {
                Ste::Identity => g,
                Ste::ScaleAware => {
                    let op = Op::QuantizeGrad {
                        scheme: *scheme,
                        granularity: *granularity,
                        arithmetic: *arithmetic,
                    };
                    b.push(op, &[x[0], g])?
                }
            },
        )),
        Op::CrossEntropy => out.push((0, b.push(Op::CrossEntropyGrad, &[x[0], x[1], g])?)),
        // The teacher is a target: its logits get no gradient (operand 1 is
        // never active in a distillation graph, whose teacher weights are
        // not parameters).
        Op::KlDiv if !need[1] => out.push((0, b.push(Op::KlDivGrad, &[x[0], x[1], g])?)),
        // Activation quantization passes gradients straight through.
        Op::ActQuant { .. } => out.push((0, g)),
        // The result does not depend on the template's values.
        Op::Fill { .. } => {}
        Op::Scale { factor } => out.push((0, b.push(Op::Scale { factor: *factor }, &[g])?)),
        Op::ReduceTo { .. } => {
            let d = if ty(0).shape == graph.ty(id).shape {
                g
            } else {
                let zeros = b.push(Op::Fill { value: 0.0 }, &[x[0]])?;
                b.push(Op::Add, &[zeros, g])?
            };
            out.push((0, d));
        }
        Op::SumSquares => {
            let gx = b.push(Op::Mul, &[x[0], g])?;
            out.push((0, b.push(Op::Scale { factor: 2.0 }, &[gx])?));
        }
        Op::Pad { axis, before, .. } => {
            let n = fixed(&ty(0).shape.dims()[*axis]);
            let op = Op::Slice {
                axis: *axis,
                start: *before,
                end: before + n,
            };
            out.push((0, b.push(op, &[g])?));
        }
        Op::Unary { func: UnaryFn::Neg } => out.push((0, b.push(node.op.clone(), &[g])?)),
        // Leaves, codes, second derivatives, and what is not derived yet:
        // the scale-aware STE of iFairy's PhaseQuant, the elementwise
        // functions that decompositions bring (they run after autodiff).
        Op::Quantize { .. }
        | Op::Unary { .. }
        | Op::Div
        | Op::QuantLinear { .. }
        | Op::Input { .. }
        | Op::Weight { .. }
        | Op::Dequant { .. }
        | Op::Zeros
        | Op::PhaseCodes { .. }
        | Op::PhaseScales { .. }
        | Op::LinearWeightGrad
        | Op::EmbedGrad { .. }
        | Op::SiluGrad
        | Op::Crelu2Grad
        | Op::SoftmaxGrad
        | Op::RmsNormGrad { .. }
        | Op::AttentionGrad { .. }
        | Op::QuantizeGrad { .. }
        | Op::AdamUpdate { .. }
        | Op::ClipFactor { .. }
        | Op::AllReduce
        | Op::BroadcastFrom { .. }
        | Op::KlDiv
        | Op::KlDivGrad
        | Op::Sample { .. }
        | Op::CrossEntropyGrad => {
            return Err(GradError::NoRule {
                op: node.op.mnemonic(),
                value: id,
            })
        }
    }
    Ok(out)
}
