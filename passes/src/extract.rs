//! Extraction: the cheapest program of a saturated e-graph by a cost
//! model ([`crate::cost`]), rebuilt as an IR graph.

use std::collections::{HashMap, HashSet};

use egg::{CostFunction, Extractor, Id};
use fairyc_ir::{Graph, GraphBuilder, Op, ValueId};

use crate::cost::DagCost;
use crate::egraph::{IrEGraph, Node, Saturated};

impl Saturated {
    /// The cheapest program by `cost`, as a graph like `like` (name, meta).
    /// `cost` is built for a set of anchors: those of the input program,
    /// or, should local costs leave no acyclic choice, none (whole-subtree
    /// costs, which are always acyclic).
    pub fn extract<CF>(&self, cost: impl Fn(HashSet<Id>) -> CF, like: &Graph) -> Graph
    where
        CF: CostFunction<Node, Cost = DagCost> + Clone,
    {
        to_graph(&self.egraph, &self.roots, cost(self.anchors.clone()), like).unwrap_or_else(|| {
            to_graph(&self.egraph, &self.roots, cost(HashSet::new()), like)
                .expect("whole-subtree costs give an acyclic choice")
        })
    }
}

/// Extracts the cheapest program for `roots` by `cost` and rebuilds it as
/// a graph like `like` (name, meta). Shared classes become shared values.
///
/// Each class takes its cheapest node whose operands are not being built
/// above it: local costs (see `cost`) do not rule out choices that lead
/// back to an ancestor, so the walk skips those. `None` if some class has
/// no acyclic choice left.
fn to_graph<CF>(egraph: &IrEGraph, roots: &[Id], cost: CF, like: &Graph) -> Option<Graph>
where
    CF: CostFunction<Node, Cost = DagCost> + Clone,
{
    let mut ranking = cost.clone();
    let extractor = Extractor::new(egraph, cost);
    let mut b = GraphBuilder::like(like);
    let mut built: HashMap<Id, ValueId> = HashMap::new();
    let mut chosen: HashMap<Id, &Node> = HashMap::new();
    let mut on_path: HashSet<Id> = HashSet::new();
    let mut outputs = Vec::new();
    for &root in roots {
        // Iterative post-order: graphs are deep (one chain per block).
        let mut stack = vec![(egraph.find(root), false)];
        while let Some((class, expanded)) = stack.pop() {
            if built.contains_key(&class) {
                continue;
            }
            if !expanded {
                let mut candidates: Vec<(f64, &Node)> = egraph[class]
                    .nodes
                    .iter()
                    .map(|n| (ranking.cost(n, |c| extractor.find_best_cost(c)).total, n))
                    .collect();
                candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
                on_path.insert(class);
                let node = candidates.into_iter().map(|(_, n)| n).find(|n| {
                    n.children
                        .iter()
                        .all(|c| !on_path.contains(&egraph.find(*c)))
                })?;
                chosen.insert(class, node);
                stack.push((class, true));
                for &c in node.children.iter().rev() {
                    let c = egraph.find(c);
                    if !built.contains_key(&c) {
                        stack.push((c, false));
                    }
                }
                continue;
            }
            on_path.remove(&class);
            let node = chosen[&class];
            let value = match &node.op {
                Op::Input { name } => b.input(name.clone(), node.leaf_type.clone()?),
                Op::Weight { name } => b.weight(name.clone(), node.leaf_type.clone()?),
                Op::Zeros => b.zeros(node.leaf_type.clone()?),
                op => {
                    let operands: Vec<ValueId> = node
                        .children
                        .iter()
                        .map(|c| built[&egraph.find(*c)])
                        .collect();
                    b.push(op.clone(), &operands)
                        .unwrap_or_else(|e| panic!("extraction built an ill-typed node: {e}"))
                }
            };
            built.insert(class, value);
        }
        outputs.push(built[&egraph.find(root)]);
    }
    Some(b.finish(&outputs))
}
