//! `fairyc train`: quantization-aware training of a tiny model through the
//! CLI lowers the held-out loss, resumes exactly from a checkpoint, and
//! ends in an artifact that runs; distillation, training from scratch
//! (LLaMA and iFairy configs), loss plots.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};

fn fairyc(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "fairyc {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn held_out(stderr: &str, when: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("held-out loss {when}")))
        .unwrap_or_else(|| panic!("no held-out loss {when} in {stderr}"));
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn setup(dir: &TempDir) -> (String, String) {
    let model = dir.path("tiny.gguf");
    write_gguf(&model, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    let text: String = common::training_text(13_500);
    let data = dir.path("data.txt");
    std::fs::write(&data, text.repeat(2)).unwrap();
    (model.display().to_string(), data.display().to_string())
}

#[test]
fn w2_training_lowers_the_held_out_loss_and_the_artifact_runs() {
    let dir = TempDir::new("train");
    let (model, data) = setup(&dir);
    let out = dir.path("trained.fairy").display().to_string();
    let (_, stderr) = fairyc(&[
        "train",
        &model,
        "--quant",
        "w2",
        "--data",
        &data,
        "--steps",
        "60",
        "--seq",
        "32",
        "--lr",
        "1e-2",
        "--warmup",
        "5",
        "--decay-start",
        "40",
        "--decay-steps",
        "20",
        "--gauss",
        "-o",
        &out,
    ]);
    let (before, after) = (held_out(&stderr, "before"), held_out(&stderr, "after:"));
    assert!(after < before - 1.0, "held-out loss {before} -> {after}");
    let (_, stderr) = fairyc(&["run", &out, "-p", "The ", "-n", "5"]);
    assert!(stderr.contains("generated"), "{stderr}");
}

#[test]
fn resuming_a_checkpoint_repeats_the_same_losses() {
    let dir = TempDir::new("resume");
    let (model, data) = setup(&dir);
    let run = |steps: &str, csv: &str, ckpt: &str, resume: bool| {
        let mut args = vec![
            "train",
            &model,
            "--quant",
            "w2",
            "--data",
            &data,
            "--steps",
            steps,
            "--seq",
            "16",
            "--lr",
            "5e-3",
            "--grad-accum",
            "2",
            "--clip",
            "0.5",
            "--checkpoint",
            ckpt,
            "--checkpoint-every",
            "10",
            "--loss-csv",
            csv,
            "-o",
        ];
        let out = dir.path("x.fairy").display().to_string();
        args.push(&out);
        if resume {
            args.push("--resume");
        }
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fairyc(&refs);
        std::fs::read_to_string(csv).unwrap()
    };
    let straight = run(
        "30",
        &dir.path("a.csv").display().to_string(),
        &dir.path("a.ckpt").display().to_string(),
        false,
    );
    let ckpt = dir.path("b.ckpt").display().to_string();
    let log = dir.path("b.csv").display().to_string();
    run("20", &log, &ckpt, false);
    // The resumed run continues the log it finds.
    let resumed = run("30", &log, &ckpt, true);
    assert_eq!(resumed.lines().count(), 31, "{resumed}");
    let tail = |csv: &str| {
        csv.lines()
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_some_and(|s| s > 20)
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (a, b) = (tail(&straight), tail(&resumed));
    assert_eq!(a.len(), 10);
    assert_eq!(a, b, "losses after a resume differ from a straight run");
}

/// The `loss` column of a `--loss-csv` file.
fn losses(csv: &Path) -> Vec<f64> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// Width, height and the number of distinct colours of an RGB PNG.
fn png_summary(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    (info.width, info.height, colours.len())
}

#[test]
fn distillation_lowers_the_kl_to_the_teacher_and_plots_it() {
    let dir = TempDir::new("distill");
    let (model, data) = setup(&dir);
    let csv = dir.path("distill.csv");
    let png = dir.path("distill.png");
    let (_, stderr) = fairyc(&[
        "train",
        &model,
        "--quant",
        "w1",
        // A 1-bit output matrix of 275 x 32 learns too slowly for 40 steps.
        "--lm-head",
        "false",
        "--distill",
        "--data",
        &data,
        "--steps",
        "40",
        "--seq",
        "32",
        "--lr",
        "1e-2",
        "--eval-every",
        "20",
        "--loss-csv",
        &csv.display().to_string(),
        "--loss-png",
        &png.display().to_string(),
        "-o",
        &dir.path("d.fairy").display().to_string(),
    ]);
    let kl = losses(&csv);
    assert_eq!(kl.len(), 40);
    let (first, last) = (kl[0], kl[35..].iter().sum::<f64>() / 5.0);
    assert!(
        kl.iter().all(|l| *l >= -1e-6),
        "a KL divergence is >= 0: {kl:?}"
    );
    assert!(last < 0.7 * first, "KL to the teacher {first} -> {last}");
    // The held-out cross-entropy is reported too, and was evaluated twice.
    held_out(&stderr, "after:");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.ends_with(',')).count(),
        3,
        "{text}"
    );
    let (w, h, colours) = png_summary(&png);
    assert_eq!((w, h), (960, 600));
    assert!(colours > 3, "the plot is blank ({colours} colours)");

    // Several runs in one picture.
    let other = dir.path("other.csv");
    std::fs::copy(&csv, &other).unwrap();
    let cmp = dir.path("cmp.png");
    fairyc(&[
        "plot",
        &csv.display().to_string(),
        &other.display().to_string(),
        "--smooth",
        "5",
        "-o",
        &cmp.display().to_string(),
    ]);
    assert_eq!(png_summary(&cmp).0, 960);
    // Without a font the curves are still drawn, unlabelled.
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .env("FAIRYC_FONT", dir.path("no-such-font.ttf"))
        .args([
            "plot",
            &csv.display().to_string(),
            "-o",
            &cmp.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(png_summary(&cmp).2 > 2, "no curve without a font");
    let bad = dir.path("bad.csv");
    std::fs::write(&bad, "step,loss\n1,2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args([
            "plot",
            &bad.display().to_string(),
            "-o",
            &cmp.display().to_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a fairyc training log"),
        "{err}"
    );
}

/// Data-free distillation: the teacher generates its own sequences once
/// into a token file (valid ids, the asked count and length), training on
/// them lowers the KL to it, a second run reads the file back instead of
/// generating, and a file made for other settings is refused by name.
#[test]
fn data_free_distillation_generates_caches_and_trains_on_the_teachers_text() {
    let dir = TempDir::new("data-free");
    let (model, data) = setup(&dir);
    let cache = dir.path("teacher.tokens");
    let csv = dir.path("kl.csv");
    let out = dir.path("d.fairy");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            &model,
            "--quant",
            "w1",
            "--lm-head",
            "false",
            "--distill",
            "--teacher-sequences",
            "24",
            "--teacher-cache",
            cache.to_str().unwrap(),
            "--steps",
            "40",
            "--seq",
            "32",
            "--lr",
            "1e-2",
            "--loss-csv",
            csv.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fairyc(&args).1
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("the teacher generated 24 sequences"),
        "{stderr}"
    );
    let bytes = std::fs::read(&cache).unwrap();
    assert_eq!(&bytes[..8], b"FAIRYTOK");
    // After the header: magic, five u32 (version, length, count, vocabulary,
    // fingerprint) and the u64 seed.
    let tokens: Vec<u32> = bytes[36..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(tokens.len(), 24 * 33);
    let vocab = SynthConfig::tiny().vocab_size() as u32;
    assert!(tokens.iter().all(|&t| t < vocab));
    // Sampled, not one token repeated.
    let distinct: std::collections::HashSet<_> = tokens.iter().collect();
    assert!(distinct.len() > 20, "{} distinct tokens", distinct.len());
    // The first and last five steps' means: one step's KL depends on which
    // sampled windows it sees (0.52 to 1.03 at step 1 over teacher seeds
    // 0-5, where five steps' mean is 0.72 to 0.79).
    let kl = losses(&csv);
    let mean = |steps: &[f64]| steps.iter().sum::<f64>() / steps.len() as f64;
    let (first, last) = (mean(&kl[..5]), mean(&kl[35..]));
    assert!(last < 0.7 * first, "KL to the teacher {first} -> {last}");

    // Read back, beside text files: the same file, no generation.
    let before = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let stderr = run(&["--data", &data]);
    assert!(!stderr.contains("the teacher generated"), "{stderr}");
    assert_eq!(std::fs::read(&cache).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        before
    );

    // A cache made for other settings is refused, naming the file.
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args([
            "train",
            &model,
            "--quant",
            "w1",
            "--distill",
            "--teacher-sequences",
            "24",
            "--teacher-cache",
            cache.to_str().unwrap(),
            "--steps",
            "1",
            "--seq",
            "16",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("teacher.tokens") && stderr.contains("holds 24 sequences of 33 tokens"),
        "{stderr}"
    );
}

#[test]
fn training_from_scratch_llama_and_ifairy_configs() {
    let dir = TempDir::new("scratch");
    let (model, data) = setup(&dir);
    let vocab = SynthConfig::tiny().vocab_size();
    let configs = [
        (
            "llama",
            serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "tie_word_embeddings": false,
            }),
            "none",
        ),
        (
            "ifairy",
            serde_json::json!({
                "architectures": ["ComplexNetLM"], "model_type": "complexnet",
                "vocab_size": vocab, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 4,
            }),
            "native",
        ),
    ];
    for (name, config, quant) in configs {
        let path = dir.path(&format!("{name}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let csv = dir.path(&format!("{name}.csv"));
        let out = dir.path(&format!("{name}.fairy")).display().to_string();
        let (_, stderr) = fairyc(&[
            "train",
            "--init",
            "random",
            "--config",
            &path.display().to_string(),
            "--tokenizer",
            &model,
            "--quant",
            quant,
            "--data",
            &data,
            "--steps",
            "60",
            "--seq",
            "32",
            "--lr",
            "1e-2",
            "--warmup",
            "5",
            "--schedule",
            "two-phase",
            "--weight-decay",
            "0.1",
            "--clip",
            "1.0",
            "--loss-csv",
            &csv.display().to_string(),
            "-o",
            &out,
        ]);
        // Random logits start near ln(vocab).
        let (before, after) = (held_out(&stderr, "before"), held_out(&stderr, "after:"));
        assert!(
            (before - (vocab as f64).ln()).abs() < 0.2,
            "{name}: initial loss {before}"
        );
        assert!(
            after < before - 1.0,
            "{name}: held-out loss {before} -> {after}"
        );
        let lr: Vec<f64> = std::fs::read_to_string(&csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect();
        // Step 29: 1 - (29 - 5)/60 of the peak; step 30 (half-way): 0.6666 / 2.
        assert!((lr[28] - 0.6e-2).abs() < 1e-6 && (lr[29] - 0.3333e-2).abs() < 1e-6);
        let (_, stderr) = fairyc(&["run", &out, "-p", "The ", "-n", "5"]);
        assert!(stderr.contains("generated"), "{name}: {stderr}");
    }
    // What random initialisation needs, and what it refuses.
    let config = dir.path("llama.json").display().to_string();
    for (args, want) in [
        (
            vec!["--init", "random", "--config", &config],
            "--init random takes",
        ),
        (vec!["--config", &config, &model], "train needs a MODEL"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
            .arg("train")
            .args(&args)
            .args(["--data", &data, "--steps", "1", "-o", "x.fairy"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
    let tied = dir.path("tied.json");
    std::fs::write(
        &tied,
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
            "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
            "num_attention_heads": 4, "tie_word_embeddings": true})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args([
            "train",
            "--init",
            "random",
            "--config",
            &tied.display().to_string(),
        ])
        .args([
            "--tokenizer",
            &model,
            "--data",
            &data,
            "--steps",
            "1",
            "-o",
            "x.fairy",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tie_word_embeddings") && err.contains("tied.json"),
        "{err}"
    );
}

/// The two models of the from-scratch comparison in docs/RESULTS.md have
/// the same number of real parameters, to 0.1%, and start from iFairy's
/// initialisation: N(0, 0.02²) matrices, complex parts N(0, 0.02²/2),
/// unit gains (listed with a standard deviation of 0: all ones).
#[test]
fn comparison_configs_have_equal_sizes() {
    let dir = TempDir::new("configs");
    let (model, _) = setup(&dir);
    let count = |config: &str, stds: &[(&str, f64)]| -> usize {
        let tokenizer = fairyc::import(Path::new(&model)).unwrap().tokenizer;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(config);
        let m = fairyc_frontend::init::random_model(&path, tokenizer, 0).unwrap();
        for &(name, want) in stds {
            let w = m.weights.read_f32(name).unwrap();
            let mean = w.iter().map(|&x| f64::from(x)).sum::<f64>() / w.len() as f64;
            let var = w
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / w.len() as f64;
            let std = var.sqrt();
            let ok = if want == 0.0 {
                w.iter().all(|&x| x == 1.0)
            } else {
                (std / want - 1.0).abs() < 0.05 && mean.abs() < 0.1 * want
            };
            assert!(ok, "{name}: mean {mean}, std {std}, want std {want}");
        }
        m.graph
            .weights()
            .map(|(_, _, t)| t.shape.concrete().unwrap().iter().product::<usize>())
            .sum()
    };
    let ifairy = count(
        "examples/configs/ifairy-6m.json",
        &[
            ("layer.0.self_attn.q_proj.weight_real", 0.02 / 2f64.sqrt()),
            ("layer.3.mlp.down_proj.weight_imag", 0.02 / 2f64.sqrt()),
            ("token_embeddings_imag.weight", 0.02),
            ("lm_head.weight", 0.02),
            ("layer.1.pre_layernorm.weight_imag", 0.0),
        ],
    );
    let llama = count(
        "examples/configs/llama-6m.json",
        &[
            ("model.layers.0.self_attn.q_proj.weight", 0.02),
            ("model.embed_tokens.weight", 0.02),
            ("model.norm.weight", 0.0),
        ],
    );
    assert!(
        (ifairy as f64 / llama as f64 - 1.0).abs() < 1e-3,
        "{ifairy} vs {llama}"
    );
}

#[test]
fn a_non_finite_step_stops_training_or_is_skipped_when_asked() {
    let dir = TempDir::new("train-nan");
    let (model, data) = setup(&dir);
    let out = dir.path("nan.fairy").display().to_string();
    let ckpt = dir.path("ckpt").display().to_string();
    let csv = dir.path("loss.csv").display().to_string();
    // A learning rate this large sends the weights to infinity after the
    // first step, and the second step's loss is not finite.
    let args = [
        "train",
        &model,
        "--quant",
        "w2",
        "--data",
        &data,
        "--steps",
        "4",
        "--seq",
        "16",
        "--lr",
        "1e30",
        "--warmup",
        "0",
        "--checkpoint",
        &ckpt,
        "--checkpoint-every",
        "1",
        "--loss-csv",
        &csv,
        "-o",
        &out,
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a NaN step passed: {stderr}");
    assert!(
        stderr.contains("step 2: the loss is NaN") || stderr.contains("step 2: the loss is inf"),
        "{stderr}"
    );
    assert!(!Path::new(&out).exists(), "an artifact was written");
    // The checkpoint holds step 1, never the non-finite step 2.
    let records = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(records.lines().count(), 2, "{records}");
    assert!(
        !records.contains(",0,") && !records.to_lowercase().contains("nan"),
        "{records}"
    );

    std::fs::remove_file(&csv).unwrap();
    let (_, stderr) = fairyc(&[&args[..], &["--skip-nonfinite"]].concat());
    assert!(
        stderr.contains("skipped 3 steps with a non-finite loss or gradient norm"),
        "{stderr}"
    );
    let records = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(records.lines().count(), 2, "{records}");
}
