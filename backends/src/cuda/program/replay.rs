//! A run captured as a CUDA graph and replayed: a training step launches
//! about 8,700 kernels, and enqueuing them one by one takes the host about
//! as long as the GPU takes to run them (docs/BENCHMARKS.md), so faster
//! kernels would leave the GPU waiting for the host. The first
//! run of a program runs plainly (it plans the products and loads what the
//! libraries load once); a second run whose inputs have the same shapes is
//! captured into a graph, and each later run with those shapes is one
//! graph launch.
//!
//! The graph reads its inputs from buffers of its own and writes its
//! outputs to buffers of its own, made before the capture: a run copies
//! the caller's inputs into the first, and the outputs out of the second
//! (to the host, or to new device buffers for state outputs, which the
//! caller keeps while the next run overwrites the graph's). Everything
//! else the run allocates is allocated and freed inside the graph.
//!
//! A decoding step's KV caches are the exception: they grow in place in
//! the caller's buffers (`caches`), and the graph reads and extends those
//! buffers themselves, their rows in use read on the device. So a step's
//! signature names each cache's buffer and room instead of its rows, and
//! the steps of one sequence replay one graph until a cache outgrows its
//! buffer (then two plain runs and a new capture, on the new buffer).
//!
//! A capture has the process's GPU work to itself: a call on another
//! thread that synchronizes the device (loading a module, say) would
//! invalidate it, so programs are built and run under [`device_work`]'s
//! shared lock, and a capture takes it exclusively.
//!
//! Off where a run must do more than enqueue work: with a profile (which
//! times each node), with a communicator (NCCL's stream), and with
//! `FAIRYC_NO_GRAPH` set (to measure it). A capture that fails leaves the
//! program running plainly.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use cudarc::driver::{result, sys, CudaGraph, DevicePtr};

use fairyc_ir::Op;

use super::{driver, upload, word_count, CudaProgram, DeviceTensor, Elem};
use crate::tensor::{Data, DeviceData, Tensor};
use crate::BackendError;

/// Held shared by every program's build, run and drop, and exclusively by
/// a capture.
static DEVICE_WORK: RwLock<()> = RwLock::new(());

thread_local! {
    /// This thread's shared holds: a nested one (a program dropped while
    /// another is built, say) takes the lock no second time, which could
    /// wait forever behind a capture waiting for the first.
    static HOLDS: Cell<usize> = const { Cell::new(0) };
}

/// A shared hold on the process's GPU work (a capture waits for none to be
/// held): the lock's guard, or none where this thread holds it already.
pub(super) struct DeviceWork {
    _guard: Option<RwLockReadGuard<'static, ()>>,
}

impl Drop for DeviceWork {
    fn drop(&mut self) {
        HOLDS.with(|h| h.set(h.get() - 1));
    }
}

/// The shared hold a program's build, run or drop takes.
pub(super) fn device_work() -> DeviceWork {
    let first = HOLDS.with(|h| {
        h.set(h.get() + 1);
        h.get() == 1
    });
    DeviceWork {
        _guard: first.then(|| DEVICE_WORK.read().unwrap_or_else(|e| e.into_inner())),
    }
}

/// Runs captured as graphs, and captures that failed, in this process: a
/// test's evidence that the graphs it compared were made.
static CAPTURED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static FIRST_REFUSAL: Mutex<Option<String>> = Mutex::new(None);

/// What this process captured as CUDA graphs.
#[derive(Debug)]
pub struct Captures {
    /// Programs whose runs are replayed as graphs.
    pub captured: usize,
    /// Captures that failed (those programs run plainly), and the first
    /// one's error.
    pub refused: usize,
    pub first_refusal: Option<String>,
}

pub fn captures() -> Captures {
    Captures {
        captured: CAPTURED.load(Ordering::Relaxed),
        refused: REFUSED.load(Ordering::Relaxed),
        first_refusal: FIRST_REFUSAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    }
}

/// The inputs' names and shapes, in name order, and for each KV cache that
/// grows in place its buffer's address and room in words and its shape
/// after the rows: what a graph was captured for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct Signature {
    shapes: Vec<(String, Vec<usize>)>,
    caches: Vec<(String, u64, usize, Vec<usize>)>,
}

impl CudaProgram {
    /// The run's [`Signature`].
    pub(super) fn signature(&self, inputs: &HashMap<String, Tensor>) -> Signature {
        let (mut shapes, mut caches) = (Vec::new(), Vec::new());
        for (name, t) in inputs {
            let grown = self
                .cache_inputs
                .iter()
                .any(|c| c.name == *name)
                .then(|| super::on_device(t).ok())
                .flatten()
                .filter(|d| d.room.is_some());
            match grown {
                Some(d) => {
                    let (address, _read) = d.words.device_ptr(&self.stream);
                    let tail = t.shape.get(1..).unwrap_or_default().to_vec();
                    caches.push((name.clone(), address, d.words.len(), tail));
                }
                None => shapes.push((name.clone(), t.shape.clone())),
            }
        }
        shapes.sort();
        caches.sort();
        Signature { shapes, caches }
    }
}

/// An output's shape and element.
type Layout = (Vec<usize>, Elem);

/// Where a program stands.
pub(super) enum Replay {
    /// Running plainly; the last run's signature and its outputs' layouts,
    /// so that a second run alike is captured.
    Plain(Option<(Signature, Vec<Layout>)>),
    /// Replaying a graph; the last plain run's signature and layouts, so
    /// that a second run alike of another signature is captured instead.
    Captured(Captured, Option<(Signature, Vec<Layout>)>),
    /// A capture failed: plain runs from then on.
    Refused,
}

pub(super) struct Captured {
    signature: Signature,
    inputs: HashMap<String, DeviceTensor>,
    /// The graph's own output buffers; a grown cache's is the caller's
    /// buffer as it was at the capture, replaced at each replay.
    outputs: Vec<DeviceTensor>,
    /// The caches the graph extends in the caller's buffers.
    caches: Vec<GrownCache>,
    graph: CudaGraph,
}

/// A KV cache a captured graph extends: the state input it extends, the
/// output that returns it, and the rows a step adds.
struct GrownCache {
    input: String,
    output: usize,
    added_rows: usize,
}

// SAFETY: the graph's handles are used only under the program's `replay`
// lock, by one thread at a time; raw pointers are what keep `CudaGraph`
// from being Send and Sync on its own.
unsafe impl Send for Captured {}
unsafe impl Sync for Captured {}

impl Replay {
    /// Whether runs are captured: not with a profile or a communicator, nor
    /// with `FAIRYC_NO_GRAPH` set.
    pub(super) fn new(profiled: bool, collective: bool) -> Option<Replay> {
        let off = profiled || collective || std::env::var_os("FAIRYC_NO_GRAPH").is_some();
        (!off).then_some(Replay::Plain(None))
    }
}

impl CudaProgram {
    /// The run's outputs from its graph (captured now where the last run
    /// had this signature), or `None` where the run goes plainly.
    pub(super) fn replayed(
        &self,
        inputs: &HashMap<String, Tensor>,
        bindings: &HashMap<String, usize>,
        signature: &Signature,
    ) -> Result<Option<Vec<Tensor>>, BackendError> {
        let Some(replay) = &self.replay else {
            return Ok(None);
        };
        // The copies below call the driver directly: the context must be
        // this thread's.
        self.stream.context().bind_to_thread().map_err(driver)?;
        let mut replay = replay.lock().unwrap_or_else(|e| e.into_inner());
        let to_capture = match &*replay {
            Replay::Captured(c, _) if c.signature == *signature => None,
            Replay::Plain(Some((seen, layouts))) | Replay::Captured(_, Some((seen, layouts)))
                if seen == signature =>
            {
                Some(layouts.clone())
            }
            _ => return Ok(None),
        };
        // A step that outgrows a cache's buffer runs plainly (and moves it).
        if !self.caches_have_room(inputs, bindings) {
            return Ok(None);
        }
        if let Some(layouts) = to_capture {
            match self.capture(inputs, bindings, signature, &layouts) {
                // The capture's nodes extended the caches' counts already.
                Ok(captured) => {
                    CAPTURED.fetch_add(1, Ordering::Relaxed);
                    *replay = Replay::Captured(captured, None)
                }
                Err(e) => {
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    FIRST_REFUSAL
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| format!("graph \"{}\": {e}", self.graph.name));
                    tracing::warn!("the run could not be captured as a CUDA graph ({e}); it runs plainly from now on");
                    *replay = Replay::Refused;
                    return Ok(None);
                }
            }
        } else if let Replay::Captured(captured, _) = &*replay {
            // What the graph's appends will do to the caches, counted.
            for cache in &captured.caches {
                let t = cache_input(inputs, &cache.input)?;
                let used = t.room.as_ref().expect("checked by the signature");
                let added = cache.added_rows * row_words(&t);
                let extended = t.word_count() + added;
                if used
                    .compare_exchange(
                        t.word_count(),
                        extended,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
                {
                    unreachable!("caches_have_room checked the count");
                }
            }
        }
        let Replay::Captured(captured, _) = &*replay else {
            unreachable!("captured above")
        };
        let _shared = device_work();
        for (name, t) in inputs {
            if captured.caches.iter().any(|c| c.input == *name) {
                continue;
            }
            let fixed = &captured.inputs[name];
            self.fill(fixed, t)
                .map_err(|e| BackendError::new(format!("input \"{name}\": {e}")))?;
        }
        captured.graph.launch().map_err(driver)?;
        // One launch ran the run (a capture's kernels were only recorded).
        self.launches.store(1, Ordering::Relaxed);
        let kept_from = captured.outputs.len().saturating_sub(self.state_outputs);
        let mut outputs = Vec::with_capacity(captured.outputs.len());
        for (k, fixed) in captured.outputs.iter().enumerate() {
            let kept = match captured.caches.iter().find(|c| c.output == k) {
                // The caller's buffer, one step longer.
                Some(cache) => {
                    let t = cache_input(inputs, &cache.input)?;
                    let mut shape = t.shape.clone();
                    shape[0] += cache.added_rows;
                    DeviceTensor { shape, ..t }
                }
                None if k >= kept_from => self.copy_of(fixed)?,
                None => {
                    outputs.push(super::download(&self.stream, fixed)?);
                    continue;
                }
            };
            outputs.push(Tensor {
                shape: kept.shape.clone(),
                data: Data::Device(DeviceData(Arc::new(kept))),
            });
        }
        Ok(Some(outputs))
    }

    /// Whether each KV cache input grows in place with room for this step:
    /// a buffer with room whose words in use end where the input does.
    fn caches_have_room(
        &self,
        inputs: &HashMap<String, Tensor>,
        bindings: &HashMap<String, usize>,
    ) -> bool {
        self.cache_inputs.iter().all(|c| {
            let (Ok(t), Some(added)) = (
                cache_input(inputs, &c.name),
                self.added_rows(c.node, bindings),
            ) else {
                return false;
            };
            let needed = t.word_count() + added * row_words(&t);
            t.room
                .as_ref()
                .is_some_and(|used| used.load(Ordering::Acquire) == t.word_count())
                && t.words.len() >= needed
        })
    }

    /// The rows a step adds to the cache that node `node` extends.
    fn added_rows(&self, node: usize, bindings: &HashMap<String, usize>) -> Option<usize> {
        let new = *self.graph.nodes[node].operands.get(1)?;
        let shape = super::bind_shape(&self.graph.node(new).ty.shape, bindings).ok()?;
        shape.first().copied()
    }

    /// After a plain run: what a second run alike needs to be captured
    /// (its inputs' signature and its outputs' layouts).
    pub(super) fn ran_plainly(&self, signature: Signature, layouts: Vec<Layout>) {
        let Some(replay) = &self.replay else {
            return;
        };
        let mut replay = replay.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *replay {
            Replay::Plain(seen) | Replay::Captured(_, seen) => *seen = Some((signature, layouts)),
            Replay::Refused => {}
        }
    }

    /// Captures the nodes on buffers of the graph's own, filled with
    /// `inputs` (so the first launch computes this run); a KV cache that
    /// grows in place stays the caller's buffer.
    fn capture(
        &self,
        inputs: &HashMap<String, Tensor>,
        bindings: &HashMap<String, usize>,
        signature: &Signature,
        layouts: &[Layout],
    ) -> Result<Captured, BackendError> {
        if HOLDS.with(Cell::get) > 0 {
            // Waiting for the exclusive hold would wait for this thread.
            return Err(BackendError::new(
                "a run inside another program's build or run is not captured",
            ));
        }
        let _alone = DEVICE_WORK.write().unwrap_or_else(|e| e.into_inner());
        let grown = |name: &str| self.cache_inputs.iter().any(|c| c.name == *name);
        let mut fixed_inputs = HashMap::with_capacity(inputs.len());
        for (name, t) in inputs {
            let on_device = upload(&self.stream, t)
                .map_err(|e| BackendError::new(format!("input \"{name}\": {e}")))?;
            // A host tensor was just copied into a buffer of ours; a device
            // one is the caller's, so the graph gets a copy, but for a cache
            // that grows in place.
            let fixed = match t.data {
                Data::Device(_) if !grown(name) => self.copy_of(&on_device)?,
                _ => on_device,
            };
            fixed_inputs.insert(name.clone(), fixed);
        }
        // Each output's cache input, where it is a cache that grows.
        let grown_outputs: Vec<Option<String>> = self
            .graph
            .outputs
            .iter()
            .map(|v| {
                self.cache_slots.get(&v.0)?;
                match &self.graph.node(self.graph.nodes[v.0].operands[0]).op {
                    Op::Input { name } => Some(name.clone()),
                    _ => None,
                }
            })
            .collect();
        let mut fixed_outputs = Vec::with_capacity(layouts.len());
        for ((shape, elem), grown) in layouts.iter().zip(&grown_outputs) {
            fixed_outputs.push(match grown {
                Some(_) => None,
                None => Some(DeviceTensor {
                    shape: shape.clone(),
                    elem: *elem,
                    words: Arc::new(self.alloc(word_count(shape, *elem))?),
                    room: None,
                }),
            });
        }
        self.stream.synchronize().map_err(driver)?;
        // The graph allocates from a pool of its own: what the plain runs
        // left cached in the device's pool goes back to the driver.
        super::trim_freed_memory(self.stream.context())?;
        let mut caches = Vec::new();
        let capturing = Capturing::begin(self)?;
        // The run's own values are freed inside the capture (their memory is
        // the graph's): only the views of the caller's caches are kept.
        let mut views = Vec::new();
        let ran = self.nodes(&fixed_inputs, bindings).and_then(|outputs| {
            for (k, value) in outputs.iter().enumerate() {
                match (&fixed_outputs[k], &grown_outputs[k]) {
                    (Some(fixed), _) => {
                        if value.shape != fixed.shape || value.elem != fixed.elem {
                            return Err(BackendError::new(
                                "an output's shape differs from the last run's on the same input shapes",
                            ));
                        }
                        self.copy_into(value, fixed)?;
                    }
                    (None, Some(input)) => {
                        let t = &fixed_inputs[input];
                        if !Arc::ptr_eq(&value.words, &t.words) {
                            return Err(BackendError::new("a KV cache was not extended in place"));
                        }
                        caches.push(GrownCache {
                            input: input.clone(),
                            output: k,
                            added_rows: value.shape[0] - t.shape[0],
                        });
                        views.push(value.clone());
                    }
                    (None, None) => unreachable!("an output is the graph's or a cache"),
                }
            }
            Ok(())
        });
        let graph = capturing.end();
        let graph = match (ran, graph) {
            (Ok(()), Ok(Some(graph))) => graph,
            (ran, graph) => {
                // The frees a failed capture refused were recorded as the
                // context's error: not a later call's.
                let _ = self.stream.context().check_err();
                ran?;
                graph.map_err(driver)?;
                return Err(BackendError::new("the capture made no graph"));
            }
        };
        tracing::debug!("the run is captured as a CUDA graph");
        // A grown cache's output stands for the caller's buffer.
        let mut views = views.into_iter();
        let outputs = fixed_outputs
            .into_iter()
            .map(|fixed| {
                fixed
                    .or_else(|| views.next())
                    .expect("a view for each grown cache")
            })
            .collect();
        Ok(Captured {
            signature: signature.clone(),
            inputs: fixed_inputs,
            outputs,
            caches,
            graph,
        })
    }

    /// A new buffer holding `t`'s words.
    fn copy_of(&self, t: &DeviceTensor) -> Result<DeviceTensor, BackendError> {
        let copy = DeviceTensor {
            shape: t.shape.clone(),
            elem: t.elem,
            words: Arc::new(self.alloc(t.word_count())?),
            room: None,
        };
        self.copy_into(t, &copy)?;
        Ok(copy)
    }

    /// Copies `from`'s words over `into`'s (the same layout).
    fn copy_into(&self, from: &DeviceTensor, into: &DeviceTensor) -> Result<(), BackendError> {
        self.copy_words(from, &into.words, 0)
    }

    /// Copies the caller's input `t` into the graph's buffer for it.
    fn fill(&self, into: &DeviceTensor, t: &Tensor) -> Result<(), String> {
        if t.shape != into.shape {
            return Err(format!(
                "shape {:?}, where the graph was captured for {:?}",
                t.shape, into.shape
            ));
        }
        let Some((elem, words)) = super::host_words(t) else {
            let d = super::on_device(t)?;
            if d.elem != into.elem {
                return Err("a different element type than the graph's".into());
            }
            return self.copy_into(&d, into).map_err(|e| e.to_string());
        };
        if elem != into.elem {
            return Err("a different element type than the graph's".into());
        }
        if words.len() > into.words.len() {
            return Err(format!(
                "{} words, where the graph's buffer holds {}",
                words.len(),
                into.words.len()
            ));
        }
        let (dst, _written) = into.words.device_ptr(&self.stream);
        // SAFETY: the buffer holds `words` (checked above); the copy is
        // staged from host memory before this returns.
        unsafe { result::memcpy_htod_async(dst, &words, self.stream.cu_stream()) }
            .map_err(|e| format!("{e:?}"))
    }
}

/// A capture in progress on a program's stream, ended when dropped (a
/// panic part way through the nodes included, which would otherwise leave
/// the stream capturing): what the run's caches hold is freed inside it
/// first, since it was allocated inside it.
struct Capturing<'a> {
    program: &'a CudaProgram,
    ended: bool,
}

impl<'a> Capturing<'a> {
    fn begin(program: &'a CudaProgram) -> Result<Capturing<'a>, BackendError> {
        program
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver)?;
        Ok(Capturing {
            program,
            ended: false,
        })
    }

    /// Ends the capture: its graph, instantiated.
    fn end(mut self) -> Result<Option<CudaGraph>, cudarc::driver::DriverError> {
        self.ended = true;
        self.finish()
    }

    fn finish(&self) -> Result<Option<CudaGraph>, cudarc::driver::DriverError> {
        self.program.forget_kept();
        self.program.forget_rounded();
        self.program
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
    }
}

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.finish();
            let _ = self.program.stream.context().check_err();
        }
    }
}

/// The device tensor of KV cache input `name`.
fn cache_input(inputs: &HashMap<String, Tensor>, name: &str) -> Result<DeviceTensor, BackendError> {
    inputs
        .get(name)
        .ok_or_else(|| BackendError::new(format!("input \"{name}\" is missing")))
        .and_then(|t| {
            super::on_device(t).map_err(|e| BackendError::new(format!("input \"{name}\": {e}")))
        })
}

/// Words of one row (along the first axis) of `t`.
fn row_words(t: &DeviceTensor) -> usize {
    t.word_count().checked_div(t.shape[0]).unwrap_or_else(|| {
        word_count(
            &[1].iter().chain(&t.shape[1..]).copied().collect::<Vec<_>>(),
            t.elem,
        )
    })
}
