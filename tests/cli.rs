//! The `fairyc` binary on a synthetic tiny model: every subcommand works,
//! and broken inputs fail with a message that names the problem, never a
//! panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{rewrite_artifact, rewrite_gguf, TempDir};
use fairyc::{Model, Reference};
use fairyc_frontend::gguf::{GgmlType, MetaValue};
use fairyc_frontend::synth::{write_gguf, write_hf, HfDtype, SynthConfig};

const TEXT: &str = "The cat sat on the mat. The sun is in the west, and the water is warm. \
Then the other cats went out in the rain, and at seven they sat on the stones again.\n";

fn fairyc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(args)
        .output()
        .expect("the fairyc binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args`, which must succeed; returns standard output.
fn ok(args: &[&str]) -> String {
    let o = fairyc(args);
    assert!(
        o.status.success(),
        "fairyc {args:?} failed: {}\n{}",
        o.status,
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    stdout(&o)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A folder with the tiny llama as `model.gguf` and a text `text.txt`.
fn setup(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let model = dir.path("model.gguf");
    write_gguf(&model, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    std::fs::write(dir.path("text.txt"), TEXT.repeat(4)).unwrap();
    (dir, model)
}

#[test]
fn import_then_run_prints_text() {
    let (dir, model) = setup("cli-run");
    let fir = dir.path("x.fir");
    ok(&["import", s(&model), "-o", s(&fir)]);
    let ir = std::fs::read_to_string(&fir).unwrap();
    assert!(ir.starts_with("graph @llama {"), "{ir}");
    assert!(
        ir.contains(s(&model.canonicalize().unwrap())),
        "names its weights"
    );

    let o = fairyc(&["run", s(&fir), "-p", "the cat", "-n", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.trim().is_empty(), "no text generated: {text:?}");
    assert!(stderr(&o).contains("generated"), "{}", stderr(&o));

    // The .fir and the GGUF give the same greedy text.
    assert_eq!(ok(&["run", s(&model), "-p", "the cat", "-n", "5"]), text);
    // Chat prompts and sampling work too.
    ok(&[
        "run",
        s(&model),
        "-p",
        "hi",
        "--chat",
        "-n",
        "3",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]);
}

#[test]
fn dump_prints_text_dot_and_a_summary() {
    let (dir, model) = setup("cli-dump");
    let text = ok(&["dump", s(&model)]);
    assert!(text.starts_with("graph @llama {"));
    assert!(text.contains("weight \"blk.1.ffn_down.weight\""));

    let dot = ok(&["dump", s(&model), "--format", "dot"]);
    assert!(dot.trim_start().starts_with("digraph"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));

    let summary = ok(&["dump", s(&model), "--summary"]);
    for needle in ["graph @llama", "ops:", "attention 2", "weights:", "F32"] {
        assert!(summary.contains(needle), "{needle:?} not in\n{summary}");
    }

    let out = dir.path("dump.txt");
    assert_eq!(ok(&["dump", s(&model), "-o", s(&out)]), "");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[test]
fn run_logits_writes_the_model_logits_as_npy() {
    let (dir, model) = setup("cli-logits");
    let out = dir.path("out.npy");
    let prompt = "the cat sat on the mat";
    // The reference backend, as `Model::load`'s below.
    let args = ["run", s(&model), "-p", prompt, "--logits", s(&out)];
    ok(&[&args[..], &["--backend", "reference"]].concat());

    let bytes = std::fs::read(&out).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.dtype(), npyz::DType::Plain("<f4".parse().unwrap()));
    let shape = npy.shape().to_vec();
    let got: Vec<f32> = npy.into_vec().unwrap();

    let m = Model::load(&model).unwrap();
    let ids = m.encode_prompt(prompt, false).unwrap();
    let want = m.logits(&ids).unwrap();
    assert_eq!(shape, [ids.len() as u64, m.tokenizer().vocab_size() as u64]);
    let want = want.as_f32().unwrap();
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |d, (a, b)| d.max((a - b).abs()));
    assert!(diff <= 1e-6, "logits differ by {diff}");
}

#[test]
fn ppl_prints_the_models_perplexity() {
    let (dir, model) = setup("cli-ppl");
    let text = dir.path("text.txt");
    let out = ok(&["ppl", s(&model), "--text", s(&text), "--ctx", "16"]);
    let value: f64 = out
        .strip_prefix("perplexity ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no perplexity in {out:?}"));

    // The program scores each window itself; score the logits here.
    let m = Model::load(&model).unwrap();
    let ids = m
        .tokenizer()
        .encode(&std::fs::read_to_string(&text).unwrap(), false)
        .unwrap();
    let mut nll = Vec::new();
    for window in ids.chunks_exact(16) {
        let logits = m.logits(window).unwrap();
        let vocab = logits.cols();
        let rows = logits.as_f32().unwrap();
        for (row, &target) in rows.chunks(vocab).zip(&window[1..]) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
            nll.push(max + sum.ln() - row[target as usize] as f64);
        }
    }
    let want = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    assert!((value - want).abs() < 1e-3, "{value} vs {want}");
    // Several windows a run, as segments, score the same.
    let batched = m
        .scorer(&Reference::default(), 16, 3)
        .unwrap()
        .perplexity(&ids, None, &mut |_, _, _| {})
        .unwrap();
    assert!(
        (batched.value() - want).abs() < 1e-3,
        "{batched:?} vs {want}"
    );
    assert_eq!(batched.scored_tokens, nll.len());
    // A random model is far from perfect but better than nothing at all.
    assert!(value > 1.0 && value.is_finite(), "{value}");
    assert!(
        out.contains(&format!("over {} windows of 16 tokens", ids.len() / 16)),
        "{out}"
    );
}

#[test]
fn broken_inputs_fail_with_a_message_and_no_panic() {
    let (dir, model) = setup("cli-broken");
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let text = p("text.txt");

    std::fs::write(p("empty.gguf"), b"").unwrap();
    std::fs::write(p("notes.txt"), "just some notes, not a model\n").unwrap();
    let gguf = std::fs::read(&model).unwrap();
    std::fs::write(p("truncated.gguf"), &gguf[..gguf.len() / 2]).unwrap();
    std::fs::write(p("short.txt"), "the cat").unwrap();

    let fir = p("good.fir");
    ok(&["import", s(&model), "-o", &fir]);
    let ir = std::fs::read_to_string(&fir).unwrap();
    std::fs::write(p("syntax.fir"), ir.replacen("= embed", "= embed (", 1)).unwrap();
    assert!(ir.contains("embed %0, %2 : f32[seq, 32]"));
    std::fs::write(
        p("shape.fir"),
        ir.replacen(
            "embed %0, %2 : f32[seq, 32]",
            "embed %0, %2 : f32[seq, 33]",
            1,
        ),
    )
    .unwrap();
    let source = s(&model.canonicalize().unwrap()).to_string();
    std::fs::write(
        p("nowhere.fir"),
        ir.replace(&source, "/nonexistent/weights-nowhere.gguf"),
    )
    .unwrap();
    rewrite_gguf(&model, &dir.path("gpt2.gguf"), |meta, _| {
        for (key, value) in meta.iter_mut() {
            if key == "general.architecture" {
                *value = MetaValue::String("gpt2".into());
            }
        }
    });
    rewrite_gguf(&model, &dir.path("missing-tensor.gguf"), |_, tensors| {
        tensors.retain(|(name, _, _)| name != "blk.1.ffn_up.weight");
    });

    // A compiled artifact, and broken copies of it.
    let fairy = p("good.fairy");
    ok(&["compile", s(&model), "--quant", "w1", "-o", &fairy]);
    let bytes = std::fs::read(&fairy).unwrap();
    std::fs::write(p("truncated.fairy"), &bytes[..bytes.len() / 2]).unwrap();
    rewrite_artifact(fairy.as_ref(), &dir.path("missing.fairy"), |_, tensors| {
        tensors.retain(|(name, _, _, _)| name != "output_norm.weight");
    });
    rewrite_artifact(fairy.as_ref(), &dir.path("codes.fairy"), |meta, _| {
        let mut codes: std::collections::BTreeMap<String, [usize; 2]> =
            serde_json::from_str(&meta["fairyc.codes"]).unwrap();
        let first = codes.values_mut().next().expect("w1 stores code tensors");
        first[1] += 4;
        meta.insert(
            "fairyc.codes".into(),
            serde_json::to_string(&codes).unwrap(),
        );
    });
    // Hugging Face folders with a corrupted config.json or tokenizer.json.
    for (name, file, content) in [
        ("hf-config", "config.json", "{\"hidden_size\": 32,"),
        (
            "hf-tokenizer",
            "tokenizer.json",
            "{\"decoder\": {\"type\": \"ByteLevel\", {",
        ),
    ] {
        let folder = dir.path(name);
        write_hf(&folder, &SynthConfig::tiny(), HfDtype::F32).unwrap();
        std::fs::write(folder.join(file), content).unwrap();
    }

    let run = |m: &str| vec!["run".to_string(), m.to_string(), "-p".into(), "hi".into()];
    let model_s = s(&model).to_string();
    // The seeds name no weights; these copies name the tiny model's.
    let hostile = |name: &str| {
        let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/ir_text")
            .join(name);
        let text = std::fs::read_to_string(seed).unwrap();
        let (head, body) = text.split_once('\n').unwrap();
        let path = p(name);
        std::fs::write(
            &path,
            format!("{head}\n  meta source = {:?}\n{body}", source),
        )
        .unwrap();
        vec!["dump".to_string(), path]
    };
    // One training step of the model on the text, with `extra` flags.
    let train_with = |extra: &[&str]| -> Vec<String> {
        let head = ["train", &model_s, "--data", &text, "--steps", "1"];
        let tail = ["-o", "x.fairy"];
        head.iter()
            .chain(extra)
            .chain(&tail)
            .map(|a| a.to_string())
            .collect()
    };
    let mut cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "missing file",
            run(&p("missing.gguf")),
            vec!["missing.gguf"],
        ),
        ("empty file", run(&p("empty.gguf")), vec!["empty.gguf"]),
        (
            "text file",
            run(&p("notes.txt")),
            vec!["notes.txt", "not a model"],
        ),
        (
            "truncated GGUF",
            run(&p("truncated.gguf")),
            vec!["truncated.gguf"],
        ),
        ("syntax error", run(&p("syntax.fir")), vec!["syntax.fir:"]),
        (
            "wrong shape",
            run(&p("shape.fir")),
            vec!["shape.fir", "f32[seq, 33]"],
        ),
        (
            "source nowhere",
            run(&p("nowhere.fir")),
            vec!["nowhere.fir", "weights-nowhere.gguf"],
        ),
        ("gpt2", run(&p("gpt2.gguf")), vec!["gpt2.gguf", "`gpt2`"]),
        (
            "missing tensor",
            run(&p("missing-tensor.gguf")),
            vec!["missing-tensor.gguf", "blk.1.ffn_up.weight"],
        ),
        (
            "truncated artifact",
            run(&p("truncated.fairy")),
            vec!["truncated.fairy"],
        ),
        (
            "artifact missing a tensor",
            run(&p("missing.fairy")),
            vec!["missing.fairy", "output_norm.weight"],
        ),
        (
            "artifact codes of the wrong size",
            run(&p("codes.fairy")),
            vec!["codes.fairy", "expected U8["],
        ),
        (
            "corrupted config.json",
            run(&p("hf-config")),
            vec!["config.json", "line 1"],
        ),
        (
            "corrupted tokenizer.json",
            run(&p("hf-tokenizer")),
            vec!["tokenizer.json"],
        ),
        (
            "top-p 0",
            [run(&model_s), vec!["--top-p".into(), "0".into()]].concat(),
            vec!["--top-p"],
        ),
        (
            "ctx 1",
            ["ppl", &model_s, "--text", &text, "--ctx", "1"]
                .map(String::from)
                .to_vec(),
            vec!["--ctx"],
        ),
        (
            "short text",
            ["ppl", &model_s, "--text", &p("short.txt")]
                .map(String::from)
                .to_vec(),
            vec!["short.txt", "--ctx"],
        ),
        (
            "import to a missing folder",
            ["import", &model_s, "-o", &p("no/such/dir/x.fir")]
                .map(String::from)
                .to_vec(),
            vec!["x.fir"],
        ),
        // Hostile IR files (the fuzzer's seeds): type rules check ranks and
        // sizes before they index or add.
        (
            "attention keys of a lower rank",
            hostile("seed-hostile-attention-rank.fir"),
            vec!["same rank"],
        ),
        (
            "attention_grad keys of a lower rank",
            hostile("seed-hostile-attention-grad-rank.fir"),
            vec!["same rank"],
        ),
        (
            "pad past the largest size",
            hostile("seed-hostile-pad-overflow.fir"),
            vec!["overflows"],
        ),
        (
            "concat past the largest size",
            hostile("seed-hostile-concat-overflow.fir"),
            vec!["overflows"],
        ),
        (
            "native quantization of a model without its own quantizers",
            [
                "compile",
                &model_s,
                "--quant",
                "native",
                "-o",
                &p("native.fairy"),
            ]
            .map(String::from)
            .to_vec(),
            vec!["--quant native", "no quantizers of its own"],
        ),
        (
            "unknown subcommand",
            vec!["frobnicate".into(), model_s.clone()],
            vec!["frobnicate"],
        ),
        (
            "a time limit no duration holds",
            train_with(&["--time-limit", "1e20"]),
            vec!["--time-limit", "positive number of seconds"],
        ),
        (
            "--gpus on the cpu",
            train_with(&["--gpus", "2"]),
            vec!["--gpus needs --device cuda"],
        ),
        (
            "flash attention beside f32 products",
            train_with(&[
                "--device",
                "cuda",
                "--gpu-matmul",
                "f32",
                "--gpu-attention",
                "flash",
            ]),
            vec!["--gpu-attention flash", "--gpu-matmul bf16"],
        ),
        (
            "more GPUs than windows a step",
            train_with(&["--device", "cuda", "--gpus", "3", "--grad-accum", "2"]),
            vec!["--gpus 3 with --grad-accum 2", "at least 3"],
        ),
        (
            "a sharded optimizer on the CPU",
            train_with(&["--shard-optimizer"]),
            vec!["--shard-optimizer needs --device cuda"],
        ),
        (
            "the authors' bf16 rounding on the GPU",
            train_with(&["--device", "cuda", "--quant", "w2", "--arithmetic", "bf16"]),
            vec!["--arithmetic bf16", "--device cpu"],
        ),
        (
            "sharded masters on the CPU",
            train_with(&["--shard-masters"]),
            vec!["--shard-masters needs --device cuda"],
        ),
        (
            "both shardings",
            train_with(&["--device", "cuda", "--shard-optimizer", "--shard-masters"]),
            vec![
                "--shard-masters",
                "cannot be used with",
                "--shard-optimizer",
            ],
        ),
        (
            "--device beside --backend",
            [
                "run",
                &model_s,
                "-p",
                "x",
                "--device",
                "cuda",
                "--backend",
                "llvm",
            ]
            .map(String::from)
            .to_vec(),
            vec!["--device", "cannot be used with", "--backend"],
        ),
    ];
    // Where no GPU is, asking for one is a clear error.
    if !fairyc::Cuda::available() {
        cases.push((
            "--device cuda without a GPU",
            ["run", &model_s, "-p", "x", "--device", "cuda"]
                .map(String::from)
                .to_vec(),
            vec!["no CUDA driver", "or no GPU"],
        ));
    }
    let mut failures = Vec::new();
    for (what, args, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = fairyc(&args);
        let err = stderr(&o);
        let mut problems = Vec::new();
        if o.status.success() {
            problems.push("exited successfully".to_string());
        }
        if err.contains("panicked") {
            problems.push("panicked".to_string());
        }
        for n in needles {
            if !err.contains(n) {
                problems.push(format!("stderr does not mention {n:?}"));
            }
        }
        eprintln!("{what}: {}", err.trim_end());
        if !problems.is_empty() {
            failures.push(format!("{what}: {}\n  stderr: {err}", problems.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `compile` quantizes lm_head by default, as the authors do, and keeps it
/// unquantized with `--lm-head false`; `--embeddings q8` stores the
/// unquantized matrices in 8 bits.
#[test]
fn compile_quantizes_lm_head_by_default_and_stores_embeddings_as_asked() {
    let (dir, model) = setup("cli-lm-head");
    let out = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let params = |stdout: &str| -> usize {
        stdout
            .split("quantized layers: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no parameter count in {stdout}"))
    };
    // q, k, v, o, gate, up, down of the two blocks; the output matrix.
    let blocks = 2 * (32 * 32 * 2 + 16 * 32 * 2 + 64 * 32 * 3);
    let default = ok(&["compile", s(&model), "--quant", "w2", "-o", &out("a.fairy")]);
    assert_eq!(params(&default), blocks + 275 * 32, "{default}");
    let no_head = ok(&[
        "compile",
        s(&model),
        "--quant",
        "w2",
        "--lm-head",
        "false",
        "-o",
        &out("b.fairy"),
    ]);
    assert_eq!(params(&no_head), blocks, "{no_head}");
    assert!(no_head.contains("as f32"), "{no_head}");
    let q8 = ok(&[
        "compile",
        s(&model),
        "--quant",
        "w2",
        "--lm-head",
        "false",
        "--embeddings",
        "q8",
        "-o",
        &out("c.fairy"),
    ]);
    assert!(q8.contains("as q8"), "{q8}");
    let size = |name: &str| std::fs::metadata(out(name)).unwrap().len();
    assert!(size("c.fairy") < size("b.fairy"), "q8 is smaller than f32");
    let ran = ok(&["run", &out("c.fairy"), "-p", "The ", "-n", "3"]);
    assert!(!ran.is_empty());
}
