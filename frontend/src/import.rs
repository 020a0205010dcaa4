//! One entry point for every model format fairyc reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fairyc_ir::{text, verify, verify_weights, Graph, WeightStore};

use crate::fairy;
use crate::gguf::GgufFile;
use crate::gguf_import::{self, GgufStore};
use crate::safetensors_store::{model_files, SafetensorsStore};
use crate::tokenizer::Tokenizer;
use crate::{hf, ifairy, llama, FrontendError};

/// A model ready to compile or run: its graph, the store its `weight`
/// nodes name, and its tokenizer.
pub struct Imported {
    pub graph: Graph,
    pub weights: Arc<dyn WeightStore>,
    pub tokenizer: Tokenizer,
    /// The file or folder the weights and tokenizer come from.
    pub source: PathBuf,
}

/// What kind of model a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    /// A Hugging Face folder: config.json, safetensors, tokenizer.json.
    HuggingFace,
    /// fairyc's textual IR, whose `meta source` names the weights.
    Fir,
    /// A compiled `.fairy` artifact.
    Fairy,
}

/// Recognises a model by its content (GGUF magic, IR text) or, for
/// folders, by config.json.
pub fn detect(path: &Path) -> Result<Format, FrontendError> {
    if path.is_dir() {
        return if path.join("config.json").is_file() {
            Ok(Format::HuggingFace)
        } else {
            Err(FrontendError::File {
                path: path.to_path_buf(),
                message: "a model folder needs a config.json".into(),
            })
        };
    }
    let mut head = [0u8; 16];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| FrontendError::io(path, e))?;
        f.read(&mut head).map_err(|e| FrontendError::io(path, e))?
    };
    if head[..n].starts_with(b"GGUF") {
        Ok(Format::Gguf)
    } else if String::from_utf8_lossy(&head[..n])
        .trim_start()
        .starts_with("graph")
    {
        Ok(Format::Fir)
    } else if n > 8 && head[8] == b'{' {
        // A safetensors header: a compiled artifact, or a bare weights file.
        if fairy::is_artifact(path)? {
            Ok(Format::Fairy)
        } else {
            Err(FrontendError::File {
                path: path.to_path_buf(),
                message: "a safetensors file without fairyc's metadata: pass the Hugging Face folder that holds it, or a compiled .fairy artifact".into(),
            })
        }
    } else {
        Err(FrontendError::File {
            path: path.to_path_buf(),
            message: "not a model fairyc reads: expected a GGUF file, a fairyc IR (.fir) file, a compiled .fairy artifact, or a Hugging Face folder with config.json".into(),
        })
    }
}

/// Imports a model from a GGUF file, a Hugging Face folder, or a `.fir`
/// file. The graph is verified against the weights before it is returned.
pub fn import(path: &Path) -> Result<Imported, FrontendError> {
    let imported = match detect(path)? {
        Format::Gguf => import_gguf(path, true)?,
        Format::HuggingFace => import_hf(path)?,
        Format::Fir => import_fir(path)?,
        Format::Fairy => import_fairy(path)?,
    };
    let invalid = |message: String| FrontendError::File {
        path: path.to_path_buf(),
        message,
    };
    verify(&imported.graph).map_err(|e| invalid(e.to_string()))?;
    verify_weights(&imported.graph, imported.weights.as_ref())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(imported)
}

/// Builds the decoder graph, naming `path` in errors about the model.
fn build_graph(
    path: &Path,
    config: &llama::LlamaConfig,
    store: &dyn WeightStore,
) -> Result<Graph, FrontendError> {
    in_file(path, llama::build_graph(config, store))
}

/// Names `path` in model errors.
fn in_file(path: &Path, r: Result<Graph, FrontendError>) -> Result<Graph, FrontendError> {
    r.map_err(|e| match e {
        FrontendError::Model(message) => FrontendError::File {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

fn with_source(mut graph: Graph, path: &Path, format: &str) -> Graph {
    let source = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    graph
        .meta
        .insert("source".into(), source.display().to_string());
    graph.meta.insert("format".into(), format.into());
    graph
}

/// `hf_order`: read llama's q/k rows in Hugging Face order (see
/// [`GgufStore::hf_order`]), as the graph built here expects; IR files
/// written before that, with interleaved RoPE, read the rows as stored.
fn import_gguf(path: &Path, hf_order: bool) -> Result<Imported, FrontendError> {
    let file = GgufFile::open(path)?;
    let config = gguf_import::read_config(&file)?;
    let tokenizer = gguf_import::read_tokenizer(&file)?;
    let store = if hf_order {
        GgufStore::hf_order(file, &config)
    } else {
        GgufStore::new(file)
    };
    let graph = build_graph(path, &config, &store)?;
    Ok(Imported {
        graph: with_source(graph, path, "gguf"),
        weights: Arc::new(store),
        tokenizer,
        source: path.to_path_buf(),
    })
}

fn import_hf(dir: &Path) -> Result<Imported, FrontendError> {
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| FrontendError::io(&config_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| FrontendError::File {
        path: config_path.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    let store = SafetensorsStore::open(&model_files(dir)?)?;
    let tokenizer_json = dir.join("tokenizer.json");
    let tokenizer_config = dir.join("tokenizer_config.json");
    let tokenizer = Tokenizer::from_hf_files(
        &tokenizer_json,
        tokenizer_config
            .is_file()
            .then_some(tokenizer_config.as_path()),
    )
    .map_err(|e| FrontendError::File {
        path: tokenizer_json.clone(),
        message: e.to_string(),
    })?;
    let graph = if ifairy::is_ifairy(&json) {
        let config = ifairy::read_config(&config_path, json)?;
        in_file(dir, ifairy::build_graph(&config, &store))?
    } else {
        let config = hf::read_config(&config_path)?;
        build_graph(dir, &config, &store)?
    };
    Ok(Imported {
        graph: with_source(graph, dir, "huggingface"),
        weights: Arc::new(store),
        tokenizer,
        source: dir.to_path_buf(),
    })
}

fn import_fir(path: &Path) -> Result<Imported, FrontendError> {
    let text = std::fs::read_to_string(path).map_err(|e| FrontendError::io(path, e))?;
    let graph = text::parse(&text, &path.display().to_string())
        .map_err(|e| FrontendError::Model(e.to_string()))?;
    let source = graph
        .meta
        .get("source")
        .ok_or_else(|| FrontendError::File {
            path: path.to_path_buf(),
            message: "the graph has no `meta source = \"...\"` naming its weights".into(),
        })?;
    // A relative source is relative to the .fir file's folder.
    let source = path.parent().unwrap_or(Path::new(".")).join(source);
    let origin = match detect(&source) {
        Ok(Format::Gguf) => {
            let interleaved = graph.nodes.iter().any(|n| {
                matches!(
                    n.op,
                    fairyc_ir::Op::Rope {
                        layout: fairyc_ir::RopeLayout::Interleaved,
                        ..
                    }
                )
            });
            import_gguf(&source, !interleaved)
        }
        Ok(Format::HuggingFace) => import_hf(&source),
        Ok(Format::Fir | Format::Fairy) => Err(FrontendError::File {
            path: source.clone(),
            message: "an IR file or a compiled artifact, not source weights".into(),
        }),
        Err(e) => Err(e),
    }
    .map_err(|e| FrontendError::File {
        path: path.to_path_buf(),
        message: format!("cannot load the weights its `meta source` names: {e}"),
    })?;
    Ok(Imported { graph, ..origin })
}

fn import_fairy(path: &Path) -> Result<Imported, FrontendError> {
    let (graph, store, tokenizer) = fairy::read(path)?;
    Ok(Imported {
        graph,
        weights: Arc::new(store),
        tokenizer,
        source: path.to_path_buf(),
    })
}
