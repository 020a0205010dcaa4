//! Sequences decoded in lockstep: on a graph from
//! `fairyc_backends::state::expose_kv_cache_lockstep`, every step feeds
//! one token of each of its fixed rows (row `r` is sequence `r`), all at
//! the same position, and returns each row's logits. Many sequences of
//! one length (a teacher's generated text) run this way with no node per
//! sequence in the graph, where [`crate::Batch`] routes each slot through
//! its own attention.

use std::collections::HashMap;

use fairyc_backends::state::{state_names, DRAWS};
use fairyc_backends::{BackendError, Program, Tensor};
use fairyc_ir::Dim;

use crate::batch::empty_state;

pub struct Lockstep<'a> {
    program: &'a dyn Program,
    rows: usize,
    /// The KV caches, by state input name, in the order of the state outputs.
    state: Vec<(String, Tensor)>,
    position: usize,
    context: Option<usize>,
    /// Whether the graph draws its tokens itself (a [`DRAWS`] input).
    draws: bool,
}

impl<'a> Lockstep<'a> {
    /// Empty sequences on `program`, whose graph's `tokens` input has fixed
    /// rows.
    pub fn new(program: &'a dyn Program) -> Result<Lockstep<'a>, BackendError> {
        let graph = program.graph();
        let rows = graph
            .inputs()
            .find(|(_, n, _)| *n == "tokens")
            .and_then(|(_, _, ty)| match ty.shape.dims() {
                [Dim::Fixed(rows)] => Some(*rows),
                _ => None,
            })
            .ok_or_else(|| {
                BackendError::new(format!(
                    "graph @{} is not a lockstep graph: its tokens have no fixed rows",
                    graph.name
                ))
            })?;
        let state = state_names(graph)
            .into_iter()
            .map(|name| match empty_state(graph, &name) {
                Some(empty) => Ok((name, empty)),
                None => Err(BackendError::new(format!(
                    "state input {name} has no fixed width"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Lockstep {
            program,
            rows,
            state,
            position: 0,
            context: graph.context_length(),
            draws: graph.inputs().any(|(_, n, _)| n == DRAWS),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Feeds `tokens[r]` to row `r`; returns the logits `[rows, vocab]`. On
    /// an error the sequences are lost (their caches went into the run).
    pub fn step(&mut self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        if self.draws {
            return Err(BackendError::new(
                "this lockstep graph draws its tokens: step it with step_drawn",
            ));
        }
        self.run(tokens, None)
    }

    /// On a graph that draws its tokens itself
    /// (`fairyc_backends::state::draw_on_device`): feeds `tokens[r]` to row
    /// `r` and returns each row's next token, drawn by `draws[r]` (uniform
    /// in [0, 1)).
    pub fn step_drawn(&mut self, tokens: &[u32], draws: &[f32]) -> Result<Vec<u32>, BackendError> {
        if !self.draws {
            return Err(BackendError::new(
                "this lockstep graph returns logits: step it with step",
            ));
        }
        if draws.len() != self.rows {
            return Err(BackendError::new(format!(
                "a lockstep step draws one token for each of {} rows, got {} draws",
                self.rows,
                draws.len()
            )));
        }
        let ids = self.run(tokens, Some(Tensor::f32(vec![self.rows], draws.to_vec())))?;
        let ids = ids
            .as_i32()
            .ok_or_else(|| BackendError::new("a drawing lockstep graph returns i32 ids first"))?;
        ids.iter()
            .map(|&id| {
                u32::try_from(id).map_err(|_| BackendError::new(format!("a drawn id of {id}")))
            })
            .collect()
    }

    fn run(&mut self, tokens: &[u32], draws: Option<Tensor>) -> Result<Tensor, BackendError> {
        if tokens.len() != self.rows {
            return Err(BackendError::new(format!(
                "a lockstep step feeds one token to each of {} rows, got {}",
                self.rows,
                tokens.len()
            )));
        }
        if let Some(context) = self.context.filter(|&c| self.position >= c) {
            return Err(BackendError::new(format!(
                "the sequences would hold {} tokens, past the model's context length {context}",
                self.position + 1
            )));
        }
        let ids = tokens
            .iter()
            .map(|&t| i32::try_from(t))
            .collect::<Result<Vec<i32>, _>>()
            .map_err(|_| BackendError::new("a token id is too large"))?;
        let position = self.position as i32;
        let mut inputs = HashMap::from([
            ("tokens".to_string(), Tensor::i32(vec![self.rows], ids)),
            (
                "positions".to_string(),
                Tensor::i32(vec![self.rows], vec![position; self.rows]),
            ),
        ]);
        if let Some(draws) = draws {
            inputs.insert(DRAWS.to_string(), draws);
        }
        let names: Vec<String> = self.state.iter().map(|(n, _)| n.clone()).collect();
        inputs.extend(std::mem::take(&mut self.state));
        let mut outputs = self.program.run(inputs)?;
        let own = outputs.len().saturating_sub(names.len());
        if own == 0 {
            return Err(BackendError::new(
                "a lockstep graph returns the logits first",
            ));
        }
        self.state = names.into_iter().zip(outputs.drain(own..)).collect();
        self.position += 1;
        Ok(outputs.swap_remove(0))
    }
}
