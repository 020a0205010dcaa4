//! A decode step on the CPU backends allocates no values: each node builds
//! its value in the buffers of the dead value that last held its slot of
//! the memory plan, and the kernels keep their scratch per thread. What a
//! step still allocates is the call's bookkeeping (the inputs' map and
//! names, the token tensors, the logits handed to the caller), the same
//! for any width of model; and, every 256 positions, each KV cache's
//! growth.
//!
//! One test in this binary: the allocator counts every thread's calls.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{compile_artifact, TempDir};
use fairyc::Model;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};
use fairyc_runtime::Session;

struct Counting;

static CALLS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations and bytes per decode step of a W2 model of `layers` blocks
/// `widen` times as wide as the tiny model, on the LLVM backend, after two
/// warm-up steps.
fn per_step(dir: &TempDir, layers: usize, widen: usize) -> Step {
    let tiny = SynthConfig::tiny();
    let config = SynthConfig {
        layers,
        hidden: widen * tiny.hidden,
        intermediate: widen * tiny.intermediate,
        head_dim: widen * tiny.head_dim,
        ..tiny
    };
    let gguf = dir.path(&format!("llama-{layers}-{widen}.gguf"));
    write_gguf(&gguf, &config, GgmlType::F32).unwrap();
    let artifact = dir.path(&format!("llama-{layers}-{widen}.fairy"));
    compile_artifact(&gguf, "w2", &artifact);
    let model = Model::load(&artifact)
        .unwrap()
        .backend(&fairyc::Llvm::default())
        .unwrap();
    let mut session = Session::new(model.program());
    let logits = session.feed_last(&[3, 14, 15, 92, 65]).unwrap();
    let vocab = logits.cols();
    for token in [35, 89] {
        session.feed_last(&[token]).unwrap();
    }
    let steps = 8;
    let (calls, bytes) = (CALLS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    for token in 0..steps {
        session.feed_last(&[token]).unwrap();
    }
    let graph = model.program().graph();
    Step {
        calls: (CALLS.load(Ordering::Relaxed) - calls) / steps as usize,
        bytes: (BYTES.load(Ordering::Relaxed) - bytes) / steps as usize,
        logits: 4 * vocab,
        values: model.program().plan().unshared_bytes(graph, 1),
    }
}

struct Step {
    /// Allocations and bytes allocated per decode step.
    calls: usize,
    bytes: usize,
    /// Bytes of the logits a step hands its caller.
    logits: usize,
    /// Bytes of a step's values, all of them: what it would allocate if it
    /// allocated each.
    values: usize,
}

#[test]
fn a_decode_step_allocates_no_values() {
    let dir = TempDir::new("allocations");
    // One thread: a pool thread that first runs a task late (and makes its
    // scratch then) would count in whichever step it came.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (shallow, deep, wide) = pool.install(|| {
        (
            per_step(&dir, 2, 1),
            per_step(&dir, 8, 1),
            per_step(&dir, 8, 8),
        )
    });
    for (what, s) in [
        ("2 blocks", &shallow),
        ("8 blocks", &deep),
        ("8 blocks 8x as wide", &wide),
    ] {
        eprintln!(
            "{what}: {} allocations, {} bytes per decode step; its values {} bytes, its logits {}",
            s.calls, s.bytes, s.values, s.logits
        );
    }
    // A value allocated per node would be some 20 calls per block; what
    // grows with depth is the call's map of KV-cache inputs (their names).
    let per_block = deep.calls.saturating_sub(shallow.calls) as f64 / 6.0;
    assert!(
        per_block <= 3.0,
        "{per_block} allocations per block and step: values are allocated"
    );
    // Nor do the bytes grow with the values' size: the call's bookkeeping
    // is the same for a wider model.
    let grown = wide.bytes.saturating_sub(deep.bytes);
    assert!(
        grown <= 1024 && wide.values > 4 * deep.values,
        "{grown} more bytes per step for {} more bytes of values",
        wide.values - deep.values
    );
    assert_eq!(wide.calls, deep.calls, "a wider model allocates more often");
}
