//! Decompositions: every composite op of the table ([`OpKind::Composite`])
//! as a graph of primitives. A backend that does not implement a composite
//! natively runs its decomposition instead ([`lower_composites`]); the
//! conformance suite checks each decomposition against the composite's own
//! reference kernel.

use crate::graph::{BuildError, Graph, GraphBuilder, ValueId};
use crate::op::{Op, OpKind, UnaryFn};
use crate::types::{Dim, Shape};

/// Builds `op(operands)` from primitives into `b`; `None` for an op that
/// is not a composite.
pub fn decompose(
    b: &mut GraphBuilder,
    op: &Op,
    x: &[ValueId],
) -> Option<Result<ValueId, BuildError>> {
    let unary = |b: &mut GraphBuilder, func, v| b.push(Op::Unary { func }, &[v]);
    let constant = |b: &mut GraphBuilder, value, like| b.push(Op::Fill { value }, &[like]);
    let built = match op {
        Op::Sub => (|| {
            let minus_one = constant(b, -1.0, x[1])?;
            let negated = b.push(Op::Mul, &[x[1], minus_one])?;
            b.push(Op::Add, &[x[0], negated])
        })(),
        Op::Scale { factor } => (|| {
            let f = constant(b, *factor, x[0])?;
            b.push(Op::Mul, &[x[0], f])
        })(),
        Op::Silu => (|| {
            let s = unary(b, UnaryFn::Sigmoid, x[0])?;
            b.push(Op::Mul, &[x[0], s])
        })(),
        // dy · (s + x·s·(1 − s)) with s = sigmoid(x).
        Op::SiluGrad => (|| {
            let (v, dy) = (x[0], x[1]);
            let s = unary(b, UnaryFn::Sigmoid, v)?;
            let one = constant(b, 1.0, v)?;
            let minus_one = constant(b, -1.0, v)?;
            let neg_s = b.push(Op::Mul, &[s, minus_one])?;
            let one_minus_s = b.push(Op::Add, &[one, neg_s])?;
            let x_part = b.push(Op::Mul, &[v, one_minus_s])?;
            let bracket = b.push(Op::Add, &[one, x_part])?;
            let d = b.push(Op::Mul, &[s, bracket])?;
            b.push(Op::Mul, &[dy, d])
        })(),
        Op::SumSquares => (|| {
            let sq = b.push(Op::Mul, &[x[0], x[0]])?;
            b.push(
                Op::ReduceTo {
                    shape: Shape::default(),
                },
                &[sq],
            )
        })(),
        // p − lr · (m·c1 / (sqrt(v·c2) + eps) + wd · p)
        Op::AdamUpdate { eps } => (|| {
            let (p, m, v, lr, c1, c2, wd) = (x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
            let m_hat = b.push(Op::Mul, &[m, c1])?;
            let v_hat = b.push(Op::Mul, &[v, c2])?;
            let root = unary(b, UnaryFn::Sqrt, v_hat)?;
            let eps = constant(b, *eps, root)?;
            let denom = b.push(Op::Add, &[root, eps])?;
            let step = b.push(Op::Div, &[m_hat, denom])?;
            let decay = b.push(Op::Mul, &[p, wd])?;
            let update = b.push(Op::Add, &[step, decay])?;
            let scaled = b.push(Op::Mul, &[update, lr])?;
            let minus_one = constant(b, -1.0, scaled)?;
            let neg = b.push(Op::Mul, &[scaled, minus_one])?;
            b.push(Op::Add, &[p, neg])
        })(),
        // Σ_rows dyᵀ · x = linear(dyᵀ, xᵀ) on rows flattened to one axis.
        Op::LinearWeightGrad => (|| {
            let rows = |b: &mut GraphBuilder, v: ValueId| -> Result<ValueId, BuildError> {
                let dims = b.ty(v).shape.dims().to_vec();
                if dims.len() == 2 {
                    return Ok(v);
                }
                let lead = dims[..dims.len() - 1]
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Sym(_) => None,
                    })
                    .try_fold(1usize, |acc, n| n.and_then(|n| acc.checked_mul(n)));
                let lead = match (lead, &dims[..dims.len() - 1]) {
                    (Some(n), _) => Dim::Fixed(n),
                    (None, [Dim::Sym(s)]) => Dim::Sym(s.clone()),
                    _ => {
                        return Err(BuildError {
                            graph: b.name().to_string(),
                            op: "linear_weight_grad",
                            message: format!(
                                "the rows of {} must be fixed or one symbolic dimension",
                                b.ty(v)
                            ),
                        })
                    }
                };
                let last = dims[dims.len() - 1].clone();
                b.push(
                    Op::Reshape {
                        shape: Shape(vec![lead, last]),
                    },
                    &[v],
                )
            };
            let dy = rows(b, x[0])?;
            let xs = rows(b, x[1])?;
            let dy_t = b.push(Op::Transpose { perm: vec![1, 0] }, &[dy])?;
            let x_t = b.push(Op::Transpose { perm: vec![1, 0] }, &[xs])?;
            b.push(Op::Linear, &[dy_t, x_t])
        })(),
        _ => {
            debug_assert!(
                op.kind() != OpKind::Composite,
                "{} has no decomposition",
                op.mnemonic()
            );
            return None;
        }
    };
    Some(built)
}

/// Rewrites `graph` so that every composite op `native` does not accept is
/// replaced by its decomposition; the result computes the same outputs.
pub fn lower_composites(graph: &Graph, native: impl Fn(&Op) -> bool) -> Result<Graph, BuildError> {
    let mut b = GraphBuilder::like(graph);
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let operands: Vec<ValueId> = node.operands.iter().map(|v| map[v.0]).collect();
        let id = match &node.op {
            op if op.kind() == OpKind::Composite && !native(op) => {
                decompose(&mut b, op, &operands).expect("composites decompose")?
            }
            _ => b.copy(node, &operands)?,
        };
        map.push(id);
    }
    let outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    Ok(b.finish(&outputs))
}
