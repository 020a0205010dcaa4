//! Explicit decoding state: a language-model graph's KV cache as graph
//! inputs and outputs; and the rows of logits a caller wants, as an input
//! ([`select_logit_rows`]).
//!
//! Each attention node `attention(q, k, v)` becomes
//! `attention(q, concat(past_k, k), concat(past_v, v))`, where `past_k` and
//! `past_v` are new inputs `kv.N.k` and `kv.N.v` of `past` positions, and the
//! two concatenations become extra outputs after the graph's own: the next
//! call's `kv.N.k` and `kv.N.v`. The graph's `state` meta lists those input
//! names in the order of the extra outputs, so a caller (a session, or a
//! trainer's step graph, whose state is the masters and moments) knows
//! which output feeds which input. Inputs are moved in, so a backend may
//! grow a state input it owns in place (the reference appends to a host
//! cache); a device tensor is shared and never written. A caller that
//! keeps a state tensor (a trainer, until it has seen the step's loss)
//! passes a clone.
//!
//! [`expose_kv_cache_slots`] does the same for several sequences stepped
//! together (a server's requests): each slot has its own cache, and
//! attention runs per slot on the rows that slot feeds.

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
    expose(graph, 1)
}

/// The meta key giving how many sequences a graph steps at once
/// ([`expose_kv_cache_slots`]).
pub const SLOTS_META: &str = "slots";

/// The input (`i32[seq]`) that puts the step's rows back in order after
/// attention ran slot by slot: row `r`'s output is row `ROW_ORDER[r]` of
/// the slots' outputs stacked in slot order.
pub const ROW_ORDER: &str = "row_order";

/// The input (`i32[rowsS]`) listing which of the step's rows belong to
/// slot `s` (none: the slot sits the step out).
pub fn slot_rows(slot: usize) -> String {
    format!("slot{slot}.rows")
}

/// The prefix of slot `s`'s state inputs.
pub fn slot_prefix(slot: usize) -> String {
    format!("slot{slot}.")
}

/// [`expose_kv_cache`] for `slots` sequences stepped together (continuous
/// batching): the step's rows (`tokens`, `positions`) may come from any
/// of the slots, in any number, each with its own KV cache (state inputs
/// named with [`slot_prefix`]). Every layer but attention acts on each row
/// alone and runs on all rows at once; attention gathers each slot's rows
/// ([`slot_rows`]), attends over that slot's cache, and the outputs are
/// gathered back into row order ([`ROW_ORDER`]). A slot with no rows costs
/// a few empty nodes. The graph's `slots` meta says how many.
/// One slot is [`expose_kv_cache`]'s graph.
pub fn expose_kv_cache_slots(graph: &Graph, slots: usize) -> Result<Graph, BuildError> {
    expose(graph, slots.max(1))
}

fn expose(graph: &Graph, slots: usize) -> Result<Graph, BuildError> {
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
    let mut b = GraphBuilder::like(graph);
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    let mut caches = Caches::default();
    // Each slot's rows and the order back, made at the first attention.
    let mut routing: Option<(Vec<ValueId>, ValueId)> = None;
    let mut layer = 0;
    for node in &graph.nodes {
        let operands: Vec<ValueId> = node.operands.iter().map(|v| map[v.0]).collect();
        let id = match &node.op {
            op if op.has_declared_type() => b.copy(node, &operands)?,
            op @ Op::Attention { .. } if slots == 1 => {
                let [q, k, v] = [operands[0], operands[1], operands[2]];
                let (k, v) = caches.extend(&mut b, &format!("kv.{layer}"), PAST, k, v)?;
                layer += 1;
                b.push(op.clone(), &[q, k, v])?
            }
            op @ Op::Attention { .. } => {
                let (rows, order) = match &routing {
                    Some(r) => r.clone(),
                    None => {
                        let index = |b: &mut GraphBuilder, name: String, dim: &str| {
                            b.input(
                                name,
                                TensorType::new(DType::I32, Shape(vec![Dim::sym(dim)])),
                            )
                        };
                        let rows: Vec<ValueId> = (0..slots)
                            .map(|s| index(&mut b, slot_rows(s), &format!("rows{s}")))
                            .collect();
                        let seq = b.ty(operands[0]).shape.dims()[0].clone();
                        let order =
                            b.input(ROW_ORDER, TensorType::new(DType::I32, Shape(vec![seq])));
                        routing.insert((rows, order)).clone()
                    }
                };
                let mut outputs = Vec::with_capacity(slots);
                for (s, &rows) in rows.iter().enumerate() {
                    let [q, k, v] = [operands[0], operands[1], operands[2]]
                        .map(|x| b.push(Op::Embed, &[rows, x]));
                    let name = format!("{}kv.{layer}", slot_prefix(s));
                    let (k, v) = caches.extend(&mut b, &name, &format!("{PAST}{s}"), k?, v?)?;
                    outputs.push(b.push(op.clone(), &[q?, k, v])?);
                }
                layer += 1;
                let stacked = b.push(Op::Concat { axis: 0 }, &outputs)?;
                b.push(Op::Embed, &[order, stacked])?
            }
            op => b.push(op.clone(), &operands)?,
        };
        map.push(id);
    }
    b.meta(STATE_META, caches.names.join(","));
    if slots > 1 {
        b.meta(SLOTS_META, slots.to_string());
    }
    let mut outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    outputs.extend(caches.states);
    Ok(b.finish(&outputs))
}

/// Decoding `rows` sequences in lockstep: every run feeds one token of each
/// (row `r` is sequence `r`), all at the same position. The rows are fixed,
/// and each attention runs once with the rows as more heads: the queries'
/// `[rows, heads·d]` read as one row of `rows·heads` heads, over one KV
/// cache a layer whose columns are the sequences' caches side by side
/// (`[past, rows·kv_heads·d]`; head `r·heads + h` reads KV head
/// `r·kv_heads + h / group`, its own sequence's). So the graph holds no
/// node per sequence, where [`expose_kv_cache_slots`] routes each slot
/// through its own attention. Inputs whose first dimension is the tokens'
/// (tokens, positions) get `rows` rows; a graph whose attention is not on
/// `[seq, channels]`, or runs over segments, is refused.
pub fn expose_kv_cache_lockstep(graph: &Graph, rows: usize) -> Result<Graph, BuildError> {
    let mut b = GraphBuilder::like(graph);
    let mut caches = Caches::default();
    let mut layer = 0;
    let refuse = |message: String| BuildError {
        graph: graph.name.clone(),
        op: "attention",
        message,
    };
    // The rows' symbol: the tokens' first dimension.
    let seq = graph
        .inputs()
        .find(|(_, n, _)| *n == "tokens")
        .and_then(|(_, _, ty)| ty.shape.dims().first().cloned());
    // `x` of [rows, w] (fixed) as [1, rows·w], or the reverse.
    let reshape = |b: &mut GraphBuilder, x: ValueId, shape: [usize; 2]| {
        b.push(
            Op::Reshape {
                shape: Shape(shape.map(Dim::Fixed).to_vec()),
            },
            &[x],
        )
    };
    let map = b.inline(graph, |b, _, node, map| {
        let attributes = match &node.op {
            Op::Input { name } => {
                let mut dims = node.ty.shape.dims().to_vec();
                if let Some(first) = dims.first_mut().filter(|d| seq.as_ref() == Some(*d)) {
                    *first = Dim::Fixed(rows);
                }
                let ty = TensorType::new(node.ty.dtype, Shape(dims));
                return Ok(Some(b.input(name.clone(), ty)));
            }
            Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
                segment: None,
            } => (*heads, *kv_heads, *scale, *causal),
            Op::Attention { .. } => {
                return Err(refuse(
                    "lockstep decoding keeps a KV cache: attention over segments has none".into(),
                ))
            }
            _ => return Ok(None),
        };
        let (heads, kv_heads, scale, causal) = attributes;
        let mut one_row = Vec::with_capacity(3);
        for v in &node.operands {
            let x = map[v.0];
            let w = match b.ty(x).shape.dims() {
                [Dim::Fixed(r), Dim::Fixed(w)] if *r == rows => *w,
                _ => {
                    return Err(refuse(format!(
                        "lockstep decoding needs attention on [{rows}, channels], found {}",
                        b.ty(x)
                    )))
                }
            };
            one_row.push(reshape(b, x, [1, rows * w])?);
        }
        let name = format!("kv.{layer}");
        let (k, v) = caches.extend(b, &name, PAST, one_row[1], one_row[2])?;
        layer += 1;
        let attention = Op::Attention {
            heads: heads * rows,
            kv_heads: kv_heads * rows,
            scale,
            causal,
            segment: None,
        };
        let out = b.push(attention, &[one_row[0], k, v])?;
        let width = b.ty(out).shape.dims()[1].clone().fixed().unwrap_or(0) / rows;
        Ok(Some(reshape(b, out, [rows, width])?))
    })?;
    b.meta(STATE_META, caches.names.join(","));
    let mut outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    outputs.extend(caches.states);
    Ok(b.finish(&outputs))
}

/// The state inputs made so far, and the values that are their next
/// contents (the state outputs), in the same order.
#[derive(Default)]
struct Caches {
    names: Vec<String>,
    states: Vec<ValueId>,
}

impl Caches {
    /// `concat(past, new)` for a layer's keys and values, `past` a new state
    /// input `{name}.k` (`.v`) of `past` rows.
    fn extend(
        &mut self,
        b: &mut GraphBuilder,
        name: &str,
        past: &str,
        k: ValueId,
        v: ValueId,
    ) -> Result<(ValueId, ValueId), BuildError> {
        let mut extended = [k, v];
        for (part, new) in ["k", "v"].iter().zip(extended.iter_mut()) {
            let t = b.ty(*new).clone();
            let width = t.shape.dims()[1].clone();
            let input = format!("{name}.{part}");
            let cached = b.input(
                input.clone(),
                TensorType::new(t.dtype, Shape(vec![Dim::sym(past), width])),
            );
            *new = b.push(Op::Concat { axis: 0 }, &[cached, *new])?;
            self.names.push(input);
            self.states.push(*new);
        }
        Ok((extended[0], extended[1]))
    }
}

/// The input of [`draw_on_device`]'s graph: each row's uniform number in
/// [0, 1) (`f32[rows]`).
pub const DRAWS: &str = "draws";

/// Draws each row's next token in the graph (`sample` at `temperature`, by
/// a new input [`DRAWS`]): the first output, the logits `f32[rows,
/// vocab]`, becomes the ids `i32[rows]`, so that a decoding step on a GPU
/// brings back ids instead of its logits.
pub fn draw_on_device(graph: &Graph, temperature: f32) -> Result<Graph, BuildError> {
    let (logits, rows) = logit_rows(graph, "sample")?;
    let mut b = GraphBuilder::like(graph);
    let map = b.inline::<BuildError>(graph, |_, _, _, _| Ok(None))?;
    let draws = b.input(DRAWS, TensorType::new(DType::F32, Shape(vec![rows])));
    let ids = b.push(Op::Sample { temperature }, &[map[logits.0], draws])?;
    let mut outputs: Vec<ValueId> = graph.outputs.iter().map(|v| map[v.0]).collect();
    outputs[0] = ids;
    Ok(b.finish(&outputs))
}

/// A language-model graph's logits (its first output, `[rows, vocab]`)
/// and their rows, for an `op` to be added on them; an error names `op`.
pub fn logit_rows(graph: &Graph, op: &'static str) -> Result<(ValueId, Dim), BuildError> {
    let refuse = |message: String| BuildError {
        graph: graph.name.clone(),
        op,
        message,
    };
    let &logits = graph
        .outputs
        .first()
        .ok_or_else(|| refuse("the graph returns no logits".into()))?;
    match graph.ty(logits).shape.dims() {
        [rows, _vocab] => Ok((logits, rows.clone())),
        _ => Err(refuse(format!(
            "the logits must be [rows, vocab], found {}",
            graph.ty(logits)
        ))),
    }
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
    let mut b = GraphBuilder::like(graph);
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut operands: Vec<ValueId> = node.operands.iter().map(|v| map[v.0]).collect();
        let id = match &node.op {
            op if op.has_declared_type() => b.copy(node, &operands)?,
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

/// How many sequences a graph steps at once: its `slots` meta, or 1.
pub fn slots(graph: &Graph) -> usize {
    graph
        .meta
        .get(SLOTS_META)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

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
