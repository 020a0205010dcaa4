//! The Fairy2i compilation pipeline: lower, quantize, simplify, verified
//! after every pass.

use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use fairyc_ir::{verify, Granularity, Graph, Op, ValueId, VerifyError};

use crate::egraph::{Limits, PassStats};
use crate::lower::{lower, plan, Blocks, LowerOptions};
use crate::quantize::{quantize, strip_quantizers, Method};
use crate::rebuild::eliminate_dead_code;
use crate::simplify::{simplify, SimplifyOptions};

/// What to compile a graph into.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// First remove the quantizers the model defines itself (see
    /// [`strip_quantizers`]).
    pub strip_quantizers: bool,
    /// Rewrite the selected layers into widely-linear form. Implied by a
    /// Fairy2i `method`; alone, it gives the exact, unquantized complex model.
    pub widely_linear: bool,
    /// How to quantize; `None` keeps full precision.
    pub method: Option<Method>,
    pub granularity: Granularity,
    pub lower: LowerOptions,
    pub simplify: SimplifyOptions,
    pub limits: Limits,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions {
            strip_quantizers: false,
            widely_linear: true,
            method: Some(Method::Fairy2i { stages: 2 }),
            granularity: Granularity::Tensor,
            lower: LowerOptions::default(),
            simplify: SimplifyOptions::default(),
            limits: Limits::default(),
        }
    }
}

/// One pass as it ran: its name, the graph after it, and its e-graph
/// statistics when it used one.
#[derive(Clone, Debug)]
pub struct PassRecord {
    pub name: String,
    pub graph: Graph,
    pub elapsed: Duration,
    pub egraph: Option<PassStats>,
}

/// A pass produced an invalid graph: a compiler bug, reported with the
/// pass's name.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("after pass `{pass}`: {error}")]
    Verify { pass: String, error: VerifyError },
    #[error("pass `{pass}`: {message}")]
    Build { pass: String, message: String },
    #[error("{0}")]
    Options(String),
    /// The compile would quantize (or lower) less than asked.
    #[error("{0}")]
    Incomplete(String),
}

/// The planned layers that `graph` does not compute in the asked form: a
/// real linear layer still reads the weight, or (`lowered`) no widely-linear
/// split reads it, or (`quantized`) no quantizer reads it.
pub fn incomplete_layers(
    graph: &Graph,
    plan: &HashMap<String, Blocks>,
    lowered: bool,
    quantized: bool,
) -> Vec<String> {
    let weight = |v: ValueId| match &graph.node(v).op {
        Op::Weight { name } => Some(name.as_str()),
        _ => None,
    };
    let (mut real, mut split, mut quant) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut seen = HashSet::new();
    for node in &graph.nodes {
        match node.op {
            Op::Linear => {
                if let Some(name) = weight(node.operands[1]) {
                    real.insert(name);
                }
            }
            Op::WidelyLinear { .. } => {
                split.extend(weight(node.operands[0]));
            }
            Op::Quantize { .. } => {
                // Every source weight below the quantizer.
                let mut stack = node.operands.clone();
                while let Some(v) = stack.pop() {
                    if !seen.insert(v) {
                        continue;
                    }
                    match weight(v) {
                        Some(name) => {
                            quant.insert(name);
                        }
                        None => stack.extend(graph.node(v).operands.iter().copied()),
                    }
                }
                seen.clear();
            }
            _ => {}
        }
    }
    let mut missing: Vec<String> = plan
        .keys()
        .filter(|name| {
            let n = name.as_str();
            real.contains(n) || (lowered && !split.contains(n)) || (quantized && !quant.contains(n))
        })
        .cloned()
        .collect();
    missing.sort();
    missing
}

/// Runs the pipeline on a verified graph; returns the final graph and a
/// record of every pass.
pub fn compile(
    graph: &Graph,
    options: &CompileOptions,
) -> Result<(Graph, Vec<PassRecord>), PassError> {
    if let Some(Method::Fairy2i { stages: 0 }) = options.method {
        return Err(PassError::Options(
            "Fairy2i needs at least one stage".into(),
        ));
    }
    let layers = plan(graph, &options.lower);
    let fairy2i = matches!(options.method, Some(Method::Fairy2i { .. }));
    let (lowered, quantized) = (options.widely_linear || fairy2i, options.method.is_some());
    let verb = if quantized { "quantize" } else { "lower" };
    if (lowered || quantized) && layers.is_empty() {
        return Err(PassError::Incomplete(format!(
            "nothing to {verb}: no linear layer's weight has a projection role (the frontend tags q, k, v, o, gate, up, down and lm_head in `meta roles`; re-import the model)"
        )));
    }
    let mut records: Vec<PassRecord> = Vec::new();
    let mut current = graph.clone();
    let mut record = |name: &str, g: Graph, start: Instant, stats: Option<PassStats>| {
        verify(&g).map_err(|error| PassError::Verify {
            pass: name.to_string(),
            error,
        })?;
        records.push(PassRecord {
            name: name.to_string(),
            graph: g.clone(),
            elapsed: start.elapsed(),
            egraph: stats,
        });
        Ok::<Graph, PassError>(g)
    };
    if options.strip_quantizers {
        let start = Instant::now();
        let g = strip_quantizers(&current).map_err(|e| PassError::Build {
            pass: "strip".into(),
            message: e.to_string(),
        })?;
        current = record("strip", g, start, None)?;
    }
    if options.widely_linear || fairy2i {
        let start = Instant::now();
        let (g, stats) = lower(&current, &layers, options.lower.arithmetic, options.limits);
        current = record("lower", g, start, Some(stats))?;
    }
    if let Some(method) = options.method {
        let start = Instant::now();
        let arithmetic = options.lower.arithmetic;
        let g =
            quantize(&current, method, options.granularity, arithmetic, &layers).map_err(|e| {
                PassError::Build {
                    pass: "quantize".into(),
                    message: e.to_string(),
                }
            })?;
        current = record("quantize", g, start, None)?;
    }
    let start = Instant::now();
    let (g, stats) = simplify(&current, options.simplify.clone(), options.limits);
    current = record("simplify", eliminate_dead_code(&g), start, Some(stats))?;
    if lowered || quantized {
        let missing = incomplete_layers(&current, &layers, lowered, quantized);
        if !missing.is_empty() {
            return Err(PassError::Incomplete(format!(
                "{} of {} planned layers were not {verb}d: {}",
                missing.len(),
                layers.len(),
                missing.join(", ")
            )));
        }
    }
    Ok((current, records))
}
