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
//! every row. The gradients reach `U` and `W` through the split itself.

use fairyc_ir::{BuildError, DType, Dim, Graph, GraphBuilder, Op, ValueId, WlPart};

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
