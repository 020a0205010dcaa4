//! The Fairy2i linear layer on packed codes, without multiplications in the
//! inner loop and without forming the dense matrix.
//!
//! `y_i = Σ_t Σ_j u_t[i, j] · x_j + Σ_t Σ_j w_t[i, j] · conj(x_j)` where each
//! entry is a code `b ∈ {+1, -1, +i, -i}` times its group's axis scale
//! (`s_re` for `±1`, `s_im` for `±i`). Within a group a code only adds or
//! subtracts `x_j` into the sum its code selects (the code's two bits index
//! four sums, so the loop has no branch); the scales multiply the sums once
//! per group: `s_re·(Σ₊₁ − Σ₋₁) + i·s_im·(Σ₊ᵢ − Σ₋ᵢ)`. Batches of many rows
//! (prompts, perplexity) decode a tile of output rows at a time and
//! multiply through `gemm`.

use fairyc_ir::Granularity;
use num_complex::Complex32;
use rayon::prelude::*;

use super::linear::linear;

/// One stage's packed codes (`code2[n, m]`, rows padded to whole bytes) and
/// its scales (as `dequant` reads them).
pub struct StageCodes<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f32],
}

/// `x[rows, m]` through the `u` and `w` stages of an `[n, m]` layer:
/// `[rows, n]`.
pub fn quant_linear(
    x: &[Complex32],
    m: usize,
    n: usize,
    u: &[StageCodes],
    w: &[StageCodes],
    granularity: Granularity,
) -> Result<Vec<Complex32>, String> {
    let rows = x.len().checked_div(m).unwrap_or(0);
    let groups_per_row = match granularity {
        Granularity::Tensor | Granularity::Channel => 1,
        Granularity::Group(g) => m.div_ceil(g.max(1)),
    };
    let group_len = match granularity {
        Granularity::Group(g) => g.max(1),
        _ => m.max(1),
    };
    for stage in u.iter().chain(w) {
        let want = match granularity {
            Granularity::Tensor => 2,
            _ => 2 * n * groups_per_row,
        };
        if stage.scales.len() != want || stage.packed.len() != n * m.div_ceil(4) {
            return Err(format!(
                "a stage of an [{n}, {m}] layer needs {} code bytes and {want} scales, found {} and {}",
                n * m.div_ceil(4),
                stage.packed.len(),
                stage.scales.len()
            ));
        }
    }
    let conj: Vec<Complex32> = x.iter().map(|v| v.conj()).collect();
    let layout = Layout {
        m,
        groups_per_row,
        group_len,
        granularity,
    };
    if rows >= TILED_ROWS {
        return Ok(tiled(x, &conj, n, u, w, &layout));
    }
    let stride = m.div_ceil(4);
    // Output row i of the weight for every input row: one column of y.
    let columns: Vec<Vec<Complex32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut column = vec![Complex32::new(0.0, 0.0); rows];
            for (stages, input) in [(u, x), (w, &conj[..])] {
                for stage in stages {
                    let codes = &stage.packed[i * stride..][..stride];
                    let scales = match granularity {
                        Granularity::Tensor => stage.scales,
                        _ => &stage.scales[2 * i * groups_per_row..][..2 * groups_per_row],
                    };
                    for (r, out) in column.iter_mut().enumerate() {
                        let xr = &input[r * m..][..m];
                        let mut acc = Complex32::new(0.0, 0.0);
                        for g in 0..groups_per_row {
                            let start = g * group_len;
                            let end = (start + group_len).min(m);
                            let sums = accumulate(codes, xr, start, end);
                            let (s_re, s_im) = (scales[2 * g], scales[2 * g + 1]);
                            // Codes +1, +i, -1, -i: A_re = Σ(+1) − Σ(−1),
                            // A_im = Σ(+i) − Σ(−i); the group adds
                            // s_re·A_re + i·s_im·A_im.
                            let re = sums[0] - sums[2];
                            let im = sums[1] - sums[3];
                            acc += Complex32::new(
                                s_re * re.re - s_im * im.im,
                                s_re * re.im + s_im * im.re,
                            );
                        }
                        *out += acc;
                    }
                }
            }
            column
        })
        .collect();
    let mut y = vec![Complex32::new(0.0, 0.0); rows * n];
    for (i, column) in columns.into_iter().enumerate() {
        for (r, v) in column.into_iter().enumerate() {
            y[r * n + i] = v;
        }
    }
    Ok(y)
}

/// From this many input rows on (prompts, batches) the products go through
/// `gemm` on tiles of decoded rows: decoding a row once pays for many rows
/// of input, and `gemm` uses the vector units the code walk above cannot.
const TILED_ROWS: usize = 8;

/// Output rows decoded at a time: the tile is `TILE x m` complex values, a
/// transient a few hundred kilobytes large, never the whole matrix.
const TILE: usize = 64;

/// Where a layer's scales sit along a row.
struct Layout {
    m: usize,
    groups_per_row: usize,
    group_len: usize,
    granularity: Granularity,
}

/// `Σ_t dequant(u_t)·x + Σ_t dequant(w_t)·conj(x)` one tile of output rows
/// at a time.
fn tiled(
    x: &[Complex32],
    conj: &[Complex32],
    n: usize,
    u: &[StageCodes],
    w: &[StageCodes],
    layout: &Layout,
) -> Vec<Complex32> {
    let m = layout.m;
    let rows = x.len() / m;
    let mut y = vec![Complex32::new(0.0, 0.0); rows * n];
    for i0 in (0..n).step_by(TILE) {
        let i1 = (i0 + TILE).min(n);
        let width = i1 - i0;
        for (stages, input) in [(u, x), (w, conj)] {
            if stages.is_empty() {
                continue;
            }
            let tile = decode_rows(stages, i0, i1, layout);
            let part = linear(input, &tile, rows, m, width);
            for (out, part) in y.chunks_exact_mut(n).zip(part.chunks_exact(width)) {
                for (o, p) in out[i0..i1].iter_mut().zip(part) {
                    *o += p;
                }
            }
        }
    }
    y
}

/// Rows `i0..i1` of `Σ_t dequant(stage_t)`, `[i1 - i0, m]`.
fn decode_rows(stages: &[StageCodes], i0: usize, i1: usize, layout: &Layout) -> Vec<Complex32> {
    let (m, stride) = (layout.m, layout.m.div_ceil(4));
    let mut tile = vec![Complex32::new(0.0, 0.0); (i1 - i0) * m];
    tile.par_chunks_mut(m.max(1))
        .enumerate()
        .for_each(|(k, row)| {
            let i = i0 + k;
            for stage in stages {
                let codes = &stage.packed[i * stride..][..stride];
                let scales = match layout.granularity {
                    Granularity::Tensor => stage.scales,
                    _ => {
                        &stage.scales[2 * i * layout.groups_per_row..][..2 * layout.groups_per_row]
                    }
                };
                for (j, v) in row.iter_mut().enumerate() {
                    let g = j / layout.group_len;
                    let (s_re, s_im) = (scales[2 * g], scales[2 * g + 1]);
                    *v += match (codes[j / 4] >> (2 * (j % 4))) & 0b11 {
                        0 => Complex32::new(s_re, 0.0),
                        1 => Complex32::new(0.0, s_im),
                        2 => Complex32::new(-s_re, 0.0),
                        _ => Complex32::new(0.0, -s_im),
                    };
                }
            }
        });
    tile
}

/// Sums of the inputs `xs[start..end]` by their code (indexed by the code's
/// two bits: `+1`, `+i`, `-1`, `-i`), reading the codes packed four to a
/// byte. Branch-free: each input is added to the sum its code selects; the
/// four codes of a byte go to four separate sets of sums, so consecutive
/// additions do not wait on each other.
#[inline]
fn accumulate(packed: &[u8], xs: &[Complex32], start: usize, end: usize) -> [Complex32; 4] {
    let zero = Complex32::new(0.0, 0.0);
    let mut sums = [[zero; 4]; 4];
    let mut j = start;
    while j < end && !j.is_multiple_of(4) {
        sums[0][((packed[j / 4] >> (2 * (j % 4))) & 0b11) as usize] += xs[j];
        j += 1;
    }
    while j + 4 <= end {
        let byte = packed[j / 4];
        for (lane, set) in sums.iter_mut().enumerate() {
            set[((byte >> (2 * lane)) & 0b11) as usize] += xs[j + lane];
        }
        j += 4;
    }
    while j < end {
        sums[0][((packed[j / 4] >> (2 * (j % 4))) & 0b11) as usize] += xs[j];
        j += 1;
    }
    let mut total = [zero; 4];
    for set in sums {
        for (t, v) in total.iter_mut().zip(set) {
            *t += v;
        }
    }
    total
}
