//! The memory plan: a backend-neutral schedule of where each value lives.
//!
//! Values that depend on weights alone (weights and weight expressions) are
//! resident for the program's life. Every other value lives from the node
//! that defines it to its last reader; values whose lifetimes do not
//! overlap share a buffer slot (greedy, in node order, best fit by size at
//! the bucket the plan is sized for). Sizes depend on the sequence length,
//! so a plan is sized per bucket of sequence lengths: a backend allocates
//! each slot once for the largest length of the bucket and reuses it for
//! every call in the bucket (no allocation per token).

use std::collections::HashMap;

use fairyc_ir::{DType, Dim, Graph, Op};

/// Where each value of a graph lives.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Whether a value depends on weights alone (resident for the program's life).
    pub resident: Vec<bool>,
    /// The node after which a value is dead (`usize::MAX` for outputs).
    pub last_use: Vec<usize>,
    /// The buffer slot of each transient value (`None` for residents,
    /// inputs and outputs).
    pub slot: Vec<Option<usize>>,
    /// How many slots the plan uses.
    pub slots: usize,
}

impl MemoryPlan {
    /// Plans `graph`, sizing slot sharing for sequences of `seq` tokens
    /// (every symbolic dimension bound to `seq`).
    pub fn new(graph: &Graph, seq: usize) -> MemoryPlan {
        let n = graph.nodes.len();
        let resident = graph.weight_constants();
        let last_use = graph.last_uses();
        let bindings = HashMap::new();
        // Free slots in the order they were freed; a value takes the one
        // freed last that fits (its buffer is likeliest still in the
        // cache), growing the largest when none fits.
        let mut slot = vec![None; n];
        let mut slot_bytes: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut dies_at: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, node) in graph.nodes.iter().enumerate() {
            // Outputs leave the run with their buffers (a KV cache is the
            // next run's input): they hold no slot.
            let leaves = last_use[i] == usize::MAX;
            if !resident[i] && !leaves && !matches!(node.op, Op::Input { .. }) {
                let bytes = value_bytes(&node.ty, seq, &bindings);
                let pick = free
                    .iter()
                    .rposition(|&s| slot_bytes[s] >= bytes)
                    .or_else(|| {
                        free.iter()
                            .enumerate()
                            .max_by_key(|(_, &s)| slot_bytes[s])
                            .map(|(k, _)| k)
                    });
                let s = match pick {
                    Some(k) => free.remove(k),
                    None => {
                        slot_bytes.push(0);
                        slot_bytes.len() - 1
                    }
                };
                slot_bytes[s] = slot_bytes[s].max(bytes);
                slot[i] = Some(s);
                // A value nobody reads dies at once.
                dies_at[last_use[i].max(i)].push(i);
            }
            for &dead in &dies_at[i] {
                if let Some(s) = slot[dead] {
                    free.push(s);
                }
            }
        }
        MemoryPlan {
            resident,
            last_use,
            slots: slot_bytes.len(),
            slot,
        }
    }

    /// Bytes of each slot for sequences of `seq` tokens.
    pub fn slot_bytes(&self, graph: &Graph, seq: usize) -> Vec<usize> {
        let mut bytes = vec![0usize; self.slots];
        for (i, s) in self.slot.iter().enumerate() {
            if let Some(s) = s {
                bytes[*s] = bytes[*s].max(value_bytes(&graph.nodes[i].ty, seq, &HashMap::new()));
            }
        }
        bytes
    }

    /// Transient bytes the plan needs for sequences of `seq` tokens: the
    /// sum of its slots (what a backend allocates once per bucket).
    pub fn transient_bytes(&self, graph: &Graph, seq: usize) -> usize {
        self.slot_bytes(graph, seq).iter().sum()
    }

    /// Transient bytes without sharing: every value its own buffer.
    pub fn unshared_bytes(&self, graph: &Graph, seq: usize) -> usize {
        self.slot
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| value_bytes(&graph.nodes[i].ty, seq, &HashMap::new()))
            .sum()
    }
}

/// Bytes of a value of type `ty` with symbolic dimensions bound (those not
/// in `bindings` taken as `seq`).
pub fn value_bytes(
    ty: &fairyc_ir::TensorType,
    seq: usize,
    bindings: &HashMap<String, usize>,
) -> usize {
    let elements = ty
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Sym(s) => bindings.get(s).copied().unwrap_or(seq),
        })
        .fold(1usize, |a, n| a.saturating_mul(n));
    match ty.dtype {
        DType::F32 | DType::I32 => elements.saturating_mul(4),
        DType::F16 | DType::BF16 => elements.saturating_mul(2),
        DType::C64 => elements.saturating_mul(8),
        DType::Code2 => elements.div_ceil(4),
    }
}
