//! The golden data of the authors' code (see `ir/tests/quant_golden.rs`):
//! the matrix generator, the hash, and the fingerprints of their deployed
//! weights. Shared with `tests/passes.rs`, which compiles the same
//! matrices through the whole pipeline.

use half::bf16;

/// SplitMix64 output `i` (1-based) cut into three 10-bit fields; their sum
/// minus 1534, over 16384, rounded to bf16. One in 256 entries is zero.
pub fn weights(seed: u64, rows: usize, cols: usize) -> Vec<bf16> {
    (1..=(rows * cols) as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let k: i64 = [0, 10, 20]
                .iter()
                .map(|s| ((z >> s) & 0x3ff) as i64)
                .sum::<i64>()
                - 1534;
            let k = if (z >> 40) & 0xff == 0 { 0 } else { k };
            bf16::from_f32(k as f32 / 16384.0)
        })
        .collect()
}

pub fn fnv(v: &[bf16]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in v.iter().flat_map(|x| x.to_bits().to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// `(seed, rows, cols, fnv(A), [fnv(A_q) for V1..V4])`.
pub const GOLDEN: &[(u64, usize, usize, u64, [u64; 4])] = &[
    (
        1,
        64,
        96,
        9473487953881647241,
        [
            18261748929642414903,
            7649281377333712973,
            1700942394996426802,
            17650774988552590868,
        ],
    ),
    (
        2,
        576,
        576,
        11038704783588227687,
        [
            5550447473967016055,
            14201499456546252164,
            14770800761785184278,
            5305848996008596438,
        ],
    ),
    (
        3,
        1536,
        576,
        13906997838951903220,
        [
            17557908153235085655,
            8238388630229408031,
            1277359889790919663,
            12721781672011199503,
        ],
    ),
    (
        4,
        576,
        1536,
        1561528415857150787,
        [
            8428854201885301463,
            10541064715028095586,
            10860503512997013862,
            2321192888182031644,
        ],
    ),
    (
        5,
        192,
        576,
        9877650231623513470,
        [
            12718042563527968265,
            13099042734534736011,
            18233459429672272458,
            82596874196027737,
        ],
    ),
];
