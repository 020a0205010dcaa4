//! A GGUF v3 writer, for tests and benchmarks that need real model files.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use fairyc_ir::atomic::write_atomically;

use super::metadata::{MetaArray, MetaValue};
use super::quant;
use super::reader::{byte_size, ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use super::types::GgmlType;

/// Builds a GGUF v3 file in memory and writes it atomically.
///
/// ```no_run
/// # use fairyc_frontend::gguf::{GgmlType, GgufWriter, MetaValue};
/// # fn main() -> std::io::Result<()> {
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", MetaValue::String("llama".into()));
/// w.add_tensor_f32("output_norm.weight", &[64], &[1.0; 64], GgmlType::F32)?;
/// w.add_tensor_f32("token_embd.weight", &[10, 64], &[0.5; 640], GgmlType::Q8_0)?;
/// w.write("tiny.gguf".as_ref())?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    /// GGUF order: ne0 (the contiguous dimension) first.
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl GgufWriter {
    /// An empty file: no metadata, no tensors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets metadata `key` to `value`, replacing an earlier value of the key
    /// in place. Setting `general.alignment` changes the data alignment.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds tensor `name` of shape `shape_row_major` (e.g. `[rows, cols]`)
    /// holding `data` in row-major order, encoded as `ggml_type`: F32, F16,
    /// BF16, Q8_0, Q4_0 or Q4_1 (ggml's reference quantizers).
    ///
    /// Fails with `InvalidInput` for another type, a duplicate name, a shape
    /// of 0 or more than 4 dimensions, a zero dimension, a shape that does
    /// not match `data.len()`, or a last dimension that is not a multiple of
    /// the type's block size.
    pub fn add_tensor_f32(
        &mut self,
        name: &str,
        shape_row_major: &[usize],
        data: &[f32],
        ggml_type: GgmlType,
    ) -> io::Result<&mut Self> {
        if !quant::is_writable(ggml_type) {
            return Err(invalid(format!(
                "tensor `{name}`: cannot quantize to {ggml_type}"
            )));
        }
        let dims = self.check_new_tensor(name, shape_row_major, ggml_type)?;
        let n = elements(&dims);
        if n != Some(data.len() as u64) {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape_row_major:?} needs {} values, got {}",
                n.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        let bytes = quant::quantize(ggml_type, data)
            .ok_or_else(|| invalid(format!("tensor `{name}`: cannot encode as {ggml_type}")))?;
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            ggml_type,
            data: bytes,
        });
        Ok(self)
    }

    /// Adds tensor `name` of shape `shape_row_major` whose data is already
    /// encoded as `ggml_type` (any type; for tests of types that cannot be
    /// quantized here). Fails with `InvalidInput` on the same shape errors as
    /// [`add_tensor_f32`](Self::add_tensor_f32), or if `data` has the wrong
    /// length.
    pub fn add_tensor_raw(
        &mut self,
        name: &str,
        shape_row_major: &[usize],
        ggml_type: GgmlType,
        data: &[u8],
    ) -> io::Result<&mut Self> {
        let dims = self.check_new_tensor(name, shape_row_major, ggml_type)?;
        let size = byte_size(&dims, ggml_type);
        if size != Some(data.len() as u64) {
            return Err(invalid(format!(
                "tensor `{name}`: {ggml_type} shape {shape_row_major:?} needs {size:?} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            ggml_type,
            data: data.to_vec(),
        });
        Ok(self)
    }

    /// Checks a new tensor's name and shape; returns its GGUF dims.
    fn check_new_tensor(&self, name: &str, shape: &[usize], ty: GgmlType) -> io::Result<Vec<u64>> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("duplicate tensor name `{name}`")));
        }
        if shape.is_empty() || shape.len() > 4 || shape.contains(&0) {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} must have 1 to 4 nonzero dimensions"
            )));
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if byte_size(&dims, ty).is_none() {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} overflows or its last dimension is not a \
                 multiple of the {ty} block size {}",
                ty.block_size()
            )));
        }
        Ok(dims)
    }

    /// Writes the file to `path` atomically, through
    /// [`write_atomically`].
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let alignment = self.alignment()?;
        write_atomically(path, |w| self.write_to(w, alignment))
    }

    /// The data alignment: `general.alignment` if set, else 32.
    fn alignment(&self) -> io::Result<u64> {
        let Some((_, value)) = self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match value.as_integer() {
            Some(a) if a > 0 && a <= u32::MAX.into() && (a as u64).is_power_of_two() => {
                Ok(a as u64)
            }
            _ => Err(invalid(format!(
                "`{ALIGNMENT_KEY}` is {}: expected a power of two that fits u32",
                value.describe()
            ))),
        }
    }

    fn write_to(&self, w: &mut BufWriter<File>, alignment: u64) -> io::Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_str(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            encode_value(&mut header, value);
        }
        let mut offset: u64 = 0;
        for t in &self.tensors {
            encode_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }

        // The data section and each tensor in it start aligned.
        let mut pos = header.len() as u64;
        w.write_all(&header)?;
        let pad = |w: &mut BufWriter<File>, pos: u64| -> io::Result<u64> {
            let aligned = pos.next_multiple_of(alignment);
            io::copy(&mut io::repeat(0).take(aligned - pos), w)?;
            Ok(aligned)
        };
        pos = pad(w, pos)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            pos = pad(w, pos + t.data.len() as u64)?;
        }
        Ok(())
    }
}

fn elements(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => encode_str(out, s),
        MetaValue::Array(a) => encode_array(out, a),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Element type, count, elements.
fn encode_array(out: &mut Vec<u8>, array: &MetaArray) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    fn numbers<T: Copy, const N: usize>(out: &mut Vec<u8>, v: &[T], le: fn(T) -> [u8; N]) {
        for &x in v {
            out.extend_from_slice(&le(x));
        }
    }
    match array {
        MetaArray::U8(v) => out.extend_from_slice(v),
        MetaArray::I8(v) => numbers(out, v, i8::to_le_bytes),
        MetaArray::U16(v) => numbers(out, v, u16::to_le_bytes),
        MetaArray::I16(v) => numbers(out, v, i16::to_le_bytes),
        MetaArray::U32(v) => numbers(out, v, u32::to_le_bytes),
        MetaArray::I32(v) => numbers(out, v, i32::to_le_bytes),
        MetaArray::F32(v) => numbers(out, v, f32::to_le_bytes),
        MetaArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        MetaArray::String(v) => v.iter().for_each(|s| encode_str(out, s)),
        MetaArray::Array(v) => v.iter().for_each(|a| encode_array(out, a)),
        MetaArray::U64(v) => numbers(out, v, u64::to_le_bytes),
        MetaArray::I64(v) => numbers(out, v, i64::to_le_bytes),
        MetaArray::F64(v) => numbers(out, v, f64::to_le_bytes),
    }
}
