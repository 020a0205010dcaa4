//! Graphviz export through petgraph.

use petgraph::dot::{Config, Dot};
use petgraph::graph::DiGraph;

use crate::graph::Graph;
use crate::op::Op;

/// The graph in Graphviz dot: one box per node (op, attributes, type),
/// one edge per operand, labelled with the operand's position.
pub fn to_dot(graph: &Graph) -> String {
    let mut g = DiGraph::<String, String>::new();
    let ids: Vec<_> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut label = format!("%{i} {}", node.op.mnemonic());
            if let Some(sym) = node.op.symbol() {
                label.push_str(&format!(" \"{sym}\""));
            }
            let attrs: Vec<_> = node
                .op
                .attrs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !attrs.is_empty() {
                label.push_str(&format!("\n{}", attrs.join(" ")));
            }
            label.push_str(&format!("\n{}", node.ty));
            g.add_node(label)
        })
        .collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for (j, v) in node.operands.iter().enumerate() {
            let label = if node.operands.len() > 1 {
                j.to_string()
            } else {
                String::new()
            };
            g.add_edge(ids[v.0], ids[i], label);
        }
    }
    let body = format!(
        "{}",
        Dot::with_attr_getters(
            &g,
            &[Config::EdgeNoLabel],
            &|g, e| format!("label = \"{}\"", g[petgraph::visit::EdgeRef::id(&e)]),
            &|_, (n, _)| {
                let node = &graph.nodes[n.index()];
                match node.op {
                    Op::Weight { .. } => {
                        "shape = box, style = filled, fillcolor = lightyellow".into()
                    }
                    Op::Input { .. } => "shape = box, style = filled, fillcolor = lightblue".into(),
                    _ => "shape = box".into(),
                }
            },
        )
    );
    body.replacen(
        "digraph {",
        &format!("digraph \"{}\" {{\n    rankdir = TB", graph.name),
        1,
    )
}
