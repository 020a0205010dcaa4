//! A weight store over one or more memory-mapped safetensors files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fairyc_ir::{DType, Shape, SharedBytes, TensorType, WeightError, WeightStore};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::FrontendError;

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the file, already checked against its length.
    start: usize,
    end: usize,
}

/// Tensors of safetensors files, read in place through memory maps.
pub struct SafetensorsStore {
    paths: Vec<PathBuf>,
    maps: Vec<Arc<Mmap>>,
    tensors: BTreeMap<String, Entry>,
    /// The `__metadata__` string map of each file, merged.
    metadata: BTreeMap<String, String>,
}

impl SafetensorsStore {
    /// Opens the files; a tensor name may appear in only one of them.
    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsStore, FrontendError> {
        let mut store = SafetensorsStore {
            paths: paths.to_vec(),
            maps: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| FrontendError::io(path, e))?;
            // SAFETY: the map is read-only; a file changed underneath while
            // mapped is outside what fairyc promises to handle.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| FrontendError::io(path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| FrontendError::File {
                    path: path.clone(),
                    message: format!("not a valid safetensors file: {e}"),
                })?;
            let base = 8 + header_len;
            if let Some(m) = meta.metadata() {
                store
                    .metadata
                    .extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                let entry = Entry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + start,
                    end: base + end,
                };
                if store.tensors.insert(name.clone(), entry).is_some() {
                    return Err(FrontendError::File {
                        path: path.clone(),
                        message: format!("tensor `{name}` also appears in an earlier file"),
                    });
                }
            }
            store.maps.push(Arc::new(map));
        }
        Ok(store)
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw bytes and type of a tensor.
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let e = self.tensors.get(name)?;
        Some((e.dtype, &e.shape, &self.maps[e.file][e.start..e.end]))
    }

    /// A tensor's bytes lent from the memory map (which stays mapped while
    /// they are held).
    pub fn lend(&self, name: &str) -> Option<SharedBytes> {
        let e = self.tensors.get(name)?;
        Some(SharedBytes::new(MappedWindow {
            map: self.maps[e.file].clone(),
            start: e.start,
            end: e.end,
        }))
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl WeightStore for SafetensorsStore {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Float tensors of any width read as f32: the decoded form.
    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        let e = self.tensors.get(name)?;
        matches!(e.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
            .then(|| TensorType::new(DType::F32, Shape::new(e.shape.iter().copied())))
    }

    fn encoding(&self, name: &str) -> Option<String> {
        self.tensors
            .get(name)
            .map(|e| format!("{:?}", e.dtype).to_lowercase())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let err = |message: String| WeightError {
            name: name.to_string(),
            message,
        };
        let (dtype, _, bytes) = self
            .raw(name)
            .ok_or_else(|| err("not in the safetensors files".into()))?;
        let words = |n: usize| bytes.chunks_exact(n);
        Ok(match dtype {
            Dtype::F32 => words(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => words(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => words(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(err(format!("unsupported safetensors dtype {other:?}"))),
        })
    }
}

/// The safetensors files of a Hugging Face model folder: `model.safetensors`,
/// or the shards that `model.safetensors.index.json` lists.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>, FrontendError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| FrontendError::File {
        path: dir.to_path_buf(),
        message: "no model.safetensors or model.safetensors.index.json in this folder".into(),
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| FrontendError::File {
        path: index.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| FrontendError::File {
            path: index.clone(),
            message: "expected an object `weight_map` of tensor name to shard file".into(),
        })?;
    let mut shards: Vec<String> = Vec::new();
    for v in map.values() {
        let s = v.as_str().ok_or_else(|| FrontendError::File {
            path: index.clone(),
            message: format!("shard name {v} is not a string"),
        })?;
        // Shard names are file names beside the index, never paths.
        if s.contains('/') || s.contains('\\') || s.starts_with('.') {
            return Err(FrontendError::File {
                path: index.clone(),
                message: format!("shard name `{s}` is not a plain file name"),
            });
        }
        if !shards.iter().any(|x| x == s) {
            shards.push(s.to_string());
        }
    }
    shards.sort();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// A window of a memory map, kept mapped by its owner.
struct MappedWindow {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedWindow {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}
