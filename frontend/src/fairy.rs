//! The `.fairy` artifact: one self-contained safetensors file holding a
//! compiled model.
//!
//! - packed {+1, -1, +i, -i} codes as `U8` tensors `[n, ceil(m/4)]` (four
//!   complex weights per byte, rows padded to a whole byte), their logical
//!   shapes in the metadata key `fairyc.codes`;
//! - scales as `F32`; the unquantized tensors in the precision chosen at
//!   freeze time: `F32`, `F16`, `BF16`, or 8-bit (`q8`: `I8` values in
//!   blocks of 32 along each row with one `F16` scale a block, GGUF's Q8_0
//!   layout, as the tensor `name` and `name.q8_scales`; their logical
//!   shapes in the metadata key `fairyc.q8`);
//! - metadata: `fairyc.format`, the final IR (`fairyc.ir`), the IR before
//!   deployment with every weight as an expression of the source weights
//!   (`fairyc.source_ir`), and the tokenizer (`fairyc.tokenizer`,
//!   `fairyc.tokenizer_config`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use fairyc_ir::atomic::write_atomically;
use fairyc_ir::{text, DType, Graph, Shape, SharedBytes, TensorType, WeightError, WeightStore};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::safetensors_store::SafetensorsStore;
use crate::tokenizer::Tokenizer;
use crate::FrontendError;

pub const FORMAT: &str = "fairy-1";

/// Values per scale of a `q8` tensor (GGUF's Q8_0 block).
pub const Q8_BLOCK: usize = 32;

/// How an unquantized tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
    Bf16,
    /// 8-bit values, one f16 scale per block of 32 in a row (Q8_0).
    Q8,
}

/// One tensor to store in an artifact.
pub enum ArtifactTensor {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// f16 or bf16 values (their bits).
    Half {
        shape: Vec<usize>,
        bf16: bool,
        bits: Vec<u16>,
    },
    /// `[rows, cols]` values as `quants · scale` of their block of
    /// [`Q8_BLOCK`] in the row; `scales` holds f16 bits, `[rows, ceil(cols/32)]`.
    Q8 {
        rows: usize,
        cols: usize,
        quants: Vec<i8>,
        scales: Vec<u16>,
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
            ArtifactTensor::Half { bits, .. } => bits.len() * 2,
            ArtifactTensor::Q8 { quants, scales, .. } => quants.len() + scales.len() * 2,
            ArtifactTensor::Codes { packed, .. } => packed.len(),
        }
    }

    /// Real parameters held (codes: complex weights).
    pub fn len(&self) -> usize {
        match self {
            ArtifactTensor::F32 { data, .. } => data.len(),
            ArtifactTensor::Half { bits, .. } => bits.len(),
            ArtifactTensor::Q8 { quants, .. } => quants.len(),
            ArtifactTensor::Codes { rows, cols, .. } => rows * cols,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `data` of `shape` stored as `storage`; `Q8` needs a matrix (other
    /// ranks stay f32).
    pub fn encode(shape: Vec<usize>, data: Vec<f32>, storage: Storage) -> ArtifactTensor {
        match (storage, &shape[..]) {
            (Storage::F32, _) => ArtifactTensor::F32 { shape, data },
            (Storage::F16, _) => ArtifactTensor::Half {
                shape,
                bf16: false,
                bits: data
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_bits())
                    .collect(),
            },
            (Storage::Bf16, _) => ArtifactTensor::Half {
                shape,
                bf16: true,
                bits: data
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_bits())
                    .collect(),
            },
            (Storage::Q8, &[rows, cols]) if rows * cols == data.len() => {
                let (quants, scales) = q8_quantize(&data, rows, cols);
                ArtifactTensor::Q8 {
                    rows,
                    cols,
                    quants,
                    scales,
                }
            }
            (Storage::Q8, _) => ArtifactTensor::F32 { shape, data },
        }
    }

    /// The values as the artifact's reader decodes them (`None` for codes).
    pub fn values(&self) -> Option<Vec<f32>> {
        match self {
            ArtifactTensor::F32 { data, .. } => Some(data.clone()),
            ArtifactTensor::Half { bf16, bits, .. } => Some(
                bits.iter()
                    .map(|&b| match bf16 {
                        true => half::bf16::from_bits(b).to_f32(),
                        false => half::f16::from_bits(b).to_f32(),
                    })
                    .collect(),
            ),
            ArtifactTensor::Q8 {
                rows,
                cols,
                quants,
                scales,
            } => Some(q8_dequantize(quants, scales, *rows, *cols)),
            ArtifactTensor::Codes { .. } => None,
        }
    }

    /// Which storage this is (`None` for codes).
    pub fn storage(&self) -> Option<Storage> {
        match self {
            ArtifactTensor::F32 { .. } => Some(Storage::F32),
            ArtifactTensor::Half { bf16: false, .. } => Some(Storage::F16),
            ArtifactTensor::Half { bf16: true, .. } => Some(Storage::Bf16),
            ArtifactTensor::Q8 { .. } => Some(Storage::Q8),
            ArtifactTensor::Codes { .. } => None,
        }
    }
}

/// Q8_0 quantization of each row's blocks of 32: scale `d = max|x| / 127`
/// (stored as f16), values `round(x / d)`. A Q8_0 tensor's decoded values
/// quantize back to exactly its own blocks.
pub fn q8_quantize(data: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<u16>) {
    let blocks = cols.div_ceil(Q8_BLOCK);
    let mut quants = vec![0i8; rows * cols];
    let mut scales = vec![0u16; rows * blocks];
    for r in 0..rows {
        for b in 0..blocks {
            let (start, end) = (
                r * cols + b * Q8_BLOCK,
                r * cols + ((b + 1) * Q8_BLOCK).min(cols),
            );
            let amax = data[start..end].iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let d = half::f16::from_f32(amax / 127.0);
            scales[r * blocks + b] = d.to_bits();
            let d = d.to_f32();
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for i in start..end {
                quants[i] = (data[i] * inv).round().clamp(-127.0, 127.0) as i8;
            }
        }
    }
    (quants, scales)
}

/// The values of a `q8` tensor.
pub fn q8_dequantize(quants: &[i8], scales: &[u16], rows: usize, cols: usize) -> Vec<f32> {
    let blocks = cols.div_ceil(Q8_BLOCK);
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let d = half::f16::from_bits(scales[r * blocks + c / Q8_BLOCK]).to_f32();
            out.push(f32::from(quants[r * cols + c]) * d);
        }
    }
    out
}

/// The name of a `q8` tensor's scales.
pub fn q8_scales_name(name: &str) -> String {
    format!("{name}.q8_scales")
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
            _ => None,
        })
        .collect();
    let q8: BTreeMap<&str, [usize; 2]> = tensors
        .iter()
        .filter_map(|(name, t)| match t {
            ArtifactTensor::Q8 { rows, cols, .. } => Some((name.as_str(), [*rows, *cols])),
            _ => None,
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
        (
            "fairyc.q8".to_string(),
            serde_json::to_string(&q8).expect("a map of names to pairs serialises"),
        ),
    ]);
    // Little-endian bytes of the 16- and 8-bit tensors.
    let le16 = |bits: &[u16]| -> Vec<u8> { bits.iter().flat_map(|b| b.to_le_bytes()).collect() };
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .flat_map(|(name, t)| match t {
            ArtifactTensor::Half { shape, bf16, bits } => {
                let dtype = if *bf16 { Dtype::BF16 } else { Dtype::F16 };
                vec![(name.clone(), dtype, shape.clone(), le16(bits))]
            }
            ArtifactTensor::Q8 {
                rows,
                cols,
                quants,
                scales,
            } => vec![
                (
                    name.clone(),
                    Dtype::I8,
                    vec![*rows, *cols],
                    quants.iter().map(|&q| q as u8).collect(),
                ),
                (
                    q8_scales_name(name),
                    Dtype::F16,
                    vec![*rows, cols.div_ceil(Q8_BLOCK)],
                    le16(scales),
                ),
            ],
            _ => Vec::new(),
        })
        .collect();
    let mut views = tensors
        .iter()
        .filter_map(|(name, t)| {
            let view = match t {
                ArtifactTensor::F32 { shape, data } => {
                    TensorView::new(Dtype::F32, shape.clone(), bytemuck_f32(data))
                }
                ArtifactTensor::Codes { rows, cols, packed } => {
                    TensorView::new(Dtype::U8, vec![*rows, cols.div_ceil(4)], packed)
                }
                ArtifactTensor::Half { .. } | ArtifactTensor::Q8 { .. } => return None,
            };
            Some(
                view.map(|v| (name.clone(), v))
                    .map_err(|e| FrontendError::Model(format!("tensor `{name}`: {e}"))),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (name, dtype, shape, bytes) in &owned {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| FrontendError::Model(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
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
    q8: BTreeMap<String, [usize; 2]>,
}

impl WeightStore for FairyStore {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        if let Some(&[rows, cols]) = self.q8.get(name) {
            return Some(TensorType::new(DType::F32, Shape::new([rows, cols])));
        }
        match self.codes.get(name) {
            Some(&[rows, cols]) => Some(TensorType::new(DType::Code2, Shape::new([rows, cols]))),
            None => self.inner.tensor_type(name),
        }
    }

    fn encoding(&self, name: &str) -> Option<String> {
        if self.codes.contains_key(name) {
            Some("code2".into())
        } else if self.q8.contains_key(name) {
            Some("q8".into())
        } else {
            self.inner.encoding(name)
        }
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let Some(&[rows, cols]) = self.q8.get(name) else {
            return self.inner.read_f32(name);
        };
        // Shapes were checked when the artifact was opened.
        let missing = || WeightError {
            name: name.to_string(),
            message: "a q8 tensor without its values or scales".into(),
        };
        let (_, _, quants) = self.inner.raw(name).ok_or_else(missing)?;
        let (_, _, scales) = self.inner.raw(&q8_scales_name(name)).ok_or_else(missing)?;
        let quants: Vec<i8> = quants.iter().map(|&b| b as i8).collect();
        let scales: Vec<u16> = scales
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok(q8_dequantize(&quants, &scales, rows, cols))
    }

    fn read_codes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        Ok(self.lend_codes(name)?.to_vec())
    }

    /// Codes are lent from the artifact's memory map, not copied.
    fn lend_codes(&self, name: &str) -> Result<SharedBytes, WeightError> {
        let err = |message: String| WeightError {
            name: name.to_string(),
            message,
        };
        let &[rows, cols] = self
            .codes
            .get(name)
            .ok_or_else(|| err("not a code tensor".into()))?;
        let (dtype, shape, _) = self.inner.raw(name).ok_or_else(|| err("missing".into()))?;
        if dtype != Dtype::U8 || shape != [rows, cols.div_ceil(4)] {
            return Err(err(format!(
                "stored as {dtype:?}{shape:?}, expected U8[{rows}, {}] for code2[{rows}, {cols}]",
                cols.div_ceil(4)
            )));
        }
        self.inner.lend(name).ok_or_else(|| err("missing".into()))
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
    // 8-bit tensors: values and scales stored with the shapes they need.
    let q8: BTreeMap<String, [usize; 2]> = match meta.get("fairyc.q8") {
        Some(json) => {
            serde_json::from_str(json).map_err(|e| bad(format!("metadata `fairyc.q8`: {e}")))?
        }
        None => BTreeMap::new(),
    };
    for (name, &[rows, cols]) in &q8 {
        let want = [
            (name.clone(), Dtype::I8, vec![rows, cols]),
            (
                q8_scales_name(name),
                Dtype::F16,
                vec![rows, cols.div_ceil(Q8_BLOCK)],
            ),
        ];
        for (tensor, dtype, shape) in want {
            match inner.raw(&tensor) {
                Some((d, s, _)) if d == dtype && s == shape.as_slice() => {}
                other => {
                    return Err(bad(format!(
                        "q8 tensor `{tensor}` is {:?}, expected {dtype:?}{shape:?}",
                        other.map(|(d, s, _)| format!("{d:?}{s:?}"))
                    )))
                }
            }
        }
    }
    let tokenizer = Tokenizer::from_hf_bytes(
        get("fairyc.tokenizer")?.as_bytes(),
        path,
        Some((get("fairyc.tokenizer_config")?.as_bytes(), path)),
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok((graph, FairyStore { inner, codes, q8 }, tokenizer))
}
