//! The IR of SmolLM2-135M-Instruct up to and including its first block, as
//! a snapshot. Skips, saying so, when the model is absent (a failure under `make test`) (`make model`
//! fetches it; `FAIRYC_MODEL` overrides the path).

mod common;

use fairyc::import;
use fairyc_ir::Op;

#[test]
fn smollm2_first_block_ir() {
    let Some(path) = common::smollm2_or_skip("smollm2_first_block_ir") else {
        return;
    };
    let graph = import(&path).unwrap().graph;
    let printed = fairyc_ir::text::print(&graph);
    let lines: Vec<&str> = printed.lines().collect();
    // Node lines start with `%`; keep everything before the first weight of
    // block 1, then say how much was left out.
    let cut = lines
        .iter()
        .position(|l| l.contains("weight \"blk.1."))
        .expect("the model has a second block");
    let first_node = lines
        .iter()
        .position(|l| l.trim_start().starts_with('%'))
        .expect("the graph has nodes");
    let omitted = graph.nodes.len() - (cut - first_node);
    let blocks = graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Attention { .. }))
        .count();
    let mut excerpt: Vec<String> = lines[..cut]
        .iter()
        .map(|l| match l.trim_start().strip_prefix("meta source = ") {
            Some(_) => "  meta source = \"<model>\"".to_string(),
            None => l.to_string(),
        })
        .collect();
    excerpt.push(format!(
        "  ... {omitted} more nodes (blocks 1 to {}, the final norm and the output) ...",
        blocks - 1
    ));
    excerpt.push(lines[lines.len() - 2].to_string());
    excerpt.push(lines[lines.len() - 1].to_string());
    insta::assert_snapshot!(excerpt.join("\n"));
}
