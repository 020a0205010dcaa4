//! Parsing of the GGUF header, metadata and tensor infos from untrusted bytes.
//!
//! Every count, length, dimension and offset is checked against the bytes
//! that remain and against sane maxima before it is used, so no header field
//! can make the parser allocate more than the file itself holds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::error::GgufError;
use super::metadata::{MetaArray, MetaValue, ValueType};
use super::types::GgmlType;
use super::TensorInfo;

/// Result of the reader.
pub(crate) type Result<T> = std::result::Result<T, GgufError>;

/// Most tensors a file may declare; far beyond any real model.
const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata pairs a file may declare.
const MAX_KV: u64 = 1 << 20;
/// Deepest nesting of arrays of arrays; bounds the parser's recursion.
const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions of a tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Fewest bytes of a tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 8 + 4 + 8;
/// Fewest bytes of a metadata pair: key length, value type, a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Alignment of the data section when `general.alignment` is absent.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// Key of the data-section alignment.
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";

/// Everything parsed from a file, ready for [`super::GgufFile`].
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub value_offsets: HashMap<String, u64>,
    pub tensors: Vec<TensorInfo>,
    pub by_name: HashMap<String, usize>,
    pub alignment: u64,
}

/// A read position in the file's bytes.
struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn error(&self, offset: u64, message: impl Into<String>) -> GgufError {
        GgufError::malformed(self.path, offset, message)
    }

    /// The next `n` bytes, or an error naming `what` was cut off.
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.data.get(self.pos..end));
        match slice {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(self.error(
                self.offset(),
                format!(
                    "unexpected end of file: {what} needs {n} bytes, only {} remain",
                    self.remaining()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a u64 count of items that take at least `min_item_size` bytes
    /// each, and checks that the rest of the file can hold that many and
    /// that there are at most `max`.
    fn count(&mut self, what: &str, min_item_size: u64, max: u64) -> Result<usize> {
        let at = self.offset();
        let n = self.u64(what)?;
        let fits = (self.remaining() / min_item_size).min(max);
        if n > fits {
            return Err(self.error(
                at,
                format!("{what} {n} exceeds what the file can hold (at most {fits})"),
            ));
        }
        // n <= remaining bytes, which fit in usize.
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.offset();
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.error(
                at,
                format!(
                    "{what} length {len} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.error(
                at + 8 + e.utf8_error().valid_up_to() as u64,
                format!("{what} is not valid UTF-8"),
            )
        })
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.offset();
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.error(at, format!("unknown {what} {id} (expected 0..=12)")))
    }

    fn value(&mut self, ty: ValueType) -> Result<MetaValue> {
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.u8("u8 value")?),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.array("i8 value")?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array("u16 value")?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array("i16 value")?)),
            ValueType::U32 => MetaValue::U32(self.u32("u32 value")?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array("i32 value")?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array("f32 value")?)),
            ValueType::Bool => MetaValue::Bool(self.bool()?),
            ValueType::String => MetaValue::String(self.string("string value")?),
            ValueType::Array => MetaValue::Array(self.meta_array(0)?),
            ValueType::U64 => MetaValue::U64(self.u64("u64 value")?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array("i64 value")?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array("f64 value")?)),
        })
    }

    fn bool(&mut self) -> Result<bool> {
        let at = self.offset();
        match self.u8("bool value")? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.error(at, format!("bool value {b} is neither 0 nor 1"))),
        }
    }

    /// Reads `n` fixed-size little-endian numbers in one bounds check.
    fn numbers<const N: usize, T>(&mut self, n: usize, from: fn([u8; N]) -> T) -> Result<Vec<T>> {
        // `count` bounded n by the remaining bytes, so this cannot overflow.
        let bytes = self.take((n * N) as u64, "array elements")?;
        let (chunks, _) = bytes.as_chunks::<N>();
        Ok(chunks.iter().map(|&c| from(c)).collect())
    }

    /// Reads an array (element type, count, elements) nested `depth` deep.
    fn meta_array(&mut self, depth: usize) -> Result<MetaArray> {
        let at = self.offset();
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.error(
                at,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        let ty = self.value_type("array element type")?;
        let n = self.count("array length", ty.min_encoded_size() as u64, u64::MAX)?;
        Ok(match ty {
            ValueType::U8 => MetaArray::U8(self.numbers(n, u8::from_le_bytes)?),
            ValueType::I8 => MetaArray::I8(self.numbers(n, i8::from_le_bytes)?),
            ValueType::U16 => MetaArray::U16(self.numbers(n, u16::from_le_bytes)?),
            ValueType::I16 => MetaArray::I16(self.numbers(n, i16::from_le_bytes)?),
            ValueType::U32 => MetaArray::U32(self.numbers(n, u32::from_le_bytes)?),
            ValueType::I32 => MetaArray::I32(self.numbers(n, i32::from_le_bytes)?),
            ValueType::F32 => MetaArray::F32(self.numbers(n, f32::from_le_bytes)?),
            ValueType::U64 => MetaArray::U64(self.numbers(n, u64::from_le_bytes)?),
            ValueType::I64 => MetaArray::I64(self.numbers(n, i64::from_le_bytes)?),
            ValueType::F64 => MetaArray::F64(self.numbers(n, f64::from_le_bytes)?),
            ValueType::Bool => MetaArray::Bool(self.repeat(n, Self::bool)?),
            ValueType::String => MetaArray::String(self.repeat(n, |c| c.string("array element"))?),
            ValueType::Array => MetaArray::Array(self.repeat(n, |c| c.meta_array(depth + 1))?),
        })
    }

    /// Reads `n` variable-size items, prefixing errors with the item index.
    fn repeat<T>(
        &mut self,
        n: usize,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        // Items may be larger in memory than in the file; grow as they parse.
        let mut out = Vec::with_capacity(n.min(1 << 16));
        for i in 0..n {
            out.push(item(self).map_err(|e| e.context(format_args!("element {i}")))?);
        }
        Ok(out)
    }
}

/// Parses the whole file.
pub(crate) fn parse(path: &Path, data: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { path, data, pos: 0 };

    let magic: [u8; 4] = c.array("magic")?;
    if &magic != b"GGUF" {
        return Err(c.error(
            0,
            format!(
                "bad magic {:?}: expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.error(
                4,
                "GGUF version 1 is not supported (expected version 2 or 3)",
            ))
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(c.error(4, "big-endian GGUF files are not supported"))
        }
        v => {
            return Err(c.error(
                4,
                format!("unsupported GGUF version {v} (expected version 2 or 3)"),
            ))
        }
    }
    let tensor_count = c.count("tensor count", MIN_TENSOR_INFO_SIZE, MAX_TENSORS)?;
    let kv_count = c.count("metadata count", MIN_KV_SIZE, MAX_KV)?;

    let mut metadata = BTreeMap::new();
    let mut value_offsets = HashMap::new();
    for i in 0..kv_count {
        let key_at = c.offset();
        let key = c
            .string("metadata key")
            .map_err(|e| e.context(format_args!("metadata pair {i}")))?;
        if metadata.contains_key(&key) {
            return Err(c.error(key_at, format!("duplicate metadata key `{key}`")));
        }
        let ty = c
            .value_type("metadata value type")
            .map_err(|e| e.context(format_args!("metadata `{key}`")))?;
        let value_at = c.offset();
        let value = c
            .value(ty)
            .map_err(|e| e.context(format_args!("metadata `{key}`")))?;
        value_offsets.insert(key.clone(), value_at);
        metadata.insert(key, value);
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let at = value_offsets.get(ALIGNMENT_KEY).copied().unwrap_or(0);
            match v.as_integer() {
                Some(a) if a > 0 && a <= u32::MAX.into() && (a as u64).is_power_of_two() => {
                    a as u64
                }
                _ => {
                    return Err(c.error(
                        at,
                        format!(
                            "`{ALIGNMENT_KEY}` is {}: expected a power of two that fits u32",
                            v.describe()
                        ),
                    ))
                }
            }
        }
    };

    // Tensor infos, with the offset of each one's `offset` field for errors.
    let mut infos = Vec::with_capacity(tensor_count.min(1 << 16));
    let mut by_name = HashMap::new();
    for i in 0..tensor_count {
        let info_at = c.offset();
        let (info, offset_at) =
            tensor_info(&mut c).map_err(|e| e.context(format_args!("tensor info {i}")))?;
        if by_name.insert(info.name.clone(), i).is_some() {
            return Err(c.error(info_at, format!("duplicate tensor name `{}`", info.name)));
        }
        infos.push((info, offset_at));
    }

    let data_start = align_up(c.offset(), alignment)
        .ok_or_else(|| c.error(c.offset(), "data section start overflows"))?;
    let file_len = data.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for (mut info, offset_at) in infos {
        let name = &info.name;
        if !info.offset.is_multiple_of(alignment) {
            return Err(c.error(
                offset_at,
                format!(
                    "tensor `{name}`: data offset {} is not a multiple of the alignment {alignment}",
                    info.offset
                ),
            ));
        }
        let size = byte_size(&info.dims, info.ggml_type).unwrap_or(u64::MAX);
        let range = data_start
            .checked_add(info.offset)
            .and_then(|start| Some(start..start.checked_add(size)?))
            .filter(|r| r.end <= file_len);
        let Some(range) = range else {
            return Err(c.error(
                offset_at,
                format!(
                    "tensor `{name}`: {size} bytes of data at offset {} of the data section \
                     (which starts at byte {data_start}) extend past the end of the file \
                     ({file_len} bytes)",
                    info.offset
                ),
            ));
        };
        // Both ends are within the file, whose length fits usize.
        info.data = range.start as usize..range.end as usize;
        tensors.push(info);
    }

    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.data.start);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            if b.data.start < a.data.end {
                return Err(c.error(
                    b.data.start as u64,
                    format!(
                        "data of tensors `{}` and `{}` overlap (bytes {}..{} and {}..{})",
                        a.name, b.name, a.data.start, a.data.end, b.data.start, b.data.end
                    ),
                ));
            }
        }
    }

    Ok(Parsed {
        version,
        metadata,
        value_offsets,
        tensors,
        by_name,
        alignment,
    })
}

/// Reads one tensor info; returns it (with an empty data range) and the file
/// offset of its `offset` field.
fn tensor_info(c: &mut Cursor<'_>) -> Result<(TensorInfo, u64)> {
    let name = c.string("tensor name")?;
    let in_tensor = |e: GgufError| e.context(format_args!("tensor `{name}`"));

    let n_dims_at = c.offset();
    let n_dims = c.u32("n_dims").map_err(in_tensor)?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(in_tensor(c.error(
            n_dims_at,
            format!("n_dims is {n_dims}: expected 1..={MAX_DIMS}"),
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut elements: u64 = 1;
    for k in 0..n_dims {
        let dim_at = c.offset();
        let dim = c.u64("dimension").map_err(in_tensor)?;
        if dim == 0 {
            return Err(in_tensor(
                c.error(dim_at, format!("dimension {k} is 0: expected at least 1")),
            ));
        }
        // ggml keeps element counts in i64.
        elements = elements
            .checked_mul(dim)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                in_tensor(c.error(
                    dim_at,
                    format!("dimension {k} ({dim}) makes the element count overflow i64"),
                ))
            })?;
        dims.push(dim);
    }

    let type_at = c.offset();
    let type_id = c.u32("ggml type").map_err(in_tensor)?;
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| in_tensor(c.error(type_at, format!("unknown ggml type id {type_id}"))))?;
    let block = ggml_type.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(in_tensor(c.error(
            type_at,
            format!(
                "row length {} is not a multiple of the {ggml_type} block size {block}",
                dims[0]
            ),
        )));
    }
    if byte_size(&dims, ggml_type).is_none_or(|size| usize::try_from(size).is_err()) {
        return Err(in_tensor(c.error(type_at, "byte size overflows")));
    }

    let offset_at = c.offset();
    let offset = c.u64("data offset").map_err(in_tensor)?;
    Ok((
        TensorInfo {
            name,
            ggml_type,
            dims,
            offset,
            data: 0..0,
        },
        offset_at,
    ))
}

/// Bytes of a tensor of `dims` (ne0 first) and type `ty`, if no step overflows
/// and ne0 is a whole number of blocks.
pub(crate) fn byte_size(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let (&ne0, rest) = dims.split_first()?;
    let block = ty.block_size() as u64;
    if !ne0.is_multiple_of(block) {
        return None;
    }
    let row = (ne0 / block).checked_mul(ty.type_size() as u64)?;
    rest.iter().try_fold(row, |acc, &d| acc.checked_mul(d))
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_next_multiple_of(alignment)
}
