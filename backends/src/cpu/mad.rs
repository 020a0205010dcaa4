//! `quant_linear` over many activation rows by integer multiply-adds
//! (AVX-512 VNNI `vpdpbusd`), where the look-up tables lose: a table
//! serves one activation row, so a prompt pays a decode step's work per
//! token, while the codes decoded once into int8 weights serve every row.
//!
//! Per tile of 64 output rows (the LLVM kernel's tile, whose code layout
//! [`super::kernel`] describes) the codes become a panel of the layer's
//! real 2 × 2 blocks `[[Re U + Re W, Im W − Im U], [Im U + Im W, Re U − Re W]]`
//! as int8, by byte shuffles: stages are taken two at a time (a 16-entry
//! table of the pair's complex value per nibble of codes), so decoding is
//! a few vector instructions per 64 weights. The panel then multiplies
//! every activation row, quantized to int8 per block.
//!
//! Not exact in the weights: each of the tables' entries rounds to a step
//! of the layer (per-tensor scales only: one step for the layer), so an
//! effective weight is off by at most half a step per pair of stages
//! ([`MadWeights::error`]); activations round to 8 bits per block (twice as
//! fine as the tables' 7). Chosen only for 7-bit activations: a caller who
//! asks for 14 bits gets the look-up kernel at every shape.

use num_complex::Complex32;

use fairyc_ir::quant::Code;
use fairyc_ir::Granularity;

use super::activations::{round_near, Activations, Blocks};

/// Activation rows from which a call multiplies instead of looking up
/// (measured: `cargo run --release -p fairyc-backends --example lut_gemv`,
/// docs/BENCHMARKS.md).
pub const MIN_ROWS: usize = 8;

/// Output rows per tile: the LLVM kernel's widest tile.
pub const TILE: usize = 64;

/// The most stages a layer may have for this kernel.
const MAX_STAGES: usize = 8;

/// Size of the largest quantized activation.
const ACT_LEVELS: f32 = 127.0;

/// The weight tables of a layer with per-tensor scales.
#[derive(Clone, Debug)]
pub struct MadWeights {
    /// Stages decoded together, U's first.
    pairs: Vec<StagePair>,
    /// What one integer of a weight is worth.
    step: f32,
}

/// One or two stages of the same half (U or conj-W): their complex value
/// for each nibble `c₁ | c₂ << 2` of codes, in integers of the step.
#[derive(Clone, Debug)]
struct StagePair {
    stages: [Option<usize>; 2],
    conj: bool,
    re: [i8; 16],
    im: [i8; 16],
}

impl MadWeights {
    /// The tables of a layer whose `u_stages` U stages come first in
    /// `scales` (per tensor: `[s_re, s_im]` per stage).
    pub fn new(u_stages: usize, scales: &[&[f32]]) -> Option<MadWeights> {
        let usable = |s: &&[f32]| s.len() == 2 && s.iter().all(|v| v.is_finite());
        if scales.len() > MAX_STAGES || !scales.iter().all(usable) {
            return None;
        }
        let halves = [(0..u_stages, false), (u_stages..scales.len(), true)];
        let mut values = Vec::new();
        for (range, conj) in halves {
            let stages: Vec<usize> = range.collect();
            for two in stages.chunks(2) {
                let stages = [Some(two[0]), two.get(1).copied()];
                let mut v = [Complex32::new(0.0, 0.0); 16];
                for (nibble, v) in v.iter_mut().enumerate() {
                    for (k, stage) in stages.iter().enumerate() {
                        if let Some(s) = *stage {
                            *v += Code::from_bits((nibble >> (2 * k)) as u8)
                                .scaled(scales[s][0], scales[s][1]);
                        }
                    }
                }
                values.push((stages, conj, v));
            }
        }
        // Each entry rounds by at most half a step, so the sums over pairs
        // stay within 127 when the exact largest sums are `127 − pairs`.
        let largest = |part: fn(&Complex32) -> f32| -> f32 {
            values
                .iter()
                .map(|(_, _, v)| v.iter().map(|c| part(c).abs()).fold(0.0, f32::max))
                .sum()
        };
        let largest = largest(|c| c.re).max(largest(|c| c.im));
        let step = largest / (127.0 - values.len() as f32);
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        let pairs = values
            .into_iter()
            .map(|(stages, conj, v)| StagePair {
                stages,
                conj,
                re: v.map(|c| (c.re * inv).round() as i8),
                im: v.map(|c| (c.im * inv).round() as i8),
            })
            .collect();
        Some(MadWeights { pairs, step })
    }

    /// The largest error of a real weight of the layer's 2 × 2 blocks.
    pub fn error(&self) -> f32 {
        0.5 * self.step * self.pairs.len() as f32
    }
}

/// Whether [`super::lut::LutLayer::run`] multiplies a layer of tiles of
/// `tile_rows`, scales of `granularity` and activations of `activations`
/// (from [`MIN_ROWS`] rows): the one place that choice is made.
pub fn applies(tile_rows: usize, granularity: Granularity, activations: Activations) -> bool {
    tile_rows == TILE
        && granularity == Granularity::Tensor
        && activations == Activations::Bits7
        && host_supports()
}

/// Whether this host runs the kernel.
pub fn host_supports() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Activation rows as the kernel reads them: per row and block, the
/// parts `[re, im]` of each input (padding zero) as int8, the block's step
/// and the sum of its integers times 128 (what the weights' `+128` adds).
#[derive(Default)]
pub struct Activations8 {
    values: Vec<i8>,
    steps: Vec<f32>,
    offsets: Vec<i32>,
    /// Bytes of one row: the blocks' inputs, two parts each.
    stride: usize,
    blocks: usize,
}

impl Activations8 {
    pub fn new(blocks: &Blocks, x: &[Complex32], m: usize, rows: usize) -> Activations8 {
        let mut a = Activations8::default();
        a.fill(blocks, x, m, rows);
        a
    }

    /// Quantizes `x[rows, m]` into these buffers (grown as needed, never
    /// shrunk: a thread reuses one across calls).
    pub fn fill(&mut self, blocks: &Blocks, x: &[Complex32], m: usize, rows: usize) {
        let count = blocks.count();
        let stride = count * blocks.block_len * 2;
        self.stride = stride;
        self.blocks = count;
        // Padding inputs stay zero.
        self.values.clear();
        self.values.resize(rows * stride, 0);
        self.steps.resize(rows * count, 0.0);
        self.offsets.resize(rows * count, 0);
        for (r, row) in x.chunks(m).take(rows).enumerate() {
            for block in 0..count {
                let parts = bytemuck::cast_slice::<Complex32, f32>(&row[blocks.range(block)]);
                let largest = parts.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let step = largest / ACT_LEVELS;
                let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
                let out =
                    &mut self.values[r * stride + block * blocks.block_len * 2..][..parts.len()];
                let mut sum = 0i32;
                for (q, v) in out.iter_mut().zip(parts) {
                    *q = round_near(v * inv).clamp(-ACT_LEVELS, ACT_LEVELS) as i8;
                    sum += *q as i32;
                }
                self.steps[r * count + block] = step;
                self.offsets[r * count + block] = 128 * sum;
            }
        }
    }

    /// The step of each input's integers in row `r` (per column).
    pub fn steps(&self, blocks: &Blocks, m: usize, r: usize) -> Vec<f32> {
        let mut steps = vec![0.0; m];
        for block in 0..self.blocks {
            steps[blocks.range(block)].fill(self.steps[r * self.blocks + block]);
        }
        steps
    }
}

/// Tile row `TILE_ROW[c]` of panel column `c` (columns `0..64` are the real
/// parts of the outputs, `64..128` the imaginary ones): the order the
/// decode's byte interleaving leaves them in.
const TILE_ROW: [u8; 64] = {
    let mut rows = [0u8; 64];
    let mut c = 0;
    while c < 64 {
        let (z, i) = (c / 16, c % 16);
        rows[c] = (16 * (i / 4) + 4 * z + i % 4) as u8;
        c += 1;
    }
    rows
};

/// Bytes of the panel per pair of inputs: 128 columns of four int8 weights.
const PANEL_ROW: usize = 4 * 2 * TILE;

/// Rows of activations per call of the multiply kernel.
const MR: usize = 6;

/// `y[rows, n] = quant_linear(x)` for the layer whose LLVM-tile codes are
/// `codes` (`[tiles][blocks][stages][block_len/4][64]`).
///
/// # Safety
/// The host runs the kernel ([`host_supports`]), `codes` is laid out as
/// said for `blocks` and `weights`' stages, `y` points at `[rows, n]`
/// outputs, and no other thread writes rows `row_range` of this tile's
/// outputs.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_tile(
    tile: usize,
    codes: &[u8],
    blocks: &Blocks,
    stages: usize,
    weights: &MadWeights,
    x: &Activations8,
    row_range: std::ops::Range<usize>,
    n: usize,
    y: *mut Complex32,
) {
    let pairs_per_block = blocks.block_len / 2;
    let len = blocks.count() * pairs_per_block * PANEL_ROW;
    let mut panel = PANEL.take();
    if panel.len() < len {
        panel.resize(len, 0);
    }
    // Every byte of the panel is written.
    decode(codes, blocks, stages, weights, &mut panel[..len]);
    multiply_panel(
        tile,
        &panel[..len],
        weights,
        x,
        row_range,
        pairs_per_block,
        n,
        y,
    );
    PANEL.set(panel);
}

thread_local! {
    /// The tile's decoded weights, kept by each thread that multiplies
    /// (taken out for a call, so that a nested one makes its own).
    static PANEL: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Every activation row of `row_range` against the tile's `panel`, into
/// `y`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_panel(
    tile: usize,
    panel: &[u8],
    weights: &MadWeights,
    x: &Activations8,
    row_range: std::ops::Range<usize>,
    pairs_per_block: usize,
    n: usize,
    y: *mut Complex32,
) {
    let mut sums = [[0.0f32; 32]; MR];
    for chunk in 0..4 {
        let mut r = row_range.start;
        while r < row_range.end {
            let take = (row_range.end - r).min(MR);
            match take {
                6 => multiply::<6>(panel, chunk, x, r, pairs_per_block, &mut sums),
                5 => multiply::<5>(panel, chunk, x, r, pairs_per_block, &mut sums),
                4 => multiply::<4>(panel, chunk, x, r, pairs_per_block, &mut sums),
                3 => multiply::<3>(panel, chunk, x, r, pairs_per_block, &mut sums),
                2 => multiply::<2>(panel, chunk, x, r, pairs_per_block, &mut sums),
                _ => multiply::<1>(panel, chunk, x, r, pairs_per_block, &mut sums),
            }
            for (k, sums) in sums[..take].iter().enumerate() {
                for (q, &v) in sums.iter().enumerate() {
                    let column = chunk * 32 + q;
                    let i = tile * TILE + TILE_ROW[column % 64] as usize;
                    if i < n {
                        let out = &mut *y.add((r + k) * n + i);
                        if column < 64 {
                            out.re = v * weights.step;
                        } else {
                            out.im = v * weights.step;
                        }
                    }
                }
            }
            r += take;
        }
    }
}

/// The tile's int8 weights `+128`, `[pairs][re, im][4][16 columns][4]`:
/// for the pair of inputs `(k, k+1)` and tile row `j`, the real part's
/// column holds `[Re U + Re W, Im W − Im U]` of input `k` then of `k+1`,
/// the imaginary part's `[Im U + Im W, Re U − Re W]`, in the order of
/// [`TILE_ROW`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn decode(
    codes: &[u8],
    blocks: &Blocks,
    stages: usize,
    weights: &MadWeights,
    panel: &mut [u8],
) {
    use std::arch::x86_64::*;
    let bytes_per_block = blocks.block_len / 4;
    assert!(
        stages <= MAX_STAGES && codes.len() >= blocks.count() * stages * bytes_per_block * TILE
    );
    assert!(panel.len() >= blocks.count() * blocks.block_len / 2 * PANEL_ROW);
    let table = |t: &[i8; 16]| _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr().cast()));
    let tables: Vec<(__m512i, __m512i)> = weights
        .pairs
        .iter()
        .map(|p| (table(&p.re), table(&p.im)))
        .collect();
    let low2 = _mm512_set1_epi8(0b11);
    let next2 = _mm512_set1_epi8(0b1100);
    let bias = _mm512_set1_epi8(-128);
    let mut out = panel.as_mut_ptr();
    for block in 0..blocks.count() {
        for byte in 0..bytes_per_block {
            let mut stage_codes = [_mm512_setzero_si512(); MAX_STAGES];
            for (s, v) in stage_codes[..stages].iter_mut().enumerate() {
                let at = ((block * stages + s) * bytes_per_block + byte) * TILE;
                *v = _mm512_loadu_si512(codes.as_ptr().add(at).cast());
            }
            // The 2 × 2 blocks of inputs 4·byte + e, e = 0..4.
            let mut abcd = [[_mm512_setzero_si512(); 4]; 4];
            for (e, abcd) in abcd.iter_mut().enumerate() {
                let zero = _mm512_setzero_si512();
                let (mut re_u, mut im_u, mut re_w, mut im_w) = (zero, zero, zero, zero);
                for (pair, &(re, im)) in weights.pairs.iter().zip(&tables) {
                    let first = stage_codes[pair.stages[0].expect("a stage")];
                    let mut nibble = _mm512_and_si512(
                        _mm512_srl_epi16(first, _mm_cvtsi32_si128(2 * e as i32)),
                        low2,
                    );
                    if let Some(s) = pair.stages[1] {
                        // Its code at bits 2..4: shifted by 2e − 2.
                        let second = stage_codes[s];
                        let shifted = if e == 0 {
                            _mm512_slli_epi16::<2>(second)
                        } else {
                            _mm512_srl_epi16(second, _mm_cvtsi32_si128(2 * e as i32 - 2))
                        };
                        nibble = _mm512_or_si512(nibble, _mm512_and_si512(shifted, next2));
                    }
                    let (r, i) = (
                        _mm512_shuffle_epi8(re, nibble),
                        _mm512_shuffle_epi8(im, nibble),
                    );
                    if pair.conj {
                        re_w = _mm512_add_epi8(re_w, r);
                        im_w = _mm512_add_epi8(im_w, i);
                    } else {
                        re_u = _mm512_add_epi8(re_u, r);
                        im_u = _mm512_add_epi8(im_u, i);
                    }
                }
                *abcd = [
                    _mm512_xor_si512(_mm512_add_epi8(re_u, re_w), bias),
                    _mm512_xor_si512(_mm512_sub_epi8(im_w, im_u), bias),
                    _mm512_xor_si512(_mm512_add_epi8(im_u, im_w), bias),
                    _mm512_xor_si512(_mm512_sub_epi8(re_u, re_w), bias),
                ];
            }
            // Inputs (0, 1) then (2, 3): the real part's columns take
            // bytes a, b of each, the imaginary part's c, d.
            for two in abcd.chunks_exact(2) {
                for (first, second) in [(0, 1), (2, 3)] {
                    let lo_k = _mm512_unpacklo_epi8(two[0][first], two[0][second]);
                    let hi_k = _mm512_unpackhi_epi8(two[0][first], two[0][second]);
                    let lo_k1 = _mm512_unpacklo_epi8(two[1][first], two[1][second]);
                    let hi_k1 = _mm512_unpackhi_epi8(two[1][first], two[1][second]);
                    for z in [
                        _mm512_unpacklo_epi16(lo_k, lo_k1),
                        _mm512_unpackhi_epi16(lo_k, lo_k1),
                        _mm512_unpacklo_epi16(hi_k, hi_k1),
                        _mm512_unpackhi_epi16(hi_k, hi_k1),
                    ] {
                        _mm512_storeu_si512(out.cast(), z);
                        out = out.add(64);
                    }
                }
            }
        }
    }
}

/// Sums of `R` activation rows from `first` against 32 panel columns
/// (`chunk` of four), in `sums[..R]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn multiply<const R: usize>(
    panel: &[u8],
    chunk: usize,
    x: &Activations8,
    first: usize,
    pairs_per_block: usize,
    sums: &mut [[f32; 32]; MR],
) {
    use std::arch::x86_64::*;
    let pairs = x.blocks * pairs_per_block;
    assert!(panel.len() >= pairs * PANEL_ROW && x.values.len() >= (first + R) * x.stride);
    let rows: [*const i8; R] =
        std::array::from_fn(|r| x.values.as_ptr().add((first + r) * x.stride));
    let mut total = [[_mm512_setzero_ps(); 2]; R];
    let mut weights = panel.as_ptr().add(chunk * 128);
    for block in 0..x.blocks {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for pair in block * pairs_per_block..(block + 1) * pairs_per_block {
            let w0 = _mm512_loadu_si512(weights.cast());
            let w1 = _mm512_loadu_si512(weights.add(64).cast());
            weights = weights.add(PANEL_ROW);
            for r in 0..R {
                let a = _mm512_set1_epi32(rows[r].add(4 * pair).cast::<i32>().read_unaligned());
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, a);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, a);
            }
        }
        for r in 0..R {
            let at = (first + r) * x.blocks + block;
            let offset = _mm512_set1_epi32(x.offsets[at]);
            let step = _mm512_set1_ps(x.steps[at]);
            for v in 0..2 {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], offset));
                total[r][v] = _mm512_fmadd_ps(exact, step, total[r][v]);
            }
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(sums[r].as_mut_ptr(), total[r][0]);
        _mm512_storeu_ps(sums[r].as_mut_ptr().add(16), total[r][1]);
    }
}
