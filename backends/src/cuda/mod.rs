//! The CUDA backend: kernels generated as PTX through LLVM ([`codegen`]),
//! run through the CUDA driver API ([`program`]).

pub mod codegen;
pub mod program;

use fairyc_ir::{Graph, Op, WeightStore};

use crate::{Backend, BackendError, Program};

/// The CUDA backend (`--backend cuda`): one GPU, through the driver API;
/// the CUDA libraries are loaded when it first compiles a graph, so a
/// binary built without the CUDA toolkit runs it where a GPU is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cuda;

impl Cuda {
    /// Whether a CUDA device can be used here (driver loaded, a device
    /// present).
    pub fn available() -> bool {
        // cudarc panics on its first call when the driver library is
        // missing: look for the library first.
        // SAFETY: loading libcuda runs only its initialisers, and the
        // handle is dropped at once.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return false;
        }
        matches!(cudarc::driver::CudaContext::device_count(), Ok(n) if n > 0)
    }
}

impl Backend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn supports(&self, op: &Op) -> bool {
        program::runs(op)
    }

    fn compile(
        &self,
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Box<dyn Program>, BackendError> {
        // cudarc panics when it cannot load the driver library: ask first.
        if !Cuda::available() {
            return Err(BackendError::new(
                "the cuda backend found no CUDA driver (libcuda) or no GPU on this machine",
            ));
        }
        Ok(Box::new(program::CudaProgram::new(
            graph, store, on_weight,
        )?))
    }
}
