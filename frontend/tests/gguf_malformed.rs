//! Corrupted GGUF files: each must give an error naming the file, and none
//! may panic or allocate beyond the file's size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fairyc_frontend::gguf::{GgmlType, GgufFile, GgufWriter, MetaArray, MetaValue};
use proptest::prelude::*;

/// Byte offsets of the fields of the file `valid_file` writes, worked out by
/// hand (a string is a u64 length then its bytes):
///
/// ```text
///   0 magic, 4 version, 8 tensor count (2), 16 metadata count (3)
///  24 key len, 32 "general.architecture", 52 type 8, 56 len, 64 "llama"
///  69 key len, 77 "a", 78 type 9, 82 element type 4, 86 count 2, 94 2 x u32
/// 102 key len, 110 "b", 111 type 0, 115 u8
/// 116 name len, 124 "t0", 126 n_dims 2, 130 dim 8, 138 dim 2, 146 type 0 (F32), 150 offset 0
/// 158 name len, 166 "t1", 168 n_dims 2, 172 dim 32, 180 dim 1, 188 type 8 (Q8_0), 192 offset 64
/// 200 padding, 224 t0 data (64 bytes), 288 t1 data (34 bytes), 322 padding, 352 end
/// ```
mod at {
    pub const VERSION: usize = 4;
    pub const TENSOR_COUNT: usize = 8;
    pub const KV_COUNT: usize = 16;
    pub const KEY0_LEN: usize = 24;
    pub const KEY0_TYPE: usize = 52;
    pub const VALUE0_LEN: usize = 56;
    pub const VALUE0_BYTES: usize = 64;
    pub const ARRAY_ELEMENT_TYPE: usize = 82;
    pub const ARRAY_COUNT: usize = 86;
    pub const KEY2: usize = 110;
    pub const T0_NAME_LEN: usize = 116;
    pub const T0_N_DIMS: usize = 126;
    pub const T0_DIM0: usize = 130;
    pub const T0_DIM1: usize = 138;
    pub const T0_TYPE: usize = 146;
    pub const T1_NAME: usize = 166;
    pub const T1_TYPE: usize = 188;
    pub const T1_OFFSET: usize = 192;
    pub const DATA_START: usize = 224;
    pub const DATA_END: usize = 322;
    pub const FILE_END: usize = 352;
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("llama".into()))
        .add_metadata("a", MetaValue::Array(MetaArray::U32(vec![7, 9])))
        .add_metadata("b", MetaValue::U8(1));
    let t0: Vec<f32> = (0..16).map(|i| i as f32 - 4.5).collect();
    let t1: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).sin()).collect();
    let built = w
        .add_tensor_f32("t0", &[2, 8], &t0, GgmlType::F32)
        .and_then(|w| w.add_tensor_f32("t1", &[1, 32], &t1, GgmlType::Q8_0))
        .and_then(|w| {
            let path = temp_path("valid");
            w.write(&path)?;
            let bytes = std::fs::read(&path)?;
            std::fs::remove_file(&path)?;
            Ok(bytes)
        });
    match built {
        Ok(bytes) => bytes,
        Err(e) => panic!("cannot build the valid file: {e}"),
    }
}

/// A fresh file path.
fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "gguf_malformed_{}_{tag}_{}.gguf",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `bytes` to a file and opens it; if that works, also reads every
/// tensor and metadata value through the public API. Returns the error
/// message, after checking that it names the file.
fn open_bytes(bytes: &[u8]) -> Result<(), String> {
    let path = temp_path("case");
    if let Err(e) = std::fs::write(&path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
    let result = exercise(&path);
    let _ = std::fs::remove_file(&path);
    result.map_err(|msg| {
        assert!(
            msg.starts_with(&format!("{}: ", path.display())),
            "error does not name the file: {msg}"
        );
        msg
    })
}

fn exercise(path: &Path) -> Result<(), String> {
    let f = GgufFile::open(path).map_err(|e| e.to_string())?;
    for key in f.metadata().keys() {
        // Wrong types are errors, not panics; the results do not matter.
        let _ = (f.get_u32(key), f.get_f32(key), f.get_str(key));
        let _ = (
            f.get_str_array(key),
            f.get_i32_array(key),
            f.get_f32_array(key),
        );
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_bytes(t).len() as u64, t.byte_size());
        let values = f.tensor_f32(&t.name).map_err(|e| e.to_string())?;
        assert_eq!(values.len() as u64, t.n_elements());
    }
    Ok(())
}

fn with(bytes: &[u8], at: usize, patch: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + patch.len()].copy_from_slice(patch);
    out
}

fn with_u32(bytes: &[u8], at: usize, v: u32) -> Vec<u8> {
    with(bytes, at, &v.to_le_bytes())
}

fn with_u64(bytes: &[u8], at: usize, v: u64) -> Vec<u8> {
    with(bytes, at, &v.to_le_bytes())
}

/// Asserts that `bytes` fail to open with a message containing `needle`.
#[track_caller]
fn assert_rejected(bytes: &[u8], needle: &str) {
    match open_bytes(bytes) {
        Ok(()) => panic!("accepted a file that should fail with `{needle}`"),
        Err(msg) => assert!(msg.contains(needle), "expected `{needle}` in: {msg}"),
    }
}

#[test]
fn the_layout_above_is_right() {
    let v = valid_file();
    assert_eq!(v.len(), at::FILE_END);
    assert_eq!(&v[at::KEY2..at::KEY2 + 1], b"b");
    assert_eq!(&v[at::T1_NAME..at::T1_NAME + 2], b"t1");
    assert_eq!(v[at::T1_TYPE], 8);
    assert_eq!(v[at::T1_OFFSET], 64);
    assert_eq!(v[at::T0_DIM1], 2);
    let t0_data = f32::from_le_bytes([
        v[at::DATA_START],
        v[at::DATA_START + 1],
        v[at::DATA_START + 2],
        v[at::DATA_START + 3],
    ]);
    assert_eq!(t0_data, -4.5);
    assert_eq!(open_bytes(&v), Ok(()));
}

#[test]
fn every_truncation_is_rejected() {
    let v = valid_file();
    for len in 0..at::DATA_END {
        if open_bytes(&v[..len]).is_ok() {
            panic!("accepted the first {len} of {} bytes", v.len());
        }
    }
    // Only the padding after the last tensor may go.
    for len in at::DATA_END..=v.len() {
        assert_eq!(open_bytes(&v[..len]), Ok(()), "prefix of {len} bytes");
    }
    // Early cuts fail the count checks; late ones run out of bytes.
    assert_rejected(
        &v[..40],
        "tensor count 2 exceeds what the file can hold (at most 0)",
    );
    assert_rejected(
        &v[..at::T1_OFFSET + 6],
        "byte 192: tensor info 1: tensor `t1`: unexpected end of file: data offset needs 8 \
         bytes, only 6 remain",
    );
    assert_rejected(&v[..300], "tensor `t1`: 34 bytes of data");
    assert_rejected(&[], "byte 0: the file is empty");
}

#[test]
fn bad_header() {
    let v = valid_file();
    assert_rejected(
        &with(&v, 0, b"GGML"),
        "byte 0: bad magic \"GGML\": expected \"GGUF\"",
    );
    assert_rejected(&with_u32(&v, at::VERSION, 1), "version 1 is not supported");
    assert_rejected(
        &with_u32(&v, at::VERSION, 99),
        "unsupported GGUF version 99",
    );
    assert_rejected(&with_u32(&v, at::VERSION, 3u32.swap_bytes()), "big-endian");
    assert_rejected(
        &with_u64(&v, at::TENSOR_COUNT, u64::MAX),
        "byte 8: tensor count 18446744073709551615 exceeds what the file can hold (at most 10)",
    );
    assert_rejected(
        &with_u64(&v, at::KV_COUNT, 1 << 40),
        "byte 16: metadata count",
    );
    // More pairs than are there: the parser reads the tensor infos as a
    // pair, then fails somewhere in what follows.
    assert_rejected(&with_u64(&v, at::KV_COUNT, 4), "");
    assert_rejected(&with_u64(&v, at::TENSOR_COUNT, 3), "tensor info 2");
}

#[test]
fn bad_metadata() {
    let v = valid_file();
    assert_rejected(
        &with_u64(&v, at::KEY0_LEN, u64::MAX),
        "byte 24: metadata pair 0: metadata key length 18446744073709551615 exceeds the",
    );
    assert_rejected(
        &with_u64(&v, at::VALUE0_LEN, 1 << 50),
        "string value length",
    );
    assert_rejected(
        &with_u32(&v, at::KEY0_TYPE, 13),
        "byte 52: metadata `general.architecture`: unknown metadata value type 13",
    );
    assert_rejected(
        &with_u32(&v, at::ARRAY_ELEMENT_TYPE, 99),
        "unknown array element type 99",
    );
    assert_rejected(&with_u64(&v, at::ARRAY_COUNT, u64::MAX / 2), "array length");
    assert_rejected(&with(&v, at::VALUE0_BYTES + 2, &[0xFF]), "not valid UTF-8");
    assert_rejected(&with(&v, at::KEY2, b"a"), "duplicate metadata key `a`");
    // The u8 value of "b" read as a bool (type 7) is fine; as type 7 with
    // value 2 it is not.
    let as_bool = with_u32(&v, at::KEY2 + 1, 7);
    assert_eq!(open_bytes(&as_bool), Ok(()));
    assert_rejected(&with(&as_bool, at::KEY2 + 5, &[2]), "neither 0 nor 1");
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    // general.architecture's value becomes array(array(array(...))), each
    // level one element, until the parser's depth limit.
    let v = valid_file();
    let mut bytes = v[..at::KEY0_TYPE].to_vec();
    bytes.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..20 {
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
    }
    bytes.extend_from_slice(&[0; 64]);
    assert_rejected(&bytes, "nested deeper than 8 levels");
}

#[test]
fn bad_tensor_infos() {
    let v = valid_file();
    assert_rejected(
        &with_u64(&v, at::T0_NAME_LEN, 1 << 33),
        "tensor name length",
    );
    assert_rejected(&with(&v, at::T1_NAME, &[0xC3, 0x28]), "not valid UTF-8");
    assert_rejected(
        &with_u32(&v, at::T0_N_DIMS, 5),
        "byte 126: tensor info 0: tensor `t0`: n_dims is 5",
    );
    assert_rejected(&with_u32(&v, at::T0_N_DIMS, 0), "n_dims is 0");
    assert_rejected(&with_u64(&v, at::T0_DIM0, 0), "dimension 0 is 0");
    assert_rejected(&with_u64(&v, at::T0_DIM1, 0), "dimension 1 is 0");
    let overflow = with_u64(&with_u64(&v, at::T0_DIM0, 1 << 32), at::T0_DIM1, 1 << 32);
    assert_rejected(
        &overflow,
        "dimension 1 (4294967296) makes the element count overflow",
    );
    let past_i64 = with_u64(&with_u64(&v, at::T0_DIM0, 1 << 62), at::T0_DIM1, 2);
    assert_rejected(&past_i64, "overflow");
    // 2^62 elements fit i64, but not their 2^64 bytes.
    assert_rejected(&with_u64(&v, at::T0_DIM0, 1 << 61), "byte size overflows");
    // Large but computable: the data would lie past the end.
    assert_rejected(
        &with_u64(&v, at::T0_DIM0, 1 << 40),
        "extend past the end of the file",
    );
    assert_rejected(
        &with_u32(&v, at::T0_TYPE, 99),
        "tensor `t0`: unknown ggml type id 99",
    );
    assert_rejected(&with_u32(&v, at::T0_TYPE, 4), "unknown ggml type id 4");
    // Q4_0 rows must be whole blocks of 32; t0's rows have 8 elements.
    assert_rejected(
        &with_u32(&v, at::T0_TYPE, GgmlType::Q4_0.id()),
        "row length 8 is not a multiple of the Q4_0 block size 32",
    );
    assert_rejected(&with(&v, at::T1_NAME, b"t0"), "duplicate tensor name `t0`");
}

#[test]
fn bad_tensor_offsets() {
    let v = valid_file();
    assert_rejected(
        &with_u64(&v, at::T1_OFFSET, 65),
        "byte 192: tensor `t1`: data offset 65 is not a multiple of the alignment 32",
    );
    assert_rejected(
        &with_u64(&v, at::T1_OFFSET, 1 << 20),
        "extend past the end of the file",
    );
    assert_rejected(
        &with_u64(&v, at::T1_OFFSET, 96),
        "extend past the end of the file",
    );
    assert_rejected(
        &with_u64(&v, at::T1_OFFSET, u64::MAX - 31),
        "extend past the end of the file",
    );
    assert_rejected(
        &with_u64(&v, at::T1_OFFSET, 32),
        "data of tensors `t0` and `t1` overlap",
    );
    assert_rejected(&with_u64(&v, at::T1_OFFSET, 0), "overlap");
}

#[test]
fn bad_alignment() {
    // One pair: key length at 24, "general.alignment" at 32..49, type at 49,
    // u32 value at 53.
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetaValue::U32(64));
    let path = temp_path("alignment");
    let built = w
        .add_tensor_f32("t", &[4], &[1.0; 4], GgmlType::F32)
        .and_then(|w| w.write(&path))
        .and_then(|()| std::fs::read(&path));
    let _ = std::fs::remove_file(&path);
    let v = match built {
        Ok(v) => v,
        Err(e) => panic!("cannot build the file: {e}"),
    };
    assert_eq!(v[53], 64);
    assert_eq!(open_bytes(&v), Ok(()));
    assert_rejected(
        &with_u32(&v, 53, 48),
        "byte 53: `general.alignment` is u32 48: expected a power of two",
    );
    assert_rejected(&with_u32(&v, 53, 0), "`general.alignment` is u32 0");
    // As a u64, the value takes in the next 4 bytes: 64 + (1 << 32).
    assert_rejected(
        &with_u32(&v, 49, 10),
        "`general.alignment` is u64 4294967360",
    );
}

#[test]
fn unreadable_paths_are_errors() {
    let missing = temp_path("missing");
    let err = GgufFile::open(&missing).map(drop).unwrap_err().to_string();
    assert!(err.starts_with(&missing.display().to_string()), "{err}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    assert!(GgufFile::open(dir).is_err());
}

/// Values that make interesting counts, lengths, dims and offsets.
const NASTY_U64: [u64; 10] = [
    0,
    1,
    31,
    32,
    352,
    1 << 31,
    1 << 32,
    1 << 62,
    u64::MAX / 2,
    u64::MAX,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_byte_changes_never_panic(
        changes in prop::collection::vec((0..at::FILE_END, any::<u8>()), 1..12),
        keep in at::DATA_END / 2..=at::FILE_END,
    ) {
        let mut bytes = valid_file();
        for (i, b) in changes {
            bytes[i] = b;
        }
        bytes.truncate(keep);
        let _ = open_bytes(&bytes);
    }

    #[test]
    fn nasty_words_never_panic(
        words in prop::collection::vec((0..at::DATA_START - 8, 0..NASTY_U64.len(), any::<bool>()), 1..4),
    ) {
        let mut bytes = valid_file();
        for (i, which, narrow) in words {
            let v = NASTY_U64[which];
            if narrow {
                bytes[i..i + 4].copy_from_slice(&(v as u32).to_le_bytes());
            } else {
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let _ = open_bytes(&bytes);
    }
}
