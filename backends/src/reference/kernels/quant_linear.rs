//! The Fairy2i linear layer on packed codes, without multiplications in the
//! inner loop and without forming the dense matrix.
//!
//! `y_i = Σ_t Σ_j u_t[i, j] · x_j + Σ_t Σ_j w_t[i, j] · conj(x_j)` where each
//! entry is a code `b ∈ {+1, -1, +i, -i}` times its group's axis scale
//! (`s_re` for `±1`, `s_im` for `±i`). Within a group a code only adds or
//! subtracts `x_j` into the sum its code selects (the code's two bits index
//! four sums, so the loop has no branch); the scales multiply the sums once
//! per group: `s_re·(Σ₊₁ − Σ₋₁) + i·s_im·(Σ₊ᵢ − Σ₋ᵢ)`.

use fairyc_ir::Granularity;
use num_complex::Complex32;
use rayon::prelude::*;

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
