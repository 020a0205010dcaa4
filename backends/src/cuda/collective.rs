//! Data-parallel GPUs of one process exchanging tensors through NCCL
//! (loaded at run time, as the other CUDA libraries): what `all_reduce` and
//! `broadcast_from` run on the cuda backend when it is one rank of several.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use cudarc::nccl::result::{NcclError, NcclStatus};
use cudarc::nccl::{Comm, ReduceOp};

use super::program::device_context;
use crate::BackendError;

/// One GPU's NCCL communicator in a group over GPUs `0..ranks`. NCCL runs
/// its collectives on the device's default stream, the stream the
/// program's kernels run on, so each starts after the kernels that write
/// its operand and ends before those that read its result.
pub struct Communicator {
    /// `None` once aborted. A call holds the lock while NCCL enqueues its
    /// collective, so an abort waits for that (not for the collective to
    /// finish on the device).
    comm: Mutex<Option<SendComm>>,
    rank: usize,
}

struct SendComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread, one call at a
// time, which the mutex around it ensures (`Comm` is not Send only because
// it holds a raw pointer).
unsafe impl Send for SendComm {}

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
                    comm: Mutex::new(Some(SendComm(comm))),
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
        self.with_f32(x, out, len, |comm, x, out| {
            comm.all_reduce(x, out, &ReduceOp::Sum)
        })
    }

    /// `out` (f32 words) becomes rank `root`'s `x`.
    pub(crate) fn broadcast(
        &self,
        root: usize,
        x: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        len: usize,
    ) -> Result<(), BackendError> {
        let root = i32::try_from(root).map_err(nccl)?;
        self.with_f32(x, out, len, |comm, x, out| {
            comm.broadcast(Some(x), out, root)
        })
    }

    /// `call` with the communicator (unless the group was aborted) and
    /// `x`, `out` seen as `len` f32 values.
    fn with_f32(
        &self,
        x: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        len: usize,
        call: impl FnOnce(
            &Comm,
            &CudaView<'_, f32>,
            &mut CudaViewMut<'_, f32>,
        ) -> Result<NcclStatus, NcclError>,
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
                "a collective's buffer is shorter than its value",
            ));
        };
        call(&comm.0, x, out).map_err(nccl)?;
        Ok(())
    }

    /// Aborts the communicator (`ncclCommAbort`): its pending and later
    /// collectives fail instead of waiting for a rank that will not come.
    /// (Whether this frees a call blocked inside NCCL, which holds the
    /// lock, is to be checked on a machine of several GPUs.)
    pub fn abort(&self) {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(comm);
    }
}
