//! Training's attention: with [`GpuAttention::Flash`] and heads the flash
//! kernels take, by those (`codegen::flash`): the forward pass in one kernel; the
//! gradients from per-row statistics (log-sum-exp and `D = Σ dO ⊙ O`),
//! one kernel for dQ and one for dK and dV together. Otherwise as cuBLAS
//! products around generated softmax kernels: for each segment (a training window) and head, the scores
//! `S = scale · Q Kᵀ`, the weights `P` by [`Kernel::MaskedSoftmax`], and
//! `P V`; the gradients from `P` recomputed the same way and `dP = dO Vᵀ`,
//! `dS = P ⊙ (dP − Σ P dP)` by [`Kernel::SoftmaxGrad`], `dQ = scale · dS K`,
//! `dK = scale · dSᵀ Q`, `dV = Pᵀ dO` (a key head's gradients summed over
//! the query heads that share it). Complex operands are real ones of twice
//! the width: `Re(q·conj k)` is the real dot product of the interleaved
//! parts, and the weights are real.
//!
//! [`GpuAttention::Flash`]: crate::cuda::GpuAttention::Flash
//! [`Kernel::MaskedSoftmax`]: super::codegen::Kernel::MaskedSoftmax
//! [`Kernel::SoftmaxGrad`]: super::codegen::Kernel::SoftmaxGrad

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use fairyc_ir::{AttentionOperand, DType, Graph, Node, Op, ValueId};

use super::codegen::attention::partial_words;
use super::codegen::flash::{flash_applies, FlashPass, FLASH_TILE, FLASH_WARPS};
use super::{
    blas_result, driver, words_per, CudaProgram, DeviceTensor, Kernel, RopeArgs, Step,
    ATTENTION_THREADS, MAP_THREADS, ROW_THREADS,
};
use crate::BackendError;

/// One batched attention: `segments` sequences of `seq` rows, each
/// attending over its own rows; widths in 32-bit words.
#[derive(Clone, Copy)]
pub(super) struct Segments {
    pub segments: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Words of one query or key head, and of one value head.
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
    pub causal: bool,
}

impl Segments {
    /// The shape of `attention(q, k, v)` (or its gradient) on `rows` rows
    /// in segments of `segment` (the whole when `None`).
    pub fn new(
        q: &DeviceTensor,
        values: &DeviceTensor,
        (heads, kv_heads): (usize, usize),
        segment: Option<usize>,
        scale: f32,
        causal: bool,
    ) -> Result<Segments, BackendError> {
        let rows = q.shape[0];
        let seq = segment.unwrap_or(rows).max(1);
        if !rows.is_multiple_of(seq) {
            return Err(BackendError::new(format!(
                "{rows} rows are not whole segments of {seq}"
            )));
        }
        let w = words_per(q.elem);
        Ok(Segments {
            segments: rows / seq,
            seq,
            heads,
            kv_heads,
            d: q.shape[1] / heads * w,
            dv: values.shape[1] / kv_heads * w,
            scale,
            causal,
        })
    }

    /// Words of one segment's weights for one head (`seq × seq`).
    fn square(&self) -> usize {
        self.seq * self.seq
    }
}

/// The blocks [`CudaProgram::cache_attention`] aims to launch: about two a
/// multiprocessor (of an H100's or H200's 132). Only fewer query rows ×
/// key heads than this are split, so it is also how many arrival counts a
/// program keeps for them.
pub(super) const SPLIT_TARGET: usize = 2 * 132;

/// How many blocks share one query row and key head's keys in
/// [`CudaProgram::cache_attention`]: enough for about [`SPLIT_TARGET`]
/// blocks, and no more than leaves each warp at least eight keys.
fn key_splits(row_heads: usize, kv_len: usize) -> usize {
    const KEYS_PER_WARP: usize = 8;
    let warps = (ATTENTION_THREADS / 32) as usize;
    let wanted = SPLIT_TARGET.div_ceil(row_heads.max(1));
    wanted.min(kv_len / (warps * KEYS_PER_WARP)).max(1)
}

/// What the gradients of one attention share, kept for the group's other
/// gradients and freed after the last.
pub(super) struct Shared {
    /// The group: its first gradient node.
    group: usize,
    /// Gradients of the group still to run.
    remaining: usize,
    kept: Kept,
}

/// What a flash forward pass keeps for its gradients: its output (for
/// `D = Σ dO ⊙ O`) and its statistics, the log-sum-exps filled (the `D`
/// half is the gradients' to fill), so that they need not run the forward
/// pass again (the Stats kernel).
pub(super) struct KeptForward {
    output: DeviceTensor,
    statistics: CudaSlice<u32>,
}

/// The flash `attention` nodes whose gradients run on the flash kernels
/// too, each with the group of those gradients: the gradients of the same
/// operands and attributes.
pub(super) fn flash_forward_groups(
    graph: &Graph,
    steps: &[Option<Step>],
    kernels: &[Kernel],
    groups: &HashMap<usize, (usize, usize)>,
) -> HashMap<usize, usize> {
    let flash = |i: usize| matches!(&steps[i], Some(Step::Kernel(k)) if matches!(kernels[k[0]], Kernel::Flash { .. }));
    let mut kept = HashMap::new();
    for (f, forward) in graph.nodes.iter().enumerate() {
        let Op::Attention {
            heads,
            kv_heads,
            scale,
            causal,
            segment: segment @ Some(_),
        } = forward.op
        else {
            continue;
        };
        if !flash(f) {
            continue;
        }
        let group = groups.iter().find_map(|(&g, &(group, _))| {
            let grad = graph.nodes.get(g)?;
            let same = matches!(grad.op, Op::AttentionGrad { heads: h, kv_heads: kv, scale: sc, causal: c, segment: sg, .. }
                if (h, kv, sc, c, sg) == (heads, kv_heads, scale, causal, segment));
            (same && grad.operands.get(..3) == Some(&forward.operands[..]) && flash(g)).then_some(group)
        });
        if let Some(group) = group {
            kept.insert(f, group);
        }
    }
    kept
}

enum Kept {
    /// The products' weights `P` and, once a gradient of Q or K needed
    /// them, `dS`.
    Products {
        weights: CudaSlice<u32>,
        scores: Option<CudaSlice<u32>>,
    },
    /// The flash kernels' per-row statistics, and the gradient of K or V
    /// that the kernel computing the other gave.
    Flash {
        stats: CudaSlice<u32>,
        pending: Option<(AttentionOperand, CudaSlice<u32>)>,
    },
}

/// Words per head of `node`'s operand `operand` over `heads` heads (fixed
/// widths only).
fn head_words(graph: &Graph, node: &Node, operand: usize, heads: usize) -> Option<usize> {
    let ty = &graph.node(*node.operands.get(operand)?).ty;
    let cols = ty.shape.dims().get(1)?.clone().fixed()?;
    let words = cols * if ty.dtype == DType::C64 { 2 } else { 1 };
    (heads > 0 && words % heads == 0).then_some(words / heads)
}

/// The flash kernels for an `attention` over segments or an
/// `attention_grad` node, where its heads suit them: the forward kernel, or
/// the statistics', dQ's and dK/dV's.
pub(super) fn flash_kernels(graph: &Graph, node: &Node) -> Option<Vec<Kernel>> {
    let (heads, kv_heads, grad) = match node.op {
        Op::Attention {
            heads,
            kv_heads,
            segment: Some(_),
            ..
        } => (heads, kv_heads, false),
        Op::AttentionGrad {
            heads, kv_heads, ..
        } => (heads, kv_heads, true),
        _ => return None,
    };
    let d = head_words(graph, node, 0, heads)?;
    let dv = head_words(graph, node, 2, kv_heads)?;
    if !heads.is_multiple_of(kv_heads) || !flash_applies(d, dv) {
        return None;
    }
    let kernel = |pass| Kernel::Flash { pass, d, dv };
    Some(if grad {
        vec![
            kernel(FlashPass::Stats),
            kernel(FlashPass::GradQ),
            kernel(FlashPass::GradKv),
            Kernel::FlashDelta,
        ]
    } else {
        vec![kernel(FlashPass::Forward)]
    })
}

/// The kernels of an `attention` over a KV cache (no segments): the
/// attention kernel built for its heads, and the merge of split keys.
pub(super) fn cache_kernels(graph: &Graph, node: &Node) -> Option<Vec<Kernel>> {
    let Op::Attention {
        heads,
        kv_heads,
        segment: None,
        ..
    } = node.op
    else {
        return None;
    };
    let rank_two = node.operands.iter().all(|v| graph.ty(*v).shape.rank() == 2);
    let d = head_words(graph, node, 0, heads).filter(|_| rank_two)?;
    let dv = head_words(graph, node, 2, kv_heads)?;
    let group = heads.checked_div(kv_heads)?;
    // The warps' partial softmaxes live in static shared memory.
    let shared_bytes = 4 * (ATTENTION_THREADS as usize / 32) * partial_words(group, dv);
    (heads.is_multiple_of(kv_heads) && shared_bytes <= 48 * 1024).then(|| {
        vec![Kernel::Attention {
            d,
            dv,
            group,
            rope: None,
        }]
    })
}

/// The gradients of each attention, grouped: for each `attention_grad`
/// node, its group (the first node with the same operands and attributes
/// but `which`) and how many nodes the group has.
pub(super) fn attention_groups(graph: &Graph) -> HashMap<usize, (usize, usize)> {
    // (first node, its operands, its attributes with `which` = Q), count.
    let mut seen: Vec<(usize, &[ValueId], Op, usize)> = Vec::new();
    let mut group_of = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let Op::AttentionGrad { .. } = node.op else {
            continue;
        };
        let mut attributes = node.op.clone();
        if let Op::AttentionGrad { which, .. } = &mut attributes {
            *which = AttentionOperand::Q;
        }
        let operands = node.operands.as_slice();
        let k = match seen
            .iter()
            .position(|(_, o, a, _)| *o == operands && *a == attributes)
        {
            Some(k) => k,
            None => {
                seen.push((i, operands, attributes, 0));
                seen.len() - 1
            }
        };
        seen[k].3 += 1;
        group_of.insert(i, k);
    }
    group_of
        .into_iter()
        .map(|(i, k)| (i, (seen[k].0, seen[k].3)))
        .collect()
}

/// A column-major operand of a batched product: its device address, its
/// leading dimension and the distance from one segment's matrix to the
/// next, in words.
#[derive(Clone, Copy)]
struct Strided {
    at: u64,
    ld: usize,
    stride: usize,
}

impl Strided {
    /// The same matrices `words` further on.
    fn offset(self, words: usize) -> Strided {
        Strided {
            at: self.at + 4 * words as u64,
            ..self
        }
    }
}

impl CudaProgram {
    /// `attention(q, k, v)` over segments into `out` (`[rows, heads·dv]`);
    /// `softmax` is the masked softmax kernel.
    pub(super) fn batched_attention(
        &self,
        softmax: usize,
        (q, keys, values): (&DeviceTensor, &DeviceTensor, &DeviceTensor),
        s: Segments,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let weights = self.attention_weights(softmax, q, keys, s)?;
        let (v, _v) = values.words.device_ptr(&self.stream);
        let (p, _p) = weights.device_ptr(&self.stream);
        let (o, _o) = out.device_ptr_mut(&self.stream);
        let group = s.heads / s.kv_heads;
        for h in 0..s.heads {
            // Oₕᵀ = Vᵀ Pₕᵀ, column-major: (dv × seq) = (dv × seq)(seq × seq).
            self.gemm_segments(
                (false, false),
                (s.dv, s.seq, s.seq),
                1.0,
                self.rows(v, s.kv_heads * s.dv, s.seq)
                    .offset(h / group * s.dv),
                self.weights_of(p, s, h),
                0.0,
                self.rows(o, s.heads * s.dv, s.seq).offset(h * s.dv),
                s.segments,
            )?;
        }
        Ok(())
    }

    /// The gradient of `attention(q, k, v)` over segments with respect to
    /// `which`, from the output's gradient `dout`, into `out` (shaped as
    /// that operand); `kernels` are the masked softmax and its gradient.
    pub(super) fn batched_attention_grad(
        &self,
        node: usize,
        kernels: &[usize],
        which: AttentionOperand,
        operands: (&DeviceTensor, &DeviceTensor, &DeviceTensor, &DeviceTensor),
        s: Segments,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let (q, keys, _, _) = operands;
        let flash = matches!(self.kernels[kernels[0]], Kernel::Flash { .. });
        // The gradients of one attention share what the first computes:
        // the others find it here, the last frees it.
        let (group, siblings) = self.attention_groups[&node];
        let mut cache = self
            .attention_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().map(|c| c.group) != Some(group) {
            *cache = None;
            let kept = if flash {
                let forward = self
                    .kept_forward
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&group);
                let stats = match forward {
                    // The forward pass kept the log-sum-exps: D from its
                    // output.
                    Some(KeptForward { output, statistics }) => {
                        self.flash_delta(kernels[3], &output, operands.3, &statistics, s)?;
                        statistics
                    }
                    None => {
                        let stats = self.alloc(2 * s.segments * s.heads * s.seq)?;
                        let [q, k, v] = [q, keys, operands.2].map(|x| self.flash_operand(x));
                        // dO in f32: the kernel sums it with O.
                        let (q, k, v, g) = (&*q?, &*k?, &*v?, &*operands.3.words);
                        // The statistics kernel writes no output: Q stands in.
                        self.launch_flash(
                            kernels[0],
                            s.heads,
                            [q, q, q, k, v, g],
                            Some(&stats),
                            s,
                        )?;
                        stats
                    }
                };
                Kept::Flash {
                    stats,
                    pending: None,
                }
            } else {
                Kept::Products {
                    weights: self.attention_weights(kernels[0], q, keys, s)?,
                    scores: None,
                }
            };
            *cache = Some(Shared {
                group,
                remaining: siblings,
                kept,
            });
        }
        let shared = cache.as_mut().expect("set above");
        shared.remaining -= 1;
        let last = shared.remaining == 0;
        let done = match &mut shared.kept {
            Kept::Products { weights, scores } => {
                self.attention_grad_from(weights, scores, kernels[1], which, operands, s, out)
            }
            Kept::Flash { stats, pending } => {
                self.flash_grad(kernels, which, operands, s, (stats, pending), out)
            }
        };
        if last || done.is_err() {
            *cache = None;
        }
        done
    }

    /// `attention(q, k, v)` over a KV cache (`keys` and `values` of
    /// `kv_len` rows, the last `s.seq` of them the queries' own) into
    /// `out`, by the [`Kernel::Attention`] `kernel` (with `rope`, the
    /// queries before their rotary embedding, rotated as they load). Where
    /// the rows and key heads alone would leave most multiprocessors idle,
    /// the keys are split over several blocks, the last of which merges
    /// their partial softmaxes. Where the keys are a growing cache
    /// (`cache`: its slot), the kernel reads their count from the device
    /// (`caches`), and the split is planned for the cache's room, so that
    /// the launch is the same at every position.
    pub(super) fn cache_attention(
        &self,
        kernel: usize,
        (q, keys, values): (&DeviceTensor, &DeviceTensor, &DeviceTensor),
        (cache, rope): (Option<usize>, Option<RopeArgs>),
        s: Segments,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let Kernel::Attention { d, dv, group, .. } = self.kernels[kernel] else {
            unreachable!("cache attention runs on the attention kernel");
        };
        if (d, dv, group) != (s.d, s.dv, s.heads / s.kv_heads) {
            return Err(BackendError::new(format!(
                "attention heads of {} and {} words, {} a key head; the kernel was built for {d}, {dv} and {group}",
                s.d,
                s.dv,
                s.heads / s.kv_heads
            )));
        }
        let kv_len = keys.shape[0];
        if q.shape[0] == 0 {
            // No queries (a slot that sits a step out): nothing to write.
            return Ok(());
        }
        if kv_len < s.seq {
            return Err(BackendError::new(format!(
                "{} queries over {kv_len} keys: a cache's keys end with the queries' own",
                s.seq
            )));
        }
        // The cache's rows in use come from the device, plus the queries'.
        let (slot, extra, planned) = match cache {
            Some(slot) => (
                slot as i64,
                s.seq,
                keys.words.len() / (s.kv_heads * d).max(1),
            ),
            None => (-1, kv_len, kv_len),
        };
        let row_heads = s.seq * s.kv_heads;
        let splits = key_splits(row_heads, planned);
        debug_assert!(
            splits == 1 || row_heads < SPLIT_TARGET,
            "one arrival count a split row"
        );
        let partials = match splits {
            1 => None,
            _ => Some(self.alloc(row_heads * splits * partial_words(group, dv))?),
        };
        let sizes = [
            s.seq as i64,
            slot,
            extra as i64,
            s.kv_heads as i64,
            splits as i64,
            i64::from(s.causal),
        ];
        let null = 0u64;
        self.launch(
            kernel,
            (row_heads * splits) as u32,
            ATTENTION_THREADS,
            |b| {
                b.arg(&*out)
                    .arg(&*q.words)
                    .arg(&*keys.words)
                    .arg(&*values.words);
                match &partials {
                    Some(p) => b.arg(p),
                    None => b.arg(&null),
                };
                b.arg(&self.cache_lengths).arg(&self.split_arrivals);
                for v in &sizes {
                    b.arg(v);
                }
                b.arg(&s.scale);
                if let Some(r) = &rope {
                    b.arg(&*r.positions.words).arg(r.freqs).arg(&r.seq);
                }
            },
        )?;
        Ok(())
    }

    /// `attention(q, k, v)` over segments into `out` by the flash forward
    /// kernel, and the log-sum-exps into `statistics` where given.
    pub(super) fn flash_attention(
        &self,
        kernel: usize,
        (q, keys, values): (&DeviceTensor, &DeviceTensor, &DeviceTensor),
        s: Segments,
        out: &mut CudaSlice<u32>,
        statistics: Option<&CudaSlice<u32>>,
    ) -> Result<(), BackendError> {
        let [q, k, v] = [q, keys, values].map(|x| self.flash_operand(x));
        let (q, k, v) = (&*q?, &*k?, &*v?);
        // The forward kernel reads neither its second output nor dO: Q
        // stands in for them.
        self.launch_flash(kernel, s.heads, [out, q, q, k, v, q], statistics, s)
    }

    /// An operand of the flash kernels' products, rounded to bf16 (once a
    /// run: attention's gradients find its forward pass's).
    fn flash_operand(&self, x: &DeviceTensor) -> Result<Arc<CudaSlice<u32>>, BackendError> {
        let kernel = self.to_bf16.ok_or_else(|| {
            BackendError::new("the flash kernels' operands need the bf16 rounding kernel")
        })?;
        self.bf16(kernel, x)
    }

    /// Keeps a flash forward pass's `statistics` and output `o` for its
    /// gradients' `group`.
    pub(super) fn keep_forward(&self, group: usize, o: &DeviceTensor, statistics: CudaSlice<u32>) {
        self.kept_forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                group,
                KeptForward {
                    output: o.clone(),
                    statistics,
                },
            );
    }

    /// The gradient of `which` by the flash kernels (`kernels`: the
    /// statistics', dQ's, dK/dV's) from the group's `stats`; dK and dV come
    /// from one kernel, and the one asked for second is kept in `pending`.
    fn flash_grad(
        &self,
        kernels: &[usize],
        which: AttentionOperand,
        (q, keys, values, dout): (&DeviceTensor, &DeviceTensor, &DeviceTensor, &DeviceTensor),
        s: Segments,
        (stats, pending): (
            &CudaSlice<u32>,
            &mut Option<(AttentionOperand, CudaSlice<u32>)>,
        ),
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let [q, k, v, g] = [q, keys, values, dout].map(|x| self.flash_operand(x));
        let (q, k, v, g) = (&*q?, &*k?, &*v?, &*g?);
        if which == AttentionOperand::Q {
            return self.launch_flash(kernels[1], s.heads, [out, q, q, k, v, g], Some(stats), s);
        }
        if let Some((kept, words)) = pending.take() {
            if kept == which {
                return self.stream.memcpy_dtod(&words, out).map_err(driver);
            }
        }
        // The other gradient is shaped as its (f32) operand, not as the
        // operand's bf16 copy.
        let (size, other_which) = match which {
            AttentionOperand::K => (values.word_count(), AttentionOperand::V),
            _ => (keys.word_count(), AttentionOperand::K),
        };
        let other = self.alloc(size)?;
        let (dk, dv) = if which == AttentionOperand::K {
            (&*out, &other)
        } else {
            (&other, &*out)
        };
        self.launch_flash(kernels[2], s.kv_heads, [dk, dv, q, k, v, g], Some(stats), s)?;
        *pending = Some((other_which, other));
        Ok(())
    }

    /// Launches flash kernel `kernel` on blocks of 64 rows of `heads` heads
    /// (query heads; key heads for dK/dV) of every segment; `ptrs`:
    /// its two outputs, Q, K, V and dO; the statistics (none: a null
    /// pointer, which only the forward kernel takes).
    fn launch_flash(
        &self,
        kernel: usize,
        heads: usize,
        ptrs: [&CudaSlice<u32>; 6],
        statistics: Option<&CudaSlice<u32>>,
        s: Segments,
    ) -> Result<(), BackendError> {
        let null = 0u64;
        if let Kernel::Flash { d, dv, .. } = self.kernels[kernel] {
            if (d, dv) != (s.d, s.dv) {
                return Err(BackendError::new(format!(
                    "attention heads of {} and {} words, the flash kernel was built for {d} and {dv}",
                    s.d, s.dv
                )));
            }
        }
        // A block takes 64 rows (16 a warp) of one segment and head.
        let rows = FLASH_TILE * FLASH_WARPS as usize;
        let blocks = (s.segments * heads * s.seq.div_ceil(rows)) as u32;
        let sizes = [
            s.segments,
            s.seq,
            s.heads,
            s.kv_heads,
            usize::from(s.causal),
        ]
        .map(|v| v as i64);
        self.launch(kernel, blocks, 32 * FLASH_WARPS, |b| {
            for p in ptrs {
                b.arg(p);
            }
            match statistics {
                Some(p) => b.arg(p),
                None => b.arg(&null),
            };
            for v in &sizes {
                b.arg(v);
            }
            b.arg(&s.scale);
        })
    }

    /// `D = Σ dO ⊙ O` per row and query head into the second half of
    /// `statistics` ([`Kernel::FlashDelta`]).
    fn flash_delta(
        &self,
        kernel: usize,
        output: &DeviceTensor,
        dout: &DeviceTensor,
        statistics: &CudaSlice<u32>,
        s: Segments,
    ) -> Result<(), BackendError> {
        let pairs = s.segments * s.seq * s.heads;
        let sizes = [pairs, s.heads, s.seq, s.dv, pairs].map(|v| v as i64);
        self.launch(kernel, Self::grid(pairs), MAP_THREADS, |b| {
            b.arg(statistics).arg(&*output.words).arg(&*dout.words);
            for v in &sizes {
                b.arg(v);
            }
        })
    }

    /// [`CudaProgram::batched_attention_grad`] by cuBLAS products from its
    /// group's `weights` (and `scores`, computed here by `softmax_grad` if
    /// not yet).
    #[allow(clippy::too_many_arguments)]
    fn attention_grad_from(
        &self,
        weights: &CudaSlice<u32>,
        scores: &mut Option<CudaSlice<u32>>,
        softmax_grad: usize,
        which: AttentionOperand,
        (q, keys, values, dout): (&DeviceTensor, &DeviceTensor, &DeviceTensor, &DeviceTensor),
        s: Segments,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let group = s.heads / s.kv_heads;
        let (go, _go) = dout.words.device_ptr(&self.stream);
        let dout_rows = self.rows(go, s.heads * s.dv, s.seq);
        if which == AttentionOperand::V {
            let (p, _p) = weights.device_ptr(&self.stream);
            let (o, _o) = out.device_ptr_mut(&self.stream);
            for h in 0..s.heads {
                // dVᵀ = dOₕᵀ Pₕ, summed over the group's heads.
                self.gemm_segments(
                    (false, true),
                    (s.dv, s.seq, s.seq),
                    1.0,
                    dout_rows.offset(h * s.dv),
                    self.weights_of(p, s, h),
                    if h % group == 0 { 0.0 } else { 1.0 },
                    self.rows(o, s.kv_heads * s.dv, s.seq)
                        .offset(h / group * s.dv),
                    s.segments,
                )?;
            }
            return Ok(());
        }
        if scores.is_none() {
            *scores = Some(self.score_grads(softmax_grad, values, dout_rows, weights, s)?);
        }
        let scores = scores.as_ref().expect("set above");
        let (ds, _ds) = scores.device_ptr(&self.stream);
        let (o, _o) = out.device_ptr_mut(&self.stream);
        let (qp, _q) = q.words.device_ptr(&self.stream);
        let (kp, _k) = keys.words.device_ptr(&self.stream);
        for h in 0..s.heads {
            let kh = h / group;
            let ds = self.weights_of(ds, s, h);
            if which == AttentionOperand::Q {
                // dQₕᵀ = scale · Kᵀ dSₕᵀ: (d × seq) = (d × seq)(seq × seq).
                self.gemm_segments(
                    (false, false),
                    (s.d, s.seq, s.seq),
                    s.scale,
                    self.rows(kp, s.kv_heads * s.d, s.seq).offset(kh * s.d),
                    ds,
                    0.0,
                    self.rows(o, s.heads * s.d, s.seq).offset(h * s.d),
                    s.segments,
                )?;
            } else {
                // dKᵀ = scale · Qₕᵀ dSₕ, summed over the group's heads.
                self.gemm_segments(
                    (false, true),
                    (s.d, s.seq, s.seq),
                    s.scale,
                    self.rows(qp, s.heads * s.d, s.seq).offset(h * s.d),
                    ds,
                    if h % group == 0 { 0.0 } else { 1.0 },
                    self.rows(o, s.kv_heads * s.d, s.seq).offset(kh * s.d),
                    s.segments,
                )?;
            }
        }
        Ok(())
    }

    /// `dS = P ⊙ (dP − Σ P dP)` with `dP = dO Vᵀ`, for every segment and
    /// head (`softmax_grad` is its kernel).
    fn score_grads(
        &self,
        softmax_grad: usize,
        values: &DeviceTensor,
        dout_rows: Strided,
        weights: &CudaSlice<u32>,
        s: Segments,
    ) -> Result<CudaSlice<u32>, BackendError> {
        let mut scores = self.alloc(s.segments * s.heads * s.square())?;
        let group = s.heads / s.kv_heads;
        let (v, _v) = values.words.device_ptr(&self.stream);
        let (p, _p) = weights.device_ptr(&self.stream);
        let (dp, _dp) = scores.device_ptr_mut(&self.stream);
        for h in 0..s.heads {
            // dPₕᵀ = V dOₕᵀ: (seq × seq) = (seq × dv)(dv × seq).
            self.gemm_segments(
                (true, false),
                (s.seq, s.seq, s.dv),
                1.0,
                self.rows(v, s.kv_heads * s.dv, s.seq)
                    .offset(h / group * s.dv),
                dout_rows.offset(h * s.dv),
                0.0,
                self.weights_of(dp, s, h),
                s.segments,
            )?;
        }
        // In place: the kernel reads a row's dP before writing its dS.
        let rows = s.segments * s.heads * s.seq;
        let cols = s.seq as i64;
        self.launch(softmax_grad, rows as u32, ROW_THREADS, |b| {
            b.arg(&dp).arg(&p).arg(&dp).arg(&cols);
        })?;
        drop(_dp);
        Ok(scores)
    }

    /// `P = softmax(scale · Q Kᵀ)` for every segment and head, masked:
    /// `[segments, heads, seq, seq]` words.
    fn attention_weights(
        &self,
        softmax: usize,
        q: &DeviceTensor,
        keys: &DeviceTensor,
        s: Segments,
    ) -> Result<CudaSlice<u32>, BackendError> {
        let mut weights = self.alloc(s.segments * s.heads * s.square())?;
        {
            let (qp, _q) = q.words.device_ptr(&self.stream);
            let (kp, _k) = keys.words.device_ptr(&self.stream);
            let (p, _p) = weights.device_ptr_mut(&self.stream);
            let group = s.heads / s.kv_heads;
            for h in 0..s.heads {
                // Sₕᵀ = scale · K Qₕᵀ: (seq × seq) = (seq × d)(d × seq).
                self.gemm_segments(
                    (true, false),
                    (s.seq, s.seq, s.d),
                    s.scale,
                    self.rows(kp, s.kv_heads * s.d, s.seq)
                        .offset(h / group * s.d),
                    self.rows(qp, s.heads * s.d, s.seq).offset(h * s.d),
                    0.0,
                    self.weights_of(p, s, h),
                    s.segments,
                )?;
            }
        }
        {
            // In place: the kernel reads a row's scores before writing it.
            let (p, _p) = weights.device_ptr_mut(&self.stream);
            let rows = s.segments * s.heads * s.seq;
            let sizes = [s.seq as i64, s.seq as i64, i64::from(s.causal)];
            self.launch(softmax, rows as u32, ROW_THREADS, |b| {
                b.arg(&p).arg(&p);
                for v in &sizes {
                    b.arg(v);
                }
            })?;
        }
        Ok(weights)
    }

    /// Row-major `[rows, width]` activations at `at`, one segment of `seq`
    /// rows after another, as column-major matrices (`width` apart).
    fn rows(&self, at: u64, width: usize, seq: usize) -> Strided {
        Strided {
            at,
            ld: width,
            stride: seq * width,
        }
    }

    /// Head `h`'s `seq × seq` weights in `[segments, heads, seq, seq]`.
    fn weights_of(&self, at: u64, s: Segments, h: usize) -> Strided {
        Strided {
            at,
            ld: s.seq,
            stride: s.heads * s.square(),
        }
        .offset(h * s.square())
    }

    /// `C = alpha · op(A) · op(B) + beta · C` for each of `batch` segments
    /// (column-major, `m × n` from `k`; `trans` transposes A and B), in
    /// the program's arithmetic.
    #[allow(clippy::too_many_arguments)]
    fn gemm_segments(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: Strided,
        b: Strided,
        beta: f32,
        c: Strided,
        batch: usize,
    ) -> Result<(), BackendError> {
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let real = blas_sys::cudaDataType_t::CUDA_R_32F;
        let [m, n, k, lda, ldb, ldc, count] = [m, n, k, a.ld, b.ld, c.ld, batch].map(|v| v as i32);
        let [sa, sb, sc] = [a.stride, b.stride, c.stride].map(|v| v as i64);
        // SAFETY: the callers derive every address, leading dimension and
        // stride from tensors the program allocated for these shapes; the
        // scalars are f32, the compute type's scale type.
        let status = unsafe {
            blas_sys::cublasGemmStridedBatchedEx(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                a.at as *const std::ffi::c_void,
                real,
                lda,
                sa,
                b.at as *const std::ffi::c_void,
                real,
                ldb,
                sb,
                (&beta as *const f32).cast(),
                c.at as *mut std::ffi::c_void,
                real,
                ldc,
                sc,
                count,
                self.compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        blas_result(status)
    }
}
