//! Incremental decoding over a language-model graph.
//!
//! A language-model graph takes the inputs `tokens: i32[seq]` and
//! `positions: i32[seq]` and returns the logits `f32[seq, vocab]` first.

use fairyc_backends::{BackendError, Program, Tensor};

use crate::batch::{Batch, Feed, Rows};
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

/// One sequence being decoded: the program and that sequence's state (the
/// KV cache, which the graph takes and returns as named tensors: see
/// `fairyc_backends::state`) and its position, bounded by the model's
/// context length (the graph's `context_length`). A batch's first slot.
pub struct Session<'a> {
    batch: Batch<'a>,
}

impl<'a> Session<'a> {
    /// A session on `program`; its graph must keep its KV cache as state
    /// (`fairyc_backends::state::expose_kv_cache`) if it has attention.
    pub fn new(program: &'a dyn Program) -> Session<'a> {
        Session {
            batch: Batch::new(program),
        }
    }

    /// Tokens seen so far.
    pub fn position(&self) -> usize {
        self.batch.position(0)
    }

    /// Forgets the sequence: empty state, position 0.
    pub fn reset(&mut self) {
        self.batch.reset(0)
    }

    /// Appends `tokens` to the sequence; returns their logits `[n, vocab]`.
    /// On an error the session is reset (the state went into the run).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        self.feed_rows(tokens, Rows::All)
    }

    /// [`Session::feed`], returning only the last token's logits `[1,
    /// vocab]`: what generation needs. A graph that selects its logit rows
    /// (`fairyc_backends::state::select_logit_rows`) computes no others.
    pub fn feed_last(&mut self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        self.feed_rows(tokens, Rows::Last)
    }

    /// Appends `tokens` without their logits: a chunk of a prompt that is
    /// not its last (a graph that selects its logit rows computes none).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), BackendError> {
        self.feed_rows(tokens, Rows::None).map(drop)
    }

    fn feed_rows(&mut self, tokens: &[u32], logits: Rows) -> Result<Tensor, BackendError> {
        self.batch.step(&[Feed {
            slot: 0,
            tokens,
            logits,
        }])
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
