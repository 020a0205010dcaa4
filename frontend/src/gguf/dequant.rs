//! Dequantization of ggml tensor data to f32.
//!
//! Each supported type has a function over one block, following the block
//! layouts of ggml-common.h and the formulas of ggml's reference
//! `dequantize_row_*` functions, including their order of float operations
//! (so results match ggml bit for bit where ggml does not fuse multiply-adds).
//! [`dequantize`] applies them to a whole tensor.

use half::{bf16, f16};

use super::types::GgmlType;

/// Bytes of a Q4_0 block: f16 scale, 16 bytes of 4-bit quants.
pub const Q4_0_BLOCK_BYTES: usize = 18;
/// Bytes of a Q4_1 block: f16 scale, f16 min, 16 bytes of 4-bit quants.
pub const Q4_1_BLOCK_BYTES: usize = 20;
/// Bytes of a Q8_0 block: f16 scale, 32 i8 quants.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Bytes of a Q4_K super-block: f16 d, f16 dmin, 12 bytes of packed 6-bit
/// scales and mins, 128 bytes of 4-bit quants.
pub const Q4_K_BLOCK_BYTES: usize = 144;
/// Bytes of a Q6_K super-block: 128 bytes of low 4 bits, 64 bytes of high 2
/// bits, 16 i8 scales, f16 d.
pub const Q6_K_BLOCK_BYTES: usize = 210;

/// Why data could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// No dequantizer exists for the type.
    #[error("unsupported tensor type {0}")]
    Unsupported(GgmlType),
    /// The data is not a whole number of blocks.
    #[error("{len} bytes are not a whole number of {ty} blocks of {block} bytes")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        len: usize,
        /// Bytes per block.
        block: usize,
    },
}

/// Whether [`dequantize`] supports `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q4_K
            | GgmlType::Q6_K
    )
}

/// Dequantizes `data`, consecutive blocks of type `ty`, to f32 in memory
/// order (row-major for a GGUF tensor).
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, DequantError> {
    match ty {
        GgmlType::F32 => blocks(ty, data, |b: &[u8; 4], y: &mut [f32; 1]| {
            y[0] = f32::from_le_bytes(*b)
        }),
        GgmlType::F16 => blocks(ty, data, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::BF16 => blocks(ty, data, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = bf16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::Q8_0 => blocks(ty, data, dequantize_block_q8_0),
        GgmlType::Q4_0 => blocks(ty, data, dequantize_block_q4_0),
        GgmlType::Q4_1 => blocks(ty, data, dequantize_block_q4_1),
        GgmlType::Q4_K => blocks(ty, data, dequantize_block_q4_k),
        GgmlType::Q6_K => blocks(ty, data, dequantize_block_q6_k),
        other => Err(DequantError::Unsupported(other)),
    }
}

/// Runs `block` over every `B`-byte block of `data`, each giving `N` floats.
fn blocks<const B: usize, const N: usize>(
    ty: GgmlType,
    data: &[u8],
    block: impl Fn(&[u8; B], &mut [f32; N]),
) -> Result<Vec<f32>, DequantError> {
    debug_assert_eq!((B, N), (ty.type_size(), ty.block_size()));
    let (inputs, rest) = data.as_chunks::<B>();
    if !rest.is_empty() {
        return Err(DequantError::PartialBlock {
            ty,
            len: data.len(),
            block: B,
        });
    }
    // N <= 256 floats per B >= 1 bytes of input: cannot overflow usize.
    let mut out = vec![0.0f32; inputs.len() * N];
    let (outputs, _) = out.as_chunks_mut::<N>();
    for (x, y) in inputs.iter().zip(outputs) {
        block(x, y);
    }
    Ok(out)
}

fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Q8_0: `y[j] = qs[j] * d`.
pub fn dequantize_block_q8_0(block: &[u8; Q8_0_BLOCK_BYTES], y: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (y, &q) in y.iter_mut().zip(&block[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// Q4_0: byte `j` of the quants holds element `j` in its low nibble and
/// element `j + 16` in its high nibble; `y = (q - 8) * d`.
pub fn dequantize_block_q4_0(block: &[u8; Q4_0_BLOCK_BYTES], y: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&block[2..]) {
        *lo = f32::from((q & 0x0F) as i8 - 8) * d;
        *hi = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// Q4_1: nibbles as in Q4_0; `y = q * d + m`.
pub fn dequantize_block_q4_1(block: &[u8; Q4_1_BLOCK_BYTES], y: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&block[4..]) {
        *lo = f32::from(q & 0x0F) * d + m;
        *hi = f32::from(q >> 4) * d + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K super-block.
///
/// Bytes 0..4 hold the low 6 bits of scales 0..4, bytes 4..8 those of mins
/// 0..4; for sub-blocks 4..8, bytes 8..12 hold the low 4 bits of the scale
/// (low nibble) and of the min (high nibble), and the top 2 bits come from
/// the top 2 bits of bytes 0..4 (scale) and 4..8 (min).
pub fn q4_k_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Q4_K: 8 sub-blocks of 32; `y = d * scale * q - dmin * min`. Each 32
/// bytes of quants hold two sub-blocks: low nibbles the first, high the
/// second.
pub fn dequantize_block_q4_k(block: &[u8; Q4_K_BLOCK_BYTES], y: &mut [f32; 256]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let mut scales = [0u8; 12];
    scales.copy_from_slice(&block[4..16]);
    let quants = &block[16..];
    for (pair, (qs, y)) in quants
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = q4_k_scale_min(&scales, 2 * pair);
        let (sc2, m2) = q4_k_scale_min(&scales, 2 * pair + 1);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = y.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
            *lo = d1 * f32::from(q & 0x0F) - min1;
            *hi = d2 * f32::from(q >> 4) - min2;
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with i8 scales; `y = d * scale * (q - 32)`
/// where q is 6 bits: 4 from `ql`, 2 from `qh`.
///
/// Each half (128 elements) uses 64 bytes of `ql`, 32 of `qh` and 8 scales.
/// For `l` in 0..32, `ql[l]` holds the low bits of elements `l` (low nibble)
/// and `l + 64` (high nibble), `ql[l + 32]` those of `l + 32` and `l + 96`,
/// and `qh[l]` holds the high bits of elements `l`, `l + 32`, `l + 64`,
/// `l + 96` in its bit pairs 0-1, 2-3, 4-5, 6-7.
pub fn dequantize_block_q6_k(block: &[u8; Q6_K_BLOCK_BYTES], y: &mut [f32; 256]) {
    let (ql_all, rest) = block.split_at(128);
    let (qh_all, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let d = f16_at(d, 0);
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * (half + 1)];
        let qh = &qh_all[32 * half..32 * (half + 1)];
        let sc = &scales[8 * half..8 * (half + 1)];
        let y = &mut y[128 * half..128 * (half + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}
