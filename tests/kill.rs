//! Nothing lost: `fairyc compile` killed with SIGKILL at several points
//! while it writes over an existing artifact leaves the old artifact or a
//! complete new one, never a partial file; the only debris is the hidden
//! `.NAME.tmpPID` file of the killed process, which the next successful
//! write removes.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};

fn compile(model: &Path, quant: &str, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(["compile", model.to_str().unwrap(), "--quant", quant, "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the fairyc binary runs")
}

/// The names in `dir` other than the model and the artifact.
fn debris(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "model.gguf" && n != "model.fairy")
        .collect()
}

#[test]
fn a_killed_compile_leaves_the_old_artifact_or_the_new_one() {
    let dir = TempDir::new("kill");
    let model = dir.path("model.gguf");
    // Wide enough that the artifact takes a moment to write.
    let cfg = SynthConfig {
        hidden: 256,
        intermediate: 512,
        heads: 8,
        kv_heads: 4,
        head_dim: 32,
        ..SynthConfig::tiny()
    };
    write_gguf(&model, &cfg, GgmlType::F32).unwrap();
    let out = dir.path("model.fairy");
    assert!(compile(&model, "w2", &out).wait().unwrap().success());
    let old = std::fs::read(&out).unwrap();
    fairyc_frontend::import::import(&out).expect("the old artifact imports");

    let mut outcomes = Vec::new();
    // Kill before the write starts (a delay from the start), and after
    // the temporary file appears (a delay from its appearance).
    // Delays in microseconds: writing the artifact takes about a millisecond.
    let points: [(bool, u64); 8] = [
        (false, 5_000),
        (false, 50_000),
        (true, 0),
        (true, 0),
        (true, 200),
        (true, 500),
        (true, 1_000),
        (true, 10_000),
    ];
    for (after_temp, delay_us) in points {
        let mut child = compile(&model, "w1", &out);
        // Earlier kills leave their temp files: wait for this child's.
        let temp = dir.path(&format!(".model.fairy.tmp{}", child.id()));
        let start = Instant::now();
        if after_temp {
            while !temp.exists()
                && child.try_wait().unwrap().is_none()
                && start.elapsed() < Duration::from_secs(120)
            {
                std::thread::yield_now();
            }
        }
        std::thread::sleep(Duration::from_micros(delay_us));
        let writing = temp.exists();
        child.kill().unwrap();
        child.wait().unwrap();

        let now = std::fs::read(&out).expect("the artifact is never missing");
        let outcome = if now == old {
            "old"
        } else {
            fairyc_frontend::import::import(&out).unwrap_or_else(|e| {
                panic!("killed {delay_us} µs after the temp file: a broken artifact: {e}")
            });
            "new"
        };
        for name in debris(&dir.path("")) {
            assert!(
                name.starts_with(".model.fairy.tmp"),
                "unexpected file {name} after a kill"
            );
        }
        outcomes.push((after_temp, delay_us, writing, outcome));
    }
    // (after the temp file appeared, delay, temp file there at the kill,
    // what the artifact was afterwards)
    eprintln!("kill points and outcomes: {outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o.2),
        "no kill landed while the artifact was being written: {outcomes:?}"
    );

    // A complete write replaces the artifact and removes the dead
    // writers' temporary files.
    assert!(compile(&model, "w1", &out).wait().unwrap().success());
    fairyc_frontend::import::import(&out).unwrap();
    assert_eq!(debris(&dir.path("")), Vec::<String>::new());
}
