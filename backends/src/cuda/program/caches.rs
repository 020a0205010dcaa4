//! KV caches that grow in place. A decoding graph extends each layer's
//! cache by `concat(past, new)` (`crate::state`), which copied every cached
//! row at every step: quadratic in the sequence's length, and a new buffer
//! per layer and step. Here such a concatenation writes only the new rows,
//! after `past`'s, into a buffer allocated with room for more; a full
//! buffer is replaced by one with room for twice the rows (up to the
//! model's context length), so each row is copied a bounded number of
//! times. The tensors that view one buffer share a count of the words in
//! use: only a view that ends there may be extended, so a caller that
//! kept an older view of the cache and extends it again gets a copy, and
//! no view ever sees its rows change.
//!
//! Each cache has a slot in a small device array that holds its rows in
//! use at the start of a run (`cache_lengths`, written before each run):
//! the append and the attention over the cache read the position there
//! rather than as kernel arguments, so a decoding step captured as a CUDA
//! graph (`replay`) replays at any position while its buffers stay.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, DevicePtr, PushKernelArg};
use fairyc_ir::{DType, Graph, Op};

use super::{driver, word_count, CudaProgram, DeviceTensor, Elem, RopeArgs, MAP_THREADS};
use crate::tensor::Tensor;
use crate::BackendError;

/// The fewest rows a growing cache is allocated with.
const MIN_ROWS: usize = 64;

/// The concatenations along the first axis that make a state output from a
/// state input, in f32 or complex words: a KV cache growing by the step's
/// rows, run by [`CudaProgram::append_rows`].
pub(super) fn growing_caches(graph: &Graph, state_outputs: usize) -> HashSet<usize> {
    let kept_from = graph.outputs.len().saturating_sub(state_outputs);
    graph.outputs[kept_from..]
        .iter()
        .map(|v| v.0)
        .filter(|&i| {
            let node = &graph.nodes[i];
            matches!(node.op, Op::Concat { axis: 0 })
                && matches!(node.ty.dtype, DType::F32 | DType::C64)
                && node
                    .operands
                    .first()
                    .is_some_and(|v| matches!(graph.node(*v).op, Op::Input { .. }))
        })
        .collect()
}

/// A state input that a growing cache extends.
pub(super) struct CacheInput {
    pub name: String,
    /// Its slot in `cache_lengths`.
    pub slot: usize,
    /// The concatenation that extends it.
    pub node: usize,
}

/// Each growing cache's slot, by its concatenation node, and the state
/// inputs they extend, in node order.
pub(super) fn cache_slots(
    graph: &Graph,
    state_outputs: usize,
) -> (HashMap<usize, usize>, Vec<CacheInput>) {
    let mut nodes: Vec<usize> = growing_caches(graph, state_outputs).into_iter().collect();
    nodes.sort_unstable();
    let inputs = nodes
        .iter()
        .enumerate()
        .filter_map(
            |(slot, &i)| match &graph.node(graph.nodes[i].operands[0]).op {
                Op::Input { name } => Some(CacheInput {
                    name: name.clone(),
                    slot,
                    node: i,
                }),
                _ => None,
            },
        )
        .collect();
    let slots = nodes
        .into_iter()
        .enumerate()
        .map(|(slot, i)| (i, slot))
        .collect();
    (slots, inputs)
}

impl CudaProgram {
    /// `concat(parts[0], parts[1])` along the first axis, into `shape`, for
    /// the cache in `slot`: in place after `parts[0]` (by the
    /// [`Kernel::AppendRows`] kernel `k`) where its buffer has room and
    /// nothing was appended after it, else into a new buffer with room to
    /// grow. With `rope` the new rows are keys before their rotary
    /// embedding, rotated by the kernel as it writes them (then it writes
    /// them into a new buffer too, after a copy of the past).
    ///
    /// [`Kernel::AppendRows`]: super::codegen::Kernel::AppendRows
    pub(super) fn append_rows(
        &self,
        k: usize,
        slot: usize,
        parts: &[&DeviceTensor],
        (shape, elem): (Vec<usize>, Elem),
        rope: Option<RopeArgs>,
    ) -> Result<DeviceTensor, BackendError> {
        let total = word_count(&shape, elem);
        let (past, new) = (
            parts[0],
            parts[1..].iter().map(|p| p.word_count()).sum::<usize>(),
        );
        let row_words = total.checked_div(shape[0]).unwrap_or(0);
        let append = |into: &CudaSlice<u32>, rows: &DeviceTensor| {
            let sizes = [slot, row_words, new].map(|v| v as i64);
            self.launch(k, Self::grid(new), MAP_THREADS, |b| {
                b.arg(into).arg(&*rows.words).arg(&self.cache_lengths);
                for v in &sizes {
                    b.arg(v);
                }
                if let Some(r) = &rope {
                    b.arg(&*r.positions.words).arg(r.freqs);
                    b.arg(&r.seq).arg(&r.head_dim);
                }
            })
        };
        if let (Some(used), [_, rows]) = (&past.room, parts) {
            let fits = past.words.len() >= total;
            if fits
                && used
                    .compare_exchange(
                        past.word_count(),
                        total,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            {
                append(&past.words, rows)?;
                return Ok(DeviceTensor {
                    shape,
                    elem,
                    words: past.words.clone(),
                    room: Some(used.clone()),
                });
            }
        }
        let rows = shape.first().copied().unwrap_or(0);
        let context = self.context_length.unwrap_or(usize::MAX).max(rows);
        let capacity = (2 * rows).max(MIN_ROWS).min(context);
        let words = self.alloc(capacity * row_words)?;
        match (&rope, parts) {
            (None, _) => self.copy_after(parts, &words, 0)?,
            // The past's rows in use are `cache_lengths[slot]`, where the
            // kernel writes after them.
            (Some(_), [past, rows]) => {
                self.copy_words(past, &words, 0)?;
                append(&words, rows)?;
            }
            (Some(_), _) => {
                return Err(BackendError::new(format!(
                    "a cache's roped append of {} parts; it takes the past and the new keys",
                    parts.len()
                )))
            }
        }
        Ok(DeviceTensor {
            shape,
            elem,
            words: Arc::new(words),
            room: Some(Arc::new(AtomicUsize::new(total))),
        })
    }

    /// Writes each cache's rows in use (its state input's) into
    /// `cache_lengths`, before a run's kernels read them.
    pub(super) fn write_cache_lengths(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<(), BackendError> {
        if self.cache_inputs.is_empty() {
            return Ok(());
        }
        let mut lengths = vec![0u32; self.cache_inputs.len()];
        for CacheInput { name, slot, .. } in &self.cache_inputs {
            let rows = inputs
                .get(name)
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(0);
            lengths[*slot] = u32::try_from(rows)
                .map_err(|_| BackendError::new(format!("input \"{name}\": {rows} rows")))?;
        }
        let (dst, _written) = self.cache_lengths.device_ptr(&self.stream);
        // SAFETY: the buffer holds a word per slot; the copy is staged from
        // host memory before this returns, and ordered on the program's
        // stream before the run's kernels.
        unsafe { result::memcpy_htod_async(dst, &lengths, self.stream.cu_stream()) }.map_err(driver)
    }

    /// Copies `parts`' words one after another into `into` from word `at`.
    fn copy_after(
        &self,
        parts: &[&DeviceTensor],
        into: &CudaSlice<u32>,
        mut at: usize,
    ) -> Result<(), BackendError> {
        for part in parts {
            self.copy_words(part, into, at)?;
            at += part.word_count();
        }
        Ok(())
    }

    /// Copies `from`'s words into `into` from word `at` (which a caller may
    /// share: the words written are past every view of it).
    pub(super) fn copy_words(
        &self,
        from: &DeviceTensor,
        into: &CudaSlice<u32>,
        at: usize,
    ) -> Result<(), BackendError> {
        let words = from.word_count();
        if at + words > into.len() {
            return Err(BackendError::new(format!(
                "{words} words copied at word {at} of a buffer of {}",
                into.len()
            )));
        }
        if words == 0 {
            // An empty value: no copy (nor a copy node of no bytes).
            return Ok(());
        }
        let (src, _read) = from.words.device_ptr(&self.stream);
        let (dst, _written) = into.device_ptr(&self.stream);
        // SAFETY: `into` holds words `at..at + words` (checked above); the
        // copy is ordered on the program's stream with whatever reads or
        // writes either buffer.
        unsafe {
            result::memcpy_dtod_async(dst + 4 * at as u64, src, 4 * words, self.stream.cu_stream())
        }
        .map_err(driver)
    }
}

#[cfg(test)]
mod tests {
    use fairyc_ir::{DType, Dim, GraphBuilder, Op, Shape, TensorType};

    use super::growing_caches;
    use crate::state::{expose_kv_cache, state_names};

    #[test]
    fn a_decoding_graphs_cache_concatenations_grow_in_place() {
        let mut b = GraphBuilder::new("attend");
        let ty = |cols| TensorType::new(DType::F32, Shape(vec![Dim::sym("seq"), Dim::Fixed(cols)]));
        let (q, k, v) = (
            b.input("q", ty(8)),
            b.input("k", ty(4)),
            b.input("v", ty(4)),
        );
        let op = Op::Attention {
            heads: 2,
            kv_heads: 1,
            scale: 0.5,
            causal: true,
            segment: None,
        };
        let out = b.push(op, &[q, k, v]).unwrap();
        let also = b.push(Op::Concat { axis: 0 }, &[k, v]).unwrap();
        let graph = expose_kv_cache(&b.finish(&[out, also])).unwrap();
        let grown = growing_caches(&graph, state_names(&graph).len());
        // The keys' and values' caches; not a concatenation of the graph's
        // own outputs, nor one of the step's inputs alone.
        let concats: Vec<usize> = (0..graph.nodes.len())
            .filter(|&i| matches!(graph.nodes[i].op, Op::Concat { .. }))
            .collect();
        assert_eq!(concats.len(), 3);
        let mut grown: Vec<usize> = grown.into_iter().collect();
        grown.sort();
        let expected: Vec<usize> = graph.outputs[2..].iter().map(|v| v.0).collect();
        assert_eq!(grown, expected);
        assert!(!grown.contains(&graph.outputs[1].0));
        // And the cuda backend runs every op of it.
        let ops = graph.nodes.iter().map(|n| &n.op);
        assert!(ops
            .filter(|op| !matches!(op, Op::Input { .. }))
            .all(crate::cuda::program::runs));
    }
}
