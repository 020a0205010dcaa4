//! fairyc's backends: the interface every backend implements, the
//! backend-neutral memory plan, and the reference backend.
//!
//! A backend says which ops it runs natively ([`Backend::supports`]).
//! [`prepare`] verifies a graph, replaces every composite op the backend
//! does not run by its decomposition (`fairyc_ir::decompose`), and fails,
//! naming the op and the value, if a primitive is left that the backend
//! cannot run: before any weight is loaded or anything runs.
//! [`Backend::compile`] then binds the prepared graph to its weights (codes
//! stay packed) and a [`MemoryPlan`] into a [`Program`].

pub mod collective;
pub mod conformance;
pub mod cpu;
pub mod cuda;
pub mod plan;
pub mod profile;
pub mod reference;
pub mod state;
pub mod tensor;

use std::collections::HashMap;
use std::sync::Arc;

use fairyc_ir::cost::{FlopCost, TargetCost};
use fairyc_ir::decompose::lower_composites;
use fairyc_ir::{verify, Granularity, Graph, Op, OpKind, WeightStore};
use num_complex::Complex32;

pub use collective::Rank;
pub use cpu::{Activations, Cranelift, Llvm};
pub use cuda::{Cuda, GpuActivations, GpuAttention, GpuMatmul, Int8Products, RowQuantization};
pub use plan::MemoryPlan;
pub use reference::Reference;
pub use tensor::{Data, DeviceData, Tensor};

/// An error while preparing, loading or running a graph.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Verify(#[from] fairyc_ir::VerifyError),
    #[error(transparent)]
    Weight(#[from] fairyc_ir::WeightError),
    #[error(transparent)]
    Build(#[from] fairyc_ir::BuildError),
    #[error("the {backend} backend cannot run `{op}` ({value}); it has no decomposition into ops it runs")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
        value: String,
    },
    #[error("{0}")]
    Run(String),
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> BackendError {
        BackendError::Run(message.into())
    }
}

/// A target that runs graphs.
pub trait Backend: Sync {
    /// The name users choose it by (`--backend NAME`).
    fn name(&self) -> &'static str;

    /// The prices extraction uses when compiling for this backend; by
    /// default the reference's flop counts.
    fn target_cost(&self) -> Arc<dyn TargetCost> {
        Arc::new(FlopCost::default())
    }

    /// Whether the backend runs `op` natively. Composites it does not run
    /// are decomposed; primitives it does not run make [`prepare`] fail.
    fn supports(&self, op: &Op) -> bool;

    /// Binds a prepared graph to the weights of `store` (codes stay packed)
    /// with its memory plan; `on_weight` is called after each weight is read.
    fn compile(
        &self,
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Box<dyn Program>, BackendError>;

    /// How far its outputs of `op` may be from the reference backend's
    /// (what the conformance suite allows).
    fn tolerance(&self, _op: &Op) -> Tolerance {
        Tolerance::default()
    }
}

/// How far a backend's outputs may be from the reference backend's.
#[derive(Clone, Copy, Debug)]
pub enum Tolerance {
    /// `|got − want| ≤ rel · max(|want|, 1)` per real number.
    Relative(f32),
    /// `quant_linear` on activations quantized to integers: `step(m,
    /// granularity, row)` is the step of each input of a row (its real and
    /// imaginary parts share it). Rounding moves each part of an input by
    /// at most half a step and each code picks one part, so each part of
    /// output `i` may be off by `Σ_t Σ_j |ŵ_t[i, j]| · step_j / 2` (the
    /// stages' dequantized weights) beyond `Relative(rel)`. Where the
    /// backend also rounds the weights of the layer's real 2 × 2 blocks,
    /// `weight_error(rows, u_stages, granularity, scales)` is how far one
    /// may be off, which adds `weight_error · Σ_j (|x_j.re| + |x_j.im| +
    /// step_j)` (zero: exact weights).
    QuantizedActivations {
        rel: f32,
        step: fn(usize, Granularity, &[Complex32]) -> Vec<f32>,
        weight_error: fn(usize, usize, Granularity, &[&[f32]]) -> f32,
    },
}

impl Default for Tolerance {
    fn default() -> Tolerance {
        Tolerance::Relative(1e-4)
    }
}

/// A graph compiled for one backend, ready to run.
pub trait Program: Send + Sync {
    /// The graph the program runs (after [`prepare`]).
    fn graph(&self) -> &Graph;

    /// The memory plan the program runs by.
    fn plan(&self) -> &MemoryPlan;

    /// Runs the graph on named inputs (moved in, so large ones such as a
    /// KV cache are not copied); returns its outputs. State, such as a
    /// language model's KV cache, is explicit: inputs and outputs named in
    /// the graph's `state` meta ([`state`]).
    fn run(&self, inputs: HashMap<String, Tensor>) -> Result<Vec<Tensor>, BackendError>;

    /// Bytes the program holds for weights and weight expressions while it
    /// lives (packed codes count as their packed bytes).
    fn resident_weight_bytes(&self) -> usize;

    /// Time per op so far, when the program was compiled with
    /// `FAIRYC_PROFILE` set ([`profile`]).
    fn profile(&self) -> Option<&profile::OpProfile> {
        None
    }

    /// `t` in host memory: a tensor this program returned in its device's
    /// memory ([`Data::Device`]) is copied back; any other is returned as
    /// it is.
    fn fetch(&self, t: Tensor) -> Result<Tensor, BackendError> {
        match t.data {
            Data::Device(_) => Err(BackendError::new(format!(
                "the {} program holds no device tensors",
                self.graph().name
            ))),
            _ => Ok(t),
        }
    }
}

/// Verifies `graph` and rewrites it for `backend`: composites it does not
/// run natively become their decompositions, and any op left that it
/// cannot run is an error naming the op and its value (weight expressions
/// aside: every backend evaluates those on the host at load).
pub fn prepare(backend: &dyn Backend, graph: &Graph) -> Result<Graph, BackendError> {
    verify(graph)?;
    let lowered = if graph
        .nodes
        .iter()
        .any(|n| n.op.kind() == OpKind::Composite && !backend.supports(&n.op))
    {
        let g = lower_composites(graph, |op| backend.supports(op))?;
        verify(&g)?;
        g
    } else {
        graph.clone()
    };
    // Weight expressions (nodes of weights alone) are evaluated once at
    // load on the host, by the reference kernels, whatever the backend.
    let constant = lowered.weight_constants();
    for (i, node) in lowered.nodes.iter().enumerate() {
        if !constant[i] && node.op.kind() != OpKind::Leaf && !backend.supports(&node.op) {
            return Err(BackendError::Unsupported {
                backend: backend.name(),
                op: node.op.mnemonic(),
                value: format!("%{i} in @{}", lowered.name),
            });
        }
    }
    Ok(lowered)
}

/// [`prepare`], then [`Backend::compile`].
pub fn compile(
    backend: &dyn Backend,
    graph: &Graph,
    store: &dyn WeightStore,
    on_weight: &(dyn Fn(&str) + Sync),
) -> Result<Box<dyn Program>, BackendError> {
    let prepared = prepare(backend, graph)?;
    backend.compile(prepared, store, on_weight)
}
