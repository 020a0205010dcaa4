//! The fuzzers' seed corpora (`fuzz/corpus/<target>/seed-*`): small real
//! files of a synthetic tiny model. A missing seed is generated; every seed,
//! new or committed, must load, so the fuzzers start from valid inputs.
//! Delete a seed to regenerate it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use fairyc_frontend::gguf::{GgmlType, GgufFile};
use fairyc_frontend::synth::{write_gguf, write_hf, HfDtype, SynthConfig};
use fairyc_frontend::tokenizer::Tokenizer;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies `from` to `corpus/target/name` unless that seed exists already;
/// returns the seed's path.
fn seed(target: &str, name: &str, from: &Path) -> PathBuf {
    let path = corpus(target).join(name);
    if !path.exists() {
        std::fs::copy(from, &path).unwrap();
    }
    path
}

fn fairyc(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fairyc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn seeds_exist_and_load() {
    let dir = TempDir::new("fuzz-seeds");
    let cfg = SynthConfig::tiny();
    let gguf = dir.path("tiny.gguf");
    write_gguf(&gguf, &cfg, GgmlType::Q8_0).unwrap();
    let hf = dir.path("hf");
    write_hf(&hf, &cfg, HfDtype::F32).unwrap();
    let fir = dir.path("tiny.fir");
    fairyc(&[
        "import",
        gguf.to_str().unwrap(),
        "-o",
        fir.to_str().unwrap(),
    ]);
    // A relative source keeps the seed free of this machine's paths.
    let source = gguf.canonicalize().unwrap();
    let text = std::fs::read_to_string(&fir)
        .unwrap()
        .replace(source.to_str().unwrap(), "tiny.gguf");
    std::fs::write(&fir, text).unwrap();
    let artifact = dir.path("tiny.fairy");
    fairyc(&[
        "compile",
        gguf.to_str().unwrap(),
        "--quant",
        "w1",
        "-o",
        artifact.to_str().unwrap(),
    ]);

    let g = seed("gguf", "seed-tiny-q8_0.gguf", &gguf);
    assert!(!GgufFile::open(&g).unwrap().tensors().is_empty());

    seed("import", "seed-tiny.gguf", &gguf);
    seed("import", "seed-tiny.fir", &fir);
    let a = seed("import", "seed-tiny.fairy", &artifact);
    fairyc_frontend::import::import(&a).unwrap();

    let c = seed("hf_json", "seed-config.json", &hf.join("config.json"));
    fairyc_frontend::hf::read_config(&c).unwrap();
    let t = seed("hf_json", "seed-tokenizer.json", &hf.join("tokenizer.json"));
    let tc = seed(
        "hf_json",
        "seed-tokenizer_config.json",
        &hf.join("tokenizer_config.json"),
    );
    Tokenizer::from_hf_files(&t, Some(&tc)).unwrap();

    let f = seed("ir_text", "seed-tiny.fir", &fir);
    let graph = fairyc_ir::text::parse(&std::fs::read_to_string(&f).unwrap(), "seed").unwrap();
    fairyc_ir::verify(&graph).unwrap();
    // The hostile seeds (committed by hand) parse, and the verifier rejects
    // them with a message instead of panicking, as the fuzz target runs them.
    let mut hostile = 0;
    for entry in std::fs::read_dir(corpus("ir_text")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("seed-hostile-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let graph = fairyc_ir::text::parse(&text, &name).unwrap();
        let err = fairyc_ir::verify(&graph).expect_err(&name);
        assert!(!err.to_string().is_empty());
        hostile += 1;
    }
    assert!(hostile >= 4, "{hostile} hostile IR seeds");

    let total: u64 = ["gguf", "import", "hf_json", "ir_text"]
        .iter()
        .flat_map(|t| std::fs::read_dir(corpus(t)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("seed-")
        })
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(total < 1 << 20, "the seeds take {total} bytes, over 1 MiB");
}
