//! Incremental decoding over a language-model graph.
//!
//! A language-model graph takes the inputs `tokens: i32[seq]` and
//! `positions: i32[seq]` and returns the logits `f32[seq, vocab]` first.

use std::collections::HashMap;

use fairyc_backends::{BackendError, KvCache, Program, Tensor};

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

/// One sequence being decoded: the program and that sequence's KV cache,
/// bounded by the model's context length (the graph's `context_length`).
pub struct Session<'a> {
    program: &'a dyn Program,
    cache: KvCache,
}

impl<'a> Session<'a> {
    pub fn new(program: &'a dyn Program) -> Session<'a> {
        let context = program
            .graph()
            .meta
            .get("context_length")
            .and_then(|c| c.parse().ok());
        Session {
            program,
            cache: context.map(KvCache::with_capacity).unwrap_or_default(),
        }
    }

    /// Tokens seen so far.
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Appends `tokens` to the sequence; returns their logits `[n, vocab]`.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::new("no tokens to feed"));
        }
        self.cache
            .check_room(tokens.len())
            .map_err(BackendError::new)?;
        let start = self.cache.len();
        let ids = tokens
            .iter()
            .map(|&t| {
                i32::try_from(t)
                    .map_err(|_| BackendError::new(format!("token id {t} is too large")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let positions = (start..start + tokens.len()).map(|p| p as i32).collect();
        let inputs = HashMap::from([
            ("tokens".to_string(), Tensor::i32(vec![tokens.len()], ids)),
            (
                "positions".to_string(),
                Tensor::i32(vec![tokens.len()], positions),
            ),
        ]);
        let mut outputs = self.program.run(inputs, &mut self.cache)?;
        if outputs.is_empty() || outputs[0].as_f32().is_none() || outputs[0].shape.len() != 2 {
            return Err(BackendError::new(
                "a language-model graph must return f32 logits [seq, vocab] first",
            ));
        }
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
        let mut logits = self.feed(prompt)?;
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
            logits = self.feed(&[next])?;
        }
    }
}
