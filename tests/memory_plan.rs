//! The backend-neutral memory plan on a real graph: buffers are shared only
//! by values whose lifetimes do not overlap, each buffer holds its largest
//! value at every sequence length, and sharing saves memory.

mod common;

use common::TempDir;
use fairyc_backends::MemoryPlan;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::import::import;
use fairyc_frontend::synth::{write_gguf, SynthConfig};

#[test]
fn shared_buffers_never_hold_two_live_values() {
    let dir = TempDir::new("plan");
    let path = dir.path("tiny.gguf");
    write_gguf(&path, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    let graph = import(&path).unwrap().graph;
    let plan = MemoryPlan::new(&graph, 16);
    // Value i lives from i to its last use (outputs to the end).
    let end = |i: usize| match plan.last_use[i] {
        usize::MAX => usize::MAX,
        last => last.max(i),
    };
    let slotted: Vec<(usize, usize)> = plan
        .slot
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .collect();
    assert!(!slotted.is_empty());
    for (a, &(i, si)) in slotted.iter().enumerate() {
        assert!(!plan.resident[i], "a weight expression has a buffer");
        for &(j, sj) in &slotted[a + 1..] {
            if si == sj {
                assert!(
                    end(i) < j,
                    "%{i} and %{j} share buffer {si} while both live"
                );
            }
        }
    }
    for seq in [1, 16, 256] {
        let sizes = plan.slot_bytes(&graph, seq);
        for &(i, s) in &slotted {
            let bytes =
                fairyc_backends::plan::value_bytes(&graph.nodes[i].ty, seq, &Default::default());
            assert!(sizes[s] >= bytes, "buffer {s} is too small for %{i}");
        }
        let shared = plan.transient_bytes(&graph, seq);
        let unshared = plan.unshared_bytes(&graph, seq);
        assert!(
            shared * 2 < unshared,
            "sharing saves less than half: {shared} of {unshared} bytes"
        );
    }
}
