//! Legalization for deployment: each quantized widely-linear layer of a
//! deployed graph, `linear(x, Σ_t dequant(u_t)) + linear(conj x, Σ_t
//! dequant(w_t))` (or one of the two products alone, as in iFairy's
//! `linear(conj x, Σ dequant(w_t))`), becomes one `quant_linear` that
//! carries the packed codes and scales of every stage. Backends then run
//! the layer from its codes; no dense weight is ever formed.

use std::collections::HashSet;

use fairyc_ir::{verify, BuildError, Granularity, Graph, Op, ValueId};

use crate::rebuild::{eliminate_dead_code, rebuild};

/// The stages of a sum of `dequant(codes, scales)` of stored tensors.
fn dequant_stages(g: &Graph, v: ValueId) -> Option<(Granularity, Vec<ValueId>)> {
    let node = g.node(v);
    match node.op {
        Op::Dequant { granularity } => {
            let stored = |w: ValueId| matches!(g.node(w).op, Op::Weight { .. });
            (stored(node.operands[0]) && stored(node.operands[1]))
                .then(|| (granularity, node.operands.clone()))
        }
        Op::Add => {
            let (ga, mut a) = dequant_stages(g, node.operands[0])?;
            let (gb, b) = dequant_stages(g, node.operands[1])?;
            if ga != gb || g.ty(a[0]) != g.ty(b[0]) {
                return None;
            }
            a.extend(b);
            Some((ga, a))
        }
        _ => None,
    }
}

/// A product of the layer: the input (before `conj` for the conjugate
/// half), whether it is the conjugate half, the granularity and the stages.
struct Half {
    input: ValueId,
    conjugate: bool,
    granularity: Granularity,
    stages: Vec<ValueId>,
}

fn half(g: &Graph, v: ValueId) -> Option<Half> {
    let node = g.node(v);
    if node.op != Op::Linear {
        return None;
    }
    let (granularity, stages) = dequant_stages(g, node.operands[1])?;
    let x = node.operands[0];
    let (input, conjugate) = match g.node(x).op {
        Op::Conj => (g.node(x).operands[0], true),
        _ => (x, false),
    };
    Some(Half {
        input,
        conjugate,
        granularity,
        stages,
    })
}

/// Rewrites every quantized layer of `graph` into `quant_linear`; a graph
/// without them comes back unchanged.
pub fn pack_quantized_linears(graph: &Graph) -> Result<Graph, BuildError> {
    // Layers whose two halves an `add` joins; the halves are not rewritten
    // on their own.
    let mut joined: HashSet<ValueId> = HashSet::new();
    let mut any = false;
    for v in graph.ids() {
        let node = graph.node(v);
        if node.op == Op::Add {
            let (a, b) = (node.operands[0], node.operands[1]);
            if let (Some(u), Some(w)) = (half(graph, a), half(graph, b)) {
                if !u.conjugate
                    && w.conjugate
                    && u.input == w.input
                    && u.granularity == w.granularity
                {
                    joined.extend([a, b]);
                }
            }
        }
        any |= half(graph, v).is_some();
    }
    if !any {
        return Ok(graph.clone());
    }
    let layer = |b: &mut fairyc_ir::GraphBuilder,
                 map: &dyn Fn(ValueId) -> ValueId,
                 u: Option<Half>,
                 w: Option<Half>|
     -> Result<ValueId, BuildError> {
        let any_half = u.as_ref().or(w.as_ref()).expect("one half at least");
        let (input, granularity) = (any_half.input, any_half.granularity);
        let u_stages = u.as_ref().map_or(0, |h| h.stages.len() / 2);
        let w_stages = w.as_ref().map_or(0, |h| h.stages.len() / 2);
        let mut operands = vec![map(input)];
        for h in u.iter().chain(w.iter()) {
            operands.extend(h.stages.iter().map(|&s| map(s)));
        }
        b.push(
            Op::QuantLinear {
                u_stages,
                w_stages,
                granularity,
            },
            &operands,
        )
    };
    // Rebuilt values by old id, for the hook to reach operands of operands.
    let mut built: Vec<Option<ValueId>> = vec![None; graph.nodes.len()];
    let rewritten = rebuild(graph, |b, id, node, operands| {
        let lookup = |v: ValueId| -> ValueId { built[v.0].expect("operands are built first") };
        let out = match node.op {
            Op::Add if joined.contains(&node.operands[0]) => {
                let (u, w) = (half(graph, node.operands[0]), half(graph, node.operands[1]));
                Some(layer(b, &lookup, u, w)?)
            }
            Op::Linear if !joined.contains(&id) => match half(graph, id) {
                Some(h) if h.conjugate => Some(layer(b, &lookup, None, Some(h))?),
                Some(h) => Some(layer(b, &lookup, Some(h), None)?),
                None => None,
            },
            _ => None,
        };
        let value = match out {
            Some(v) => v,
            None => b.copy(node, operands)?,
        };
        built[id.0] = Some(value);
        Ok(Some(value))
    })?;
    let packed = eliminate_dead_code(&rewritten);
    debug_assert!(verify(&packed).is_ok());
    Ok(packed)
}
