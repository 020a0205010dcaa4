//! fairyc's frontend: reads model files (GGUF, Hugging Face safetensors +
//! config.json) and their tokenizers, and builds IR graphs from them.

pub mod fairy;
pub mod gguf;
pub mod gguf_import;
pub mod hf;
pub mod ifairy;
pub mod import;
pub mod init;
pub mod llama;
pub mod safetensors_store;
pub mod synth;
pub mod tokenizer;

use std::path::{Path, PathBuf};

/// An error importing a model.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A file could not be read or is malformed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// The files are readable but describe a model we cannot build.
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
}

impl FrontendError {
    pub fn io(path: &Path, e: std::io::Error) -> FrontendError {
        FrontendError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}
