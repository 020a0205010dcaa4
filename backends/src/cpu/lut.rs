//! `quant_linear` through a generated table-look-up kernel: the layer's
//! codes re-laid at load for the kernel ([`super::kernel`] has the
//! layouts), the activations quantized and their tables built once per
//! row, tiles of 16, 32 or 64 output rows (the vector width) run in
//! parallel.
//!
//! Columns are grouped as the scales are (one group per row for tensor and
//! channel scales); each group is split into blocks of at most 64 inputs
//! ([`super::activations::Blocks`]), padded to a multiple of four (one code
//! byte). Padding inputs are zero, so the padding codes add nothing.

use fairyc_ir::Granularity;
use num_complex::Complex32;
use rayon::prelude::*;

use super::activations::{block_step, round_near, Activations, Blocks, MAX_BLOCK};
use super::kernel::{LutKernel, ENTRY_OFFSET, LEVELS, MAX_ROWS, PAIR_TABLE_BYTES};
use super::mad::{self, MadWeights};
use super::{CodeGen, KernelFn};

/// Rows of activations one parallel task runs through a tile.
const ROWS_PER_TASK: usize = 16;

thread_local! {
    /// The multiply kernel's quantized activations, kept by each thread
    /// that calls it.
    static MAD_ACTIVATIONS: std::cell::Cell<mad::Activations8> = std::cell::Cell::new(mad::Activations8::default());
    /// The look-up kernel's activation tables and steps, kept by each
    /// thread that calls it, so that a call allocates none.
    static SCRATCH: std::cell::Cell<(Vec<u8>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Rows of activations one task of the multiply kernel runs through a
/// tile (each task decodes the tile's weights anew).
const MAD_ROWS_PER_TASK: usize = 64;

/// `y`'s elements, which the tasks of [`LutLayer::run`] write in disjoint
/// parts from several threads.
struct Disjoint(*mut Complex32);

// SAFETY: the tasks that share it write disjoint elements (see `run`).
unsafe impl Sync for Disjoint {}

impl Disjoint {
    fn ptr(&self) -> *mut Complex32 {
        self.0
    }

    /// # Safety
    /// `k` is inside the vector, and no other thread touches element `k`.
    unsafe fn write(&self, k: usize, v: Complex32) {
        *self.0.add(k) = v;
    }
}

/// Complex multiply-adds (rows × n × m) from which a call splits its tiles
/// over threads: below it, handing tiles to another thread costs more than
/// it saves (measured on SmolLM2's layers, docs/BENCHMARKS.md).
const PARALLEL_WORK: usize = 1 << 20;

/// One quant_linear layer ready for the kernel.
pub struct LutLayer {
    n: usize,
    m: usize,
    u_stages: usize,
    granularity: Granularity,
    blocks: Blocks,
    desc: LutKernel,
    kernel: KernelFn,
    /// `[tiles][blocks][stages][block_pairs/2][16]`.
    codes: Vec<u8>,
    activations: Activations,
    pair_tables: PairTablesFn,
}

/// The stages' scales as the kernel reads them (see [`LutLayer::factors`]).
pub struct Factors {
    values: Vec<f32>,
    /// One tile's factors serve every tile (per-tensor scales): they stay
    /// in the L1 cache instead of streaming beside the codes.
    shared: bool,
    /// The multiply kernel's weight tables (per-tensor scales).
    mad: Option<MadWeights>,
}

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
        let per_tile = blocks.count() * desc.codes_per_block();
        let mut codes = vec![0u8; n.div_ceil(rows) * per_tile];
        codes
            .par_chunks_mut(per_tile.max(1))
            .enumerate()
            .for_each(|(tile, out)| {
                let mut at = 0;
                for block in 0..blocks.count() {
                    let columns: Vec<Option<usize>> = (0..blocks.block_len)
                        .map(|offset| blocks.column(block, offset))
                        .collect();
                    for stage in stages {
                        for four in columns.chunks(4) {
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
            desc,
            kernel,
            codes,
            activations: Activations::default(),
            pair_tables: pair_tables_for_host(),
        })
    }

    /// The layer quantizing its activations as `activations` says.
    pub fn with_activations(self, activations: Activations) -> LutLayer {
        LutLayer {
            activations,
            ..self
        }
    }

    pub fn bytes(&self) -> usize {
        self.codes.len()
    }

    /// `x[rows, m]` through the layer with the stages' scales (`factors`):
    /// `[rows, n]`, by look-ups or, from [`mad::MIN_ROWS`] rows where the
    /// host and the layer allow, by multiply-adds.
    pub fn run(&self, x: &[Complex32], rows: usize, factors: &Factors) -> Vec<Complex32> {
        let mut y = vec![Complex32::new(0.0, 0.0); rows * self.n];
        self.run_into(x, rows, factors, &mut y);
        y
    }

    /// [`LutLayer::run`] into `y` (`[rows, n]`, every element written; the
    /// look-ups' tables live in a buffer of the thread's: a decode step
    /// allocates nothing).
    pub fn run_into(&self, x: &[Complex32], rows: usize, factors: &Factors, y: &mut [Complex32]) {
        // The kernels write `y` through pointers: its size is checked here.
        assert_eq!(x.len(), rows * self.m, "quant_linear input of {rows} rows");
        assert_eq!(y.len(), rows * self.n, "quant_linear output of {rows} rows");
        if self.m == 0 {
            // No inputs: every output is an empty sum.
            y.fill(Complex32::new(0.0, 0.0));
            return;
        }
        if rows >= mad::MIN_ROWS && self.mad_into(x, rows, factors, y) {
            return;
        }
        self.lut_into(x, rows, factors, y);
    }

    /// [`LutLayer::run`] by the multiply kernel ([`mad`]), or `None` where
    /// it does not apply: a host without AVX-512 VNNI, tiles narrower than
    /// 64, scales not per tensor, 14-bit activations.
    pub fn run_mad(
        &self,
        x: &[Complex32],
        rows: usize,
        factors: &Factors,
    ) -> Option<Vec<Complex32>> {
        let mut y = vec![Complex32::new(0.0, 0.0); rows * self.n];
        self.mad_into(x, rows, factors, &mut y).then_some(y)
    }

    /// [`LutLayer::run_mad`] into `y` (`[rows, n]`); false where it does
    /// not apply.
    fn mad_into(
        &self,
        x: &[Complex32],
        rows: usize,
        factors: &Factors,
        y: &mut [Complex32],
    ) -> bool {
        let Some(weights) = factors.mad.as_ref() else {
            return false;
        };
        if !mad::applies(self.desc.rows, self.granularity, self.activations) {
            return false;
        }
        let (n, m) = (self.n, self.m);
        if rows == 0 || n == 0 || m == 0 {
            return true;
        }
        // Taken out of the thread's keeping for the call: while it waits on
        // its parallel tasks the thread may run another call (rayon steals
        // work), which then finds none and makes its own.
        let mut quantized = MAD_ACTIVATIONS.take();
        quantized.fill(&self.blocks, x, m, rows);
        self.mad_with(&quantized, weights, rows, y);
        MAD_ACTIVATIONS.set(quantized);
        true
    }

    fn mad_with(
        &self,
        x: &mad::Activations8,
        weights: &MadWeights,
        rows: usize,
        y: &mut [Complex32],
    ) {
        let (n, m) = (self.n, self.m);
        let per_tile = self.blocks.count() * self.desc.codes_per_block();
        let tiles = n.div_ceil(mad::TILE);
        let parallel = rayon::current_num_threads() > 1 && rows * n * m >= PARALLEL_WORK;
        // One thread decodes each tile once; threads split rows too, so
        // that a layer of few tiles still keeps every thread busy.
        let run_len = if parallel { MAD_ROWS_PER_TASK } else { rows };
        let row_runs = rows.div_ceil(run_len);
        let output = Disjoint(y.as_mut_ptr());
        let run_task = |task: usize| {
            let (tile, run) = (task / row_runs, task % row_runs);
            let first = run * run_len;
            let codes = &self.codes[tile * per_tile..][..per_tile];
            // SAFETY: the host runs the kernel (checked above), the codes
            // are the LLVM tile's layout for these blocks and stages, and
            // this task alone writes its tile's columns of its rows.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                mad::run_tile(
                    tile,
                    codes,
                    &self.blocks,
                    self.desc.stages,
                    weights,
                    x,
                    first..(first + run_len).min(rows),
                    n,
                    output.ptr(),
                )
            };
        };
        if parallel {
            (0..tiles * row_runs).into_par_iter().for_each(run_task);
        } else {
            (0..tiles * row_runs).for_each(run_task);
        }
    }

    /// [`LutLayer::run`] by the look-up kernel at every shape.
    pub fn run_lut(&self, x: &[Complex32], rows: usize, factors: &Factors) -> Vec<Complex32> {
        let mut y = vec![Complex32::new(0.0, 0.0); rows * self.n];
        self.lut_into(x, rows, factors, &mut y);
        y
    }

    /// [`LutLayer::run_lut`] into `y` (`[rows, n]`).
    fn lut_into(&self, x: &[Complex32], rows: usize, factors: &Factors, y: &mut [Complex32]) {
        let (n, m) = (self.n, self.m);
        if rows == 0 || n == 0 || m == 0 {
            return;
        }
        // Out of the thread's keeping for the call (see `mad_into`).
        let (mut tables, mut steps) = SCRATCH.take();
        self.lut_with(x, rows, factors, y, &mut tables, &mut steps);
        SCRATCH.set((tables, steps));
    }

    fn lut_with(
        &self,
        x: &[Complex32],
        rows: usize,
        factors: &Factors,
        y: &mut [Complex32],
        tables: &mut Vec<u8>,
        steps: &mut Vec<f32>,
    ) {
        let (n, m) = (self.n, self.m);
        let tile_rows = self.desc.rows;
        let tiles = n.div_ceil(tile_rows);
        // With one thread, the calling thread does the work: handing it to
        // the pool costs a wake-up per call, as much as a small layer.
        let parallel = rayon::current_num_threads() > 1 && rows * n * m >= PARALLEL_WORK;
        // Per row and pass: every block's tables and steps.
        let passes = self.activations.passes();
        let blocks = self.blocks.count();
        let table_len = blocks * self.blocks.block_len / 2 * PAIR_TABLE_BYTES;
        tables.clear();
        tables.resize(rows * passes * table_len, 0);
        steps.clear();
        steps.resize(rows * passes * blocks, 0.0);
        let (tables, steps) = (&mut tables[..], &mut steps[..]);
        let fill = |((row, tables), steps): ((&[Complex32], &mut [u8]), &mut [f32])| {
            self.tables(row, tables, steps)
        };
        if parallel && rows > 1 {
            x.par_chunks(m)
                .zip(tables.par_chunks_mut(passes * table_len))
                .zip(steps.par_chunks_mut(passes * blocks))
                .for_each(fill);
        } else {
            x.chunks(m)
                .zip(tables.chunks_mut(passes * table_len))
                .zip(steps.chunks_mut(passes * blocks))
                .for_each(fill);
        }
        let per_tile = blocks * self.desc.codes_per_block();
        let factors_per_tile = self.blocks.groups * self.desc.scales_per_group();
        // A task is one tile for a run of up to ROWS_PER_TASK rows: a few
        // tiles of many rows (a prompt through a narrow layer) still split
        // over every thread. Each task writes its own rows and columns of
        // `y`, straight from the kernel's sums.
        let row_runs = rows.div_ceil(ROWS_PER_TASK);
        let output = Disjoint(y.as_mut_ptr());
        let run_task = |task: usize| {
            let (tile, first_row) = (task / row_runs, task % row_runs * ROWS_PER_TASK);
            let codes = &self.codes[tile * per_tile..][..per_tile];
            let first = if factors.shared {
                0
            } else {
                tile * factors_per_tile
            };
            let factors = &factors.values[first..][..factors_per_tile];
            // One row's sums, `[re, im][tile_rows]` in lane order.
            let mut sums = [0.0f32; 2 * MAX_ROWS];
            let sums = &mut sums[..2 * tile_rows];
            for r in first_row..(first_row + ROWS_PER_TASK).min(rows) {
                sums.fill(0.0);
                // Each pass adds to the row's sums.
                for pass in r * passes..(r + 1) * passes {
                    let tables = &tables[pass * table_len..][..table_len];
                    let steps = &steps[pass * blocks..][..blocks];
                    // SAFETY: every buffer has the size and layout the
                    // kernel's calling convention names for `self.desc`.
                    unsafe {
                        (self.kernel)(
                            tables.as_ptr(),
                            steps.as_ptr(),
                            codes.as_ptr(),
                            factors.as_ptr(),
                            sums.as_mut_ptr(),
                            self.blocks.groups as u64,
                            self.blocks.blocks_per_group as u64,
                        )
                    };
                }
                let (re, im) = sums.split_at(tile_rows);
                for (q, (&re, &im)) in re.iter().zip(im).enumerate() {
                    let i = tile * tile_rows + self.desc.lane_row(q);
                    if i < n {
                        // SAFETY: `(r, i)` is inside `y` (`r < rows`,
                        // `i < n`), and only this task writes it: its tile
                        // owns the columns, its run the rows.
                        unsafe { output.write(r * n + i, Complex32::new(re, im)) };
                    }
                }
            }
        };
        if parallel {
            (0..tiles * row_runs).into_par_iter().for_each(run_task);
        } else {
            (0..tiles * row_runs).for_each(run_task);
        }
    }

    /// The kernel's per-tile factors `[tiles][groups][stages][A, B, C, D][rows]`
    /// (one tile for all with per-tensor scales):
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
        let shared = self.granularity == Granularity::Tensor;
        let tiles = if shared { 1 } else { n.div_ceil(tile_rows) };
        let mut out = vec![0.0f32; tiles * per_tile];
        for (tile, f) in out.chunks_mut(per_tile).enumerate() {
            let mut at = 0;
            for g in 0..groups {
                for (stage, s) in scales.iter().enumerate() {
                    let sign = if stage < self.u_stages { 1.0 } else { -1.0 };
                    for sum in 0..4 {
                        for q in 0..tile_rows {
                            let row = tile * tile_rows + self.desc.lane_row(q);
                            let k = match self.granularity {
                                Granularity::Tensor => 0,
                                _ if row >= n => continue,
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
        let mad = match self.granularity {
            Granularity::Tensor => MadWeights::new(self.u_stages, scales),
            _ => None,
        };
        Ok(Factors {
            values: out,
            shared,
            mad,
        })
    }

    /// The quantized activations of one row as the kernel reads them,
    /// per pass: every block's tables (`[block_pairs][A, B, C, D][16]`,
    /// entries `+128`) into `tables`, and its step into `steps`.
    fn tables(&self, row: &[Complex32], tables: &mut [u8], steps: &mut [f32]) {
        let block_len = self.blocks.block_len;
        let blocks = self.blocks.count();
        let block_tables = block_len / 2 * PAIR_TABLE_BYTES;
        let passes = self.activations.passes();
        // What is left to quantize of the block, `[re, im]` per input
        // (padding zero), and its integers.
        let mut left = [0.0f32; 2 * MAX_BLOCK];
        let mut levels = [0i8; 2 * MAX_BLOCK];
        for block in 0..blocks {
            let parts = bytemuck::cast_slice::<Complex32, f32>(&row[self.blocks.range(block)]);
            left[..parts.len()].copy_from_slice(parts);
            left[parts.len()..2 * block_len].fill(0.0);
            let mut step = block_step(&row[self.blocks.range(block)]);
            for pass in 0..passes {
                let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
                for (level, v) in levels.iter_mut().zip(&mut left[..2 * block_len]) {
                    let q = round_near(*v * inv).clamp(-LEVELS, LEVELS);
                    *level = q as i8;
                    *v -= q * step;
                }
                steps[pass * blocks + block] = step;
                let tables = &mut tables[pass * blocks * block_tables + block * block_tables..]
                    [..block_tables];
                for (pair, tables) in levels[..2 * block_len]
                    .chunks_exact(4)
                    .zip(tables.chunks_exact_mut(PAIR_TABLE_BYTES))
                {
                    (self.pair_tables)(pair.try_into().expect("four levels"), tables);
                }
                // The rounding error is at most half a step.
                step /= 2.0 * LEVELS;
            }
        }
    }
}

/// Builds the four tables of one pair of inputs into 64 bytes.
type PairTablesFn = fn([i8; 4], &mut [u8]);

/// The table builder for this host, chosen once per layer: byte shuffles
/// where the host has SSSE3, else a portable loop (the same bytes).
fn pair_tables_for_host() -> PairTablesFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        return |pair, out| {
            // SAFETY: chosen only where the host has SSSE3; the function
            // checks that `out` holds 64 bytes.
            unsafe { pair_tables_ssse3(pair, out) }
        };
    }
    pair_tables
}

/// The four tables of one pair of inputs `[r0, i0, r1, i1]`. Entry `e` of
/// a table is the value selected by the first input's code `e & 3` (+1, +i,
/// −1, −i) plus the second's `e >> 2`, from the signed levels
/// `[r0, i0, r1, i1, −r0, −i0, −r1, −i1, 0]`, stored `+128`.
fn pair_tables(pair: [i8; 4], out: &mut [u8]) {
    let mut signed = [0i8; 16];
    for (k, &v) in pair.iter().enumerate() {
        signed[k] = v;
        signed[4 + k] = v.wrapping_neg();
    }
    for (sum, out) in out.chunks_exact_mut(16).enumerate() {
        for (e, out) in out.iter_mut().enumerate() {
            let v = signed[PICK[sum][0][e] as usize].wrapping_add(signed[PICK[sum][1][e] as usize]);
            *out = (v as u8).wrapping_add(ENTRY_OFFSET as u8);
        }
    }
}

/// For each sum (A, B, C, D) and each of the pair's inputs, the signed
/// level each table entry takes (an index into `pair_tables`' levels):
/// A = Σ [re axis] σ·r, B = Σ [im axis] σ·i, C = Σ [re axis] σ·i,
/// D = Σ [im axis] σ·r, codes `c = axis | sign << 1`.
const PICK: [[[u8; 16]; 2]; 4] = {
    // Per sum, per input: the level of codes +1, +i, −1, −i.
    const BY_CODE: [[[u8; 4]; 2]; 4] = [
        [[0, 8, 4, 8], [2, 8, 6, 8]],
        [[8, 1, 8, 5], [8, 3, 8, 7]],
        [[1, 8, 5, 8], [3, 8, 7, 8]],
        [[8, 0, 8, 4], [8, 2, 8, 6]],
    ];
    let mut pick = [[[0u8; 16]; 2]; 4];
    let mut sum = 0;
    while sum < 4 {
        let mut e = 0;
        while e < 16 {
            pick[sum][0][e] = BY_CODE[sum][0][e & 3];
            pick[sum][1][e] = BY_CODE[sum][1][e >> 2];
            e += 1;
        }
        sum += 1;
    }
    pick
};

/// [`pair_tables`] with byte shuffles: each table is two look-ups into the
/// levels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn pair_tables_ssse3(pair: [i8; 4], out: &mut [u8]) {
    use std::arch::x86_64::*;
    assert!(out.len() >= PAIR_TABLE_BYTES);
    let levels = _mm_cvtsi32_si128(i32::from_le_bytes(pair.map(|v| v as u8)));
    let negated = _mm_sub_epi8(_mm_setzero_si128(), levels);
    // [r0, i0, r1, i1, −r0, −i0, −r1, −i1, 0, …]
    let signed = _mm_unpacklo_epi32(levels, negated);
    let offset = _mm_set1_epi8(ENTRY_OFFSET as u8 as i8);
    for (sum, picks) in PICK.iter().enumerate() {
        let first = _mm_loadu_si128(picks[0].as_ptr().cast());
        let second = _mm_loadu_si128(picks[1].as_ptr().cast());
        let v = _mm_add_epi8(
            _mm_shuffle_epi8(signed, first),
            _mm_shuffle_epi8(signed, second),
        );
        _mm_storeu_si128(
            out.as_mut_ptr().add(16 * sum).cast(),
            _mm_add_epi8(v, offset),
        );
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
