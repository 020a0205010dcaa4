//! The description of a table-look-up `quant_linear` tile kernel that both
//! code generators read ([`super::cranelift`] and [`super::llvm`] emit the
//! same loop nest from it), and the layouts its arguments are in.
//!
//! One call computes `rows` output rows (a tile: 16 with 128-bit vectors,
//! 32 with 256-bit, 64 with 512-bit) of one activation row for every stage
//! of a layer. Per pair of complex inputs `(j, j+1)` the
//! activations are quantized to integers `q` (|q| ≤ 63, per block) and four
//! 16-entry tables are built, one entry per nibble `c₁ | c₂ << 2` of two
//! codes (bit 0: axis, bit 1: sign σ):
//!
//! - `A = Σ_k [re axis] σ_k qr_k`, `B = Σ_k [im axis] σ_k qi_k`,
//! - `C = Σ_k [re axis] σ_k qi_k`, `D = Σ_k [im axis] σ_k qr_k`,
//!
//! so that a stage adds `s_re·A − s_im·B` to the real part of an output and
//! `s_re·C + s_im·D` to its imaginary part, and a conj-W stage
//! `s_re·A + s_im·B` and `−s_re·C + s_im·D`. The four sums keep the two
//! axes apart, so per-channel and per-group axis scales apply to integer
//! sums; the signs of U and W stages are folded into the scales, so all
//! stages share one set of tables (built once per activation row).
//!
//! Entries are sums of two values of at most 63 in size: they fit a byte
//! (stored `+128`, as `u8`), so one byte shuffle (`pshufb`, on wider
//! vectors with the 16-byte table repeated in every 128-bit lane) looks a
//! nibble up for 16, 32 or 64 rows.
//!
//! # Calling convention (System V, every argument a 64-bit integer)
//!
//! `kernel(tables, act_scales, codes, scales, out, groups, blocks_per_group)`
//!
//! - `tables: *const u8`: `[blocks][block_pairs][A, B, C, D][16]`, entries
//!   `+128`; `blocks = groups · blocks_per_group`.
//! - `act_scales: *const f32`: `[blocks]`, the step of each block's integers.
//! - `codes: *const u8`: the tile's codes, `[blocks][stages][block_pairs/2][rows]`:
//!   byte `r` of a row of `rows` bytes is the original packed code byte of
//!   tile row `r` for the four inputs `4p..4p+3` of the block (low nibble:
//!   pair `2p`, high nibble: pair `2p+1`).
//! - `scales: *const f32`: the tile's `[groups][stages][A, B, C, D][rows]`
//!   factors (axis scales with the stage's signs), in lane order.
//! - `out: *mut f32`: `[re, im][rows]` in lane order; the kernel adds to it.
//!
//! Lane order: the kernel widens the looked-up bytes as 16-bit lanes, even
//! rows from the low bytes and odd rows from the high ones, so lane `q`
//! holds row [`LutKernel::lane_row`]`(q)`: 0, 2, 4, …, rows − 2, 1, 3, …,
//! rows − 1.

/// Bytes of the four tables of one pair of inputs.
pub const PAIR_TABLE_BYTES: usize = 4 * 16;

/// The largest size of a quantized activation: two of them sum into a byte.
pub const LEVELS: f32 = 63.0;

/// The widest tile: 64 rows, one byte each in a 512-bit vector.
pub const MAX_ROWS: usize = 64;

/// Offset of the stored table entries (`u8` = entry + 128).
pub const ENTRY_OFFSET: i32 = 128;

/// One generated kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LutKernel {
    /// Stages of the layer (U and conj-W alike: their signs are in the scales).
    pub stages: usize,
    /// Pairs of complex inputs per activation block: even (a code byte is
    /// two pairs), at most 128 (a block's 16-bit sums cannot overflow).
    pub block_pairs: usize,
    /// Output rows per tile: the vector width in bytes (16, 32 or 64).
    pub rows: usize,
}

impl LutKernel {
    pub fn new(stages: usize, block_pairs: usize, rows: usize) -> LutKernel {
        assert!(
            block_pairs > 0 && block_pairs.is_multiple_of(2) && block_pairs <= 128,
            "a block has an even number of pairs, at most 128"
        );
        assert!(
            matches!(rows, 16 | 32 | MAX_ROWS),
            "a tile is 16, 32 or 64 rows"
        );
        LutKernel {
            stages,
            block_pairs,
            rows,
        }
    }

    /// Bytes of one tile's codes per block.
    pub fn codes_per_block(&self) -> usize {
        self.stages * self.block_pairs / 2 * self.rows
    }

    /// Floats of one tile's scales per group.
    pub fn scales_per_group(&self) -> usize {
        self.stages * 4 * self.rows
    }

    /// The row of a tile that lane `q` holds.
    pub const fn lane_row(&self, q: usize) -> usize {
        let half = self.rows / 2;
        if q < half {
            2 * q
        } else {
            2 * (q - half) + 1
        }
    }
}
