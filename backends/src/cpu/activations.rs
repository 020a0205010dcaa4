//! How the CPU kernels quantize a row of activations: per block of at most
//! [`MAX_BLOCK`] inputs (the blocks split the scale groups), each block's
//! integers on one step. The look-up kernel ([`super::lut`]) and the
//! multiply kernel ([`super::mad`]) share the blocks and the rounding.

use fairyc_ir::Granularity;
use num_complex::Complex32;

use super::kernel::LEVELS;

/// The most inputs an activation block holds (its integers share a step).
pub const MAX_BLOCK: usize = 64;

/// How the kernels quantize activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activations {
    /// Integers of at most [`LEVELS`] in size per block (7 bits): one pass
    /// of the kernel. The fastest.
    #[default]
    Bits7,
    /// Then each block's rounding error the same way, on a step `2 ·
    /// LEVELS` times finer, in a second pass (about 14 bits): twice the
    /// look-ups for a 126th of the error.
    Bits14,
}

impl Activations {
    /// Passes of the kernel over the codes.
    pub fn passes(self) -> usize {
        match self {
            Activations::Bits7 => 1,
            Activations::Bits14 => 2,
        }
    }

    /// The step of each input's integers for one row: what the activation
    /// quantization may be off by, twice over (the last pass's step).
    pub fn steps(self, blocks: &Blocks, row: &[Complex32]) -> Vec<f32> {
        let refine = match self {
            Activations::Bits7 => 1.0,
            Activations::Bits14 => 2.0 * LEVELS,
        };
        blocks.steps(row).into_iter().map(|s| s / refine).collect()
    }
}

/// How a layer's columns split into groups and blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    m: usize,
    /// Columns per scale group (the last may be shorter).
    group_len: usize,
    pub groups: usize,
    /// Inputs per block, a multiple of 4.
    pub block_len: usize,
    pub blocks_per_group: usize,
}

impl Blocks {
    /// Groups split into as few blocks as fit [`MAX_BLOCK`], of equal
    /// length as near as a multiple of 4 allows: a group of 288 inputs is
    /// 5 blocks of 60 (12 padding inputs), not 4 of 64 and one of 32.
    pub fn new(m: usize, granularity: Granularity) -> Blocks {
        let group_len = match granularity {
            Granularity::Group(g) => g.clamp(1, m.max(1)),
            _ => m.max(1),
        };
        let groups = m.div_ceil(group_len);
        let blocks_per_group = group_len.div_ceil(MAX_BLOCK);
        let block_len = group_len.div_ceil(blocks_per_group).next_multiple_of(4);
        Blocks {
            m,
            group_len,
            groups,
            block_len,
            blocks_per_group,
        }
    }

    pub fn count(&self) -> usize {
        self.groups * self.blocks_per_group
    }

    /// The input columns of block `block` (at most `block_len`; the rest
    /// of the block is padding).
    pub fn range(&self, block: usize) -> std::ops::Range<usize> {
        let (group, within) = (block / self.blocks_per_group, block % self.blocks_per_group);
        let group_start = group * self.group_len;
        let group_end = (group_start + self.group_len).min(self.m);
        let start = (group_start + within * self.block_len).min(group_end);
        start..(start + self.block_len).min(group_end)
    }

    /// The input column at `offset` of block `block`, or `None` for padding.
    pub(super) fn column(&self, block: usize, offset: usize) -> Option<usize> {
        let range = self.range(block);
        (offset < range.len()).then_some(range.start + offset)
    }

    /// The step of each input's integers for one row of activations: what
    /// the activation quantization may be off by, twice over.
    pub fn steps(&self, row: &[Complex32]) -> Vec<f32> {
        let mut steps = vec![0.0; self.m];
        for block in 0..self.count() {
            let range = self.range(block);
            let step = block_step(&row[range.clone()]);
            steps[range].fill(step);
        }
        steps
    }
}

/// Activations are quantized per block to integers of at most [`LEVELS`]
/// over the largest real or imaginary part: the block's step.
pub(super) fn block_step(block: &[Complex32]) -> f32 {
    // The largest magnitude as integer bits: non-negative floats order as
    // their bits do, and an integer maximum vectorises.
    let largest = bytemuck::cast_slice::<Complex32, f32>(block)
        .iter()
        .map(|v| v.to_bits() & 0x7fff_ffff)
        .max()
        .unwrap_or(0);
    f32::from_bits(largest) / LEVELS
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22`: the
/// float addition rounds at this magnitude, and it vectorises where a call
/// to `round` does not.
pub(super) fn round_near(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (v + MAGIC) - MAGIC
}
