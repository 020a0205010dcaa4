//! Several sequences decoded together (continuous batching): each slot of
//! a graph from `fairyc_backends::state::expose_kv_cache_slots` holds one
//! sequence's KV cache and position, and one program run steps any of the
//! slots at once, each by any number of tokens (a decode step, or a chunk
//! of a prompt). A graph with plain state (`expose_kv_cache`) is one slot.

use std::collections::HashMap;

use fairyc_backends::state::{slot_prefix, slot_rows, slots, state_names, LOGIT_ROWS, ROW_ORDER};
use fairyc_backends::{BackendError, Program, Tensor};
use fairyc_ir::{DType, Graph, Op};

/// The empty value of state input `name` (a KV cache of no rows:
/// `[0, width]`), if the graph has it with a fixed width.
pub(crate) fn empty_state(graph: &Graph, name: &str) -> Option<Tensor> {
    let (_, _, ty) = graph.inputs().find(|(_, n, _)| *n == name)?;
    let width = ty.shape.dims().last()?.clone().fixed()?;
    Some(match ty.dtype {
        DType::C64 => Tensor::c64(vec![0, width], Vec::new()),
        _ => Tensor::f32(vec![0, width], Vec::new()),
    })
}

/// Which of a feed's positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    All,
    Last,
    None,
}

impl Rows {
    /// The wanted positions among `n` fed.
    fn of(self, n: usize) -> std::ops::Range<usize> {
        match self {
            Rows::All => 0..n,
            Rows::Last => n - 1..n,
            Rows::None => n..n,
        }
    }
}

/// What one slot feeds in a step.
#[derive(Clone, Copy, Debug)]
pub struct Feed<'t> {
    pub slot: usize,
    pub tokens: &'t [u32],
    pub logits: Rows,
}

/// The sequences of the slots: their state and positions, bounded by the
/// model's context length (the graph's `context_length`).
pub struct Batch<'a> {
    program: &'a dyn Program,
    /// Each slot's state inputs by name, in the order of the state outputs
    /// of that slot, and their current values.
    slots: Vec<Slot>,
    /// Each state output's input name and slot, in the graph's order.
    states: Vec<(String, usize)>,
    context: Option<usize>,
    /// Whether the graph takes the positions whose logits it computes
    /// (looked up once, not on every step).
    selects_rows: bool,
    /// Whether the graph routes rows to slots (more than one slot).
    routes: bool,
    has_attention: bool,
}

#[derive(Default)]
struct Slot {
    state: Vec<(String, Tensor)>,
    position: usize,
}

impl<'a> Batch<'a> {
    /// The slots of `program`'s graph (one unless its `slots` meta says
    /// more), all empty.
    pub fn new(program: &'a dyn Program) -> Batch<'a> {
        let graph = program.graph();
        let count = slots(graph);
        let routes = count > 1;
        let states = state_names(graph)
            .into_iter()
            .map(|name| {
                let slot = (0..count)
                    .find(|&s| !routes || name.starts_with(&slot_prefix(s)))
                    .unwrap_or(0);
                (name, slot)
            })
            .collect();
        let mut batch = Batch {
            program,
            slots: (0..count).map(|_| Slot::default()).collect(),
            states,
            context: graph.context_length(),
            selects_rows: graph.inputs().any(|(_, n, _)| n == LOGIT_ROWS),
            routes,
            has_attention: graph
                .nodes
                .iter()
                .any(|n| matches!(n.op, Op::Attention { .. })),
        };
        for s in 0..count {
            batch.reset(s);
        }
        batch
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Tokens slot `slot` has seen.
    pub fn position(&self, slot: usize) -> usize {
        self.slots[slot].position
    }

    /// Forgets slot `slot`'s sequence: empty state, position 0.
    pub fn reset(&mut self, slot: usize) {
        let graph = self.program.graph();
        let state = self
            .states
            .iter()
            .filter(|(_, s)| *s == slot)
            .filter_map(|(name, _)| Some((name.clone(), empty_state(graph, name)?)))
            .collect();
        self.slots[slot] = Slot { state, position: 0 };
    }

    /// Runs one step: each feed appends its tokens to its slot's sequence
    /// (a slot at most once; slots not fed keep theirs). Returns the
    /// logits `[rows, vocab]` of the positions the feeds ask for, feed by
    /// feed. On an error every slot is reset (their state went into the
    /// run), except when the feeds themselves are refused before it.
    pub fn step(&mut self, feeds: &[Feed]) -> Result<Tensor, BackendError> {
        self.check(feeds)?;
        let total: usize = feeds.iter().map(|f| f.tokens.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut wanted = Vec::new();
        let mut slot_rows_of: Vec<Vec<i32>> = vec![Vec::new(); self.slots.len()];
        for f in feeds {
            let first = ids.len();
            for (i, &t) in f.tokens.iter().enumerate() {
                let id = i32::try_from(t)
                    .map_err(|_| BackendError::new(format!("token id {t} is too large")))?;
                ids.push(id);
                positions.push((self.slots[f.slot].position + i) as i32);
            }
            wanted.extend(f.logits.of(f.tokens.len()).map(|r| first + r));
            slot_rows_of[f.slot].extend(first as i32..ids.len() as i32);
        }
        let mut inputs = HashMap::from([
            ("tokens".to_string(), Tensor::i32(vec![total], ids)),
            ("positions".to_string(), Tensor::i32(vec![total], positions)),
        ]);
        if self.selects_rows {
            let rows: Vec<i32> = wanted.iter().map(|&r| r as i32).collect();
            inputs.insert(LOGIT_ROWS.to_string(), Tensor::i32(vec![rows.len()], rows));
        }
        if self.routes {
            // Attention's outputs come stacked in slot order.
            let mut order = vec![0i32; total];
            for (stacked, &row) in slot_rows_of.iter().flatten().enumerate() {
                order[row as usize] = stacked as i32;
            }
            inputs.insert(ROW_ORDER.to_string(), Tensor::i32(vec![total], order));
            for (s, rows) in slot_rows_of.into_iter().enumerate() {
                inputs.insert(slot_rows(s), Tensor::i32(vec![rows.len()], rows));
            }
        }
        for slot in &mut self.slots {
            inputs.extend(std::mem::take(&mut slot.state));
        }
        let outputs = self.program.run(inputs);
        let mut outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => return Err(self.lost(e)),
        };
        let own = outputs.len().saturating_sub(self.states.len());
        if own == 0 || outputs[0].as_f32().is_none() || outputs[0].shape.len() != 2 {
            return Err(self.lost(BackendError::new(
                "a language-model graph must return f32 logits [seq, vocab] first",
            )));
        }
        for ((name, s), value) in self.states.iter().zip(outputs.drain(own..)) {
            self.slots[*s].state.push((name.clone(), value));
        }
        for f in feeds {
            self.slots[f.slot].position += f.tokens.len();
        }
        let logits = outputs.swap_remove(0);
        if self.selects_rows || wanted.len() == total {
            return Ok(logits);
        }
        // The graph computed every row: keep the wanted ones.
        let vocab = logits.cols();
        let all = logits.as_f32().expect("checked above");
        let rows = wanted
            .iter()
            .flat_map(|&r| all[r * vocab..][..vocab].iter().copied())
            .collect();
        Ok(Tensor::f32(vec![wanted.len(), vocab], rows))
    }

    /// Refuses feeds that cannot run, before any state moves.
    fn check(&self, feeds: &[Feed]) -> Result<(), BackendError> {
        if feeds.is_empty() || feeds.iter().any(|f| f.tokens.is_empty()) {
            return Err(BackendError::new("no tokens to feed"));
        }
        if self.has_attention && self.states.is_empty() {
            return Err(BackendError::new(format!(
                "graph @{} has attention but keeps no KV cache state (see fairyc_backends::state)",
                self.program.graph().name
            )));
        }
        let mut fed = vec![false; self.slots.len()];
        for f in feeds {
            let Some(seen) = fed.get_mut(f.slot) else {
                return Err(BackendError::new(format!(
                    "slot {} is past the graph's {} slots",
                    f.slot,
                    self.slots.len()
                )));
            };
            if std::mem::replace(seen, true) {
                return Err(BackendError::new(format!(
                    "slot {} is fed twice in one step",
                    f.slot
                )));
            }
            let end = self.slots[f.slot].position + f.tokens.len();
            if let Some(context) = self.context.filter(|&c| end > c) {
                return Err(BackendError::new(format!(
                    "the sequence would hold {end} tokens, past the model's context length {context}"
                )));
            }
        }
        Ok(())
    }

    /// Resets every slot after a failed run and passes the error on.
    fn lost(&mut self, e: BackendError) -> BackendError {
        for s in 0..self.slots.len() {
            self.reset(s);
        }
        e
    }
}
