//! The error type of the GGUF reader.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::types::GgmlType;

/// Why a GGUF file could not be read, or a value in it could not be used.
///
/// Every variant names the file; those about the file's contents also name
/// the byte offset at which the problem was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened, inspected or memory-mapped.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a well-formed GGUF file.
    #[error("{}: byte {offset}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What was found and what was expected instead.
        message: String,
    },
    /// A metadata value does not have the type a getter asked for.
    #[error("{}: byte {offset}: metadata `{key}`: expected {expected}, found {found}", path.display())]
    MetadataType {
        /// The file.
        path: PathBuf,
        /// Byte offset of the value in the file.
        offset: u64,
        /// The metadata key.
        key: String,
        /// What the getter accepts.
        expected: &'static str,
        /// The value's actual type (and value, for scalars).
        found: String,
    },
    /// No tensor has the requested name.
    #[error("{}: no tensor named `{name}`", path.display())]
    NoSuchTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// The tensor's type has no dequantizer.
    #[error("{}: byte {offset}: unsupported tensor type {ggml_type} for tensor {name}", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// Byte offset of the tensor's data.
        offset: u64,
        /// The tensor.
        name: String,
        /// Its type.
        ggml_type: GgmlType,
    },
}

impl GgufError {
    pub(crate) fn malformed(path: &Path, offset: u64, message: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.to_path_buf(),
            offset,
            message: message.into(),
        }
    }

    /// Prefixes the message of a `Malformed` error with `context`, so that a
    /// low-level error ("unexpected end of file") says where it happened.
    pub(crate) fn context(self, context: impl fmt::Display) -> Self {
        match self {
            Self::Malformed {
                path,
                offset,
                message,
            } => Self::Malformed {
                path,
                offset,
                message: format!("{context}: {message}"),
            },
            other => other,
        }
    }
}
