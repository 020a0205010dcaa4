//! The Fairy2i linear layer on packed codes, without multiplications in the
//! inner loop and without forming the dense matrix.
//!
//! `y_i = Σ_t Σ_j u_t[i, j] · x_j + Σ_t Σ_j w_t[i, j] · conj(x_j)` where each
//! entry is a code `b ∈ {+1, -1, +i, -i}` times its group's axis scale
//! (`s_re` for `±1`, `s_im` for `±i`). Within a group a code only adds or
//! subtracts `x_j` into one of two accumulators (by its axis); the scales
//! multiply the two accumulators once per group: `s_re·A_re + i·s_im·A_im`.

use fairyc_ir::quant::{unpack_code_rows, Code};
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
                    let codes = unpack_code_rows(&stage.packed[i * stride..][..stride], 1, m)
                        .expect("the row's length was checked");
                    let scales = match granularity {
                        Granularity::Tensor => stage.scales,
                        _ => &stage.scales[2 * i * groups_per_row..][..2 * groups_per_row],
                    };
                    for (r, out) in column.iter_mut().enumerate() {
                        let xr = &input[r * m..][..m];
                        let mut acc = Complex32::new(0.0, 0.0);
                        for (g, (codes, xs)) in codes
                            .chunks(group_len)
                            .zip(xr.chunks(group_len))
                            .enumerate()
                        {
                            let (re, im) = accumulate(codes, xs);
                            let (s_re, s_im) = (scales[2 * g], scales[2 * g + 1]);
                            // s_re·A_re + i·s_im·A_im
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

/// Sums of `±x_j` over one group: those with real-axis codes (`±1`) and
/// those with imaginary-axis codes (`±i`, before the factor `i`).
#[inline]
fn accumulate(codes: &[Code], xs: &[Complex32]) -> (Complex32, Complex32) {
    let mut re = Complex32::new(0.0, 0.0);
    let mut im = Complex32::new(0.0, 0.0);
    for (c, v) in codes.iter().zip(xs) {
        match c {
            Code::PlusOne => re += v,
            Code::MinusOne => re -= v,
            Code::PlusI => im += v,
            Code::MinusI => im -= v,
        }
    }
    (re, im)
}
