//! Rebuilding graphs node by node: the base of the directed passes
//! (quantization) and of dead-code elimination.

use fairyc_ir::{BuildError, Graph, GraphBuilder, Node, ValueId};

/// Rebuilds `graph` in order. For each node, `hook` sees the builder, the
/// node's id in `graph`, the node, and its operands in the new graph; it
/// returns `Some(value)` to
/// stand for the node (after adding whatever it needs), or `None` to copy
/// the node as it is. Nodes no output depends on are dropped.
pub fn rebuild(
    graph: &Graph,
    mut hook: impl FnMut(
        &mut GraphBuilder,
        ValueId,
        &Node,
        &[ValueId],
    ) -> Result<Option<ValueId>, BuildError>,
) -> Result<Graph, BuildError> {
    let live = live_nodes(graph);
    let mut b = GraphBuilder::like(graph);
    let mut map: Vec<Option<ValueId>> = vec![None; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let operands: Vec<ValueId> = node
            .operands
            .iter()
            .map(|v| map[v.0].expect("operands of live nodes are live"))
            .collect();
        let value = match hook(&mut b, ValueId(i), node, &operands)? {
            Some(v) => v,
            None => b.copy(node, &operands)?,
        };
        map[i] = Some(value);
    }
    let outputs: Vec<ValueId> = graph
        .outputs
        .iter()
        .map(|v| map[v.0].expect("outputs are live"))
        .collect();
    Ok(b.finish(&outputs))
}

/// Nodes that some output depends on.
fn live_nodes(graph: &Graph) -> Vec<bool> {
    let mut live = vec![false; graph.nodes.len()];
    for v in &graph.outputs {
        live[v.0] = true;
    }
    for i in (0..graph.nodes.len()).rev() {
        if live[i] {
            for v in &graph.nodes[i].operands {
                live[v.0] = true;
            }
        }
    }
    live
}

/// Drops nodes that no output depends on.
pub fn eliminate_dead_code(graph: &Graph) -> Graph {
    rebuild(graph, |_, _, _, _| Ok(None)).expect("copying a valid graph cannot fail")
}
