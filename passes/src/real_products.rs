//! Training graphs: each widely-linear product back as one real product.
//!
//! A compiled Fairy2i layer computes `unpack(linear(pack(x), U) +
//! linear(conj(pack(x)), W))` (eq. 3), which is `linear(x, R)` for the real
//! `R` whose split is `(U, W)`; since the split is its own adjoint's half
//! inverse (eq. 7), `R = 2·(widely_linear_grad_u(U) + widely_linear_grad_w(W))`.
//! For inference the complex form is the point (codes, no
//! multiplications); for training the activations are many rows and the
//! weights one matrix, so rebuilding `R` from the quantized `U` and `W` and
//! running one real product (as the Fairy2i authors' trainer does) saves
//! the packing, the conjugate, the complex products and their gradients on
//! every row. Reverse mode takes the gradients to `U` and `W` through the
//! rebuilding's adjoint, and on to `R` through the split's; with the
//! identity straight-through estimator those cancel, and
//! [`fold_split_gradients`] hands `R` the product's weight gradient itself.

use fairyc_ir::{Arithmetic, BuildError, DType, Dim, Graph, GraphBuilder, Op, ValueId, WlPart};

use crate::rebuild::eliminate_dead_code;

/// `graph` with every widely-linear product it can match as one real
/// product; the rest unchanged.
pub fn real_products(graph: &Graph) -> Result<Graph, BuildError> {
    let mut b = GraphBuilder::like(graph);
    let map = b.inline(graph, |b, id, _, map| {
        let Some(p) = product(graph, id) else {
            return Ok::<_, BuildError>(None);
        };
        let part = |b: &mut GraphBuilder, part, factor: ValueId| {
            let op = Op::WidelyLinearGrad {
                part,
                row_block: p.row_block,
                col_block: p.col_block,
            };
            b.push(op, &[map[p.shape.0], map[factor.0]])
        };
        let u = part(b, WlPart::U, p.u)?;
        let w = part(b, WlPart::W, p.w)?;
        let half = b.push(Op::Add, &[u, w])?;
        let r = b.push(Op::Scale { factor: 2.0 }, &[half])?;
        Ok(Some(b.push(Op::Linear, &[map[p.x.0], r])?))
    })?;
    let outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    Ok(eliminate_dead_code(&b.finish(&outputs)))
}

/// A matched widely-linear product: `unpack{row_block}(linear(pack{col_block}(x),
/// u) + linear(conj(pack(x)), w))`, and a real value of `R`'s shape.
struct Product {
    x: ValueId,
    u: ValueId,
    w: ValueId,
    row_block: usize,
    col_block: usize,
    shape: ValueId,
}

/// The product `id` computes, if it is an `unpack` of one.
fn product(graph: &Graph, id: ValueId) -> Option<Product> {
    let op = |v: ValueId| &graph.node(v).op;
    let args = |v: ValueId| graph.node(v).operands.as_slice();
    let Op::Unpack { block: row_block } = *op(id) else {
        return None;
    };
    let sum = args(id)[0];
    let (Op::Add, [a, c]) = (op(sum), args(sum)) else {
        return None;
    };
    // linear(pack(x), u) and linear(conj(pack(x)), w), in either order.
    let linear = |v: ValueId| match (op(v), args(v)) {
        (Op::Linear, [input, weight]) => Some((*input, *weight)),
        _ => None,
    };
    let ((p, u), (conj, w)) = match (linear(*a)?, linear(*c)?) {
        (first, second) if matches!(op(second.0), Op::Conj) => (first, second),
        (first, second) => (second, first),
    };
    if !matches!(op(conj), Op::Conj) || args(conj)[0] != p {
        return None;
    }
    let Op::Pack { block: col_block } = *op(p) else {
        return None;
    };
    let x = args(p)[0];
    // R is [rows, cols] with both even (no padding channel), of a width
    // the layer's input has; a split of such a matrix gives its shape.
    let fixed = |d: &Dim| d.clone().fixed();
    let (rows, cols) = (
        fixed(graph.ty(id).shape.dims().last()?)?,
        fixed(graph.ty(x).shape.dims().last()?)?,
    );
    if rows % 2 != 0 || cols % 2 != 0 {
        return None;
    }
    let shape = split_source(graph, u, rows, cols)?;
    Some(Product {
        x,
        u,
        w,
        row_block,
        col_block,
        shape,
    })
}

/// A real `[rows, cols]` matrix that `v` derives from through a widely-linear
/// split (the master weight of a quantized layer).
fn split_source(graph: &Graph, v: ValueId, rows: usize, cols: usize) -> Option<ValueId> {
    let mut stack = vec![v];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        let node = graph.node(v);
        if let Op::WidelyLinear { .. } = node.op {
            let r = node.operands[0];
            let ty = graph.ty(r);
            if ty.dtype == DType::F32 && ty.shape.dims() == [Dim::Fixed(rows), Dim::Fixed(cols)] {
                return Some(r);
            }
        }
        stack.extend(&node.operands);
    }
    None
}

/// A gradient graph with each master weight's gradient through its split
/// folded away. The gradient reaches `R` as
/// `widely_linear_grad_u(R, dU) + widely_linear_grad_w(R, dW)`, and with
/// the identity straight-through estimator the quantizer stack's gradient
/// is its input's (eq. 13's residual sums and differences cancel), so
/// `dU = k·widely_linear_u(y)` and `dW = k·widely_linear_w(y)` for the
/// gradient `y` of the rebuilt real weight. By eq. 7 the sum is then
/// `(k/2)·y`: no split, no quantizer and no adjoint in the backward pass,
/// the same gradient up to f32 rounding. Anything else (the scale-aware
/// estimator, whose `quantize_grad` terms do not cancel) is left as it is.
pub fn fold_split_gradients(graph: &Graph) -> Result<Graph, BuildError> {
    let mut b = GraphBuilder::like(graph);
    let map = b.inline(graph, |b, id, _, map| {
        let Some((y, k)) = folded_split(graph, id) else {
            return Ok::<_, BuildError>(None);
        };
        // `scale(y, 2)` (the rebuilt weight's `2·(...)`) times ½ is `y`.
        let (y, k) = match graph.node(y).op {
            Op::Scale { factor } if factor * k == 2.0 => (graph.node(y).operands[0], 1.0),
            _ => (y, k / 2.0),
        };
        Ok(Some(if k == 1.0 {
            map[y.0]
        } else {
            b.push(Op::Scale { factor: k }, &[map[y.0]])?
        }))
    })?;
    let outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    Ok(eliminate_dead_code(&b.finish(&outputs)))
}

/// `(y, k)` where `id = widely_linear_grad_u(R, k·widely_linear_u(y)) +
/// widely_linear_grad_w(R, k·widely_linear_w(y))` (in either order, with
/// the same pairing throughout and `y` of `R`'s type).
fn folded_split(graph: &Graph, id: ValueId) -> Option<(ValueId, f32)> {
    let node = graph.node(id);
    let (Op::Add, [a, c]) = (&node.op, node.operands.as_slice()) else {
        return None;
    };
    let adjoint = |v: ValueId| match (&graph.node(v).op, graph.node(v).operands.as_slice()) {
        (
            Op::WidelyLinearGrad {
                part,
                row_block,
                col_block,
            },
            [r, d],
        ) => Some((*part, (*row_block, *col_block), *r, *d)),
        _ => None,
    };
    let (first, second) = (adjoint(*a)?, adjoint(*c)?);
    if first.0 == second.0 || first.1 != second.1 || first.2 != second.2 {
        return None;
    }
    let r = first.2;
    // Each adjoint's operand as `k·widely_linear(y)` of its own part.
    let split_of = |(part, blocks, _, d): (WlPart, (usize, usize), ValueId, ValueId)| {
        let terms = linear_combination(graph, d, LINEAR_DEPTH);
        let [(v, k)] = terms[..] else {
            return None;
        };
        match (&graph.node(v).op, graph.node(v).operands.as_slice()) {
            (
                Op::WidelyLinear {
                    part: p,
                    row_block,
                    col_block,
                    arithmetic: Arithmetic::F32,
                },
                [y],
            ) if *p == part && (*row_block, *col_block) == blocks => Some((*y, k)),
            _ => None,
        }
    };
    let (y, k) = split_of(first)?;
    let (y2, k2) = split_of(second)?;
    (y == y2 && k == k2 && graph.ty(y) == graph.ty(r) && k != 0.0).then_some((y, k))
}

/// How deep [`linear_combination`] looks through sums: `T` residual
/// stages' gradients are about `3T − 3` `add`s and `scale`s deep, so up to
/// five stages fold (W1-W3 are what the quantize pass writes).
const LINEAR_DEPTH: usize = 12;

/// `v` as `Σ kᵢ·vᵢ` through `add`, `sub` and `scale`, with the terms of
/// zero weight dropped (in order of first appearance). A value deeper than
/// `depth`, or a sum with a broadcast operand, is a term of its own.
fn linear_combination(graph: &Graph, v: ValueId, depth: usize) -> Vec<(ValueId, f32)> {
    let node = graph.node(v);
    let same_type = |o: &ValueId| graph.ty(*o) == graph.ty(v);
    let mut terms: Vec<(ValueId, f32)> = Vec::new();
    let mut add = |terms_of: Vec<(ValueId, f32)>, factor: f32| {
        for (t, k) in terms_of {
            match terms.iter_mut().find(|(u, _)| *u == t) {
                Some((_, sum)) => *sum += factor * k,
                None => terms.push((t, factor * k)),
            }
        }
    };
    match (&node.op, node.operands.as_slice()) {
        (Op::Add | Op::Sub, [a, c]) if depth > 0 && same_type(a) && same_type(c) => {
            add(linear_combination(graph, *a, depth - 1), 1.0);
            let sign = if node.op == Op::Sub { -1.0 } else { 1.0 };
            add(linear_combination(graph, *c, depth - 1), sign);
        }
        (Op::Scale { factor }, [a]) if depth > 0 => {
            add(linear_combination(graph, *a, depth - 1), *factor);
        }
        _ => add(vec![(v, 1.0)], 1.0),
    }
    terms.retain(|(_, k)| *k != 0.0);
    terms
}

#[cfg(test)]
mod tests {
    use fairyc_ir::{Arithmetic, DType, GraphBuilder, Op, Shape, TensorType, WlPart};

    use super::fold_split_gradients;

    fn split(part: WlPart) -> Op {
        Op::WidelyLinear {
            part,
            row_block: 0,
            col_block: 0,
            arithmetic: Arithmetic::F32,
        }
    }

    fn adjoint(part: WlPart, row_block: usize) -> Op {
        Op::WidelyLinearGrad {
            part,
            row_block,
            col_block: 0,
        }
    }

    /// `wlg_u(r, 3·wl_u(y) − (wl_u(y) + wl_u(y))·½) + wlg_w(r, 2·wl_w(y))`
    /// is `y` (both parts' weights 2, through `sub` and `scale`); with
    /// unequal weights, or adjoints of another pairing, nothing folds.
    #[test]
    fn a_split_and_its_adjoints_fold_to_a_scaled_gradient() {
        let build = |w_weight: f32, w_row_block: usize| {
            let mut b = GraphBuilder::new("fold");
            let ty = TensorType::new(DType::F32, Shape::new([4, 6]));
            let (r, y) = (b.input("r", ty.clone()), b.input("y", ty));
            let u = b.push(split(WlPart::U), &[y]).unwrap();
            let w = b.push(split(WlPart::W), &[y]).unwrap();
            let three_u = b.push(Op::Scale { factor: 3.0 }, &[u]).unwrap();
            let two_u = b.push(Op::Add, &[u, u]).unwrap();
            let one_u = b.push(Op::Scale { factor: 0.5 }, &[two_u]).unwrap();
            let du = b.push(Op::Sub, &[three_u, one_u]).unwrap();
            let dw = b.push(Op::Scale { factor: w_weight }, &[w]).unwrap();
            let gu = b.push(adjoint(WlPart::U, 0), &[r, du]).unwrap();
            let gw = b.push(adjoint(WlPart::W, w_row_block), &[r, dw]).unwrap();
            let sum = b.push(Op::Add, &[gu, gw]).unwrap();
            fold_split_gradients(&b.finish(&[sum])).unwrap()
        };
        let folded = build(2.0, 0);
        let out = folded.node(folded.outputs[0]);
        assert!(
            matches!(&out.op, Op::Input { name } if name == "y"),
            "folded to {}",
            fairyc_ir::text::print(&folded)
        );
        for (w_weight, w_row_block) in [(1.0, 0), (2.0, 2)] {
            let kept = build(w_weight, w_row_block);
            let splits = kept
                .nodes
                .iter()
                .filter(|n| matches!(n.op, Op::WidelyLinear { .. }))
                .count();
            assert_eq!(
                splits, 2,
                "weights 2 and {w_weight}, row blocks 0 and {w_row_block}"
            );
        }
    }
}
