//! The reference backend: runs every op of the table on the CPU in f32 and
//! complex f32, node by node. Its kernels define what every faster backend
//! must reproduce (the conformance suite compares against it).

pub mod executor;
pub mod kernels;

use fairyc_ir::{Graph, Op, OpKind, WeightStore};

pub use executor::{
    bind_inputs, bind_shape, evaluate_constants, load_resident, load_weights, Executor, Kernels,
    NodeKernel,
};

use crate::{Backend, BackendError, Program};

/// The reference backend. By default it runs composites natively with
/// their own kernels; [`Reference::primitives_only`] makes it take every
/// composite's decomposition instead (how the conformance suite checks the
/// decompositions).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference {
    decompose_composites: bool,
}

impl Reference {
    pub fn primitives_only() -> Reference {
        Reference {
            decompose_composites: true,
        }
    }
}

impl Backend for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn supports(&self, op: &Op) -> bool {
        !(self.decompose_composites && op.kind() == OpKind::Composite)
    }

    fn compile(
        &self,
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Box<dyn Program>, BackendError> {
        Ok(Box::new(Executor::new(graph, store, on_weight)?))
    }
}
