//! Helpers shared by the integration tests: temporary folders and GGUF
//! rewriting for broken or altered models.

// Every test binary compiles this module and uses its own subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fairyc_frontend::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
use fairyc_frontend::synth::{
    write_gguf, write_hf, write_ifairy_hf, Architecture, HfDtype, IfairySynthConfig, SynthConfig,
};

pub mod assets;
#[path = "../../backends/tests/common/ptxas.rs"]
pub mod ptxas;
#[allow(unused_imports)]
pub use assets::{shared_or_skip, smollm2_or_skip};

/// A fresh folder under the system temp dir, unique to this process and
/// call, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fairyc-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `name` inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tensor of a GGUF file, decoded: name, row-major shape, values.
pub type GgufTensor = (String, Vec<usize>, Vec<f32>);

/// Copies the GGUF file `src` to `dst` with every tensor as F32, after
/// `edit` has changed its metadata and tensors.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<(String, MetaValue)>, &mut Vec<GgufTensor>),
) {
    let file = GgufFile::open(src).unwrap();
    let mut meta: Vec<(String, MetaValue)> = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tensors: Vec<GgufTensor> = file
        .tensors()
        .iter()
        .map(|t| {
            let data = file.tensor_f32(&t.name).unwrap();
            (t.name.clone(), t.shape_row_major(), data)
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v);
    }
    for (name, shape, data) in &tensors {
        w.add_tensor_f32(name, shape, data, GgmlType::F32).unwrap();
    }
    w.write(dst).unwrap();
}

/// One tensor of a safetensors file: name, dtype, shape, bytes.
pub type StTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Copies the safetensors file (a `.fairy` artifact) `src` to `dst` after
/// `edit` has changed its metadata and tensors.
pub fn rewrite_artifact(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, String>, &mut Vec<StTensor>),
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<StTensor> = file
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut meta, &mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    let out = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// Training text for the tests: the first `bytes` bytes (cut at a line) of
/// the shared public corpus (`FAIRYC_SHARED` overrides where the shared
/// folder is), never documentation.
pub fn training_text(bytes: usize) -> String {
    let path = assets::shared_path().join("corpus/public.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the training text {} is needed: {e}", path.display()));
    let cut = text[..bytes.min(text.len())]
        .rfind('\n')
        .map_or(bytes.min(text.len()), |i| i + 1);
    text[..cut].to_string()
}

/// Whether a CUDA GPU is usable here; where none is (CI), the caller skips
/// and this prints SKIPPED, unless FAIRYC_REQUIRE_GPU=1 (set on the GPU
/// machine) makes a missing GPU a failure.
pub fn gpu_or_skip() -> bool {
    if fairyc::Cuda::available() {
        return true;
    }
    assert!(
        std::env::var_os("FAIRYC_REQUIRE_GPU").is_none(),
        "FAIRYC_REQUIRE_GPU is set but no CUDA device is usable"
    );
    eprintln!("SKIPPED: no CUDA driver or device on this machine");
    false
}

/// `fairyc compile SOURCE --quant QUANT -o OUT`, which must succeed.
pub fn compile_artifact(source: &Path, quant: &str, out: &Path) {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(["compile", source.to_str().unwrap(), "--quant", quant, "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every tiny model the backends are checked on, written into `dir`: llama
/// (GGUF), qwen2 and iFairy (Hugging Face), W1/W2/W3 artifacts of the
/// llama and the iFairy's native artifact.
pub fn tiny_models(dir: &TempDir) -> Vec<(&'static str, std::path::PathBuf)> {
    let llama = dir.path("llama.gguf");
    write_gguf(&llama, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    let qwen = dir.path("qwen");
    let qwen_cfg = SynthConfig {
        architecture: Architecture::Qwen2,
        ..SynthConfig::tiny()
    };
    write_hf(&qwen, &qwen_cfg, HfDtype::F32).unwrap();
    let ifairy = dir.path("ifairy");
    write_ifairy_hf(&ifairy, &IfairySynthConfig::tiny()).unwrap();
    let mut models = vec![
        ("llama", llama.clone()),
        ("qwen2", qwen),
        ("ifairy", ifairy.clone()),
    ];
    for quant in ["w1", "w2", "w3"] {
        let out = dir.path(&format!("llama-{quant}.fairy"));
        compile_artifact(&llama, quant, &out);
        models.push((quant, out));
    }
    let native = dir.path("ifairy.fairy");
    compile_artifact(&ifairy, "native", &native);
    models.push(("ifairy native", native));
    models
}
