//! The weight store: where the tensors that `weight` nodes name live.
//!
//! Graphs hold only names; a store maps them to data, typically
//! memory-mapped from the model file and decoded on demand.

use crate::types::TensorType;

/// An error reading one weight.
#[derive(Debug, thiserror::Error)]
#[error("weight \"{name}\": {message}")]
pub struct WeightError {
    pub name: String,
    pub message: String,
}

/// A source of named tensors.
pub trait WeightStore: Send + Sync {
    /// Names of all stored tensors.
    fn names(&self) -> Vec<String>;
    /// The type a graph sees for `name`, if stored.
    fn tensor_type(&self, name: &str) -> Option<TensorType>;
    /// How the tensor is encoded at rest (e.g. `q4_1`, `f32`), for reports.
    fn encoding(&self, name: &str) -> Option<String>;
    /// The tensor decoded to f32 in row-major order (complex tensors as
    /// interleaved re, im pairs).
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError>;
    /// A `code2` tensor's packed codes, as `fairyc_ir::quant` lays them out.
    fn read_codes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        Err(WeightError {
            name: name.to_string(),
            message: "this store holds no code tensors".into(),
        })
    }
    /// The packed codes lent, not copied, where the store can (a window of
    /// a memory-mapped file); by default a copy.
    fn lend_codes(&self, name: &str) -> Result<SharedBytes, WeightError> {
        Ok(SharedBytes::new(self.read_codes(name)?))
    }
}

/// Bytes shared between a store and the programs that read them: a copy,
/// or a window of a memory map that stays mapped while anyone holds it.
#[derive(Clone)]
pub struct SharedBytes(std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>);

impl SharedBytes {
    pub fn new(owner: impl AsRef<[u8]> + Send + Sync + 'static) -> SharedBytes {
        SharedBytes(std::sync::Arc::new(owner))
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        **self == **other
    }
}

/// Tensors held in memory, as f32: freshly initialised models, training
/// state, tests.
#[derive(Clone, Default)]
pub struct MemoryStore {
    tensors: std::collections::BTreeMap<String, (TensorType, std::sync::Arc<Vec<f32>>)>,
}

impl MemoryStore {
    /// Stores `data` (row-major, `ty`'s element count) as `name`.
    pub fn insert(&mut self, name: impl Into<String>, ty: TensorType, data: Vec<f32>) {
        self.tensors
            .insert(name.into(), (ty, std::sync::Arc::new(data)));
    }

    pub fn get(&self, name: &str) -> Option<&(TensorType, std::sync::Arc<Vec<f32>>)> {
        self.tensors.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<(TensorType, std::sync::Arc<Vec<f32>>)> {
        self.tensors.remove(name)
    }

    /// Every tensor, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &(TensorType, std::sync::Arc<Vec<f32>>))> {
        self.tensors.iter()
    }
}

impl WeightStore for MemoryStore {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        self.tensors.get(name).map(|(t, _)| t.clone())
    }

    fn encoding(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|_| "f32".to_string())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        self.tensors
            .get(name)
            .map(|(_, d)| d.as_ref().clone())
            .ok_or_else(|| WeightError {
                name: name.to_string(),
                message: "not in the store".into(),
            })
    }
}
