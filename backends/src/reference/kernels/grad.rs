//! Kernels of the loss and of the gradient ops: the adjoints the
//! reverse-mode pass (`fairyc_passes::autodiff`) emits. Plain sequential
//! loops: they serve training on small models and tests, and define what a
//! faster backend must reproduce.

use fairyc_ir::{AttentionOperand, NormOperand};
use num_complex::Complex32;

use super::attention::AttentionShape;
use super::Element;

/// Rows of `logits[rows, vocab]` with their target; `-1` (or any negative
/// target) skips a row. Errors name a target outside the vocabulary.
fn scored<'a>(
    logits: &'a [f32],
    targets: &'a [i32],
    vocab: usize,
) -> Result<impl Iterator<Item = (usize, &'a [f32], usize)> + 'a, String> {
    if let Some(t) = targets.iter().find(|&&t| t >= 0 && t as usize >= vocab) {
        return Err(format!("target {t} is outside the vocabulary of {vocab}"));
    }
    Ok(logits
        .chunks(vocab)
        .zip(targets)
        .enumerate()
        .filter(|(_, (_, &t))| t >= 0)
        .map(|(r, (row, &t))| (r, row, t as usize)))
}

/// `log Σ exp(row)`, stably, in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// Mean negative log-likelihood of the scored rows (0 when none is).
pub fn cross_entropy(logits: &[f32], targets: &[i32], vocab: usize) -> Result<f32, String> {
    let (mut total, mut count) = (0.0f64, 0usize);
    for (_, row, t) in scored(logits, targets, vocab)? {
        total += log_sum_exp(row) - row[t] as f64;
        count += 1;
    }
    Ok(if count == 0 {
        0.0
    } else {
        (total / count as f64) as f32
    })
}

/// `dloss · (softmax(row) − onehot(target)) / count` on scored rows, 0 on
/// the others.
pub fn cross_entropy_grad(
    logits: &[f32],
    targets: &[i32],
    vocab: usize,
    dloss: f32,
) -> Result<Vec<f32>, String> {
    let mut d = vec![0.0f32; logits.len()];
    let rows: Vec<_> = scored(logits, targets, vocab)?.collect();
    let scale = dloss as f64 / rows.len().max(1) as f64;
    for (r, row, t) in rows {
        let lse = log_sum_exp(row);
        let out = &mut d[r * vocab..][..vocab];
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (((v as f64 - lse).exp()) * scale) as f32;
        }
        out[t] -= scale as f32;
    }
    Ok(d)
}

/// `log softmax(row)`, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// Mean over rows of `KL(softmax(teacher) ‖ softmax(student))`.
pub fn kl_div(student: &[f32], teacher: &[f32], vocab: usize) -> f32 {
    let rows = student.len() / vocab.max(1);
    let total: f64 = student
        .chunks(vocab)
        .zip(teacher.chunks(vocab))
        .map(|(s, t)| {
            let (ls, lt) = (log_softmax(s), log_softmax(t));
            lt.iter()
                .zip(&ls)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
        })
        .sum();
    (total / rows.max(1) as f64) as f32
}

/// `dloss · (softmax(student) − softmax(teacher)) / rows`.
pub fn kl_div_grad(student: &[f32], teacher: &[f32], vocab: usize, dloss: f32) -> Vec<f32> {
    let rows = student.len() / vocab.max(1);
    let scale = dloss as f64 / rows.max(1) as f64;
    student
        .chunks(vocab)
        .zip(teacher.chunks(vocab))
        .flat_map(|(s, t)| {
            let (ls, lt) = (log_softmax(s), log_softmax(t));
            ls.into_iter()
                .zip(lt)
                .map(move |(a, b)| ((a.exp() - b.exp()) * scale) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Sums `x` into `n` elements: `out[i mod n] += x[i]` (its suffix shape).
pub fn reduce_to<T: Element>(x: &[T], n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); n];
    for c in x.chunks(n.max(1)) {
        for (o, &v) in out.iter_mut().zip(c) {
            *o = *o + v;
        }
    }
    out
}

/// `x` with `before` zeros in front and `after` behind along `axis`.
pub fn pad<T: Element>(
    x: &[T],
    shape: &[usize],
    axis: usize,
    before: usize,
    after: usize,
) -> Vec<T> {
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let n = shape[axis];
    let mut y = Vec::with_capacity(outer * (before + n + after) * inner);
    for o in 0..outer {
        y.extend(std::iter::repeat_n(T::zero(), before * inner));
        y.extend_from_slice(&x[o * n * inner..(o + 1) * n * inner]);
        y.extend(std::iter::repeat_n(T::zero(), after * inner));
    }
    y
}

/// Each row of `dy[.., width]` added to row `ids[r]` of a `[vocab, width]`
/// table of zeros; errors name the first id out of range.
pub fn embed_grad<T: Element>(
    ids: &[i32],
    dy: &[T],
    vocab: usize,
    width: usize,
) -> Result<Vec<T>, i32> {
    let mut d = vec![T::zero(); vocab * width];
    for (&id, row) in ids.iter().zip(dy.chunks(width)) {
        let r = usize::try_from(id).ok().filter(|&r| r < vocab).ok_or(id)?;
        for (o, &v) in d[r * width..][..width].iter_mut().zip(row) {
            *o = *o + v;
        }
    }
    Ok(d)
}

/// The gradient of iFairy's CReLU² (`(re², im²)` outside the third
/// quadrant, 0 inside): `(2 re · Re dy, 2 im · Im dy)`, 0 inside.
pub fn crelu_squared_grad(z: &[Complex32], dy: &[Complex32]) -> Vec<Complex32> {
    z.iter()
        .zip(dy)
        .map(|(c, g)| {
            if c.re < 0.0 && c.im < 0.0 {
                Complex32::new(0.0, 0.0)
            } else {
                Complex32::new(2.0 * c.re * g.re, 2.0 * c.im * g.im)
            }
        })
        .collect()
}

/// `dy · silu'(x)`, `silu'(x) = σ(x) (1 + x (1 − σ(x)))`.
pub fn silu_grad(x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&x, &g)| {
            let s = 1.0 / (1.0 + (-x).exp());
            g * s * (1.0 + x * (1.0 - s))
        })
        .collect()
}

/// `y ∘ (dy − Σ dy ∘ y)` over rows of `cols`, with `y` a softmax's output.
pub fn softmax_grad(y: &[f32], dy: &[f32], cols: usize) -> Vec<f32> {
    let mut d = Vec::with_capacity(y.len());
    for (yr, gr) in y.chunks(cols).zip(dy.chunks(cols)) {
        let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        d.extend(yr.iter().zip(gr).map(|(&a, &b)| a * (b - dot)));
    }
    d
}

/// The gradient of `x / rms(x) · gain` (rows of `gain.len()`), with
/// `r = (Σ x² / divisor + eps)^-½`: `dx = r g dy − x r³ Σ(g dy x) / divisor`,
/// `dgain = Σ_rows dy x r`. `divisor` is the row length for a real norm;
/// iFairy's complex norm is the same on rows of real and imaginary parts
/// with `divisor` the number of complex elements.
pub fn rms_norm_grad(
    x: &[f32],
    gain: &[f32],
    dy: &[f32],
    eps: f32,
    which: NormOperand,
    divisor: usize,
) -> Vec<f32> {
    let n = gain.len();
    let mut d = vec![
        0.0f32;
        if which == NormOperand::Gain {
            n
        } else {
            x.len()
        }
    ];
    for (r, (row, g)) in x.chunks(n).zip(dy.chunks(n)).enumerate() {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / (ss / divisor as f64 + eps as f64).sqrt();
        match which {
            NormOperand::Gain => {
                for ((o, &v), &g) in d.iter_mut().zip(row).zip(g) {
                    *o += (v as f64 * g as f64 * inv) as f32;
                }
            }
            NormOperand::Input => {
                let dot: f64 = row
                    .iter()
                    .zip(g)
                    .zip(gain)
                    .map(|((&v, &g), &w)| v as f64 * g as f64 * w as f64)
                    .sum();
                let k = inv * inv * inv * dot / divisor as f64;
                for (((o, &v), &g), &w) in d[r * n..][..n].iter_mut().zip(row).zip(g).zip(gain) {
                    *o = (inv * w as f64 * g as f64 - v as f64 * k) as f32;
                }
            }
        }
    }
    d
}

/// The gradient of `attention(q, k, v)` (keys and values of the same
/// sequence as the queries, no cache) with respect to one operand. With
/// `P` the attention weights of one head and `dP_ij = Re(dout_i · conj(v_j))`,
/// `dS = P ∘ (dP − Σ_j P dP)`; then `dq_i = scale Σ_j dS_ij k_j`,
/// `dk_j = scale Σ_i dS_ij q_i`, `dv_j = Σ_i P_ij dout_i` (summed over the
/// query heads that share a key head).
pub fn attention_grad<T: Element>(
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    s: AttentionShape,
    which: AttentionOperand,
) -> Vec<T> {
    let (qw, kw, vw) = (
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
        s.kv_heads * s.value_dim,
    );
    let seq = q.len() / qw;
    let group = s.heads / s.kv_heads;
    let mut d = vec![
        T::zero();
        match which {
            AttentionOperand::Q => q.len(),
            AttentionOperand::K => k.len(),
            AttentionOperand::V => v.len(),
        }
    ];
    for i in 0..seq {
        for h in 0..s.heads {
            let kh = h / group;
            let qrow = &q[i * qw + h * s.head_dim..][..s.head_dim];
            let orow = &dout[i * s.heads * s.value_dim + h * s.value_dim..][..s.value_dim];
            let visible = if s.causal { i + 1 } else { seq };
            let krow = |j: usize| &k[j * kw + kh * s.head_dim..][..s.head_dim];
            let vrow = |j: usize| &v[j * vw + kh * s.value_dim..][..s.value_dim];
            let scores: Vec<f32> = (0..visible)
                .map(|j| {
                    s.scale
                        * qrow
                            .iter()
                            .zip(krow(j))
                            .map(|(&a, &b)| a.re_mul_conj(b))
                            .sum::<f32>()
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|&x| (x - max).exp()).collect();
            let total: f32 = e.iter().sum();
            let p: Vec<f32> = e.iter().map(|&x| x / total).collect();
            if which == AttentionOperand::V {
                for (j, &pj) in p.iter().enumerate() {
                    let out = &mut d[j * vw + kh * s.value_dim..][..s.value_dim];
                    for (o, &g) in out.iter_mut().zip(orow) {
                        *o = *o + g.scale(pj);
                    }
                }
                continue;
            }
            let dp: Vec<f32> = (0..visible)
                .map(|j| {
                    orow.iter()
                        .zip(vrow(j))
                        .map(|(&a, &b)| a.re_mul_conj(b))
                        .sum()
                })
                .collect();
            let mean: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..visible {
                let ds = s.scale * p[j] * (dp[j] - mean);
                let (out, src) = if which == AttentionOperand::Q {
                    (&mut d[i * qw + h * s.head_dim..][..s.head_dim], krow(j))
                } else {
                    (&mut d[j * kw + kh * s.head_dim..][..s.head_dim], qrow)
                };
                for (o, &x) in out.iter_mut().zip(src) {
                    *o = *o + x.scale(ds);
                }
            }
        }
    }
    d
}
