//! Widely-linear lowering (Fairy2i section 3.1): each selected real linear
//! layer `y = R x` becomes `unpack(U pack(x) + W conj(pack(x)))`, exactly.

use std::collections::HashMap;

use egg::{CostFunction, Id, Rewrite};
use fairyc_ir::roles::Role;
use fairyc_ir::{Arithmetic, DType, Graph, Op, RopeLayout, WlPart};

use crate::cost::{CostModel, DagCost, RuntimeCost};
use crate::egraph::{rule, saturate, IrEGraph, Limits, Match, Node, PassStats, Types};

/// How real channels pair up into complex numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// First half real, second half imaginary, for every dimension: the
    /// paper's pairing and the authors' code (bit-compatible with them).
    Paper,
    /// As `Paper`, except that the outputs of the q, k and v projections
    /// and the inputs of the output projection pair RoPE's channel pairs,
    /// so that RoPE and attention run on complex numbers exactly.
    Rope,
}

/// Which linear layers to lower, and how.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    pub pairing: Pairing,
    /// Rounding of the split: `Bf16Exact` repeats the authors' bf16 code.
    pub arithmetic: Arithmetic,
    /// Also lower the output projection (lm_head).
    pub lm_head: bool,
}

impl Default for LowerOptions {
    fn default() -> LowerOptions {
        LowerOptions {
            pairing: Pairing::Paper,
            arithmetic: Arithmetic::F32,
            lm_head: false,
        }
    }
}

/// The pairing blocks (rows, columns) of one lowered layer, as in
/// `Op::Pack`.
pub type Blocks = (usize, usize);

/// The layers to lower, by weight name: every real linear layer whose
/// weight the frontend tagged with a projection role (`meta roles`), and
/// lm_head if asked. Embeddings and norms stay real; a graph without roles
/// plans nothing (and the pipeline refuses to quantize it).
pub fn plan(graph: &Graph, options: &LowerOptions) -> HashMap<String, Blocks> {
    let roles = fairyc_ir::roles::roles(graph).unwrap_or_default();
    let rope_block = graph.nodes.iter().find_map(|n| match n.op {
        Op::Rope {
            layout: RopeLayout::Interleaved,
            ..
        } => Some(2),
        Op::Rope {
            layout: RopeLayout::HalfSplit,
            head_dim,
            ..
        } => Some(head_dim),
        _ => None,
    });
    let mut plan = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::Linear {
            continue;
        }
        let w = graph.node(node.operands[1]);
        let (Op::Weight { name }, DType::F32) = (&w.op, w.ty.dtype) else {
            continue;
        };
        let Some(&role) = roles.get(name) else {
            continue;
        };
        // lm_head by its role, and only where it is the graph's output.
        let is_head = role == Role::LmHead && graph.outputs.iter().any(|o| o.0 == i);
        if !(role.in_block() || (options.lm_head && is_head)) {
            continue;
        }
        let blocks = match (options.pairing, rope_block, role) {
            (Pairing::Rope, Some(b), Role::Q | Role::K | Role::V) => (b, 0),
            (Pairing::Rope, Some(b), Role::O) => (0, b),
            _ => (0, 0),
        };
        plan.insert(name.clone(), blocks);
    }
    plan
}

/// The weight name of a class, if it holds a weight leaf.
pub fn weight_name(egraph: &IrEGraph, id: Id) -> Option<&str> {
    egraph[id].nodes.iter().find_map(|n| match &n.op {
        Op::Weight { name } => Some(name.as_str()),
        _ => None,
    })
}

fn lowering_rule(plan: HashMap<String, Blocks>, arithmetic: Arithmetic) -> Rewrite<Node, Types> {
    let find_plan = plan.clone();
    rule(
        "widely-linear",
        2,
        move |eg, node| {
            let [x, w] = node.children[..] else {
                return vec![];
            };
            let selected = node.op == Op::Linear
                && eg[x].data.ty.dtype == DType::F32
                && weight_name(eg, w).is_some_and(|n| find_plan.contains_key(n));
            if selected {
                vec![Match::ids(vec![x, w])]
            } else {
                vec![]
            }
        },
        move |eg, m| {
            let (x, w) = (m.ids[0], m.ids[1]);
            let name = weight_name(eg, w).expect("matched a weight");
            let (row_block, col_block) = plan[name];
            let rows = eg[w].data.ty.shape.dims()[0].clone();
            let xp = eg.add(Node::new(Op::Pack { block: col_block }, vec![x]));
            let xc = eg.add(Node::new(Op::Conj, vec![xp]));
            let wl = |part| Op::WidelyLinear {
                part,
                row_block,
                col_block,
                arithmetic,
            };
            let u = eg.add(Node::new(wl(WlPart::U), vec![w]));
            let wc = eg.add(Node::new(wl(WlPart::W), vec![w]));
            let ux = eg.add(Node::new(Op::Linear, vec![xp, u]));
            let wx = eg.add(Node::new(Op::Linear, vec![xc, wc]));
            let sum = eg.add(Node::new(Op::Add, vec![ux, wx]));
            let y = eg.add(Node::new(Op::Unpack { block: row_block }, vec![sum]));
            match rows {
                // An odd output was padded with one channel: drop it.
                fairyc_ir::Dim::Fixed(r) if r % 2 == 1 => {
                    let axis = eg[y].data.ty.shape.rank() - 1;
                    eg.add(Node::new(
                        Op::Slice {
                            axis,
                            start: 0,
                            end: r,
                        },
                        vec![y],
                    ))
                }
                _ => y,
            }
        },
    )
}

/// Extraction for lowering: run-time cost, except that a real product with
/// a selected weight is ruled out, so every selected layer takes its
/// widely-linear form.
#[derive(Clone)]
struct ForceLowering<'a> {
    runtime: RuntimeCost<'a>,
    plan: &'a HashMap<String, Blocks>,
}

impl CostFunction<Node> for ForceLowering<'_> {
    type Cost = DagCost;

    fn cost<C: FnMut(Id) -> DagCost>(&mut self, enode: &Node, costs: C) -> DagCost {
        if enode.op == Op::Linear && enode.children.len() == 2 {
            let (x, w) = (enode.children[0], enode.children[1]);
            let real = self.runtime.egraph[x].data.ty.dtype == DType::F32;
            if real
                && weight_name(self.runtime.egraph, w).is_some_and(|n| self.plan.contains_key(n))
            {
                return DagCost::infinite();
            }
        }
        self.runtime.cost(enode, costs)
    }
}

/// Lowers the planned layers to widely-linear form.
pub fn lower(
    graph: &Graph,
    plan: &HashMap<String, Blocks>,
    arithmetic: Arithmetic,
    limits: Limits,
) -> (Graph, PassStats) {
    let rules = [lowering_rule(plan.clone(), arithmetic)];
    let sat = saturate("lower", graph, &rules, limits);
    let cost = |anchors| ForceLowering {
        runtime: RuntimeCost {
            egraph: &sat.egraph,
            anchors,
            model: CostModel::default(),
        },
        plan,
    };
    (sat.extract(cost, graph), sat.stats.clone())
}
