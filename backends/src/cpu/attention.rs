//! Attention over the KV cache for the CPU backends: the reference's
//! definition (`reference::kernels::attention`) with its dot products and
//! weighted sums in independent lanes that vectorise, one buffer of scores
//! per task, and threads only where a call has the work to pay for them.
//!
//! Complex attention is real attention over twice the channels: the score
//! `Re(q · conj k)` is the real dot product of the interleaved parts, and a
//! real weight scales both parts of a value alike.

use num_complex::Complex32;
use rayon::prelude::*;

use crate::reference::kernels::attention::AttentionShape;
use crate::reference::NodeKernel;
use crate::tensor::{Data, Recycled, Tensor};

/// Multiply-adds from which a call spreads its (query, head) tasks over
/// threads: decode steps of small models stay on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// Lanes of the accumulators: 16 floats fill a 512-bit register and are
/// two 256-bit ones.
const LANES: usize = 16;

/// An `attention` node: its attributes; the shapes come with the operands.
pub struct AttentionNode {
    pub heads: usize,
    pub kv_heads: usize,
    pub scale: f32,
    pub causal: bool,
}

impl NodeKernel for AttentionNode {
    fn run(&self, args: &[Option<&Tensor>], out: &mut Recycled) -> Result<Tensor, String> {
        let operand = |k: usize| args[k].ok_or("an operand is missing");
        let (q, k, v) = (operand(0)?, operand(1)?, operand(2)?);
        if q.shape.len() != 2 {
            return Err(format!(
                "attention runs on [seq, channels] only, got {:?}",
                q.shape
            ));
        }
        let seq = q.shape[0];
        match (&q.data, &k.data, &v.data) {
            (Data::F32(qd), Data::F32(kd), Data::F32(vd)) => {
                let s = self.shape(q.cols(), v.cols(), 1);
                let width = self.heads * s.value_dim;
                Ok(out.f32_tensor(&[seq, width], |o| {
                    o.fill(0.0);
                    attention_into(qd, kd, vd, s, o);
                }))
            }
            (Data::C64(qd), Data::C64(kd), Data::C64(vd)) => {
                fn real(d: &[Complex32]) -> &[f32] {
                    bytemuck::cast_slice(d)
                }
                let s = self.shape(q.cols(), v.cols(), 2);
                let width = self.heads * s.value_dim / 2;
                Ok(out.c64_tensor(&[seq, width], |o| {
                    o.fill(Complex32::new(0.0, 0.0));
                    attention_into(real(qd), real(kd), real(vd), s, bytemuck::cast_slice_mut(o));
                }))
            }
            _ => Err("queries, keys and values must share one element type".into()),
        }
    }

    fn bytes(&self) -> usize {
        0
    }
}

impl AttentionNode {
    /// The shape in real channels: `parts` per element.
    fn shape(&self, q_cols: usize, v_cols: usize, parts: usize) -> AttentionShape {
        AttentionShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: parts * q_cols / self.heads,
            value_dim: parts * v_cols / self.kv_heads,
            scale: self.scale,
            causal: self.causal,
        }
    }
}

/// `q[seq, heads·d]` over `k[kv_len, kv_heads·d]`, `v[kv_len,
/// kv_heads·dv]`, as [`crate::reference::kernels::attention::attention`].
/// A task is one query row and one KV head with the query heads that share
/// it, so each key and value row is read once for all of them.
/// `out` (`[seq, heads·dv]`) starts as zeros; one thread's scores live in
/// a buffer of that thread's.
pub fn attention_into(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape, out: &mut [f32]) {
    let qw = s.heads * s.head_dim;
    let seq = q.len() / qw.max(1);
    let kv_len = k.len() / (s.kv_heads * s.head_dim).max(1);
    let group = s.heads / s.kv_heads;
    let task_len = (group * s.value_dim).max(1);
    let task = |scores: &mut Vec<f32>, (t, o): (usize, &mut [f32])| {
        let (i, kh) = (t / s.kv_heads, t % s.kv_heads);
        let queries = &q[i * qw + kh * group * s.head_dim..][..group * s.head_dim];
        head_group(queries, k, v, kh, kv_len - seq + i, s, scores, o);
    };
    let work = seq * s.heads * kv_len * (s.head_dim + s.value_dim);
    if work >= PARALLEL_WORK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(task_len)
            .enumerate()
            .for_each_init(Vec::new, task);
    } else {
        let mut scores = SCORES.take();
        out.chunks_mut(task_len)
            .enumerate()
            .for_each(|t| task(&mut scores, t));
        SCORES.set(scores);
    }
}

thread_local! {
    /// The scores of the calling thread's tasks, kept between calls.
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The query heads `queries` (`group` of `head_dim`) that share KV head
/// `kh`, the query at absolute position `position`, into `o` (`group` of
/// `value_dim`). Compiled for AVX-512 and AVX2 too, chosen at run time.
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+fma", "x86_64+avx2+fma"))]
fn head_group(
    queries: &[f32],
    k: &[f32],
    v: &[f32],
    kh: usize,
    position: usize,
    s: AttentionShape,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    let (kw, vw) = (s.kv_heads * s.head_dim, s.kv_heads * s.value_dim);
    let kv_len = k.len() / kw.max(1);
    let group = s.heads / s.kv_heads;
    let visible = if s.causal { position + 1 } else { kv_len };
    scores.clear();
    scores.resize(group * visible, 0.0);
    for j in 0..visible {
        let krow = &k[j * kw + kh * s.head_dim..][..s.head_dim];
        for (g, query) in queries.chunks_exact(s.head_dim).enumerate() {
            scores[g * visible + j] = dot(query, krow) * s.scale;
        }
    }
    for row in scores.chunks_exact_mut(visible.max(1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for sc in row.iter_mut() {
            *sc = (*sc - max).exp();
            total += *sc;
        }
        let inv = 1.0 / total;
        row.iter_mut().for_each(|p| *p *= inv);
    }
    for j in 0..visible {
        let vrow = &v[j * vw + kh * s.value_dim..][..s.value_dim];
        for (g, o) in o.chunks_exact_mut(s.value_dim.max(1)).enumerate() {
            let p = scores[g * visible + j];
            for (acc, &x) in o.iter_mut().zip(vrow) {
                *acc += p * x;
            }
        }
    }
}

/// `Σ a·b` in [`LANES`] independent sums (which vectorise; one running sum
/// would not, floating-point addition being ordered).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (a_blocks, b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
