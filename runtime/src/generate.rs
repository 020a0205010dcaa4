//! Incremental decoding over a language-model graph.
//!
//! A language-model graph takes the inputs `tokens: i32[seq]` and
//! `positions: i32[seq]` and returns the logits `f32[seq, vocab]` first.

use std::collections::HashMap;

use fairyc_backends::state::{state_names, LOGIT_ROWS};
use fairyc_backends::{BackendError, Program, Tensor};
use fairyc_ir::DType;

use crate::sampling::Sampler;

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndToken,
    /// The token budget ran out.
    Length,
    /// The caller's callback asked to stop.
    Caller,
}

/// Which positions' logits a step computes (where the graph selects them).
#[derive(Clone, Copy)]
enum LogitRows {
    All,
    Last,
    None,
}

/// One sequence being decoded: the program, that sequence's state (the KV
/// cache, which the graph takes and returns as named tensors: see
/// `fairyc_backends::state`) and its position, bounded by the model's
/// context length (the graph's `context_length`).
pub struct Session<'a> {
    program: &'a dyn Program,
    /// The state inputs by name, in the order of the state outputs, and
    /// their current values.
    state: Vec<(String, Tensor)>,
    position: usize,
    context: Option<usize>,
    /// Whether the graph takes the positions whose logits it computes
    /// (looked up once, not on every step).
    selects_rows: bool,
}

impl<'a> Session<'a> {
    /// A session on `program`; its graph must keep its KV cache as state
    /// (`fairyc_backends::state::expose_kv_cache`) if it has attention.
    pub fn new(program: &'a dyn Program) -> Session<'a> {
        let graph = program.graph();
        let context = graph
            .meta
            .get("context_length")
            .and_then(|c| c.parse().ok());
        let mut session = Session {
            program,
            state: Vec::new(),
            position: 0,
            context,
            selects_rows: graph.inputs().any(|(_, n, _)| n == LOGIT_ROWS),
        };
        session.reset();
        session
    }

    /// Tokens seen so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Forgets the sequence: empty state, position 0.
    pub fn reset(&mut self) {
        let graph = self.program.graph();
        self.state = state_names(graph)
            .into_iter()
            .filter_map(|name| {
                let (_, _, ty) = graph.inputs().find(|(_, n, _)| *n == name)?;
                let width = ty.shape.dims().last()?.clone().fixed()?;
                let empty = match ty.dtype {
                    DType::C64 => Tensor::c64(vec![0, width], Vec::new()),
                    _ => Tensor::f32(vec![0, width], Vec::new()),
                };
                Some((name, empty))
            })
            .collect();
        self.position = 0;
    }

    /// Appends `tokens` to the sequence; returns their logits `[n, vocab]`.
    /// On an error the session is reset (the state went into the run).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        self.feed_rows(tokens, LogitRows::All)
    }

    /// [`Session::feed`], returning only the last token's logits `[1,
    /// vocab]`: what generation needs. A graph that selects its logit rows
    /// (`fairyc_backends::state::select_logit_rows`) computes no others.
    pub fn feed_last(&mut self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        let logits = self.feed_rows(tokens, LogitRows::Last)?;
        let (rows, vocab) = (logits.shape[0], logits.cols());
        if rows == 1 {
            return Ok(logits);
        }
        let all = logits.as_f32().expect("checked by feed_rows");
        Ok(Tensor::f32(
            vec![1, vocab],
            all[(rows - 1) * vocab..].to_vec(),
        ))
    }

    /// Appends `tokens` without their logits: a chunk of a prompt that is
    /// not its last (a graph that selects its logit rows computes none).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), BackendError> {
        self.feed_rows(tokens, LogitRows::None).map(drop)
    }

    fn feed_rows(&mut self, tokens: &[u32], wanted: LogitRows) -> Result<Tensor, BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::new("no tokens to feed"));
        }
        let graph = self.program.graph();
        if self.state.is_empty()
            && graph
                .nodes
                .iter()
                .any(|n| matches!(n.op, fairyc_ir::Op::Attention { .. }))
        {
            return Err(BackendError::new(format!(
                "graph @{} has attention but keeps no KV cache state (see fairyc_backends::state)",
                graph.name
            )));
        }
        let start = self.position;
        if let Some(context) = self.context {
            if start + tokens.len() > context {
                return Err(BackendError::new(format!(
                    "the sequence would hold {} tokens, past the model's context length {context}",
                    start + tokens.len()
                )));
            }
        }
        let ids = tokens
            .iter()
            .map(|&t| {
                i32::try_from(t)
                    .map_err(|_| BackendError::new(format!("token id {t} is too large")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let positions = (start..start + tokens.len()).map(|p| p as i32).collect();
        let mut inputs = HashMap::from([
            ("tokens".to_string(), Tensor::i32(vec![tokens.len()], ids)),
            (
                "positions".to_string(),
                Tensor::i32(vec![tokens.len()], positions),
            ),
        ]);
        if self.selects_rows {
            let rows = match wanted {
                LogitRows::All => (0..tokens.len() as i32).collect(),
                LogitRows::Last => vec![tokens.len() as i32 - 1],
                LogitRows::None => Vec::new(),
            };
            inputs.insert(LOGIT_ROWS.to_string(), Tensor::i32(vec![rows.len()], rows));
        }
        let names: Vec<String> = self.state.iter().map(|(n, _)| n.clone()).collect();
        inputs.extend(std::mem::take(&mut self.state));
        let mut outputs = match self.program.run(inputs) {
            Ok(outputs) => outputs,
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        let own = outputs.len().saturating_sub(names.len());
        if own == 0 || outputs[0].as_f32().is_none() || outputs[0].shape.len() != 2 {
            self.reset();
            return Err(BackendError::new(
                "a language-model graph must return f32 logits [seq, vocab] first",
            ));
        }
        self.state = names.into_iter().zip(outputs.drain(own..)).collect();
        self.position += tokens.len();
        Ok(outputs.swap_remove(0))
    }

    /// Feeds `prompt`, then samples up to `max_new` tokens, calling
    /// `on_token` with each; it returns `false` to stop early.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        is_end: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, StopReason), BackendError> {
        let mut out = Vec::new();
        let mut logits = self.feed_last(prompt)?;
        loop {
            if out.len() == max_new {
                return Ok((out, StopReason::Length));
            }
            let vocab = logits.cols();
            let rows = logits.as_f32().expect("checked by feed");
            let next = sampler.sample(&rows[rows.len() - vocab..]);
            if is_end(next) {
                return Ok((out, StopReason::EndToken));
            }
            out.push(next);
            if !on_token(next) {
                return Ok((out, StopReason::Caller));
            }
            logits = self.feed_last(&[next])?;
        }
    }
}
