//! Continuous batching: several sequences stepped together through one
//! program run (`fairyc_runtime::Batch` on a graph from
//! `expose_kv_cache_slots`) give each sequence the logits it gets alone in
//! a session, whatever the others feed beside it, on every backend and
//! every tiny model (real, complex, quantized).

mod common;

use common::{gpu_or_skip, tiny_models, TempDir};
use fairyc::{Backend, Cuda, Llvm, Model, Reference};
use fairyc_frontend::import::import;
use fairyc_runtime::{Batch, Feed, Lockstep, Rows, Session, Tensor};

/// Three sequences of different lengths.
const PROMPTS: [&[u32]; 3] = [
    &[40, 77, 104, 108, 108, 111, 3, 90, 100],
    &[12, 5, 33],
    &[90, 91, 92, 93, 94, 95, 96],
];

/// Rounds of (slot, tokens) fed together, not in slot order (attention's
/// outputs, stacked by slot, are gathered back into row order); slot 1
/// joins late, slot 0 sits out a round, and every round stays under 8 rows (where the CPU
/// backends' quantized layers would switch to their many-row kernel, whose
/// rounding differs by design).
fn rounds() -> Vec<Vec<(usize, std::ops::Range<usize>)>> {
    vec![
        vec![(2, 0..3), (0, 0..4)],
        vec![(0, 4..9), (2, 3..4)],
        vec![(2, 4..7), (1, 0..2)],
        vec![(1, 2..3)],
    ]
}

fn rows(t: &Tensor) -> &[f32] {
    t.as_f32().expect("f32 logits")
}

/// The largest difference relative to `max(|want|, 1)`.
fn worst(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max)
}

/// Every feed's last logits from a batch of 3 slots against each sequence
/// alone, token chunk by chunk, on `backend`.
fn check(name: &str, path: &std::path::Path, backend: &dyn Backend) {
    let label = format!("{name} on {}", backend.name());
    let single = Model::from_imported_on(import(path).unwrap(), backend, &|_| {}).unwrap();
    let batched = Model::from_imported_slots(import(path).unwrap(), backend, 3, &|_| {}).unwrap();
    let mut alone: Vec<Session> = (0..3).map(|_| Session::new(single.program())).collect();
    let mut batch = Batch::new(batched.program());
    assert_eq!(batch.slots(), 3, "{label}");
    for (r, round) in rounds().into_iter().enumerate() {
        let feeds: Vec<Feed> = round
            .iter()
            .map(|(slot, range)| Feed {
                slot: *slot,
                tokens: &PROMPTS[*slot][range.clone()],
                logits: Rows::Last,
            })
            .collect();
        let got = batch.step(&feeds).unwrap();
        let vocab = got.cols();
        assert_eq!(got.shape, [feeds.len(), vocab], "{label}");
        for (k, feed) in feeds.iter().enumerate() {
            let want = alone[feed.slot].feed_last(feed.tokens).unwrap();
            let got = &rows(&got)[k * vocab..][..vocab];
            let worst = worst(got, rows(&want));
            assert!(
                worst <= 1e-4,
                "{label}: round {r}, slot {}: worst relative difference {worst}",
                feed.slot
            );
            assert_eq!(batch.position(feed.slot), alone[feed.slot].position());
        }
    }
}

/// Three sequences decoded in lockstep (one attention a layer, the rows as
/// more heads) against each alone, token by token, on `backend`.
fn check_lockstep(name: &str, path: &std::path::Path, backend: &dyn Backend) {
    let label = format!("{name} in lockstep on {}", backend.name());
    let program = fairyc::compile_lockstep(backend, &import(path).unwrap(), 3, None).unwrap();
    let single = Model::from_imported_on(import(path).unwrap(), backend, &|_| {}).unwrap();
    let mut alone: Vec<Session> = (0..3).map(|_| Session::new(single.program())).collect();
    let mut lockstep = Lockstep::new(program.as_ref()).unwrap();
    assert_eq!(lockstep.rows(), 3, "{label}");
    for t in 0..3 {
        let tokens: Vec<u32> = PROMPTS.iter().map(|p| p[t]).collect();
        let got = lockstep.step(&tokens).unwrap();
        let vocab = got.cols();
        assert_eq!(got.shape, [3, vocab], "{label}");
        for (r, session) in alone.iter_mut().enumerate() {
            let want = session.feed_last(&tokens[r..r + 1]).unwrap();
            let worst = worst(&rows(&got)[r * vocab..][..vocab], rows(&want));
            assert!(
                worst <= 1e-4,
                "{label}: step {t}, row {r}: worst relative difference {worst}"
            );
        }
    }
    assert!(
        lockstep.step(&[1, 2]).is_err(),
        "{label}: two tokens for three rows"
    );
    // Drawing in the program: each row's id is the one the host draws from
    // that row's logits alone with the same uniform number.
    let drawing = fairyc::compile_lockstep(backend, &import(path).unwrap(), 3, Some(0.8)).unwrap();
    let mut lockstep = Lockstep::new(drawing.as_ref()).unwrap();
    let mut alone: Vec<Session> = (0..3).map(|_| Session::new(single.program())).collect();
    let draws = [0.1, 0.5, 0.9];
    for t in 0..3 {
        let tokens: Vec<u32> = PROMPTS.iter().map(|p| p[t]).collect();
        let got = lockstep.step_drawn(&tokens, &draws).unwrap();
        for (r, session) in alone.iter_mut().enumerate() {
            let logits = session.feed_last(&tokens[r..r + 1]).unwrap();
            let want = fairyc_runtime::sampling::inverse_cdf(rows(&logits), 0.8, draws[r]);
            assert_eq!(got[r], want, "{label}: step {t}, row {r}: drawn ids");
        }
    }
}

#[test]
fn lockstep_sequences_match_each_alone_on_every_backend() {
    let dir = TempDir::new("lockstep");
    let gpu = gpu_or_skip();
    for (name, path) in tiny_models(&dir) {
        check_lockstep(name, &path, &Reference::default());
        check_lockstep(name, &path, &Llvm::default());
        if gpu {
            check_lockstep(name, &path, &Cuda::default());
        }
    }
}

#[test]
fn batched_sequences_match_each_alone_on_every_backend() {
    let dir = TempDir::new("batch");
    let gpu = gpu_or_skip();
    for (name, path) in tiny_models(&dir) {
        check(name, &path, &Reference::default());
        check(name, &path, &Llvm::default());
        if gpu {
            check(name, &path, &Cuda::default());
        }
    }
}

#[test]
fn bad_feeds_are_refused_and_a_failed_run_resets_every_slot() {
    let dir = TempDir::new("batch-errors");
    let models = tiny_models(&dir);
    let path = &models[0].1;
    let model =
        Model::from_imported_slots(import(path).unwrap(), &Reference::default(), 2, &|_| {})
            .unwrap();
    let mut batch = Batch::new(model.program());
    let feed = |slot, tokens| Feed {
        slot,
        tokens,
        logits: Rows::Last,
    };
    let first = batch.step(&[feed(0, &[40, 77]), feed(1, &[5])]).unwrap();
    // Refused before anything runs: the slots keep their sequences.
    for (feeds, error) in [
        (vec![feed(0, &[1]), feed(0, &[2])], "fed twice"),
        (vec![feed(2, &[1])], "past the graph's 2 slots"),
        (vec![feed(1, &[])], "no tokens"),
    ] {
        let err = batch.step(&feeds).unwrap_err().to_string();
        assert!(err.contains(error), "{err}");
    }
    assert_eq!((batch.position(0), batch.position(1)), (2, 1));
    // Resetting one slot leaves the other's sequence alone.
    batch.reset(0);
    let again = batch.step(&[feed(0, &[40, 77])]).unwrap();
    let vocab = again.cols();
    assert!(worst(rows(&again), &rows(&first)[..vocab]) <= 1e-5);
    assert_eq!(batch.position(1), 1);
    // A token outside the vocabulary fails inside the run, which took
    // every slot's state: all start over.
    let err = batch
        .step(&[feed(0, &[1_000_000]), feed(1, &[7])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert_eq!((batch.position(0), batch.position(1)), (0, 0));
    let fresh = batch.step(&[feed(1, &[40, 77])]).unwrap();
    assert!(worst(rows(&fresh), &rows(&first)[..vocab]) <= 1e-5);
}
