//! Dequantizers checked on hand-built blocks against values computed by hand
//! from ggml's formulas. Scales are chosen so that every product is exact in
//! f32, so the checks are exact equality.

use fairyc_frontend::gguf::dequant::{self, DequantError};
use fairyc_frontend::gguf::GgmlType;

// f16 bit patterns, little endian.
const F16_ONE: [u8; 2] = [0x00, 0x3C]; // 1.0
const F16_HALF: [u8; 2] = [0x00, 0x38]; // 0.5
const F16_QUARTER: [u8; 2] = [0x00, 0x34]; // 0.25
const F16_MINUS_HALF: [u8; 2] = [0x00, 0xB8]; // -0.5
const F16_MINUS_QUARTER: [u8; 2] = [0x00, 0xB4]; // -0.25
const F16_MINUS_TWO: [u8; 2] = [0x00, 0xC0]; // -2.0
const F16_MINUS_THREE: [u8; 2] = [0x00, 0xC2]; // -3.0

#[test]
fn q8_0_block() {
    let mut block = [0u8; 34];
    block[..2].copy_from_slice(&F16_MINUS_HALF);
    let qs: [i8; 8] = [-128, -127, -1, 0, 1, 2, 100, 127];
    for (j, q) in qs.iter().enumerate() {
        block[2 + j] = *q as u8;
    }
    for j in 8..32 {
        block[2 + j] = (j as i8 - 20) as u8;
    }
    let mut y = [f32::NAN; 32];
    dequant::dequantize_block_q8_0(&block, &mut y);
    // y = q * d with d = -0.5.
    assert_eq!(y[..8], [64.0, 63.5, 0.5, -0.0, -0.5, -1.0, -50.0, -63.5]);
    for (j, &v) in y.iter().enumerate().skip(8) {
        assert_eq!(v, (j as f32 - 20.0) * -0.5, "element {j}");
    }
}

#[test]
fn q4_0_block() {
    let mut block = [0u8; 18];
    block[..2].copy_from_slice(&F16_QUARTER);
    // Byte j: element j in the low nibble (value j), element j + 16 in the
    // high nibble (value 15 - j).
    for j in 0..16u8 {
        block[2 + j as usize] = j | ((15 - j) << 4);
    }
    let mut y = [f32::NAN; 32];
    dequant::dequantize_block_q4_0(&block, &mut y);
    // y = (q - 8) * 0.25
    let expected: [f32; 32] = [
        -2.0, -1.75, -1.5, -1.25, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5,
        1.75, // low nibbles, q = 0..15
        1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.0, -0.25, -0.5, -0.75, -1.0, -1.25, -1.5, -1.75,
        -2.0, // high nibbles, q = 15..0
    ];
    assert_eq!(y, expected);

    // A negative scale flips the signs: d = -2.
    block[..2].copy_from_slice(&F16_MINUS_TWO);
    dequant::dequantize_block_q4_0(&block, &mut y);
    assert_eq!(y[0], 16.0); // (0 - 8) * -2
    assert_eq!(y[15], -14.0); // (15 - 8) * -2
    assert_eq!(y[16], -14.0);
    assert_eq!(y[31], 16.0);
}

#[test]
fn q4_1_block() {
    let mut block = [0u8; 20];
    block[..2].copy_from_slice(&F16_HALF);
    block[2..4].copy_from_slice(&F16_MINUS_THREE);
    for j in 0..16u8 {
        block[4 + j as usize] = j | ((15 - j) << 4);
    }
    let mut y = [f32::NAN; 32];
    dequant::dequantize_block_q4_1(&block, &mut y);
    // y = q * 0.5 - 3
    let expected: [f32; 32] = [
        -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 4.5,
        4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0,
    ];
    assert_eq!(y, expected);
}

// Q4_K: 6-bit scales and mins for the 8 sub-blocks of 32 elements.
const K_SCALES: [u8; 8] = [1, 2, 3, 63, 17, 33, 48, 63];
const K_MINS: [u8; 8] = [0, 5, 63, 7, 9, 40, 21, 62];

/// The 12 scale bytes for K_SCALES and K_MINS, packed by hand:
/// bytes 0..4 = scale[j] | (scale[j + 4] >> 4) << 6,
/// bytes 4..8 = min[j] | (min[j + 4] >> 4) << 6,
/// bytes 8..12 = (scale[j + 4] & 15) | (min[j + 4] & 15) << 4.
const K_PACKED: [u8; 12] = [
    1 | 1 << 6,  // scale 17 = 0b01_0001
    2 | 2 << 6,  // scale 33 = 0b10_0001
    3 | 3 << 6,  // scale 48 = 0b11_0000
    63 | 3 << 6, // scale 63 = 0b11_1111
    0,           // min 9 = 0b00_1001
    5 | 2 << 6,  // min 40 = 0b10_1000
    63 | 1 << 6, // min 21 = 0b01_0101
    7 | 3 << 6,  // min 62 = 0b11_1110
    1 | 9 << 4,
    1 | 8 << 4,
    5 << 4, // scale 48 has low bits 0
    15 | 14 << 4,
];

#[test]
fn q4_k_scale_unpacking() {
    assert_eq!(
        K_PACKED,
        [0x41, 0x82, 0xC3, 0xFF, 0x00, 0x85, 0x7F, 0xC7, 0x91, 0x81, 0x50, 0xEF]
    );
    for j in 0..8 {
        assert_eq!(
            dequant::q4_k_scale_min(&K_PACKED, j),
            (K_SCALES[j], K_MINS[j]),
            "sub-block {j}"
        );
    }
}

fn q4_k_block(d: [u8; 2], dmin: [u8; 2]) -> [u8; 144] {
    let mut block = [0u8; 144];
    block[..2].copy_from_slice(&d);
    block[2..4].copy_from_slice(&dmin);
    block[4..16].copy_from_slice(&K_PACKED);
    // Quant byte i: low nibble i % 16, high nibble 15 - i % 16.
    for i in 0..128 {
        block[16 + i] = (i % 16) as u8 | ((15 - i % 16) as u8) << 4;
    }
    block
}

/// The quant of element `e`: byte 32 * (e / 64) + e % 32, low nibble for
/// the first 32 elements of each 64, high nibble for the second 32.
fn q4_k_quant(e: usize) -> u8 {
    let byte = 32 * (e / 64) + e % 32;
    if e % 64 < 32 {
        (byte % 16) as u8
    } else {
        15 - (byte % 16) as u8
    }
}

#[test]
fn q4_k_block_values() {
    let block = q4_k_block(F16_ONE, F16_HALF);
    let mut y = [f32::NAN; 256];
    dequant::dequantize_block_q4_k(&block, &mut y);
    // y = d * scale * q - dmin * min, with d = 1, dmin = 0.5.
    assert_eq!(y[0], 0.0); // sub-block 0: 1 * 0 - 0
    assert_eq!(y[33], 2.0 * 14.0 - 0.5 * 5.0); // sub-block 1, high nibble of byte 1
    assert_eq!(y[64 * 2 + 32 + 5], 33.0 * 10.0 - 0.5 * 40.0); // sub-block 5
    assert_eq!(y[64 * 3 + 31], 48.0 * 15.0 - 0.5 * 21.0); // sub-block 6
    assert_eq!(y[255], 63.0 * 0.0 - 0.5 * 62.0); // sub-block 7
    for (e, &v) in y.iter().enumerate() {
        let sub = e / 32;
        let expected =
            f32::from(K_SCALES[sub]) * f32::from(q4_k_quant(e)) - 0.5 * f32::from(K_MINS[sub]);
        assert_eq!(v, expected, "element {e}");
    }
}

#[test]
fn q4_k_negative_super_scales() {
    let block = q4_k_block(F16_MINUS_TWO, F16_MINUS_QUARTER);
    let mut y = [f32::NAN; 256];
    dequant::dequantize_block_q4_k(&block, &mut y);
    // d = -2, dmin = -0.25: y = -2 * scale * q + 0.25 * min.
    assert_eq!(y[64 * 3 + 31], -2.0 * 48.0 * 15.0 + 0.25 * 21.0);
    for (e, &v) in y.iter().enumerate() {
        let sub = e / 32;
        let expected = -2.0 * f32::from(K_SCALES[sub]) * f32::from(q4_k_quant(e))
            + 0.25 * f32::from(K_MINS[sub]);
        assert_eq!(v, expected, "element {e}");
    }
}

// Q6_K: 16 i8 scales, one per 16 elements, including the extremes.
const Q6_SCALES: [i8; 16] = [1, -1, 2, -2, 3, -3, 4, -4, 127, -128, 5, -5, 6, -6, 7, -7];

/// The 6-bit quant chosen for element `e`; covers all four high-bit values.
fn q6_quant(e: usize) -> u8 {
    ((e * 7 + 3) % 64) as u8
}

/// Packs Q6_SCALES and q6_quant by the layout: in half h (128 elements),
/// element r = 32 g + l (g in 0..4, l in 0..32) has its low 4 bits in
/// ql[64 h + l + 32 (g % 2)], low nibble for g < 2 and high for g >= 2, its
/// high 2 bits in qh[32 h + l] at bits 2 g, and scale 8 h + 2 g + l / 16.
fn q6_k_block(d: [u8; 2]) -> [u8; 210] {
    let mut block = [0u8; 210];
    for e in 0..256 {
        let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
        let q = q6_quant(e);
        let ql = 64 * h + l + 32 * (g % 2);
        block[ql] |= if g < 2 { q & 15 } else { (q & 15) << 4 };
        block[128 + 32 * h + l] |= (q >> 4) << (2 * g);
    }
    for (i, s) in Q6_SCALES.iter().enumerate() {
        block[192 + i] = *s as u8;
    }
    block[208..].copy_from_slice(&d);
    block
}

fn q6_scale(e: usize) -> i8 {
    let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
    Q6_SCALES[8 * h + 2 * g + l / 16]
}

#[test]
fn q6_k_block_values() {
    let block = q6_k_block(F16_HALF);
    let mut y = [f32::NAN; 256];
    dequant::dequantize_block_q6_k(&block, &mut y);
    // y = d * scale * (q - 32), d = 0.5.
    assert_eq!(y[0], 0.5 * 1.0 * (3.0 - 32.0)); // q 3: high bits 0
    assert_eq!(y[5], 0.5 * 1.0 * (38.0 - 32.0)); // q 38: high bits 2
    assert_eq!(y[144], 0.5 * -128.0 * (51.0 - 32.0)); // half 1, scale 9
    assert_eq!(y[200], 0.5 * 6.0 * (59.0 - 32.0)); // q 59: high bits 3, high nibble
    assert_eq!(y[255], 0.5 * -7.0 * (60.0 - 32.0)); // last scale, ql[32 + l] high nibble
    let mut high_bits_seen = [false; 4];
    for (e, &v) in y.iter().enumerate() {
        let q = q6_quant(e);
        high_bits_seen[usize::from(q >> 4)] = true;
        let expected = 0.5 * f32::from(q6_scale(e)) * (f32::from(q) - 32.0);
        assert_eq!(v, expected, "element {e}");
    }
    assert_eq!(high_bits_seen, [true; 4]);
}

#[test]
fn q6_k_negative_super_scale() {
    let block = q6_k_block(F16_MINUS_QUARTER);
    let mut y = [f32::NAN; 256];
    dequant::dequantize_block_q6_k(&block, &mut y);
    for (e, &v) in y.iter().enumerate() {
        let expected = -0.25 * f32::from(q6_scale(e)) * (f32::from(q6_quant(e)) - 32.0);
        assert_eq!(v, expected, "element {e}");
    }
}

#[test]
fn plain_float_types() -> Result<(), DequantError> {
    let f16_bytes = [
        0x00, 0x3C, // 1.0
        0x00, 0xC0, // -2.0
        0xFF, 0x7B, // 65504, the largest f16
        0x01, 0x00, // 2^-24, the smallest subnormal
    ];
    assert_eq!(
        dequant::dequantize(GgmlType::F16, &f16_bytes)?,
        [1.0, -2.0, 65504.0, 2f32.powi(-24)]
    );
    let bf16_bytes = [
        0x80, 0x3F, // 1.0
        0xA0, 0xC0, // -5.0
        0x49, 0x40, // 3.140625
    ];
    assert_eq!(
        dequant::dequantize(GgmlType::BF16, &bf16_bytes)?,
        [1.0, -5.0, 3.140625]
    );
    let f32_bytes = [0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x80, 0xBF]; // 1.5, -1.0
    assert_eq!(dequant::dequantize(GgmlType::F32, &f32_bytes)?, [1.5, -1.0]);
    Ok(())
}

#[test]
fn whole_tensors_are_blocks_in_order() -> Result<(), DequantError> {
    let a = q4_k_block(F16_ONE, F16_HALF);
    let b = q4_k_block(F16_MINUS_TWO, F16_MINUS_QUARTER);
    let data = [a, b].concat();
    let y = dequant::dequantize(GgmlType::Q4_K, &data)?;
    let (mut ya, mut yb) = ([0.0; 256], [0.0; 256]);
    dequant::dequantize_block_q4_k(&a, &mut ya);
    dequant::dequantize_block_q4_k(&b, &mut yb);
    assert_eq!(y, [ya, yb].concat());

    assert!(dequant::dequantize(GgmlType::Q6_K, &[])?.is_empty());
    Ok(())
}

#[test]
fn partial_blocks_and_unsupported_types_are_errors() {
    assert_eq!(
        dequant::dequantize(GgmlType::Q8_0, &[0; 35]),
        Err(DequantError::PartialBlock {
            ty: GgmlType::Q8_0,
            len: 35,
            block: 34
        })
    );
    assert_eq!(
        dequant::dequantize(GgmlType::Q5_K, &[0; 176]),
        Err(DequantError::Unsupported(GgmlType::Q5_K))
    );
    assert_eq!(
        DequantError::Unsupported(GgmlType::Q5_K).to_string(),
        "unsupported tensor type Q5_K"
    );
    for ty in GgmlType::ALL {
        assert_eq!(
            dequant::is_supported(ty),
            dequant::dequantize(ty, &vec![0; ty.type_size()]).is_ok(),
            "{ty}"
        );
    }
}
