//! Human-readable summaries of graphs and their weights.

use std::collections::BTreeMap;
use std::fmt::Write;

use fairyc_ir::{Graph, WeightStore};

/// A short account of a graph: inputs, outputs, op counts, and the weights
/// it references grouped by their encoding at rest.
pub fn summary(graph: &Graph, weights: &dyn WeightStore) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph @{}: {} nodes", graph.name, graph.nodes.len());
    for (key, value) in &graph.meta {
        if key == fairyc_ir::roles::ROLES_META {
            // One entry per weight: counted by role instead.
            let mut by_role: BTreeMap<String, usize> = BTreeMap::new();
            for role in fairyc_ir::roles::roles(graph).unwrap_or_default().values() {
                *by_role.entry(role.to_string()).or_default() += 1;
            }
            let counts: Vec<String> = by_role.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let _ = writeln!(out, "  {key}: {}", counts.join(", "));
            continue;
        }
        let _ = writeln!(out, "  {key}: {value}");
    }
    for (_, name, ty) in graph.inputs() {
        let _ = writeln!(out, "  input  {name}: {ty}");
    }
    for v in &graph.outputs {
        let _ = writeln!(out, "  output {v}: {}", graph.ty(*v));
    }
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &graph.nodes {
        *ops.entry(n.op.mnemonic()).or_default() += 1;
    }
    let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "  ops: {}", ops.join(", "));
    let mut by_encoding: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, name, ty) in graph.weights() {
        let params: usize = ty.shape.concrete().map(|d| d.iter().product()).unwrap_or(0);
        let enc = weights.encoding(name).unwrap_or_else(|| "?".into());
        let e = by_encoding.entry(enc).or_default();
        e.0 += 1;
        e.1 += params;
    }
    let total: usize = by_encoding.values().map(|v| v.1).sum();
    let _ = writeln!(out, "  weights: {} parameters", group_digits(total));
    for (enc, (count, params)) in &by_encoding {
        let _ = writeln!(
            out,
            "    {enc:>6}: {count:>4} tensors, {:>14} parameters",
            group_digits(*params)
        );
    }
    let plan = fairyc_backends::MemoryPlan::new(graph, 1);
    let values = plan.slot.iter().filter(|s| s.is_some()).count();
    let _ = writeln!(
        out,
        "  memory plan: {values} transient values in {} buffers",
        plan.slots
    );
    for seq in [1, 128, 512] {
        let _ = writeln!(
            out,
            "    {seq:>4} tokens: {:>14} bytes shared ({} bytes one buffer per value)",
            group_digits(plan.transient_bytes(graph, seq)),
            group_digits(plan.unshared_bytes(graph, seq))
        );
    }
    out
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
