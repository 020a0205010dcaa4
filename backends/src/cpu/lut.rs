//! `quant_linear` through a generated table-look-up kernel: the layer's
//! codes re-laid at load for the kernel ([`super::kernel`] has the
//! layouts), the activations quantized and their tables built once per
//! row, tiles of 16, 32 or 64 output rows (the vector width) run in
//! parallel.
//!
//! Columns are grouped as the scales are (one group per row for tensor and
//! channel scales); each group is split into blocks of at most 64 inputs,
//! padded to a multiple of four (one code byte). Padding inputs are zero,
//! so the padding codes add nothing.

use fairyc_ir::Granularity;
use num_complex::Complex32;
use rayon::prelude::*;

use super::kernel::{LutKernel, ENTRY_OFFSET, LEVELS, PAIR_TABLE_BYTES};
use super::{CodeGen, KernelFn};

/// The most inputs an activation block holds (its integers share a step).
pub const MAX_BLOCK: usize = 64;

/// Complex multiply-adds (rows × n × m) from which a call splits its tiles
/// over threads: below it, handing tiles to another thread costs more than
/// it saves (measured on SmolLM2's layers, docs/BENCHMARKS.md).
const PARALLEL_WORK: usize = 1 << 20;

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
    pub fn new(m: usize, granularity: Granularity) -> Blocks {
        let group_len = match granularity {
            Granularity::Group(g) => g.clamp(1, m.max(1)),
            _ => m.max(1),
        };
        let groups = m.div_ceil(group_len);
        let block_len = group_len.next_multiple_of(4).min(MAX_BLOCK);
        Blocks {
            m,
            group_len,
            groups,
            block_len,
            blocks_per_group: group_len.div_ceil(block_len),
        }
    }

    pub fn count(&self) -> usize {
        self.groups * self.blocks_per_group
    }

    /// The input column at `offset` of block `block`, or `None` for padding.
    fn column(&self, block: usize, offset: usize) -> Option<usize> {
        let (group, within) = (block / self.blocks_per_group, block % self.blocks_per_group);
        let o = within * self.block_len + offset;
        let start = group * self.group_len;
        (o < self.group_len && start + o < self.m).then_some(start + o)
    }

    /// Every block's columns, `block_len` each.
    fn columns(&self) -> Vec<Option<usize>> {
        (0..self.count())
            .flat_map(|b| (0..self.block_len).map(move |o| (b, o)))
            .map(|(b, o)| self.column(b, o))
            .collect()
    }

    /// The step of each input's integers for one row of activations: what
    /// the activation quantization may be off by, twice over.
    pub fn steps(&self, row: &[Complex32]) -> Vec<f32> {
        let mut steps = vec![0.0; self.m];
        let columns = self.columns();
        for block in columns.chunks(self.block_len) {
            let step = block_step(block, row);
            for c in block.iter().flatten() {
                steps[*c] = step;
            }
        }
        steps
    }
}

/// Activations are quantized per block to integers of at most [`LEVELS`]
/// over the largest real or imaginary part: the block's step.
fn block_step(columns: &[Option<usize>], row: &[Complex32]) -> f32 {
    let largest = columns
        .iter()
        .flatten()
        .map(|&c| row[c].re.abs().max(row[c].im.abs()))
        .fold(0.0f32, f32::max);
    largest / LEVELS
}

/// One quant_linear layer ready for the kernel.
pub struct LutLayer {
    n: usize,
    m: usize,
    u_stages: usize,
    granularity: Granularity,
    blocks: Blocks,
    /// Every block's input columns.
    columns: Vec<Option<usize>>,
    desc: LutKernel,
    kernel: KernelFn,
    /// `[tiles][blocks][stages][block_pairs/2][16]`.
    codes: Vec<u8>,
}

/// The stages' scales as the kernel reads them (see [`LutLayer::factors`]).
pub struct Factors(Vec<f32>);

impl LutLayer {
    /// Re-lays the packed codes `code2[n, m]` of every stage (U first) for
    /// the kernel `generator` emits for this host.
    pub fn new(
        n: usize,
        m: usize,
        u_stages: usize,
        stages: &[&[u8]],
        granularity: Granularity,
        generator: CodeGen,
    ) -> Result<LutLayer, String> {
        let stride = m.div_ceil(4);
        if let Some(s) = stages.iter().find(|s| s.len() != n * stride) {
            return Err(format!(
                "a stage of an [{n}, {m}] layer needs {} code bytes, found {}",
                n * stride,
                s.len()
            ));
        }
        let blocks = Blocks::new(m, granularity);
        let rows = generator.rows();
        let desc = LutKernel::new(stages.len(), blocks.block_len / 2, rows);
        let kernel = generator.kernel(desc)?;
        let columns = blocks.columns();
        let per_tile = blocks.count() * desc.codes_per_block();
        let mut codes = vec![0u8; n.div_ceil(rows) * per_tile];
        codes
            .par_chunks_mut(per_tile.max(1))
            .enumerate()
            .for_each(|(tile, out)| {
                let mut at = 0;
                for block in columns.chunks(blocks.block_len) {
                    for stage in stages {
                        for four in block.chunks(4) {
                            for r in 0..rows {
                                let row = tile * rows + r;
                                if row < n {
                                    out[at + r] = code_byte(&stage[row * stride..][..stride], four);
                                }
                            }
                            at += rows;
                        }
                    }
                }
            });
        Ok(LutLayer {
            n,
            m,
            u_stages,
            granularity,
            blocks,
            columns,
            desc,
            kernel,
            codes,
        })
    }

    pub fn bytes(&self) -> usize {
        self.codes.len()
    }

    /// `x[rows, m]` through the layer with the stages' scales (`factors`):
    /// `[rows, n]`.
    pub fn run(&self, x: &[Complex32], rows: usize, factors: &Factors) -> Vec<Complex32> {
        let (n, m) = (self.n, self.m);
        let mut y = vec![Complex32::new(0.0, 0.0); rows * n];
        if rows == 0 || n == 0 || m == 0 {
            return y;
        }
        let factors = &factors.0;
        let tile_rows = self.desc.rows;
        // With one thread, the calling thread does the work: handing it to
        // the pool costs a wake-up per call, as much as a small layer.
        let parallel = rayon::current_num_threads() > 1 && rows * n * m >= PARALLEL_WORK;
        let tables: Vec<(Vec<u8>, Vec<f32>)> = if parallel && rows > 1 {
            x.par_chunks(m).map(|row| self.tables(row)).collect()
        } else {
            x.chunks(m).map(|row| self.tables(row)).collect()
        };
        let per_tile = self.blocks.count() * self.desc.codes_per_block();
        let factors_per_tile = self.blocks.groups * self.desc.scales_per_group();
        let run_tile = |tile: usize| {
            let mut out = vec![0.0f32; rows * 2 * tile_rows];
            let codes = &self.codes[tile * per_tile..][..per_tile];
            let factors = &factors[tile * factors_per_tile..][..factors_per_tile];
            for ((t, steps), out) in tables.iter().zip(out.chunks_mut(2 * tile_rows)) {
                // SAFETY: every buffer has the size and layout the
                // kernel's calling convention names for `self.desc`.
                unsafe {
                    (self.kernel)(
                        t.as_ptr(),
                        steps.as_ptr(),
                        codes.as_ptr(),
                        factors.as_ptr(),
                        out.as_mut_ptr(),
                        self.blocks.groups as u64,
                        self.blocks.blocks_per_group as u64,
                    )
                };
            }
            out
        };
        let tiles: Vec<Vec<f32>> = if parallel {
            (0..n.div_ceil(tile_rows))
                .into_par_iter()
                .map(run_tile)
                .collect()
        } else {
            (0..n.div_ceil(tile_rows)).map(run_tile).collect()
        };
        for (tile, out) in tiles.iter().enumerate() {
            for (r, lanes) in out.chunks(2 * tile_rows).enumerate() {
                for q in 0..tile_rows {
                    let i = tile * tile_rows + self.desc.lane_row(q);
                    if i < n {
                        y[r * n + i] = Complex32::new(lanes[q], lanes[tile_rows + q]);
                    }
                }
            }
        }
        y
    }

    /// The kernel's per-tile factors `[tiles][groups][stages][A, B, C, D][16]`:
    /// U stages `(s_re, −s_im, s_re, s_im)`, conj-W stages `(s_re, s_im, −s_re, s_im)`.
    /// `scales` are the stages' scales as `dequant` reads them.
    pub fn factors(&self, scales: &[&[f32]]) -> Result<Factors, String> {
        let (n, groups) = (self.n, self.blocks.groups);
        let want = match self.granularity {
            Granularity::Tensor => 2,
            _ => 2 * n * groups,
        };
        if scales.len() != self.desc.stages {
            return Err(format!(
                "{} stages of codes, {} of scales",
                self.desc.stages,
                scales.len()
            ));
        }
        if let Some(s) = scales.iter().find(|s| s.len() != want) {
            return Err(format!(
                "a stage of an [{n}, {}] layer needs {want} scales, found {}",
                self.m,
                s.len()
            ));
        }
        let per_tile = groups * self.desc.scales_per_group();
        let tile_rows = self.desc.rows;
        let mut out = vec![0.0f32; n.div_ceil(tile_rows) * per_tile];
        for (tile, f) in out.chunks_mut(per_tile).enumerate() {
            let mut at = 0;
            for g in 0..groups {
                for (stage, s) in scales.iter().enumerate() {
                    let sign = if stage < self.u_stages { 1.0 } else { -1.0 };
                    for sum in 0..4 {
                        for q in 0..tile_rows {
                            let row = tile * tile_rows + self.desc.lane_row(q);
                            if row >= n {
                                continue;
                            }
                            let k = match self.granularity {
                                Granularity::Tensor => 0,
                                _ => row * groups + g,
                            };
                            let (s_re, s_im) = (s[2 * k], s[2 * k + 1]);
                            f[at + sum * tile_rows + q] = match sum {
                                0 => s_re,
                                1 => -sign * s_im,
                                2 => sign * s_re,
                                _ => s_im,
                            };
                        }
                    }
                    at += 4 * tile_rows;
                }
            }
        }
        Ok(Factors(out))
    }

    /// The quantized activations of one row as the kernel reads them:
    /// every block's tables (`[block_pairs][A, B, C, D][16]`, entries
    /// `+128`) and step.
    fn tables(&self, row: &[Complex32]) -> (Vec<u8>, Vec<f32>) {
        let block_len = self.blocks.block_len;
        let mut tables = vec![0u8; self.columns.len() / 2 * PAIR_TABLE_BYTES];
        let mut steps = Vec::with_capacity(self.blocks.count());
        for (block, out) in self
            .columns
            .chunks(block_len)
            .zip(tables.chunks_mut(block_len / 2 * PAIR_TABLE_BYTES))
        {
            let step = block_step(block, row);
            let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
            steps.push(step);
            let level = |f: f32| (f * inv).round().clamp(-LEVELS, LEVELS) as i32;
            for (pair, out) in block.chunks(2).zip(out.chunks_mut(PAIR_TABLE_BYTES)) {
                let [(r0, i0), (r1, i1)] = [pair[0], pair[1]]
                    .map(|c| c.map_or((0, 0), |c| (level(row[c].re), level(row[c].im))));
                // What each code (+1, +i, -1, -i) of either input adds to A, B, C, D.
                let first = [
                    [r0, 0, -r0, 0],
                    [0, i0, 0, -i0],
                    [i0, 0, -i0, 0],
                    [0, r0, 0, -r0],
                ];
                let second = [
                    [r1, 0, -r1, 0],
                    [0, i1, 0, -i1],
                    [i1, 0, -i1, 0],
                    [0, r1, 0, -r1],
                ];
                for sum in 0..4 {
                    for nib in 0..16 {
                        out[sum * 16 + nib] =
                            (first[sum][nib & 3] + second[sum][nib >> 2] + ENTRY_OFFSET) as u8;
                    }
                }
            }
        }
        (tables, steps)
    }
}

/// The byte of 2-bit codes of one row for four columns (padding: code 0).
fn code_byte(row: &[u8], columns: &[Option<usize>]) -> u8 {
    columns
        .iter()
        .enumerate()
        .fold(0u8, |byte, (e, c)| match c {
            Some(c) => byte | (((row[c / 4] >> (2 * (c % 4))) & 0b11) << (2 * e)),
            None => byte,
        })
}
