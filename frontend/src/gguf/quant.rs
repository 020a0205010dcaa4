//! ggml's reference quantizers (`quantize_row_*_ref`), used by the writer.
//!
//! As in ggml, scales are computed in f32, stored as f16, and the quants are
//! computed with the f32 scale.

use half::{bf16, f16};

use super::dequant::{Q4_0_BLOCK_BYTES, Q4_1_BLOCK_BYTES, Q8_0_BLOCK_BYTES};
use super::types::GgmlType;

/// Whether [`quantize`] can produce `ty`.
pub(crate) fn is_writable(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
    )
}

/// Encodes `data` as type `ty`, or `None` if `ty` is not writable or
/// `data.len()` is not a multiple of its block size.
pub(crate) fn quantize(ty: GgmlType, data: &[f32]) -> Option<Vec<u8>> {
    match ty {
        GgmlType::F32 => Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        GgmlType::F16 => Some(
            data.iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        GgmlType::BF16 => Some(
            data.iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        GgmlType::Q8_0 => blocks(data, quantize_block_q8_0),
        GgmlType::Q4_0 => blocks(data, quantize_block_q4_0),
        GgmlType::Q4_1 => blocks(data, quantize_block_q4_1),
        _ => None,
    }
}

fn blocks<const B: usize>(data: &[f32], block: fn(&[f32; 32]) -> [u8; B]) -> Option<Vec<u8>> {
    let (inputs, rest) = data.as_chunks::<32>();
    rest.is_empty()
        .then(|| inputs.iter().flat_map(block).collect())
}

/// Q8_0: `d = amax / 127`, `q = round(x / d)`.
fn quantize_block_q8_0(x: &[f32; 32]) -> [u8; Q8_0_BLOCK_BYTES] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; Q8_0_BLOCK_BYTES];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (o, &v) in out[2..].iter_mut().zip(x) {
        // `as` saturates; |v * id| <= 127 for finite inputs anyway.
        *o = (v * id).round() as i8 as u8;
    }
    out
}

/// Q4_0: `d = max / -8` where `max` is the value of largest magnitude (with
/// its sign), `q = min(15, trunc(x / d + 8.5))`.
fn quantize_block_q4_0(x: &[f32; 32]) -> [u8; Q4_0_BLOCK_BYTES] {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; Q4_0_BLOCK_BYTES];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let nibble = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
    for (j, o) in out[2..].iter_mut().enumerate() {
        *o = nibble(x[j]) | (nibble(x[j + 16]) << 4);
    }
    out
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = min(15, trunc((x - min) / d
/// + 0.5))`.
fn quantize_block_q4_1(x: &[f32; 32]) -> [u8; Q4_1_BLOCK_BYTES] {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; Q4_1_BLOCK_BYTES];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    let nibble = |v: f32| (((v - min) * id + 0.5) as i8).clamp(0, 15) as u8;
    for (j, o) in out[4..].iter_mut().enumerate() {
        *o = nibble(x[j]) | (nibble(x[j + 16]) << 4);
    }
    out
}
