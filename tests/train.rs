//! `fairyc train`: quantization-aware training of a tiny model through the
//! CLI lowers the held-out loss, resumes exactly from a checkpoint, and
//! ends in an artifact that runs.

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
    let text: String =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
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
    run(
        "20",
        &dir.path("b1.csv").display().to_string(),
        &ckpt,
        false,
    );
    let resumed = run("30", &dir.path("b2.csv").display().to_string(), &ckpt, true);
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
