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
}
