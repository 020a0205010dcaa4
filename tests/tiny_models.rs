//! End-to-end checks on synthetic tiny models written as real files
//! (`fairyc_frontend::synth`): the GGUF and Hugging Face importers agree,
//! incremental decoding matches the full forward pass, generation is
//! repeatable, the tokenizer and chat template work, and the IR is stable.

mod common;

use std::path::Path;

use common::{rewrite_gguf, TempDir};
use fairyc::{import, GenerateOptions, Model, StopReason, Tensor};
use fairyc_backends::reference::Executor;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, write_hf, Architecture, HfDtype, SynthConfig};
use fairyc_ir::{text, verify, Op, RopeLayout};
use fairyc_runtime::Session;

const PROMPTS: &[&str] = &[
    "the cat sat on the mat",
    "Hello, world! 1234 is in the order.",
    "<|im_start|>user\nwhere is the sun?<|im_end|>\n<|im_start|>assistant\n",
];

fn config(architecture: Architecture) -> SynthConfig {
    SynthConfig {
        architecture,
        ..SynthConfig::tiny()
    }
}

/// Writes `cfg` as `model.gguf` (F32) and the folder `hf` (f32) in `dir`.
fn write_both(dir: &TempDir, cfg: &SynthConfig) -> (std::path::PathBuf, std::path::PathBuf) {
    let (gguf, hf) = (dir.path("model.gguf"), dir.path("hf"));
    write_gguf(&gguf, cfg, GgmlType::F32).unwrap();
    write_hf(&hf, cfg, HfDtype::F32).unwrap();
    (gguf, hf)
}

fn load(path: &Path) -> Model {
    Model::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn values(t: &Tensor) -> &[f32] {
    t.as_f32().expect("f32 logits")
}

/// max |a - b| / max |b|.
fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Encodes each prompt with both models' tokenizers (which must agree) and
/// returns the largest relative logit difference.
fn compare(a: &Model, b: &Model) -> f32 {
    PROMPTS
        .iter()
        .map(|prompt| {
            let ids = a.tokenizer().encode(prompt, true).unwrap();
            assert_eq!(
                ids,
                b.tokenizer().encode(prompt, true).unwrap(),
                "{prompt:?}"
            );
            let (la, lb) = (a.logits(&ids).unwrap(), b.logits(&ids).unwrap());
            assert_eq!(la.shape, [ids.len(), a.tokenizer().vocab_size()]);
            relative_difference(&la, &lb)
        })
        .fold(0.0, f32::max)
}

/// The logits are finite and not flat: the model computes something.
fn assert_non_trivial(model: &Model) {
    let ids = model.tokenizer().encode(PROMPTS[0], false).unwrap();
    let logits = model.logits(&ids).unwrap();
    let v = values(&logits);
    assert!(v.iter().all(|x| x.is_finite()));
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
    assert!(std > 0.3, "logits are nearly flat: std {std}");
    let vocab = logits.cols();
    assert_ne!(v[..vocab], v[vocab..2 * vocab], "positions must differ");
}

#[test]
fn llama_gguf_and_hf_agree() {
    let dir = TempDir::new("llama-agree");
    let (gguf, hf) = write_both(&dir, &config(Architecture::Llama));
    let (g, h) = (load(&gguf), load(&hf));
    verify(g.graph()).unwrap();
    verify(h.graph()).unwrap();
    assert_non_trivial(&g);
    let diff = compare(&g, &h);
    assert!(
        diff < 1e-4,
        "GGUF and HF logits differ by {diff} (relative)"
    );

    // The comparison is sensitive to the RoPE layout: the GGUF import reads
    // q/k in Hugging Face's row order, and running those rows with
    // interleaved RoPE (llama.cpp's, for its permuted rows) changes the
    // logits.
    let mut wrong = import(&gguf).unwrap();
    for node in &mut wrong.graph.nodes {
        if let Op::Rope { layout, .. } = &mut node.op {
            assert_eq!(*layout, RopeLayout::HalfSplit);
            *layout = RopeLayout::Interleaved;
        }
    }
    let wrong = Model::from_imported(wrong, &|_| {}).unwrap();
    let diff = compare(&wrong, &h);
    assert!(
        diff > 1e-2,
        "a RoPE layout mismatch went unnoticed ({diff})"
    );
}

#[test]
fn qwen2_gguf_and_hf_agree_and_biases_matter() {
    let dir = TempDir::new("qwen2-agree");
    let (gguf, hf) = write_both(&dir, &config(Architecture::Qwen2));
    let (g, h) = (load(&gguf), load(&hf));
    assert!(g
        .graph()
        .weights()
        .any(|(_, n, _)| n == "blk.0.attn_q.bias"));
    assert!(h
        .graph()
        .weights()
        .any(|(_, n, _)| n == "model.layers.1.self_attn.v_proj.bias"));
    assert_non_trivial(&g);
    let diff = compare(&g, &h);
    assert!(
        diff < 1e-4,
        "GGUF and HF logits differ by {diff} (relative)"
    );

    let unbiased = dir.path("zero-bias.gguf");
    rewrite_gguf(&gguf, &unbiased, |_, tensors| {
        let mut zeroed = 0;
        for (name, _, data) in tensors.iter_mut() {
            if name.ends_with(".bias") {
                data.fill(0.0);
                zeroed += 1;
            }
        }
        assert_eq!(zeroed, 3 * SynthConfig::tiny().layers);
    });
    let diff = compare(&load(&unbiased), &g);
    assert!(
        diff > 1e-2,
        "zeroing the biases changed the logits only by {diff}"
    );
}

#[test]
fn tied_embeddings_reuse_the_table_in_both_formats() {
    let dir = TempDir::new("tied");
    let cfg = SynthConfig {
        tied_embeddings: true,
        ..config(Architecture::Llama)
    };
    let (gguf, hf) = write_both(&dir, &cfg);
    let (g, h) = (load(&gguf), load(&hf));
    assert!(!g.graph().weights().any(|(_, n, _)| n == "output.weight"));
    let diff = compare(&g, &h);
    assert!(
        diff < 1e-4,
        "GGUF and HF logits differ by {diff} (relative)"
    );
}

#[test]
fn incremental_decoding_equals_the_full_forward() {
    let dir = TempDir::new("incremental");
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let gguf = dir.path(&format!("{}.gguf", arch.name()));
        write_gguf(&gguf, &config(arch), GgmlType::F32).unwrap();
        let imported = import(&gguf).unwrap();
        let ids = imported.tokenizer.encode(PROMPTS[1], false).unwrap();
        assert!(ids.len() > 8);
        let graph = fairyc_backends::state::expose_kv_cache(&imported.graph).unwrap();
        let executor = Executor::new(graph, imported.weights.as_ref(), &|_| {}).unwrap();

        let full = Session::new(&executor).feed(&ids).unwrap();
        let vocab = full.cols();
        let mut one_by_one = Session::new(&executor);
        for (i, &id) in ids.iter().enumerate() {
            let row = one_by_one.feed(&[id]).unwrap();
            assert_eq!(row.shape, [1, vocab]);
            let want = &values(&full)[i * vocab..][..vocab];
            let diff = values(&row)
                .iter()
                .zip(want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{arch:?}: position {i} differs by {diff}");
        }
        assert_eq!(one_by_one.position(), ids.len());

        // Two uneven chunks give the same rows as well.
        let mut chunked = Session::new(&executor);
        let (head, tail) = ids.split_at(3);
        let first = chunked.feed(head).unwrap();
        let second = chunked.feed(tail).unwrap();
        let joined = [values(&first), values(&second)].concat();
        let diff = joined
            .iter()
            .zip(values(&full))
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-5, "{arch:?}: chunked feeding differs by {diff}");

        // A graph that selects its logit rows gives every row when fed
        // plainly, and the last alone, computed alone, through feed_last.
        let selecting = fairyc_backends::state::select_logit_rows(executor.graph()).unwrap();
        let gathers = |g: &fairyc_ir::Graph| g.nodes.iter().filter(|n| n.op == Op::Embed).count();
        assert_eq!(gathers(&selecting), gathers(executor.graph()) + 1);
        let selecting = Executor::new(selecting, imported.weights.as_ref(), &|_| {}).unwrap();
        let every = Session::new(&selecting).feed(&ids).unwrap();
        assert_eq!(values(&every), values(&full), "{arch:?}: all rows");
        let mut session = Session::new(&selecting);
        let (head, tail) = ids.split_at(5);
        let last = session.feed_last(head).unwrap();
        assert_eq!(last.shape, [1, vocab]);
        // One row through the output layer instead of many: the same sums
        // in another order.
        let differ = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        };
        let diff = differ(values(&last), &values(&full)[4 * vocab..][..vocab]);
        assert!(diff < 1e-5, "{arch:?}: row 4 differs by {diff}");
        let last = session.feed_last(tail).unwrap();
        let diff = differ(values(&last), &values(&full)[(ids.len() - 1) * vocab..]);
        assert!(diff < 1e-5, "{arch:?}: the last row differs by {diff}");
        // A prompt's head fed without logits (no rows selected), its tail
        // with the last row's.
        let mut session = Session::new(&selecting);
        session.prefill(head).unwrap();
        assert_eq!(session.position(), head.len());
        let last = session.feed_last(tail).unwrap();
        let diff = differ(values(&last), &values(&full)[(ids.len() - 1) * vocab..]);
        assert!(
            diff < 1e-5,
            "{arch:?}: after a prefill, the last row differs by {diff}"
        );
    }
}

#[test]
fn greedy_generation_is_deterministic_and_sampling_is_seeded() {
    let dir = TempDir::new("generate");
    let gguf = dir.path("model.gguf");
    write_gguf(&gguf, &SynthConfig::tiny(), GgmlType::Q8_0).unwrap();
    let model = load(&gguf);
    let prompt = model.encode_prompt("the cat", false).unwrap();
    let run = |options: &GenerateOptions| {
        let mut streamed = String::new();
        let g = model
            .generate(&prompt, options, &mut |piece| streamed.push_str(piece))
            .unwrap();
        assert_eq!(streamed, g.text);
        g
    };

    let greedy = GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    };
    let first = run(&greedy);
    let second = run(&greedy);
    assert_eq!(first.tokens, second.tokens);
    assert_eq!(first.text, second.text);
    assert!(!first.tokens.is_empty());
    assert_eq!(
        first.text,
        model.tokenizer().decode(&first.tokens).unwrap(),
        "streamed text"
    );
    // Greedy: each token is the argmax after everything before it.
    let all = [prompt.clone(), first.tokens.clone()].concat();
    let logits = model.logits(&all).unwrap();
    let vocab = logits.cols();
    let argmax =
        |row: usize| fairyc_runtime::sampling::argmax(&values(&logits)[row * vocab..][..vocab]);
    for (i, &t) in first.tokens.iter().enumerate() {
        assert_eq!(argmax(prompt.len() - 1 + i), t, "greedy token {i}");
    }
    match first.stop {
        StopReason::Length => assert_eq!(first.tokens.len(), 12),
        StopReason::EndToken => assert!(model.tokenizer().is_eog(argmax(all.len() - 1))),
        StopReason::Caller => panic!("nobody asked to stop"),
    }

    let sampled = |seed| {
        run(&GenerateOptions {
            max_new_tokens: 12,
            temperature: 1.0,
            top_p: 0.95,
            seed,
        })
        .tokens
    };
    assert_eq!(sampled(7), sampled(7));
    let distinct: std::collections::BTreeSet<Vec<u32>> = (0..4).map(sampled).collect();
    assert!(
        distinct.len() > 1,
        "different seeds should sample differently"
    );
}

#[test]
fn tokenizer_round_trips_and_chat_template_renders() {
    let dir = TempDir::new("tokens");
    let (gguf, hf) = write_both(&dir, &SynthConfig::tiny());
    for path in [gguf, hf] {
        let model = load(&path);
        let tok = model.tokenizer();
        for text in [
            "the theory is in the water",
            "Digits 0123456789 and ünïcödé — 日本 🎉\n\ttabs  and   spaces",
            "",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{}", path.display());
        }
        let the = tok.token_to_id("Ġthe").unwrap();
        assert_eq!(tok.encode(" the", false).unwrap(), [the]);

        let ids = model.encode_prompt("Hi there", true).unwrap();
        let im_start = tok.token_to_id("<|im_start|>").unwrap();
        assert_eq!(ids[0], im_start);
        assert_eq!(ids.iter().filter(|&&t| t == im_start).count(), 3);
        assert_eq!(
            tok.decode(&ids).unwrap(),
            "<|im_start|>system\nYou are a tiny synthetic model.<|im_end|>\n\
             <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        // The plain prompt gets no special tokens and no BOS.
        let plain = model.encode_prompt("Hi there", false).unwrap();
        assert!(plain.iter().all(|&t| !tok.is_special(t)));
    }
}

#[test]
fn tiny_llama_ir_snapshot_and_round_trip() {
    let dir = TempDir::new("ir");
    let gguf = dir.path("model.gguf");
    write_gguf(&gguf, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    let graph = import(&gguf).unwrap().graph;
    let printed = text::print(&graph);
    let source = graph
        .meta
        .get("source")
        .expect("the importer records the source");
    assert!(source.ends_with("model.gguf"), "{source}");
    insta::assert_snapshot!(printed.replace(source.as_str(), "<tmp>/model.gguf"));

    let parsed = text::parse(&printed, "tiny.fir").unwrap();
    assert_eq!(parsed, graph);
    verify(&parsed).unwrap();
}

/// The KV cache is state the graph takes and returns: the exposed graph
/// prints and parses back, a failed step resets the session instead of
/// leaving layers with different cache lengths, and a sequence cannot grow
/// past the model's context length.
#[test]
fn kv_cache_state_is_explicit_bounded_and_reset_on_error() {
    let dir = TempDir::new("kv-state");
    let path = dir.path("tiny.gguf");
    let cfg = SynthConfig::tiny();
    write_gguf(&path, &cfg, GgmlType::F32).unwrap();
    let model = load(&path);
    let graph = model.graph();
    let names = fairyc_backends::state::state_names(graph);
    assert_eq!(names.len(), 2 * cfg.layers);
    let back = text::parse(&text::print(graph), "state.fir").unwrap();
    verify(&back).unwrap();
    assert_eq!(&back, graph);

    let program = model.program();
    let mut session = Session::new(program);
    let first = session.feed(&[40, 77, 104]).unwrap();
    assert_eq!(session.position(), 3);
    // A token outside the vocabulary fails inside the run: the session
    // starts over, and then decodes as a fresh one does.
    let err = session.feed(&[1_000_000]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert_eq!(session.position(), 0);
    let again = session.feed(&[40, 77, 104]).unwrap();
    assert_eq!(values(&again), values(&first));
    // The context length bounds the sequence, before anything runs.
    let long: Vec<u32> = vec![40; cfg.context_length - 3];
    session.feed(&long).unwrap();
    let err = session.feed(&[40]).unwrap_err().to_string();
    assert!(err.contains("past the model's context length"), "{err}");
    assert_eq!(session.position(), cfg.context_length);
}

/// IR files written before the GGUF importer un-permuted llama's q/k rows
/// (interleaved RoPE) still run as they did: their weights are read as the
/// file stores them.
#[test]
fn ir_files_with_interleaved_rope_read_the_rows_as_stored() {
    let dir = TempDir::new("old-fir");
    let (gguf, _) = write_both(&dir, &config(Architecture::Llama));
    let fir = dir.path("new.fir");
    let graph = import(&gguf).unwrap().graph;
    std::fs::write(&fir, text::print(&graph)).unwrap();
    let old = dir.path("old.fir");
    let text = std::fs::read_to_string(&fir).unwrap();
    assert!(text.contains("layout = half_split"));
    std::fs::write(
        &old,
        text.replace("layout = half_split", "layout = interleaved"),
    )
    .unwrap();
    let diff = compare(&load(&old), &load(&gguf));
    assert!(diff < 1e-4, "an interleaved .fir differs by {diff}");
    assert!(compare(&load(&fir), &load(&gguf)) < 1e-6);
}
