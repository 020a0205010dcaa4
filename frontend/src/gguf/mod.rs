//! Reading and writing GGUF files (versions 2 and 3, little endian).
//!
//! [`GgufFile::open`] memory-maps a file and validates its header, metadata
//! and tensor layout up front, treating the file as hostile: a malformed
//! file yields a [`GgufError`] naming the file and byte offset, never a panic
//! or an allocation larger than the file. Tensor data are then zero-copy
//! views into the map ([`GgufFile::tensor_bytes`]) or dequantized to f32
//! ([`GgufFile::tensor_f32`]). [`GgufWriter`] produces files for tests and
//! benchmarks.
//!
//! Shapes: GGUF lists dimensions fastest-first (`ne0` is the contiguous
//! row length), the reverse of row-major; [`TensorInfo::dims`] keeps GGUF
//! order and [`TensorInfo::shape_row_major`] reverses it.

pub mod dequant;
mod error;
mod metadata;
mod quant;
mod reader;
mod types;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use error::GgufError;
pub use metadata::{MetaArray, MetaValue};
pub use types::GgmlType;
pub use writer::GgufWriter;

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, MetaValue>,
    /// File offset of each metadata value, for error messages.
    value_offsets: HashMap<String, u64>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

/// Name, type, shape and location of one tensor in a [`GgufFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Dimensions in GGUF order: `dims[0]` (ne0) is the contiguous one.
    pub dims: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Absolute byte range of the data in the file.
    data: Range<usize>,
}

impl TensorInfo {
    /// The shape in row-major order (`dims` reversed): `[rows, cols]` for a
    /// matrix.
    pub fn shape_row_major(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        // Validated not to overflow when the file was opened.
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Number of bytes of data in the file.
    pub fn byte_size(&self) -> u64 {
        self.data.len() as u64
    }
}

impl fmt::Debug for GgufFile {
    // Summarized: the metadata alone can hold a 49152-entry vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Opens, memory-maps and validates the GGUF file at `path`.
    ///
    /// The map is read-only; as with any memory map, another process that
    /// truncates the file while it is open can crash this one.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io_error = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; say what it is.
            return Err(GgufError::malformed(path, 0, "the file is empty"));
        }
        // SAFETY: the map is read-only and private to this value; the file
        // must not be modified while it is open, as documented above.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let parsed = reader::parse(path, &map)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            value_offsets: parsed.value_offsets,
            tensors: parsed.tensors,
            by_name: parsed.by_name,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, 32 by default).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// Looks up `key` and converts its value with `convert`; a value that
    /// `convert` rejects is an error describing `expected`.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(value) = self.metadata.get(key) else {
            return Ok(None);
        };
        convert(value)
            .map(Some)
            .ok_or_else(|| GgufError::MetadataType {
                path: self.path.clone(),
                offset: self.value_offsets.get(key).copied().unwrap_or(0),
                key: key.to_string(),
                expected,
                found: value.describe(),
            })
    }

    /// Metadata `key` as a u32, from any integer type whose value fits.
    /// `Ok(None)` if the key is absent.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.typed(key, "an integer that fits u32", |v| {
            v.as_integer().and_then(|i| u32::try_from(i).ok())
        })
    }

    /// Metadata `key` as a u64, from any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "an integer that fits u64", |v| {
            v.as_integer().and_then(|i| u64::try_from(i).ok())
        })
    }

    /// Metadata `key` as an i64, from any integer type whose value fits.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.typed(key, "an integer that fits i64", |v| {
            v.as_integer().and_then(|i| i64::try_from(i).ok())
        })
    }

    /// Metadata `key` as an f32, from an f32 or (rounded) f64.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.typed(key, "a float", |v| match *v {
            MetaValue::F32(x) => Some(x),
            MetaValue::F64(x) => Some(x as f32),
            _ => None,
        })
    }

    /// Metadata `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", |v| match *v {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        })
    }

    /// Metadata `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", |v| match v {
            MetaValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Metadata `key` as an array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        self.typed(key, "an array of strings", |v| match v {
            MetaValue::Array(MetaArray::String(s)) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// Metadata `key` as i32s, from an array of any integer type whose
    /// elements all fit.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.typed(key, "an array of integers that fit i32", |v| match v {
            MetaValue::Array(a) => a.integers_as(),
            _ => None,
        })
    }

    /// Metadata `key` as f32s, from an array of f32 or (rounded) f64.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.typed(key, "an array of floats", |v| match v {
            MetaValue::Array(MetaArray::F32(x)) => Some(x.clone()),
            MetaValue::Array(MetaArray::F64(x)) => Some(x.iter().map(|&x| x as f32).collect()),
            _ => None,
        })
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The raw data of `info`, a zero-copy view into the map.
    ///
    /// # Panics
    ///
    /// If `info` does not describe data within this file (it came from
    /// another [`GgufFile`]).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        match self.map.get(info.data.clone()) {
            Some(bytes) => bytes,
            None => panic!(
                "tensor `{}` is not part of {}",
                info.name,
                self.path.display()
            ),
        }
    }

    /// Tensor `name` dequantized to f32, in row-major order (the order of
    /// its data in the file). Supports F32, F16, BF16, Q8_0, Q4_0, Q4_1,
    /// Q4_K and Q6_K.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::NoSuchTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        dequant::dequantize(info.ggml_type, self.tensor_bytes(info)).map_err(|e| match e {
            dequant::DequantError::Unsupported(ty) => GgufError::UnsupportedType {
                path: self.path.clone(),
                offset: info.data.start as u64,
                name: info.name.clone(),
                ggml_type: ty,
            },
            // Cannot happen: open checked that the data is whole blocks.
            other => GgufError::malformed(&self.path, info.data.start as u64, other.to_string()),
        })
    }
}
