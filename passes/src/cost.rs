//! The cost model that extraction minimises.
//!
//! Cost is the run-time work per token, in floating-point operations:
//! a multiply-add counts 2 (a complex one 8: four real products and four
//! sums), elementwise ops count per element, data movement one per real
//! element moved. Weight expressions cost nothing to derive (they are
//! evaluated once, at load); reading one costs its bytes times
//! `flops_per_byte / tokens`: a batch of `tokens` rows shares each read.
//! With `tokens = 1` (decoding) bytes dominate and compact weights win;
//! with hundreds of tokens (prompts, training) arithmetic dominates and
//! Gauss's 3-multiplication product wins.
//!
//! Costs are those of a DAG, not a tree: a class every program computes
//! (an anchor: leaves, norms, the residual stream) costs nothing where it
//! is read, and a node a choice reads twice counts once. Summing
//! subtrees instead would count shared values once per use, and Gauss's
//! product (which reads `x` four times and its partial products twice)
//! would look 50% dearer than it is. A cost carries the nodes it pays for
//! up to the nearest anchors, which keeps those sets small.

use std::collections::{BTreeMap, HashSet};

use egg::{CostFunction, Id};
use fairyc_ir::infer::infer_type;
use fairyc_ir::{DType, Dim, Op, TensorType};

use crate::egraph::{IrEGraph, Node};

/// The machine and workload the cost model assumes.
#[derive(Clone, Copy, Debug)]
pub struct CostModel {
    /// Rows that share one read of the weights.
    pub tokens: f64,
    /// Arithmetic the machine does in the time it reads one byte.
    pub flops_per_byte: f64,
    /// Context length attention is charged for.
    pub context: f64,
}

impl Default for CostModel {
    fn default() -> CostModel {
        CostModel {
            tokens: 1.0,
            flops_per_byte: 8.0,
            context: 512.0,
        }
    }
}

/// The cost of a choice: the nodes it pays for, each with its own cost,
/// up to the nearest anchors; compared by their total.
#[derive(Clone, Debug)]
pub struct DagCost {
    pub total: f64,
    /// Each node paid for, by its hash (cheap to copy where nodes are
    /// not: a weight's node holds its name), with its own cost.
    parts: BTreeMap<u64, f64>,
}

impl DagCost {
    pub fn infinite() -> DagCost {
        DagCost {
            total: f64::INFINITY,
            parts: BTreeMap::new(),
        }
    }
}

impl PartialEq for DagCost {
    fn eq(&self, other: &DagCost) -> bool {
        self.total == other.total
    }
}

impl PartialOrd for DagCost {
    fn partial_cmp(&self, other: &DagCost) -> Option<std::cmp::Ordering> {
        self.total.partial_cmp(&other.total)
    }
}

/// Run-time cost of e-nodes in one e-graph.
#[derive(Clone)]
pub struct RuntimeCost<'a> {
    pub egraph: &'a IrEGraph,
    pub model: CostModel,
    /// Classes of the input program (canonical ids).
    pub anchors: HashSet<Id>,
}

/// Elements per row of a type: the product of its fixed dimensions
/// (symbolic ones such as `seq` are the rows).
fn per_row(t: &TensorType) -> f64 {
    t.shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as f64,
            Dim::Sym(_) => 1.0,
        })
        .product()
}

/// Real elements per row, complex ones counting twice.
fn elements(t: &TensorType) -> f64 {
    per_row(t) * if t.dtype == DType::C64 { 2.0 } else { 1.0 }
}

fn bytes(t: &TensorType) -> f64 {
    let per = match t.dtype {
        DType::F32 | DType::I32 => 4.0,
        DType::F16 | DType::BF16 => 2.0,
        DType::C64 => 8.0,
        DType::Code2 => 0.25,
    };
    per_row(t) * per
}

impl RuntimeCost<'_> {
    /// The node's result type and whether it is a weight expression.
    fn info(&self, node: &Node) -> (TensorType, bool) {
        if let Some(t) = &node.leaf_type {
            return (t.clone(), matches!(node.op, Op::Weight { .. }));
        }
        let kids: Vec<&TensorType> = node
            .children
            .iter()
            .map(|c| &self.egraph[*c].data.ty)
            .collect();
        let ty = infer_type(&node.op, &kids).expect("e-graph nodes are well typed");
        let constant = node.children.iter().all(|c| self.egraph[*c].data.constant);
        (ty, constant)
    }

    /// Work per token of one node, not counting its operands. A node
    /// none of whose values has rows (a symbolic dimension), such as the
    /// sum of two weight gradients, runs once for all `tokens`.
    pub fn own_cost(&self, node: &Node, ty: &TensorType) -> f64 {
        let has_rows = |t: &TensorType| t.shape.dims().iter().any(|d| matches!(d, Dim::Sym(_)));
        let per_step = !has_rows(ty)
            && node
                .children
                .iter()
                .all(|c| !has_rows(&self.egraph[*c].data.ty));
        let work = self.work(node, ty);
        if per_step {
            work / self.model.tokens
        } else {
            work
        }
    }

    /// Work of one node per row of its values.
    fn work(&self, node: &Node, ty: &TensorType) -> f64 {
        let child = |i: usize| &self.egraph[node.children[i]].data.ty;
        let out = elements(ty);
        match &node.op {
            Op::Input { .. } | Op::Weight { .. } => 0.0,
            Op::Linear => {
                let k = match child(1).shape.dims()[1] {
                    Dim::Fixed(k) => k as f64,
                    Dim::Sym(_) => 1.0,
                };
                // `out` already counts both parts of a complex result.
                out * k * if ty.dtype == DType::C64 { 4.0 } else { 2.0 }
            }
            // Per output: an add or subtract per code and stage, no multiply.
            Op::QuantLinear {
                u_stages, w_stages, ..
            } => {
                let m = elements(child(0));
                out * m * (u_stages + w_stages) as f64
            }
            Op::Attention { .. } => 4.0 * elements(child(0)) * self.model.context,
            // Recomputes the attention weights, then one more product.
            Op::AttentionGrad { .. } => 6.0 * elements(child(0)) * self.model.context,
            // One multiply-add per weight entry and row.
            Op::LinearWeightGrad => out * if ty.dtype == DType::C64 { 4.0 } else { 2.0 },
            Op::CrossEntropy | Op::CrossEntropyGrad => 4.0 * elements(child(0)),
            Op::KlDiv | Op::KlDivGrad => 8.0 * elements(child(0)),
            Op::RmsNormGrad { .. } | Op::SiluGrad | Op::SoftmaxGrad | Op::Crelu2Grad => {
                6.0 * elements(child(0))
            }
            Op::Mul if ty.dtype == DType::C64 => 3.0 * out,
            Op::RmsNorm { .. } | Op::Silu | Op::Softmax => 4.0 * out,
            Op::Rope { .. } => 3.0 * out,
            _ => out,
        }
    }
}

fn node_hash(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    h.finish()
}

impl CostFunction<Node> for RuntimeCost<'_> {
    type Cost = DagCost;

    fn cost<C: FnMut(Id) -> DagCost>(&mut self, enode: &Node, mut costs: C) -> DagCost {
        let (ty, constant) = self.info(enode);
        let own = if constant {
            bytes(&ty) * self.model.flops_per_byte / self.model.tokens
        } else {
            self.own_cost(enode, &ty)
        };
        let mut parts = BTreeMap::new();
        // A weight expression's derivation is free: only its bytes count.
        if !constant {
            for c in &enode.children {
                if !self.anchors.contains(&self.egraph.find(*c)) {
                    parts.extend(costs(*c).parts);
                }
            }
        }
        parts.insert(node_hash(enode), own);
        DagCost {
            total: parts.values().sum(),
            parts,
        }
    }
}
