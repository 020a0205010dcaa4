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

use crate::collective::Rank;
use crate::tensor::{Recycled, Tensor};
use crate::{Backend, BackendError, Program};

/// The reference backend. By default it runs composites natively with
/// their own kernels; [`Reference::primitives_only`] makes it take every
/// composite's decomposition instead (how the conformance suite checks the
/// decompositions). [`Reference::rank`] makes it one of a group of
/// data-parallel ranks (threads) whose `all_reduce` adds their tensors.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    decompose_composites: bool,
    rank: Option<Rank>,
}

impl Reference {
    pub fn primitives_only() -> Reference {
        Reference {
            decompose_composites: true,
            rank: None,
        }
    }

    /// Rank `rank` of its group: its programs' `all_reduce` waits for the
    /// group's other ranks and returns their sum.
    pub fn rank(rank: Rank) -> Reference {
        Reference {
            decompose_composites: false,
            rank: Some(rank),
        }
    }
}

/// `all_reduce` over a group's ranks (without a group, the reference's own
/// kernel: a rank alone is its own sum).
struct RankKernels<'a>(&'a Rank);

struct AllReduce(Rank);

impl Kernels for RankKernels<'_> {
    fn prepare(
        &self,
        op: &Op,
        _constants: &[Option<&Tensor>],
    ) -> Result<Option<Box<dyn NodeKernel>>, String> {
        Ok(matches!(op, Op::AllReduce).then(|| Box::new(AllReduce(self.0.clone())) as _))
    }
}

impl NodeKernel for AllReduce {
    fn run(&self, args: &[Option<&Tensor>], out: &mut Recycled) -> Result<Tensor, String> {
        let x = args[0].ok_or("all_reduce reads a value known only when it runs")?;
        let data = x.as_f32().ok_or("all_reduce adds f32 tensors")?;
        let mut sum = out.f32s(data.len());
        sum.copy_from_slice(data);
        self.0.all_reduce(&mut sum)?;
        Ok(Tensor::f32(out.shape(&x.shape), sum))
    }

    fn bytes(&self) -> usize {
        0
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
        let Some(rank) = &self.rank else {
            return Ok(Box::new(Executor::new(graph, store, on_weight)?));
        };
        // The ranks share the cores.
        let threads = rayon::current_num_threads() / rank.ranks();
        let executor = Executor::with_kernels(graph, store, on_weight, Some(&RankKernels(rank)))?;
        Ok(Box::new(executor.in_own_pool(threads)?))
    }
}
