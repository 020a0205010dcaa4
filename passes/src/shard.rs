//! Sharded masters (ZeRO stage 3 by tensors) for a data-parallel training
//! step: each trained master lives on one rank, its owner, and the others
//! receive what their step reads of it by `broadcast_from`. What travels is
//! as small as the quantizer makes it: a Fairy2i weight's PhaseQuant stages
//! go as their 2-bit codes and axis scales (`phase_codes`, `phase_scales`),
//! which every rank, the owner included, turns back into the same weight
//! with `dequant`, so that all ranks compute the step on the same bits. A
//! value of the master that is not built from such stages (the master
//! itself where an embedding or a norm reads it) goes whole.
//!
//! The pass works on a gradient graph ([`crate::autodiff::gradients`]),
//! forward and backward passes together, before
//! [`crate::optimizer::adamw_step`] turns the masters into the step's state.
//! A node is *derived* from a master when all its operands are (the split,
//! the quantizer stages, their residuals and sums, the rebuilt real
//! weight); the derived values that other nodes read are its *frontier*,
//! and only the frontier is rebuilt. The rebuilt frontier goes at the start
//! of the step, master by master, so every rank makes the broadcasts in
//! one order; on a rank that does not own a master, nothing derived from
//! it is left, nor the master itself.

use std::collections::HashMap;

use fairyc_ir::infer::infer_type;
use fairyc_ir::{verify, Graph, GraphBuilder, Node, Op, Scheme, TensorType, UnaryFn, ValueId};

use crate::autodiff::GradError;

/// `graph` as rank `rank` runs it where parameter `i` of `params` (a
/// master, `weight` of that name in `graph`) is held by rank `owners[i]`
/// alone. Its outputs are `graph`'s.
pub fn shard_masters(
    graph: &Graph,
    params: &[String],
    rank: usize,
    owners: &[usize],
) -> Result<Graph, GradError> {
    if owners.len() != params.len() {
        return Err(GradError::Step(format!(
            "sharded masters name the owners of {} parameters, not {}",
            owners.len(),
            params.len()
        )));
    }
    let index: HashMap<&str, usize> = params
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let n = graph.nodes.len();
    // The parameter each node is derived from, if one alone.
    let mut derived: Vec<Option<usize>> = vec![None; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        derived[i] = match &node.op {
            Op::Weight { name } => index.get(name.as_str()).copied(),
            _ => {
                let mut from = node.operands.iter().map(|v| derived[v.0]);
                match from.next() {
                    Some(Some(p)) if from.all(|q| q == Some(p)) => Some(p),
                    _ => None,
                }
            }
        };
    }
    // The derived values read by other nodes (or returned): each master's
    // frontier, in node order. A read of an operand's type alone
    // (`Op::reads_only_type_of`) does not count.
    let mut frontier: Vec<Vec<usize>> = vec![Vec::new(); params.len()];
    let mut on_frontier = vec![false; n];
    let mut mark = |v: usize, on_frontier: &mut Vec<bool>| {
        if let Some(p) = derived[v] {
            if !on_frontier[v] {
                on_frontier[v] = true;
                frontier[p].push(v);
            }
        }
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        for (k, v) in node.operands.iter().enumerate() {
            let type_only = node.op.reads_only_type_of(k);
            if derived[v.0].is_some() && derived[v.0] != derived[i] && !type_only {
                mark(v.0, &mut on_frontier);
            }
        }
    }
    for v in &graph.outputs {
        mark(v.0, &mut on_frontier);
    }
    for f in &mut frontier {
        f.sort_unstable();
    }
    // Whether a derived value is rebuilt from what its owner sends rather
    // than sent itself: a PhaseQuant stage (sent as codes and scales), the
    // master (sent whole, once), or cheap arithmetic and data movement of
    // such (sums of stages, their conjugates, the rebuilt real weight).
    let mut rebuildable = vec![false; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        // Every operand whose values the node reads is rebuilt.
        let values_rebuilt = node
            .operands
            .iter()
            .enumerate()
            .all(|(k, v)| node.op.reads_only_type_of(k) || rebuildable[v.0]);
        rebuildable[i] = derived[i].is_some()
            && match &node.op {
                Op::Weight { .. } => true,
                Op::Quantize {
                    scheme: Scheme::Phase,
                    ..
                } => graph.node(node.operands[0]).ty.shape.rank() == 2,
                Op::Add
                | Op::Sub
                | Op::Scale { .. }
                | Op::Conj
                | Op::Transpose { .. }
                | Op::Reshape { .. }
                | Op::Unary {
                    func: UnaryFn::Neg | UnaryFn::RoundBf16,
                }
                | Op::WidelyLinearGrad { .. } => values_rebuilt,
                _ => false,
            };
    }

    let mut sharding = RankGraph {
        graph,
        rank,
        b: GraphBuilder::like(graph),
        map: vec![None; n],
        rebuilt: HashMap::new(),
        placeholders: HashMap::new(),
    };
    // The prologue: each master's frontier, rebuilt from its owner's
    // broadcasts (the owner first computes what it sends).
    for (p, values) in frontier.iter().enumerate() {
        let root = owners[p];
        if root == rank {
            for (i, node) in graph.nodes.iter().enumerate() {
                if derived[i] == Some(p) {
                    sharding.copy(i, node)?;
                }
            }
        }
        for &v in values {
            sharding.rebuild(v, root, &rebuildable)?;
        }
    }
    // The rest of the graph, reading the rebuilt frontier.
    for (i, node) in graph.nodes.iter().enumerate() {
        if derived[i].is_none() {
            sharding.copy(i, node)?;
        }
    }
    let outputs = graph
        .outputs
        .iter()
        .map(|v| sharding.value(v.0))
        .collect::<Result<Vec<_>, _>>()?;
    let sharded = crate::rebuild::eliminate_dead_code(&sharding.b.finish(&outputs));
    verify(&sharded)?;
    Ok(sharded)
}

/// A rank's sharded graph under construction.
struct RankGraph<'a> {
    graph: &'a Graph,
    rank: usize,
    b: GraphBuilder,
    /// Each copied node's value.
    map: Vec<Option<ValueId>>,
    /// Each rebuilt frontier value (and the values rebuilt on the way).
    rebuilt: HashMap<usize, ValueId>,
    /// The zeros standing for each master this rank does not hold where
    /// only its type is read.
    placeholders: HashMap<usize, ValueId>,
}

impl RankGraph<'_> {
    /// The value node `v` has in the sharded graph: rebuilt where it is on
    /// a frontier, else copied.
    fn value(&self, v: usize) -> Result<ValueId, GradError> {
        self.rebuilt
            .get(&v)
            .copied()
            .or(self.map[v])
            .ok_or_else(|| {
                GradError::Step(format!(
                    "%{v} = {} is read where its master is not held",
                    self.graph.nodes[v].op.mnemonic()
                ))
            })
    }

    /// Copies node `i`. An operand read for its type alone
    /// (`Op::reads_only_type_of`) that this rank does not hold (derived from
    /// another rank's master) is zeros of that type instead.
    fn copy(&mut self, i: usize, node: &Node) -> Result<(), GradError> {
        let mut operands = Vec::with_capacity(node.operands.len());
        for (k, v) in node.operands.iter().enumerate() {
            operands.push(match self.value(v.0) {
                Err(_) if node.op.reads_only_type_of(k) => self.placeholder(v.0),
                read => read?,
            });
        }
        let value = self.b.copy(node, &operands)?;
        self.map[i] = Some(value);
        Ok(())
    }

    /// Zeros of node `v`'s type, one for all the reads of its type alone
    /// (made where first read, so that it lives only as long as those).
    fn placeholder(&mut self, v: usize) -> ValueId {
        let ty = self.graph.ty(ValueId(v)).clone();
        *self
            .placeholders
            .entry(v)
            .or_insert_with(|| self.b.zeros(ty))
    }

    /// Node `v`, derived from a master that rank `root` holds, as every
    /// rank computes it from `root`'s broadcasts.
    fn rebuild(
        &mut self,
        v: usize,
        root: usize,
        rebuildable: &[bool],
    ) -> Result<ValueId, GradError> {
        if let Some(&done) = self.rebuilt.get(&v) {
            return Ok(done);
        }
        let graph = self.graph;
        let node = &graph.nodes[v];
        let owner = root == self.rank;
        // What the owner sends (it holds the operands), or zeros of its
        // type for the others to receive into.
        let sent = |s: &mut Self, op: Option<Op>, ty: TensorType| -> Result<ValueId, GradError> {
            let x = match op {
                Some(op) if owner => {
                    let x = s.value(node.operands[0].0)?;
                    s.b.push(op, &[x])?
                }
                None if owner => s.value(v)?,
                _ => s.b.zeros(ty),
            };
            Ok(s.b.push(Op::BroadcastFrom { root }, &[x])?)
        };
        let value = if !rebuildable[v] || matches!(node.op, Op::Weight { .. }) {
            sent(self, None, node.ty.clone())?
        } else {
            match &node.op {
                &Op::Quantize {
                    granularity,
                    arithmetic,
                    ..
                } => {
                    let x = graph.ty(node.operands[0]);
                    let codes_op = Op::PhaseCodes { arithmetic };
                    let scales_op = Op::PhaseScales {
                        granularity,
                        arithmetic,
                    };
                    let codes_ty = infer_type(&codes_op, &[x]).map_err(GradError::Step)?;
                    let scales_ty = infer_type(&scales_op, &[x]).map_err(GradError::Step)?;
                    let codes = sent(self, Some(codes_op), codes_ty)?;
                    let scales = sent(self, Some(scales_op), scales_ty)?;
                    self.b.push(Op::Dequant { granularity }, &[codes, scales])?
                }
                op => {
                    let mut operands = Vec::with_capacity(node.operands.len());
                    for (k, u) in node.operands.iter().enumerate() {
                        operands.push(match self.map[u.0] {
                            // Read for its type alone: the owner's own, or
                            // zeros where it is not held.
                            _ if !op.reads_only_type_of(k) => {
                                self.rebuild(u.0, root, rebuildable)?
                            }
                            Some(held) if owner => held,
                            _ => self.placeholder(u.0),
                        });
                    }
                    self.b.push(op.clone(), &operands)?
                }
            }
        };
        self.rebuilt.insert(v, value);
        Ok(value)
    }
}
