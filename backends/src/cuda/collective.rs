//! Data-parallel GPUs of one process adding their tensors through NCCL
//! (loaded at run time, as the other CUDA libraries): what `all_reduce`
//! runs on the cuda backend when it is one rank of several.

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, ReduceOp};

use super::program::device_context;
use crate::BackendError;

/// One GPU's NCCL communicator in a group over GPUs `0..ranks`. NCCL runs
/// its all-reduce on the device's default stream, the stream the
/// program's kernels run on, so it starts after the kernels that write its
/// operand and ends before those that read its result.
pub struct Communicator {
    comm: Mutex<Option<Comm>>,
    rank: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a
// time, which the mutex ensures (`Comm` is not marked Send only because it
// holds a raw pointer).
unsafe impl Send for Communicator {}
unsafe impl Sync for Communicator {}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Communicator(rank {})", self.rank)
    }
}

fn nccl(e: impl std::fmt::Debug) -> BackendError {
    BackendError::new(format!("NCCL: {e:?}"))
}

impl Communicator {
    /// The communicators of GPUs `0..ranks`, in rank order (GPU `r` is
    /// rank `r`).
    pub fn group(ranks: usize) -> Result<Vec<Arc<Communicator>>, BackendError> {
        // cudarc panics on its first call when a library is missing: look
        // for it first.
        // SAFETY: loading libnccl runs only its initialisers.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(BackendError::new(
                "data-parallel GPUs need NCCL (libnccl.so.2), which this machine lacks",
            ));
        }
        let streams = (0..ranks)
            .map(|ordinal| Ok(device_context(ordinal)?.default_stream()))
            .collect::<Result<Vec<_>, BackendError>>()?;
        let comms = Comm::from_devices(streams).map_err(nccl)?;
        Ok(comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                Arc::new(Communicator {
                    comm: Mutex::new(Some(comm)),
                    rank,
                })
            })
            .collect())
    }

    /// `out` (f32 words) becomes the sum over the group's ranks of `x`.
    pub(crate) fn all_reduce(
        &self,
        x: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        len: usize,
    ) -> Result<(), BackendError> {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let comm = comm.as_ref().ok_or_else(|| {
            BackendError::new(format!(
                "rank {}: the data-parallel group was aborted",
                self.rank
            ))
        })?;
        // SAFETY: both hold `len` f32 values, written as their bits.
        let (x, mut out) = unsafe { (x.transmute::<f32>(len), out.transmute_mut::<f32>(len)) };
        let (Some(x), Some(out)) = (x.as_ref(), out.as_mut()) else {
            return Err(BackendError::new(
                "all_reduce: a buffer shorter than its value",
            ));
        };
        comm.all_reduce(x, out, &ReduceOp::Sum).map_err(nccl)?;
        Ok(())
    }

    /// Aborts the communicator (`ncclCommAbort`): its pending and later
    /// all-reduces fail instead of waiting for a rank that will not come.
    pub fn abort(&self) {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(comm);
    }
}
