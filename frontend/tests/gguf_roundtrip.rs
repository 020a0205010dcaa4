//! Files written by `GgufWriter` read back by `GgufFile`: tensors of every
//! writable type, metadata of every value type, typed getters and errors.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use fairyc_frontend::gguf::{
    dequant, GgmlType, GgufError, GgufFile, GgufWriter, MetaArray, MetaValue,
};

type TestResult = Result<(), Box<dyn Error>>;

/// A file path unique to this test binary and `name`.
fn temp_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gguf_roundtrip_{}_{name}.gguf", std::process::id()))
}

/// Writes `w` to a fresh file and opens it.
fn round_trip(w: &GgufWriter, name: &str) -> Result<GgufFile, Box<dyn Error>> {
    let path = temp_path(name);
    w.write(&path)?;
    let f = GgufFile::open(&path)?;
    // The map stays valid after the file is unlinked.
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// Deterministic pseudo-random floats of varying magnitude (xorshift).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let unit = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            // Blocks of 32 get different scales, some of them tiny.
            unit * [0.01, 1.0, 30.0, 0.0003][(i / 32) % 4]
        })
        .collect()
}

#[test]
fn f32_tensors_round_trip_exactly() -> TestResult {
    let special = [
        0.0,
        -0.0,
        1e-45,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        -1.5,
        3.25,
    ];
    let mut w = GgufWriter::new();
    w.add_tensor_f32("special", &[8], &special, GgmlType::F32)?;
    let shapes: [&[usize]; 4] = [&[5], &[3, 7], &[2, 3, 4], &[2, 1, 3, 5]];
    for (i, shape) in shapes.iter().enumerate() {
        let n = shape.iter().product();
        w.add_tensor_f32(
            &format!("t{i}"),
            shape,
            &pseudo_random(n, i as u64),
            GgmlType::F32,
        )?;
    }
    let f = round_trip(&w, "f32")?;
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len(), 5);

    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&f.tensor_f32("special")?), bits(&special));
    for (i, shape) in shapes.iter().enumerate() {
        let name = format!("t{i}");
        let t = f.tensor(&name).ok_or("missing tensor")?;
        let n: usize = shape.iter().product();
        assert_eq!(t.name, name);
        assert_eq!(t.ggml_type, GgmlType::F32);
        assert_eq!(t.shape_row_major(), *shape);
        let gguf_dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(t.dims, gguf_dims);
        assert_eq!(t.n_elements(), n as u64);
        assert_eq!(t.byte_size(), 4 * n as u64);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_bytes(t).len(), 4 * n);
        assert_eq!(
            bits(&f.tensor_f32(&name)?),
            bits(&pseudo_random(n, i as u64))
        );
    }
    Ok(())
}

#[test]
fn half_precision_round_trips() -> TestResult {
    // Exactly representable in both f16 and bf16.
    let exact = [0.0, 1.0, -2.0, 0.5, 1.5, -0.375, 96.0, 0.0078125];
    let data = pseudo_random(256, 7);
    let mut w = GgufWriter::new();
    w.add_tensor_f32("f16_exact", &[8], &exact, GgmlType::F16)?;
    w.add_tensor_f32("bf16_exact", &[8], &exact, GgmlType::BF16)?;
    w.add_tensor_f32("f16", &[4, 64], &data, GgmlType::F16)?;
    w.add_tensor_f32("bf16", &[4, 64], &data, GgmlType::BF16)?;
    let f = round_trip(&w, "half")?;
    assert_eq!(f.tensor_f32("f16_exact")?, exact);
    assert_eq!(f.tensor_f32("bf16_exact")?, exact);
    for (name, rel) in [("f16", 2f32.powi(-11)), ("bf16", 2f32.powi(-8))] {
        let t = f.tensor(name).ok_or("missing")?;
        assert_eq!(t.byte_size(), 2 * 256);
        for (x, y) in data.iter().zip(f.tensor_f32(name)?) {
            // Relative error of round-to-nearest, or f16's subnormal step.
            assert!(
                (x - y).abs() <= x.abs() * rel + 2f32.powi(-25),
                "{name}: {x} -> {y}"
            );
        }
    }
    Ok(())
}

/// Worst-case error of rounding `x` to f16: half an ulp, or half the
/// subnormal step for tiny values.
fn f16_rounding(x: f32) -> f32 {
    (x.abs() * 2f32.powi(-11)).max(2f32.powi(-25))
}

/// Largest |x| in each block of 32.
fn block_amax(data: &[f32]) -> Vec<f32> {
    data.chunks(32)
        .map(|b| b.iter().fold(0.0f32, |m, x| m.max(x.abs())))
        .collect()
}

#[test]
fn quantized_round_trips_stay_within_error_bounds() -> TestResult {
    let data = pseudo_random(8 * 64, 3);
    let mut w = GgufWriter::new();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        w.add_tensor_f32(&ty.to_string(), &[8, 64], &data, ty)?;
    }
    let f = round_trip(&w, "quantized")?;
    let amax = block_amax(&data);

    let q8 = f.tensor_f32("Q8_0")?;
    assert_eq!(f.tensor("Q8_0").ok_or("missing")?.byte_size(), 16 * 34);
    for (i, (x, y)) in data.iter().zip(&q8).enumerate() {
        // Half a step of d = amax / 127, plus the f16 rounding of d.
        let d = amax[i / 32] / 127.0;
        let bound = d * 0.5 + 127.0 * f16_rounding(d);
        assert!((x - y).abs() <= bound, "Q8_0 element {i}: {x} -> {y}");
    }

    let q4_0 = f.tensor_f32("Q4_0")?;
    for (i, (x, y)) in data.iter().zip(&q4_0).enumerate() {
        // d = amax / 8; the value opposite the max clamps from 8 to 7 steps,
        // so the error can reach a whole step.
        let d = amax[i / 32] / 8.0;
        let bound = d + 8.0 * f16_rounding(d);
        assert!((x - y).abs() <= bound, "Q4_0 element {i}: {x} -> {y}");
    }

    let q4_1 = f.tensor_f32("Q4_1")?;
    for (i, (block, yb)) in data.chunks(32).zip(q4_1.chunks(32)).enumerate() {
        let min = block.iter().fold(f32::MAX, |m, &x| m.min(x));
        let max = block.iter().fold(f32::MIN, |m, &x| m.max(x));
        let d = (max - min) / 15.0;
        // Half a step, plus the f16 rounding of d (times up to 15) and of min.
        let bound = d * 0.5 + 15.0 * f16_rounding(d) + f16_rounding(min);
        for (x, y) in block.iter().zip(yb) {
            assert!((x - y).abs() <= bound, "Q4_1 block {i}: {x} -> {y}");
        }
    }
    Ok(())
}

#[test]
fn requantizing_dequantized_blocks_is_exact() -> TestResult {
    let mut data = pseudo_random(4 * 128, 11);
    data[..32].fill(0.0); // a block with d = 0
    data[32..64].fill(-0.75); // a block with max == min
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let mut w = GgufWriter::new();
        w.add_tensor_f32("t", &[4, 128], &data, ty)?;
        let first = round_trip(&w, &format!("requant_a_{ty}"))?;
        let dequantized = first.tensor_f32("t")?;
        let mut w = GgufWriter::new();
        w.add_tensor_f32("t", &[4, 128], &dequantized, ty)?;
        let second = round_trip(&w, &format!("requant_b_{ty}"))?;
        let (a, b) = (
            first.tensor("t").ok_or("t")?,
            second.tensor("t").ok_or("t")?,
        );
        assert_eq!(first.tensor_bytes(a), second.tensor_bytes(b), "{ty}");
        assert_eq!(second.tensor_f32("t")?, dequantized, "{ty}");
    }
    Ok(())
}

#[test]
fn k_quant_tensors_read_through_the_file() -> TestResult {
    // Any bytes are a valid K-quant block once the f16 scales are finite.
    let mut q4_k: Vec<u8> = (0..2 * 144).map(|i| (i * 37 % 251) as u8).collect();
    let mut q6_k: Vec<u8> = (0..2 * 210).map(|i| (i * 53 % 241) as u8).collect();
    for b in q4_k.chunks_mut(144) {
        b[..4].copy_from_slice(&[0x00, 0x38, 0x00, 0xB4]); // d 0.5, dmin -0.25
    }
    for b in q6_k.chunks_mut(210) {
        b[208..].copy_from_slice(&[0x00, 0x34]); // d 0.25
    }
    let mut w = GgufWriter::new();
    w.add_tensor_raw("q4k", &[2, 256], GgmlType::Q4_K, &q4_k)?;
    w.add_tensor_raw("q6k", &[2, 256], GgmlType::Q6_K, &q6_k)?;
    w.add_tensor_raw(
        "blk.0.ffn_down.weight",
        &[1, 256],
        GgmlType::Q5_K,
        &[0; 176],
    )?;
    let path = temp_path("kquant");
    w.write(&path)?;
    let f = GgufFile::open(&path)?;
    assert_eq!(
        f.tensor_f32("q4k")?,
        dequant::dequantize(GgmlType::Q4_K, &q4_k)?
    );
    assert_eq!(
        f.tensor_f32("q6k")?,
        dequant::dequantize(GgmlType::Q6_K, &q6_k)?
    );
    assert_eq!(f.tensor_bytes(f.tensor("q6k").ok_or("q6k")?), q6_k);

    let err = f.tensor_f32("blk.0.ffn_down.weight").unwrap_err();
    assert!(matches!(
        err,
        GgufError::UnsupportedType {
            ggml_type: GgmlType::Q5_K,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(
        msg.ends_with("unsupported tensor type Q5_K for tensor blk.0.ffn_down.weight"),
        "{msg}"
    );
    let err = f.tensor_f32("nope").unwrap_err().to_string();
    assert!(err.contains("no tensor named `nope`"), "{err}");
    assert!(f.tensor("nope").is_none());
    std::fs::remove_file(&path)?;
    Ok(())
}

/// One value of every type, including extremes, nested and empty arrays.
fn every_value_type() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("u8", MetaValue::U8(u8::MAX)),
        ("i8", MetaValue::I8(i8::MIN)),
        ("u16", MetaValue::U16(u16::MAX)),
        ("i16", MetaValue::I16(i16::MIN)),
        ("u32", MetaValue::U32(u32::MAX)),
        ("i32", MetaValue::I32(i32::MIN)),
        ("f32", MetaValue::F32(-1.25e-7)),
        ("f32.inf", MetaValue::F32(f32::NEG_INFINITY)),
        ("bool.true", MetaValue::Bool(true)),
        ("bool.false", MetaValue::Bool(false)),
        ("string", MetaValue::String("héllo, ✓ 世界".into())),
        ("string.empty", MetaValue::String(String::new())),
        ("u64", MetaValue::U64(u64::MAX)),
        ("i64", MetaValue::I64(i64::MIN)),
        ("f64", MetaValue::F64(std::f64::consts::PI)),
        ("array.u8", MetaValue::Array(MetaArray::U8(vec![0, 1, 255]))),
        ("array.i8", MetaValue::Array(MetaArray::I8(vec![-128, 127]))),
        (
            "array.u16",
            MetaValue::Array(MetaArray::U16(vec![1, 65535])),
        ),
        (
            "array.i16",
            MetaValue::Array(MetaArray::I16(vec![-32768, 5])),
        ),
        (
            "array.u32",
            MetaValue::Array(MetaArray::U32(vec![7, u32::MAX])),
        ),
        (
            "array.i32",
            MetaValue::Array(MetaArray::I32(vec![-1, 2, -3])),
        ),
        (
            "array.f32",
            MetaValue::Array(MetaArray::F32(vec![0.5, -1e30])),
        ),
        (
            "array.bool",
            MetaValue::Array(MetaArray::Bool(vec![true, false, true])),
        ),
        (
            "array.string",
            MetaValue::Array(MetaArray::String(vec![
                "a".into(),
                String::new(),
                "ü".into(),
            ])),
        ),
        (
            "array.u64",
            MetaValue::Array(MetaArray::U64(vec![u64::MAX])),
        ),
        (
            "array.i64",
            MetaValue::Array(MetaArray::I64(vec![i64::MIN, 0])),
        ),
        (
            "array.f64",
            MetaValue::Array(MetaArray::F64(vec![1e300, -0.5])),
        ),
        ("array.empty", MetaValue::Array(MetaArray::I16(Vec::new()))),
        (
            "array.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U8(vec![1, 2]),
                MetaArray::String(vec!["x".into()]),
                MetaArray::Array(vec![MetaArray::F32(vec![2.5]), MetaArray::Bool(Vec::new())]),
                MetaArray::Array(Vec::new()),
            ])),
        ),
    ]
}

#[test]
fn metadata_of_every_type_round_trips() -> TestResult {
    let values = every_value_type();
    let mut w = GgufWriter::new();
    for (key, value) in &values {
        w.add_metadata(*key, value.clone());
    }
    let vocab: Vec<String> = (0..49152).map(|i| format!("tok{i}")).collect();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(vocab.clone())),
    );
    // A later value of the same key replaces the earlier one.
    w.add_metadata("u8", MetaValue::U8(42));
    w.add_tensor_f32("t", &[1], &[1.0], GgmlType::F32)?;
    let f = round_trip(&w, "metadata")?;

    let mut expected: BTreeMap<String, MetaValue> = values
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    expected.insert("u8".into(), MetaValue::U8(42));
    expected.insert(
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(MetaArray::String(vocab.clone())),
    );
    assert_eq!(f.metadata(), &expected);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens")?,
        Some(vocab.as_slice())
    );
    Ok(())
}

#[test]
fn typed_getters_accept_any_integer_that_fits() -> TestResult {
    let mut w = GgufWriter::new();
    w.add_metadata("as_u8", MetaValue::U8(30))
        .add_metadata("as_i32", MetaValue::I32(576))
        .add_metadata("as_u64", MetaValue::U64(8192))
        .add_metadata("negative", MetaValue::I32(-5))
        .add_metadata("big", MetaValue::U64(1 << 40))
        .add_metadata("float", MetaValue::F32(1e-5))
        .add_metadata("double", MetaValue::F64(0.25))
        .add_metadata("name", MetaValue::String("llama".into()))
        .add_metadata("flag", MetaValue::Bool(true))
        .add_metadata("u32s", MetaValue::Array(MetaArray::U32(vec![0, 1, 2])))
        .add_metadata("i64s", MetaValue::Array(MetaArray::I64(vec![1, 1 << 40])))
        .add_metadata("f32s", MetaValue::Array(MetaArray::F32(vec![0.5, -1.0])))
        .add_metadata("f64s", MetaValue::Array(MetaArray::F64(vec![0.25])))
        .add_metadata(
            "strs",
            MetaValue::Array(MetaArray::String(vec!["a".into()])),
        );
    let f = round_trip(&w, "getters")?;

    assert_eq!(f.get_u32("as_u8")?, Some(30));
    assert_eq!(f.get_u32("as_i32")?, Some(576));
    assert_eq!(f.get_u32("as_u64")?, Some(8192));
    assert_eq!(f.get_u64("big")?, Some(1 << 40));
    assert_eq!(f.get_i64("negative")?, Some(-5));
    assert_eq!(f.get_f32("float")?, Some(1e-5));
    assert_eq!(f.get_f32("double")?, Some(0.25));
    assert_eq!(f.get_str("name")?, Some("llama"));
    assert_eq!(f.get_bool("flag")?, Some(true));
    assert_eq!(f.get_i32_array("u32s")?, Some(vec![0, 1, 2]));
    assert_eq!(f.get_f32_array("f32s")?, Some(vec![0.5, -1.0]));
    assert_eq!(f.get_f32_array("f64s")?, Some(vec![0.25]));
    assert_eq!(f.get_str_array("strs")?.map(<[String]>::len), Some(1));
    assert_eq!(f.get_u32("absent")?, None);
    assert_eq!(f.get_str_array("absent")?, None);

    let path = f.path().display().to_string();
    let wrong: [(&str, Result<(), GgufError>, &str); 9] = [
        ("negative", f.get_u32("negative").map(drop), "found i32 -5"),
        ("big", f.get_u32("big").map(drop), "found u64 1099511627776"),
        (
            "name",
            f.get_u32("name").map(drop),
            "found string \"llama\"",
        ),
        (
            "as_u8",
            f.get_f32("as_u8").map(drop),
            "expected a float, found u8 30",
        ),
        ("float", f.get_str("float").map(drop), "found f32"),
        ("name", f.get_bool("name").map(drop), "expected a bool"),
        (
            "i64s",
            f.get_i32_array("i64s").map(drop),
            "found array of 2 i64",
        ),
        (
            "strs",
            f.get_f32_array("strs").map(drop),
            "found array of 1 string",
        ),
        (
            "u32s",
            f.get_str_array("u32s").map(drop),
            "expected an array of strings",
        ),
    ];
    for (key, result, needle) in wrong {
        let err = result.err().ok_or(format!("{key}: expected an error"))?;
        let msg = err.to_string();
        assert!(matches!(err, GgufError::MetadataType { .. }), "{msg}");
        assert!(msg.starts_with(&format!("{path}: byte ")), "{msg}");
        assert!(msg.contains(&format!("metadata `{key}`")), "{msg}");
        assert!(msg.contains(needle), "{msg}");
    }
    Ok(())
}

#[test]
fn alignment_can_be_chosen() -> TestResult {
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetaValue::U32(256));
    w.add_tensor_f32("a", &[3], &[1.0, 2.0, 3.0], GgmlType::F32)?;
    // Q8_0 of 127s: d = 1 and q = 127, both exact.
    w.add_tensor_f32("b", &[2, 32], &[127.0; 64], GgmlType::Q8_0)?;
    w.add_tensor_f32("c", &[5], &[4.0; 5], GgmlType::F32)?;
    let f = round_trip(&w, "alignment")?;
    assert_eq!(f.alignment(), 256);
    let offsets: Vec<u64> = f.tensors().iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 256, 512]);
    assert_eq!(f.tensor_f32("a")?, [1.0, 2.0, 3.0]);
    assert_eq!(f.tensor_f32("b")?, [127.0; 64]);
    assert_eq!(f.tensor_f32("c")?, [4.0; 5]);

    for bad in [
        MetaValue::U32(48),
        MetaValue::U32(0),
        MetaValue::String("32".into()),
    ] {
        let mut w = GgufWriter::new();
        w.add_metadata("general.alignment", bad);
        let err = w.write(&temp_path("bad_alignment")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }
    Ok(())
}

#[test]
fn writer_rejects_bad_tensors() -> TestResult {
    let mut w = GgufWriter::new();
    w.add_tensor_f32("ok", &[2, 32], &[0.0; 64], GgmlType::Q4_0)?;
    let cases: [(&str, &[usize], usize, GgmlType, &str); 7] = [
        ("ok", &[1], 1, GgmlType::F32, "duplicate tensor name"),
        ("len", &[2, 3], 5, GgmlType::F32, "needs 6 values, got 5"),
        ("zero", &[2, 0], 0, GgmlType::F32, "nonzero"),
        ("scalar", &[], 1, GgmlType::F32, "1 to 4"),
        ("five", &[1, 1, 1, 1, 2], 2, GgmlType::F32, "1 to 4"),
        ("row", &[2, 48], 96, GgmlType::Q8_0, "block size 32"),
        (
            "k",
            &[1, 256],
            256,
            GgmlType::Q4_K,
            "cannot quantize to Q4_K",
        ),
    ];
    for (name, shape, n, ty, needle) in cases {
        let err = w
            .add_tensor_f32(name, shape, &vec![0.0; n], ty)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{name}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
    let err = w
        .add_tensor_raw("raw", &[1, 256], GgmlType::Q4_K, &[0; 143])
        .unwrap_err();
    assert!(err.to_string().contains("got 143"), "{err}");
    // Rejected tensors were not added.
    assert_eq!(round_trip(&w, "rejects")?.tensors().len(), 1);
    Ok(())
}

#[test]
fn write_is_atomic_and_replaces() -> TestResult {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf_atomic_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("model.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor_f32("t", &[2], &[1.0, 2.0], GgmlType::F32)?;
    w.write(&path)?;
    w.add_tensor_f32("u", &[1], &[3.0], GgmlType::F32)?;
    w.write(&path)?;
    assert_eq!(GgufFile::open(&path)?.tensors().len(), 2);
    let names: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["model.gguf"]);

    let missing = dir.join("no/such/dir/model.gguf");
    assert!(w.write(&missing).is_err());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn version_2_is_accepted() -> TestResult {
    let mut w = GgufWriter::new();
    w.add_tensor_f32("t", &[2], &[1.0, 2.0], GgmlType::F32)?;
    let path = temp_path("v2");
    w.write(&path)?;
    let mut bytes = std::fs::read(&path)?;
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, bytes)?;
    let f = GgufFile::open(&path)?;
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensor_f32("t")?, [1.0, 2.0]);
    std::fs::remove_file(&path)?;
    Ok(())
}

#[test]
fn ggml_type_ids_names_and_sizes() {
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert_eq!(ty.to_string(), ty.name());
    }
    for retired in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
        assert_eq!(GgmlType::from_id(retired), None, "{retired}");
    }
    let geometry = |ty: GgmlType| (ty.id(), ty.name(), ty.block_size(), ty.type_size());
    assert_eq!(geometry(GgmlType::F32), (0, "F32", 1, 4));
    assert_eq!(geometry(GgmlType::BF16), (30, "BF16", 1, 2));
    assert_eq!(geometry(GgmlType::Q4_0), (2, "Q4_0", 32, 18));
    assert_eq!(geometry(GgmlType::Q4_1), (3, "Q4_1", 32, 20));
    assert_eq!(geometry(GgmlType::Q8_0), (8, "Q8_0", 32, 34));
    assert_eq!(geometry(GgmlType::Q4_K), (12, "Q4_K", 256, 144));
    assert_eq!(geometry(GgmlType::Q5_K), (13, "Q5_K", 256, 176));
    assert_eq!(geometry(GgmlType::Q6_K), (14, "Q6_K", 256, 210));
    assert_eq!(geometry(GgmlType::TQ2_0), (35, "TQ2_0", 256, 66));
}
