//! Explicit decoding state: a language-model graph's KV cache as graph
//! inputs and outputs; and the rows of logits a caller wants, as an input
//! ([`select_logit_rows`]).
//!
//! Each attention node `attention(q, k, v)` becomes
//! `attention(q, concat(past_k, k), concat(past_v, v))`, where `past_k` and
//! `past_v` are new inputs `kv.N.k` and `kv.N.v` of `past` positions, and the
//! two concatenations become extra outputs after the graph's own: the next
//! call's `kv.N.k` and `kv.N.v`. The graph's `state` meta lists those input
//! names in the order of the extra outputs, so a caller (a session) knows
//! which output feeds which input; a backend may append in place, since each
//! state input is read once, by the concatenation that extends it.

use fairyc_ir::{BuildError, DType, Dim, Graph, GraphBuilder, Op, Shape, TensorType, ValueId};

/// The meta key that names the state inputs, comma-separated, in the order
/// of the state outputs (which follow the graph's own outputs).
pub const STATE_META: &str = "state";

/// The symbolic size of the cached positions.
pub const PAST: &str = "past";

/// Exposes every attention node's keys and values as state; a graph with
/// no attention, or with attention over other than `[seq, channels]`
/// operands, comes back unchanged.
pub fn expose_kv_cache(graph: &Graph) -> Result<Graph, BuildError> {
    let attends = |n: &fairyc_ir::Node| matches!(n.op, Op::Attention { .. });
    if !graph.nodes.iter().any(attends)
        || graph
            .nodes
            .iter()
            .filter(|n| attends(n))
            .any(|n| n.ty.shape.rank() != 2)
    {
        return Ok(graph.clone());
    }
    let mut b = GraphBuilder::new(graph.name.clone());
    for (k, v) in &graph.meta {
        b.meta(k.clone(), v.clone());
    }
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    let mut names: Vec<String> = Vec::new();
    let mut states: Vec<ValueId> = Vec::new();
    for node in &graph.nodes {
        let operands: Vec<ValueId> = node.operands.iter().map(|v| map[v.0]).collect();
        let id = match &node.op {
            Op::Input { name } => b.input(name.clone(), node.ty.clone()),
            Op::Weight { name } => b.weight(name.clone(), node.ty.clone()),
            op @ Op::Attention { .. } => {
                let layer = names.len() / 2;
                let mut extended = Vec::new();
                for (part, &new) in ["k", "v"].iter().zip(&operands[1..]) {
                    let t = b.ty(new).clone();
                    let width = t.shape.dims()[1].clone();
                    let name = format!("kv.{layer}.{part}");
                    let past = b.input(
                        name.clone(),
                        TensorType::new(t.dtype, Shape(vec![Dim::sym(PAST), width])),
                    );
                    let all = b.push(Op::Concat { axis: 0 }, &[past, new])?;
                    names.push(name);
                    states.push(all);
                    extended.push(all);
                }
                b.push(op.clone(), &[operands[0], extended[0], extended[1]])?
            }
            op => b.push(op.clone(), &operands)?,
        };
        map.push(id);
    }
    b.meta(STATE_META, names.join(","));
    let mut outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    outputs.extend(states);
    Ok(b.finish(&outputs))
}

/// The input naming the positions whose logits a caller wants
/// (`i32[rows]`), added by [`select_logit_rows`].
pub const LOGIT_ROWS: &str = "logit_rows";

/// Lets the caller choose which positions' logits the graph computes: the
/// final norm reads the hidden states of the positions in a new input
/// [`LOGIT_ROWS`] (a row gather, `embed`), so a prompt that only needs its
/// last token's logits does not run the output layer, the largest, on
/// every position. Only what follows the final norm is cut: a graph whose
/// first output is not reached from an `rms_norm` through layers that act
/// on each row alone (linear, quant_linear, pack, unpack), each read by the
/// next alone, comes back unchanged.
pub fn select_logit_rows(graph: &Graph) -> Result<Graph, BuildError> {
    let Some(&logits) = graph.outputs.first() else {
        return Ok(graph.clone());
    };
    // Each value on the way is read by the next alone (and the logits by
    // nobody but the caller): cutting rows changes no other reader's input.
    let mut readers = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for v in &node.operands {
            readers[v.0] += 1;
        }
    }
    for v in &graph.outputs {
        readers[v.0] += 1;
    }
    let mut at = logits;
    let norm = loop {
        let node = graph.node(at);
        if readers[at.0] != 1 {
            return Ok(graph.clone());
        }
        match node.op {
            Op::RmsNorm { .. } => break at,
            Op::Linear | Op::QuantLinear { .. } | Op::Pack { .. } | Op::Unpack { .. } => {
                at = node.operands[0]
            }
            _ => return Ok(graph.clone()),
        }
    };
    let hidden = graph.node(norm).operands[0];
    if graph.ty(hidden).shape.rank() != 2 || graph.inputs().any(|(_, n, _)| n == LOGIT_ROWS) {
        return Ok(graph.clone());
    }
    let mut b = GraphBuilder::new(graph.name.clone());
    for (k, v) in &graph.meta {
        b.meta(k.clone(), v.clone());
    }
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut operands: Vec<ValueId> = node.operands.iter().map(|v| map[v.0]).collect();
        let id = match &node.op {
            Op::Input { name } => b.input(name.clone(), node.ty.clone()),
            Op::Weight { name } => b.weight(name.clone(), node.ty.clone()),
            op => {
                if i == norm.0 {
                    let rows = b.input(
                        LOGIT_ROWS,
                        TensorType::new(DType::I32, Shape(vec![Dim::sym(ROWS)])),
                    );
                    operands[0] = b.push(Op::Embed, &[rows, operands[0]])?;
                }
                b.push(op.clone(), &operands)?
            }
        };
        map.push(id);
    }
    let outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    Ok(b.finish(&outputs))
}

/// The symbolic count of selected logit rows (named after the input: no
/// imported graph's own symbol).
const ROWS: &str = LOGIT_ROWS;

/// The state inputs a graph names in its `state` meta, in the order of its
/// state outputs (none for a graph without state).
pub fn state_names(graph: &Graph) -> Vec<String> {
    graph
        .meta
        .get(STATE_META)
        .map(|names| {
            names
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
