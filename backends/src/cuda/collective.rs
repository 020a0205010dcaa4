//! Data-parallel GPUs of one process exchanging tensors through NCCL
//! (loaded at run time, as the other CUDA libraries): what `all_reduce` and
//! `broadcast_from` run on the cuda backend when it is one rank of several.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, CudaView, CudaViewMut};
use cudarc::nccl::result::{NcclError, NcclStatus};
use cudarc::nccl::{Comm, ReduceOp};

use super::program::{device_context, driver};
use crate::BackendError;

/// One GPU's NCCL communicator in a group over GPUs `0..ranks`. NCCL runs
/// its collectives on a stream of their own, so that a gradient's
/// all-reduce overlaps the backward pass's kernels: each collective waits
/// for the kernels the program's stream ran before it (which wrote its
/// operand), and hands back an event that the program's stream waits for
/// before the first kernel that reads its result.
pub struct Communicator {
    /// `None` once aborted. A call holds the lock while NCCL enqueues its
    /// collective, so an abort waits for that (not for the collective to
    /// finish on the device).
    comm: Mutex<Option<SendComm>>,
    /// The stream NCCL runs on.
    stream: Arc<CudaStream>,
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
            .map(|ordinal| device_context(ordinal)?.new_stream().map_err(driver))
            .collect::<Result<Vec<_>, BackendError>>()?;
        let comms = Comm::from_devices(streams.clone()).map_err(nccl)?;
        Ok(comms
            .into_iter()
            .zip(streams)
            .enumerate()
            .map(|(rank, (comm, stream))| {
                Arc::new(Communicator {
                    comm: Mutex::new(Some(SendComm(comm))),
                    stream,
                    rank,
                })
            })
            .collect())
    }

    /// `out` (f32 words) becomes the sum over the group's ranks of `x`,
    /// after the work `after` (the program's stream) enqueued so far; the
    /// event marks its end.
    pub(crate) fn all_reduce(
        &self,
        after: &CudaStream,
        x: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        len: usize,
    ) -> Result<CudaEvent, BackendError> {
        self.with_f32(after, x, out, len, |comm, x, out| {
            comm.all_reduce(x, out, &ReduceOp::Sum)
        })
    }

    /// `out` (f32 words) becomes rank `root`'s `x`, as
    /// [`Communicator::all_reduce`] orders it.
    pub(crate) fn broadcast(
        &self,
        after: &CudaStream,
        root: usize,
        x: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        len: usize,
    ) -> Result<CudaEvent, BackendError> {
        let root = i32::try_from(root).map_err(nccl)?;
        self.with_f32(after, x, out, len, |comm, x, out| {
            comm.broadcast(Some(x), out, root)
        })
    }

    /// `call` with the communicator (unless the group was aborted) and
    /// `x`, `out` seen as `len` f32 values, on NCCL's stream after what
    /// `after` holds; the event recorded on NCCL's stream after it.
    fn with_f32(
        &self,
        after: &CudaStream,
        x: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        len: usize,
        call: impl FnOnce(
            &Comm,
            &CudaView<'_, f32>,
            &mut CudaViewMut<'_, f32>,
        ) -> Result<NcclStatus, NcclError>,
    ) -> Result<CudaEvent, BackendError> {
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
        self.stream
            .wait(&after.record_event(None).map_err(driver)?)
            .map_err(driver)?;
        call(&comm.0, x, out).map_err(nccl)?;
        self.stream.record_event(None).map_err(driver)
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
