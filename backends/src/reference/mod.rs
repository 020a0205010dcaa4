//! The reference backend: runs every op of the table on the CPU in f32 and
//! complex f32, node by node. Its kernels define what every faster backend
//! must reproduce (the conformance suite compares against it).

pub mod executor;
pub mod kernels;

use fairyc_ir::{Graph, Op, OpKind, SharedBytes, WeightStore};

pub use executor::{
    bind_inputs, bind_shape, evaluate_constants, load_resident, load_weights, Executor, Kernels,
    NodeKernel,
};

use crate::collective::Rank;
use crate::tensor::{Data, Recycled, Tensor};
use crate::{Backend, BackendError, Program};

/// The reference backend. By default it runs composites natively with
/// their own kernels; [`Reference::primitives_only`] makes it take every
/// composite's decomposition instead (how the conformance suite checks the
/// decompositions). [`Reference::rank`] makes it one of a group of
/// data-parallel ranks (threads) whose collectives (`all_reduce`,
/// `broadcast_from`) exchange their tensors.
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

    /// Rank `rank` of its group: its programs' collectives wait for the
    /// group's other ranks.
    pub fn rank(rank: Rank) -> Reference {
        Reference {
            decompose_composites: false,
            rank: Some(rank),
        }
    }
}

/// The kernels of a rank in a group: `all_reduce` (of f32) and
/// `broadcast_from` (of f32, c64 or packed codes) over the group's ranks. (A program without a group runs the reference's own: a
/// rank alone is its own sum and root.)
struct RankKernels<'a>(&'a Rank);

struct Collective {
    rank: Rank,
    /// `None`: all_reduce; else broadcast_from this root.
    root: Option<usize>,
    /// The operand where it is a constant of the weights (a weight sent as
    /// it is), taken at load: the executor keeps no copy for this kernel.
    known: Option<Tensor>,
}

impl Kernels for RankKernels<'_> {
    fn prepare(
        &self,
        op: &Op,
        constants: &[Option<&Tensor>],
    ) -> Result<Option<Box<dyn NodeKernel>>, String> {
        let root = match op {
            Op::AllReduce => None,
            Op::BroadcastFrom { root } => Some(*root),
            _ => return Ok(None),
        };
        Ok(Some(Box::new(Collective {
            rank: self.0.clone(),
            root,
            known: constants.first().copied().flatten().cloned(),
        })))
    }
}

impl NodeKernel for Collective {
    fn run(&self, args: &[Option<&Tensor>], out: &mut Recycled) -> Result<Tensor, String> {
        let x = args[0]
            .or(self.known.as_ref())
            .ok_or("a collective's operand is missing")?;
        // A broadcast of complex values or packed codes sends their bits.
        match (&x.data, self.root) {
            (Data::C64(data), Some(root)) => {
                let mut sent = data.to_vec();
                self.rank
                    .broadcast_from(root, bytemuck::cast_slice_mut(&mut sent))?;
                return Ok(Tensor::c64(x.shape.clone(), sent));
            }
            (Data::Codes(packed), Some(root)) => {
                let mut bytes = packed.to_vec();
                self.rank.broadcast_bytes_from(root, &mut bytes)?;
                return Ok(Tensor::codes(x.shape.clone(), SharedBytes::new(bytes)));
            }
            _ => {}
        }
        let data = x.as_f32().ok_or_else(|| {
            format!(
                "a sum over the ranks is of f32, not {} (a broadcast sends f32, c64 or code2)",
                x.dtype_name()
            )
        })?;
        let mut result = out.f32s(data.len());
        result.copy_from_slice(data);
        match self.root {
            None => self.rank.all_reduce(&mut result)?,
            Some(root) => self.rank.broadcast_from(root, &mut result)?,
        }
        Ok(Tensor::f32(out.shape(&x.shape), result))
    }

    fn bytes(&self) -> usize {
        self.known.as_ref().map_or(0, Tensor::bytes)
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
