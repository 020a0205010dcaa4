//! The `.fairy` artifact: one self-contained safetensors file holding a
//! compiled model.
//!
//! - packed {+1, -1, +i, -i} codes as `U8` tensors `[n, ceil(m/4)]` (four
//!   complex weights per byte, rows padded to a whole byte), their logical
//!   shapes in the metadata key `fairyc.codes`;
//! - scales and full-precision tensors as `F32`;
//! - metadata: `fairyc.format`, the final IR (`fairyc.ir`), the IR before
//!   deployment with every weight as an expression of the source weights
//!   (`fairyc.source_ir`), and the tokenizer (`fairyc.tokenizer`,
//!   `fairyc.tokenizer_config`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use fairyc_ir::atomic::write_atomically;
use fairyc_ir::{text, DType, Graph, Shape, TensorType, WeightError, WeightStore};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::safetensors_store::SafetensorsStore;
use crate::tokenizer::Tokenizer;
use crate::FrontendError;

pub const FORMAT: &str = "fairy-1";

/// One tensor to store in an artifact.
pub enum ArtifactTensor {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// Packed codes of a `[rows, cols]` code matrix.
    Codes {
        rows: usize,
        cols: usize,
        packed: Vec<u8>,
    },
}

impl ArtifactTensor {
    pub fn bytes(&self) -> usize {
        match self {
            ArtifactTensor::F32 { data, .. } => data.len() * 4,
            ArtifactTensor::Codes { packed, .. } => packed.len(),
        }
    }
}

/// Writes an artifact atomically.
pub fn write(
    path: &Path,
    graph: &Graph,
    source_graph: &Graph,
    tokenizer: &Tokenizer,
    tensors: &[(String, ArtifactTensor)],
) -> Result<(), FrontendError> {
    let (tok_json, tok_config) = tokenizer
        .to_hf_json()
        .map_err(|e| FrontendError::Model(e.to_string()))?;
    let codes: BTreeMap<&str, [usize; 2]> = tensors
        .iter()
        .filter_map(|(name, t)| match t {
            ArtifactTensor::Codes { rows, cols, .. } => Some((name.as_str(), [*rows, *cols])),
            ArtifactTensor::F32 { .. } => None,
        })
        .collect();
    let metadata = HashMap::from([
        ("fairyc.format".to_string(), FORMAT.to_string()),
        ("fairyc.ir".to_string(), text::print(graph)),
        ("fairyc.source_ir".to_string(), text::print(source_graph)),
        ("fairyc.tokenizer".to_string(), tok_json),
        ("fairyc.tokenizer_config".to_string(), tok_config),
        (
            "fairyc.codes".to_string(),
            serde_json::to_string(&codes).expect("a map of names to pairs serialises"),
        ),
    ]);
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let view = match t {
                ArtifactTensor::F32 { shape, data } => {
                    TensorView::new(Dtype::F32, shape.clone(), bytemuck_f32(data))
                }
                ArtifactTensor::Codes { rows, cols, packed } => {
                    TensorView::new(Dtype::U8, vec![*rows, cols.div_ceil(4)], packed)
                }
            };
            view.map(|v| (name.clone(), v))
                .map_err(|e| FrontendError::Model(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| FrontendError::Model(format!("cannot serialise the artifact: {e}")))?;
    write_atomically(path, |w| w.write_all(&bytes)).map_err(|e| FrontendError::io(path, e))
}

/// f32s as little-endian bytes (safetensors' layout).
fn bytemuck_f32(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the
    // slice covers exactly the f32s' memory. Safetensors is little endian,
    // as every platform fairyc builds for.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// The weights of an artifact: safetensors tensors, with code tensors
/// typed `code2` from the artifact's metadata.
pub struct FairyStore {
    inner: SafetensorsStore,
    codes: BTreeMap<String, [usize; 2]>,
}

impl WeightStore for FairyStore {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        match self.codes.get(name) {
            Some(&[rows, cols]) => Some(TensorType::new(DType::Code2, Shape::new([rows, cols]))),
            None => self.inner.tensor_type(name),
        }
    }

    fn encoding(&self, name: &str) -> Option<String> {
        if self.codes.contains_key(name) {
            Some("code2".into())
        } else {
            self.inner.encoding(name)
        }
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        self.inner.read_f32(name)
    }

    fn read_codes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        let err = |message: String| WeightError {
            name: name.to_string(),
            message,
        };
        let &[rows, cols] = self
            .codes
            .get(name)
            .ok_or_else(|| err("not a code tensor".into()))?;
        let (dtype, shape, bytes) = self.inner.raw(name).ok_or_else(|| err("missing".into()))?;
        if dtype != Dtype::U8 || shape != [rows, cols.div_ceil(4)] {
            return Err(err(format!(
                "stored as {dtype:?}{shape:?}, expected U8[{rows}, {}] for code2[{rows}, {cols}]",
                cols.div_ceil(4)
            )));
        }
        Ok(bytes.to_vec())
    }
}

/// Whether a safetensors file is a fairyc artifact (has fairyc's
/// metadata); an error if it is not a valid safetensors file.
pub fn is_artifact(path: &Path) -> Result<bool, FrontendError> {
    Ok(SafetensorsStore::open(&[path.to_path_buf()])?
        .metadata()
        .contains_key("fairyc.format"))
}

/// The graph an artifact was frozen from (`fairyc.source_ir`): every stored
/// tensor as an expression of the source weights, which its `meta source`
/// names.
pub fn read_source_graph(path: &Path) -> Result<Graph, FrontendError> {
    let inner = SafetensorsStore::open(&[path.to_path_buf()])?;
    let text = inner
        .metadata()
        .get("fairyc.source_ir")
        .ok_or_else(|| FrontendError::File {
            path: path.to_path_buf(),
            message: "metadata `fairyc.source_ir` is missing".into(),
        })?;
    text::parse(text, &format!("{}#fairyc.source_ir", path.display()))
        .map_err(|e| FrontendError::Model(e.to_string()))
}

/// Reads an artifact: its deployed graph, weights and tokenizer.
pub fn read(path: &Path) -> Result<(Graph, FairyStore, Tokenizer), FrontendError> {
    let inner = SafetensorsStore::open(&[path.to_path_buf()])?;
    let meta = inner.metadata();
    let bad = |message: String| FrontendError::File {
        path: path.to_path_buf(),
        message,
    };
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| bad(format!("metadata `{key}` is missing")))
    };
    let format = get("fairyc.format")?;
    if format != FORMAT {
        return Err(bad(format!("artifact format `{format}` is not `{FORMAT}`")));
    }
    let graph = text::parse(get("fairyc.ir")?, &format!("{}#fairyc.ir", path.display()))
        .map_err(|e| FrontendError::Model(e.to_string()))?;
    let codes: BTreeMap<String, [usize; 2]> = serde_json::from_str(get("fairyc.codes")?)
        .map_err(|e| bad(format!("metadata `fairyc.codes`: {e}")))?;
    // Every code tensor must be stored, packed to the bytes its logical
    // shape needs: the metadata cannot make a reader expect more.
    for (name, &[rows, cols]) in &codes {
        let (dtype, shape, _) = inner.raw(name).ok_or_else(|| {
            bad(format!(
                "metadata `fairyc.codes` names tensor `{name}`, which the file does not hold"
            ))
        })?;
        if dtype != Dtype::U8 || shape != [rows, cols.div_ceil(4)] {
            return Err(bad(format!(
                "code tensor `{name}` is stored as {dtype:?}{shape:?}, expected U8[{rows}, {}] for code2[{rows}, {cols}]",
                cols.div_ceil(4)
            )));
        }
    }
    let tokenizer = Tokenizer::from_hf_bytes(
        get("fairyc.tokenizer")?.as_bytes(),
        path,
        Some((get("fairyc.tokenizer_config")?.as_bytes(), path)),
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok((graph, FairyStore { inner, codes }, tokenizer))
}
