//! A sequence's KV cache: the keys and values each attention node has seen.
//!
//! It is state the program reads and extends, owned by the caller (one per
//! sequence) and passed to every [`crate::Program::run`]; a run that fails
//! leaves it as it was, and it refuses to grow past the bound it was made
//! with (the model's context length).

use std::collections::HashMap;

use crate::tensor::{Data, Tensor};

#[derive(Default)]
pub struct KvCache {
    /// Keys and values `[positions, width]` by attention node.
    pub(crate) entries: HashMap<usize, (Tensor, Tensor)>,
    /// The most positions it may hold (`None`: unbounded).
    capacity: Option<usize>,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// A cache that holds at most `capacity` positions.
    pub fn with_capacity(capacity: usize) -> KvCache {
        KvCache {
            entries: HashMap::new(),
            capacity: Some(capacity),
        }
    }

    /// How many positions are cached (0 for a fresh sequence).
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .next()
            .map(|(k, _)| k.shape[0])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Checks that `more` positions fit, before a run appends them.
    pub fn check_room(&self, more: usize) -> Result<(), String> {
        match self.capacity {
            Some(cap) if self.len() + more > cap => Err(format!(
                "the sequence would hold {} positions, past the model's context length {cap}",
                self.len() + more
            )),
            _ => Ok(()),
        }
    }

    /// Drops every position from `len` on, in every entry: how a failed run
    /// is undone.
    pub fn truncate(&mut self, len: usize) {
        if len == 0 {
            self.entries.clear();
            return;
        }
        for (k, v) in self.entries.values_mut() {
            truncate_rows(k, len);
            truncate_rows(v, len);
        }
    }

    /// Appends keys and values to `node`'s entry and returns everything
    /// cached for it so far.
    pub(crate) fn append(
        &mut self,
        node: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(&Tensor, &Tensor), String> {
        let entry = self
            .entries
            .entry(node)
            .or_insert_with(|| (empty_like(k), empty_like(v)));
        extend_rows(&mut entry.0, k)?;
        extend_rows(&mut entry.1, v)?;
        Ok((&entry.0, &entry.1))
    }
}

fn truncate_rows(t: &mut Tensor, len: usize) {
    if t.shape[0] <= len {
        return;
    }
    let width = t.cols();
    match &mut t.data {
        Data::F32(d) => d.truncate(len * width),
        Data::C64(d) => d.truncate(len * width),
        Data::I32(d) => d.truncate(len * width),
        Data::Codes(_) => {}
    }
    t.shape[0] = len;
}

fn empty_like(t: &Tensor) -> Tensor {
    let shape = vec![0, t.cols()];
    match t.data {
        Data::F32(_) => Tensor::f32(shape, Vec::new()),
        Data::C64(_) => Tensor::c64(shape, Vec::new()),
        Data::I32(_) | Data::Codes(_) => Tensor::i32(shape, Vec::new()),
    }
}

fn extend_rows(dst: &mut Tensor, src: &Tensor) -> Result<(), String> {
    if dst.cols() != src.cols() {
        return Err("cached rows have another width".into());
    }
    match (&mut dst.data, &src.data) {
        (Data::F32(d), Data::F32(s)) => d.extend_from_slice(s),
        (Data::C64(d), Data::C64(s)) => d.extend_from_slice(s),
        _ => return Err("cached rows have another element type".into()),
    }
    dst.shape[0] += src.shape[0];
    Ok(())
}
