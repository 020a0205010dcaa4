//! The cost model that extraction minimises.
//!
//! Cost is the run-time work per token at a target's prices
//! ([`TargetCost`], which a backend implements; [`FlopCost`], the
//! reference's, counts floating-point operations: a multiply-add 2, a
//! complex one 8, elementwise ops per element, data movement one per real
//! element moved). Weight expressions cost nothing to derive (they are
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
use std::sync::Arc;

use egg::{CostFunction, Id};
use fairyc_ir::cost::bytes_per_row;
pub use fairyc_ir::cost::{FlopCost, TargetCost};
use fairyc_ir::infer::infer_type;
use fairyc_ir::{Dim, Op, TensorType};

use crate::egraph::{IrEGraph, Node};

/// The workload the cost model assumes, and the target's prices.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// Rows that share one read of the weights.
    pub tokens: f64,
    /// Context length attention is charged for.
    pub context: f64,
    /// The target's prices (a backend's; the reference's by default).
    pub target: Arc<dyn TargetCost>,
}

impl Default for CostModel {
    fn default() -> CostModel {
        CostModel {
            tokens: 1.0,
            context: 512.0,
            target: Arc::new(FlopCost::default()),
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

    /// Work of one node per row of its values, at the target's prices.
    fn work(&self, node: &Node, ty: &TensorType) -> f64 {
        let operands: Vec<&TensorType> = node
            .children
            .iter()
            .map(|c| &self.egraph[*c].data.ty)
            .collect();
        self.model
            .target
            .op_work(&node.op, ty, &operands, self.model.context)
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
            bytes_per_row(&ty) * self.model.target.weight_byte_cost(ty.dtype) / self.model.tokens
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
