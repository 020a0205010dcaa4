use std::fmt::Write;

use crate::graph::Graph;

/// Prints a graph in the textual form; values are numbered by position.
pub fn print(graph: &Graph) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_graph(&mut out, graph);
    out
}

fn write_graph(out: &mut String, graph: &Graph) -> std::fmt::Result {
    writeln!(out, "graph @{} {{", graph.name)?;
    for (key, value) in &graph.meta {
        writeln!(out, "  meta {key} = {}", quote(value))?;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        write!(out, "  %{i} = {}", node.op.mnemonic())?;
        if let Some(sym) = node.op.symbol() {
            write!(out, " {}", quote(sym))?;
        }
        for (j, v) in node.operands.iter().enumerate() {
            write!(out, "{}{v}", if j == 0 { " " } else { ", " })?;
        }
        let attrs = node.op.attrs();
        if !attrs.is_empty() {
            out.push_str(" {");
            for (j, (key, value)) in attrs.iter().enumerate() {
                write!(out, "{}{key} = {value}", if j == 0 { "" } else { ", " })?;
            }
            out.push('}');
        }
        writeln!(out, " : {}", node.ty)?;
    }
    out.push_str("  return");
    for (j, v) in graph.outputs.iter().enumerate() {
        write!(out, "{}{v}", if j == 0 { " " } else { ", " })?;
    }
    out.push_str("\n}\n");
    Ok(())
}

/// A double-quoted string with `\`, `"` and control characters escaped.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
