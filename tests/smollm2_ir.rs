//! The IR of SmolLM2-135M-Instruct up to and including its first block, as
//! a snapshot. Skips, saying why, when the model is absent (`make model`
//! fetches it; `FAIRYC_MODEL` overrides the path).

use std::path::PathBuf;

use fairyc::import;
use fairyc_ir::Op;

fn model_path() -> PathBuf {
    std::env::var_os("FAIRYC_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

#[test]
fn smollm2_first_block_ir() {
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "skipping: needs the model at {} (run `make model`)",
            path.display()
        );
        return;
    }
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
