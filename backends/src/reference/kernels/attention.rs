//! Scaled dot-product attention with grouped KV heads, for real and
//! complex operands (scores `scale · Re(q · conj(k))`).

use rayon::prelude::*;

use super::Element;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    pub scale: f32,
    pub causal: bool,
}

/// `q[seq, heads·d]` over `k[kv_len, kv_heads·d]`, `v[kv_len, kv_heads·dv]`.
/// Query i sits at absolute position `kv_len - seq + i`; with `causal` it
/// sees keys up to that position.
pub fn attention<T: Element>(q: &[T], k: &[T], v: &[T], s: AttentionShape) -> Vec<T> {
    let (qw, kw, vw) = (
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
        s.kv_heads * s.value_dim,
    );
    let seq = q.len() / qw;
    let kv_len = k.len() / kw;
    let past = kv_len - seq;
    let group = s.heads / s.kv_heads;
    let mut out = vec![T::zero(); seq * s.heads * s.value_dim];
    out.par_chunks_mut(s.value_dim)
        .enumerate()
        .for_each(|(idx, o)| {
            let (i, h) = (idx / s.heads, idx % s.heads);
            let kh = h / group;
            let qrow = &q[i * qw + h * s.head_dim..][..s.head_dim];
            let visible = if s.causal { past + i + 1 } else { kv_len };
            let mut scores: Vec<f32> = (0..visible)
                .map(|j| {
                    let krow = &k[j * kw + kh * s.head_dim..][..s.head_dim];
                    let dot: f32 = qrow.iter().zip(krow).map(|(&a, &b)| a.re_mul_conj(b)).sum();
                    dot * s.scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f32;
            for sc in &mut scores {
                *sc = (*sc - max).exp();
                total += *sc;
            }
            for (j, &p) in scores.iter().enumerate() {
                let vrow = &v[j * vw + kh * s.value_dim..][..s.value_dim];
                for (acc, &x) in o.iter_mut().zip(vrow) {
                    *acc = *acc + x.scale(p / total);
                }
            }
        });
    out
}
