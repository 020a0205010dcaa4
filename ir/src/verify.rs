//! The verifier: checks that a graph is well formed and well typed. Passes
//! run it after every transformation; each error names the offending value.

use std::collections::HashSet;
use std::fmt;

use crate::graph::{Graph, ValueId};
use crate::infer::infer_type;
use crate::op::Op;
use crate::weights::WeightStore;

/// One problem with one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub value: Option<ValueId>,
    pub op: &'static str,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(f, "{v} = {}: {}", self.op, self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// All problems the verifier found in one graph.
#[derive(Debug, Clone, thiserror::Error)]
pub struct VerifyError {
    pub graph: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "graph @{} failed verification ({} error{})",
            self.graph,
            self.diagnostics.len(),
            if self.diagnostics.len() == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Checks operand order (SSA), arity, every node's type against the type
/// rules (the declared types of `input`, `weight` and `zeros` stand),
/// unique input and weight names, and the outputs.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let mut diags = Vec::new();
    let mut inputs = HashSet::new();
    let mut weights = HashSet::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let id = ValueId(i);
        let mut report = |message: String| {
            diags.push(Diagnostic {
                value: Some(id),
                op: node.op.mnemonic(),
                message,
            })
        };
        if let Some(bad) = node.operands.iter().find(|v| v.0 >= i) {
            report(format!("operand {bad} is not defined before its use"));
            continue;
        }
        if node.ty.shape.symbolic_size().is_none() {
            report(format!(
                "the sizes of {} multiply to more than a size can hold",
                node.ty
            ));
            continue;
        }
        match &node.op {
            Op::Input { name } => {
                if !inputs.insert(name.as_str()) {
                    report(format!("input \"{name}\" is declared twice"));
                }
            }
            Op::Weight { name } => {
                if !weights.insert(name.as_str()) {
                    report(format!("weight \"{name}\" is referenced twice"));
                }
            }
            // Its declared type stands (any type is the type of zeros).
            // Made by each run, of a size known where the program is built.
            Op::Zeros => {
                if !node.operands.is_empty() {
                    report(format!(
                        "`zeros` takes no operands, found {}",
                        node.operands.len()
                    ));
                } else if node.ty.shape.concrete().is_none() {
                    report(format!(
                        "`zeros` must have a fixed shape, found {}",
                        node.ty
                    ));
                }
            }
            op => {
                let types: Vec<_> = node.operands.iter().map(|v| graph.ty(*v)).collect();
                match infer_type(op, &types) {
                    Ok(ty) if ty == node.ty => {}
                    Ok(ty) => report(format!("declared type {} but the op gives {ty}", node.ty)),
                    Err(e) => report(e),
                }
            }
        }
    }
    if graph.outputs.is_empty() {
        diags.push(Diagnostic {
            value: None,
            op: "return",
            message: "the graph returns nothing".to_string(),
        });
    }
    for v in &graph.outputs {
        if v.0 >= graph.nodes.len() {
            diags.push(Diagnostic {
                value: None,
                op: "return",
                message: format!("returned value {v} is not defined"),
            });
        }
    }
    finish(graph, diags)
}

/// Checks that every weight the graph references exists in `store` with
/// the declared type.
pub fn verify_weights(graph: &Graph, store: &dyn WeightStore) -> Result<(), VerifyError> {
    let mut diags = Vec::new();
    for (id, name, ty) in graph.weights() {
        let message = match store.tensor_type(name) {
            None => format!("weight \"{name}\" is not in the weight store"),
            Some(t) if t != *ty => {
                format!("weight \"{name}\" is {t} in the weight store but declared {ty}")
            }
            Some(_) => continue,
        };
        diags.push(Diagnostic {
            value: Some(id),
            op: "weight",
            message,
        });
    }
    finish(graph, diags)
}

fn finish(graph: &Graph, diagnostics: Vec<Diagnostic>) -> Result<(), VerifyError> {
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(VerifyError {
            graph: graph.name.clone(),
            diagnostics,
        })
    }
}
