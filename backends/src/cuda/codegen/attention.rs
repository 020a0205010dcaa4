//! Attention over a KV cache (decoding, and prompts with `segment: None`):
//! one block per query row and key head, its warps taking the keys in
//! turn with the lanes across each head's words, so that a key's row is
//! read once, coalesced, for every query head that shares it; an online
//! softmax keeps no scores in memory. Where the rows and key heads alone
//! leave the GPU idle (one sequence's decoding step), the keys are split
//! over several blocks, and the last of them to finish merges their
//! partial softmaxes (no second launch). Training's batched attention and
//! its gradients are cuBLAS products around [`Gen::masked_softmax`]
//! (`program::attention`), or the flash kernels.

use super::*;

/// A block's partial softmax for each of its query heads, as
/// [`Gen::attention`] leaves it when the keys are split, for the last block
/// of its query row and key head to merge: the running maxima, the sums of
/// the exponentials, then the weighted sums of the values (`group · dv`
/// words).
pub fn partial_words(group: usize, dv: usize) -> usize {
    group * (dv + 2)
}

impl<'ctx> Gen<'ctx> {
    /// `attention(out, q, k, v, partials, lengths, arrivals, seq, kv_slot,
    /// kv_extra, kv_heads, splits, causal, scale)` for heads of `d` (query, key) and
    /// `dv` (value) words, `group` query heads a key head. The keys number
    /// `kv_extra`, plus `lengths[kv_slot]` where `kv_slot` is not negative
    /// (a KV cache whose rows in use the device holds: a captured decoding
    /// step replays at any position); the last `seq` are the queries' own.
    /// Block `b` is split `b % splits` of query row `i` and key head `kh`
    /// (`b / splits = i · kv_heads + kh`); that row's query heads `kh ·
    /// group ..` are words `(b / splits) · group · d ..` of `q`. With one
    /// split it writes the output, else its [`partial_words`] at record `b`
    /// of `partials`, and counts itself in `arrivals[b / splits]` (a word
    /// that is 0 between launches): the block that arrives last merges the
    /// records into the output and sets the word back to 0. With `rope`,
    /// `q` is read before its rotary embedding and rotated as it loads, by
    /// the parameters `positions, freqs, npos` after `scale` (as the `rope`
    /// kernel's, heads of `d` words).
    pub(super) fn attention(
        &self,
        name: &str,
        (d, dv, group): (usize, usize, usize),
        rope: Option<RopeLayout>,
    ) -> Built<()> {
        let mut params = vec![Param::Ptr; 7];
        params.extend([Param::I64; 6]);
        params.push(Param::F32);
        if rope.is_some() {
            params.extend([Param::Ptr, Param::Ptr, Param::I64]);
        }
        let f = self.declare(name, &params);
        let [out, q, k, v, partials, lengths, arrivals] =
            [0, 1, 2, 3, 4, 5, 6].map(|i| self.param_ptr(f, i));
        let [seq, kv_slot, kv_extra, kv_heads, splits, causal] =
            [7, 8, 9, 10, 11, 12].map(|i| self.param_int(f, i));
        let scale = self.param_float(f, 13);
        let cached = self
            .builder
            .build_int_compare(IntPredicate::SGE, kv_slot, self.int(0), "")
            .map_err(err)?;
        let in_use = self.load_i32(lengths, self.select(cached, kv_slot, self.int(0))?)?;
        let in_use = self.select(cached, self.widen(in_use)?, self.int(0))?;
        let kv_len = self.add(kv_extra, in_use)?;
        let warps = (ATTENTION_THREADS / 32) as usize;
        let block = self.sreg("ctaid.x")?;
        let (row_head, split) = (self.udiv(block, splits)?, self.urem(block, splits)?);
        let i = self.udiv(row_head, kv_heads)?;
        let kh = self.urem(row_head, kv_heads)?;
        let past = self.builder.build_int_sub(kv_len, seq, "").map_err(err)?;
        let causal_visible = self.add(self.add(past, i)?, self.int(1))?;
        let visible = self.select(self.is_set(causal)?, causal_visible, kv_len)?;
        let tid = self.sreg("tid.x")?;
        let (lane, warp) = (self.urem(tid, self.int(32))?, self.udiv(tid, self.int(32))?);
        // Lane `lane` holds words `lane + 32 t` of each head: the query's
        // here, a key's and a value's in the loop.
        let spans = |width: usize| width.div_ceil(32);
        let lane_words =
            |base: IntValue<'ctx>, ptr, width: usize| -> Built<Vec<FloatValue<'ctx>>> {
                (0..spans(width))
                    .map(|t| self.lane_word(ptr, base, lane, t, width))
                    .collect()
            };
        let q_words = (0..group)
            .map(|h| {
                let head = self.add(
                    self.mul(row_head, self.int(group as u64))?,
                    self.int(h as u64),
                )?;
                let base = self.mul(head, self.int(d as u64))?;
                match rope {
                    None => lane_words(base, q, d),
                    Some(layout) => self.roped_lane_words(f, (q, base), (lane, d, layout), i),
                }
            })
            .collect::<Built<Vec<_>>>()?;
        let state = |init: f32, n: usize| -> Built<Vec<PointerValue<'ctx>>> {
            (0..n).map(|_| self.local(self.float(init))).collect()
        };
        let (max, total) = (state(f32::NEG_INFINITY, group)?, state(0.0, group)?);
        let acc = state(0.0, group * spans(dv))?;
        let kw = self.mul(kv_heads, self.int(d as u64))?;
        let vw = self.mul(kv_heads, self.int(dv as u64))?;
        let first = self.add(self.mul(split, self.int(warps as u64))?, warp)?;
        let stride = self.mul(splits, self.int(warps as u64))?;
        self.strided_loop(f, first, visible, stride, |j| {
            let key = lane_words(
                self.add(self.mul(j, kw)?, self.mul(kh, self.int(d as u64))?)?,
                k,
                d,
            )?;
            let value = lane_words(
                self.add(self.mul(j, vw)?, self.mul(kh, self.int(dv as u64))?)?,
                v,
                dv,
            )?;
            for h in 0..group {
                let mut dot = self.float(0.0);
                for (a, b) in q_words[h].iter().zip(&key) {
                    dot = self.fadd(dot, self.fmul(*a, *b)?)?;
                }
                let s = self.fmul(self.warp_sum(dot)?, scale)?;
                let old = self.get(max[h])?;
                let new = self.fmax(old, s)?;
                // Taken at 0 while every score is −∞, as the merges do.
                let base = self.finite_or_zero(new)?;
                let rescale = self.exp(self.fsub(old, base)?)?;
                let p = self.exp(self.fsub(s, base)?)?;
                self.set(max[h], new)?;
                self.set(
                    total[h],
                    self.fadd(self.fmul(self.get(total[h])?, rescale)?, p)?,
                )?;
                for (t, x) in value.iter().enumerate() {
                    let slot = acc[h * spans(dv) + t];
                    let kept = self.fmul(self.get(slot)?, rescale)?;
                    self.set(slot, self.fadd(kept, self.fmul(p, *x)?)?)?;
                }
            }
            Ok(())
        })?;
        // The warps' partial softmaxes through shared memory, merged by
        // the block's threads across the heads' words.
        let shared = |len: usize, what: &str| {
            self.shared_array(self.f32().array_type(len as u32), &format!("{name}_{what}"))
                .as_pointer_value()
        };
        let (warp_max, warp_total) = (shared(warps * group, "max"), shared(warps * group, "total"));
        let warp_acc = shared(warps * group * dv, "acc");
        let slot = self.mul(warp, self.int(group as u64))?;
        for h in 0..group {
            let at = self.add(slot, self.int(h as u64))?;
            self.when(f, self.eq_int(lane, self.int(0))?, || {
                self.store_f32(warp_max, at, self.get(max[h])?)?;
                self.store_f32(warp_total, at, self.get(total[h])?)
            })?;
            for t in 0..spans(dv) {
                let c = self.add(lane, self.int(32 * t as u64))?;
                let inside = self.ult(c, self.int(dv as u64))?;
                self.when(f, inside, || {
                    let word = self.add(self.mul(at, self.int(dv as u64))?, c)?;
                    self.store_f32(warp_acc, word, self.get(acc[h * spans(dv) + t])?)
                })?;
            }
        }
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        self.call_void(barrier, &[])?;
        let one_split = self.eq_int(splits, self.int(1))?;
        let words = self.int((group * dv) as u64);
        self.strided_loop(f, tid, words, self.int(ATTENTION_THREADS as u64), |w| {
            let (h, c) = (
                self.udiv(w, self.int(dv as u64))?,
                self.urem(w, self.int(dv as u64))?,
            );
            let [m, l, a] = self.merge_softmax(
                (0..warps).map(|p| self.int((p * group) as u64)).collect(),
                h,
                |record, h| {
                    let at = self.add(record, h)?;
                    let word = self.add(self.mul(at, self.int(dv as u64))?, c)?;
                    Ok([
                        self.load_f32(warp_max, at)?,
                        self.load_f32(warp_total, at)?,
                        self.load_f32(warp_acc, word)?,
                    ])
                },
            )?;
            let output = || {
                let o = self.add(self.mul(row_head, words)?, w)?;
                self.store_f32(out, o, self.normalised(a, l)?)
            };
            let partial = || {
                let record = self.mul(block, self.int(partial_words(group, dv) as u64))?;
                let first_word = self.eq_int(c, self.int(0))?;
                self.when(f, first_word, || {
                    self.store_f32(partials, self.add(record, h)?, m)?;
                    self.store_f32(
                        partials,
                        self.add(self.add(record, self.int(group as u64))?, h)?,
                        l,
                    )
                })?;
                self.store_f32(
                    partials,
                    self.add(self.add(record, self.int(2 * group as u64))?, w)?,
                    a,
                )
            };
            self.when_else(f, one_split, output, partial)?;
            Ok(())
        })?;
        let split = self.not(one_split)?;
        self.when(f, split, || {
            // The last of the row's blocks to write its record merges them.
            self.when_last_block(f, name, (arrivals, row_head), splits, || {
                let group = self.int(group as u64);
                self.merge_splits(
                    f,
                    (out, partials),
                    row_head,
                    splits,
                    (group, self.int(dv as u64)),
                )
            })
        })?;
        self.ret()
    }

    /// Merges the `splits` partial softmaxes of records `row_head · splits
    /// ..` (each [`partial_words`]) into output words `row_head · group ·
    /// dv ..`, the block's threads across the words. The records are other
    /// blocks', so they are read past L1.
    fn merge_splits(
        &self,
        f: FunctionValue<'ctx>,
        (out, partials): (PointerValue<'ctx>, PointerValue<'ctx>),
        row_head: IntValue<'ctx>,
        splits: IntValue<'ctx>,
        (group, dv): (IntValue<'ctx>, IntValue<'ctx>),
    ) -> Built<()> {
        let words = self.mul(group, dv)?;
        let record_words = self.add(words, self.mul(group, self.int(2))?)?;
        let first = self.mul(self.mul(row_head, splits)?, record_words)?;
        let tid = self.sreg("tid.x")?;
        let (max, total, acc) = (
            self.local(self.float(0.0))?,
            self.local(self.float(0.0))?,
            self.local(self.float(0.0))?,
        );
        let load = |at| self.load_f32_volatile(partials, at);
        self.strided_loop(f, tid, words, self.sreg("ntid.x")?, |w| {
            let (h, c) = (self.udiv(w, dv)?, self.urem(w, dv)?);
            // The largest maximum first, then the sums rescaled to it.
            self.set(max, self.float(f32::NEG_INFINITY))?;
            self.strided_loop(f, self.int(0), splits, self.int(1), |s| {
                let record = self.add(first, self.mul(s, record_words)?)?;
                self.set(max, self.fmax(self.get(max)?, load(self.add(record, h)?)?)?)
            })?;
            let m = self.finite_or_zero(self.get(max)?)?;
            self.set(total, self.float(0.0))?;
            self.set(acc, self.float(0.0))?;
            self.strided_loop(f, self.int(0), splits, self.int(1), |s| {
                let record = self.add(first, self.mul(s, record_words)?)?;
                let weight = self.exp(self.fsub(load(self.add(record, h)?)?, m)?)?;
                let l = load(self.add(self.add(record, group)?, h)?)?;
                let a = load(self.add(
                    self.add(record, self.mul(group, self.int(2))?)?,
                    self.add(self.mul(h, dv)?, c)?,
                )?)?;
                self.set(total, self.fadd(self.get(total)?, self.fmul(l, weight)?)?)?;
                self.set(acc, self.fadd(self.get(acc)?, self.fmul(a, weight)?)?)
            })?;
            let o = self.add(self.mul(row_head, words)?, w)?;
            self.store_f32(out, o, self.normalised(self.get(acc)?, self.get(total)?)?)
        })
    }

    /// [`Gen::lane_word`]s of query row `row`'s head at `base` of `q` (`d`
    /// words) after their rotary embedding, by the kernel's last three
    /// parameters (`positions, freqs, npos`).
    fn roped_lane_words(
        &self,
        f: FunctionValue<'ctx>,
        (q, base): (PointerValue<'ctx>, IntValue<'ctx>),
        (lane, d, layout): (IntValue<'ctx>, usize, RopeLayout),
        row: IntValue<'ctx>,
    ) -> Built<Vec<FloatValue<'ctx>>> {
        let last = f.count_params() - 1;
        let (positions, freqs) = (self.param_ptr(f, last - 2), self.param_ptr(f, last - 1));
        let npos = self.param_int(f, last);
        (0..d.div_ceil(32))
            .map(|t| {
                let c = self.add(lane, self.int(32 * t as u64))?;
                let inside = self.ult(c, self.int(d as u64))?;
                let e = self.select(inside, c, self.int(0))?;
                let x = self.roped_word(q, (base, e), (self.int(d as u64), layout), |j| {
                    self.rope_cos_sin((positions, npos), freqs, row, j)
                })?;
                self.select(inside, x, self.float(0.0))
            })
            .collect()
    }

    /// Word `lane + 32 t` of the `width` words at `base` of `ptr`, 0 past
    /// them.
    fn lane_word(
        &self,
        ptr: PointerValue<'ctx>,
        base: IntValue<'ctx>,
        lane: IntValue<'ctx>,
        t: usize,
        width: usize,
    ) -> Built<FloatValue<'ctx>> {
        let c = self.add(lane, self.int(32 * t as u64))?;
        if 32 * (t + 1) <= width {
            return self.load_f32(ptr, self.add(base, c)?);
        }
        let inside = self.ult(c, self.int(width as u64))?;
        let safe = self.select(inside, c, self.int(0))?;
        let x = self.load_f32(ptr, self.add(base, safe)?)?;
        self.select(inside, x, self.float(0.0))
    }

    /// Merges partial softmaxes `(max, total, acc)` read by `read(record,
    /// head)` for each of `records`: the maximum of the maxima `M`, `Σ
    /// total·e^(max − M)` and `Σ acc·e^(max − M)`. Where every partial is
    /// empty (a maximum of −∞) the sums are taken at 0 instead of `M`, so
    /// that their zeros stay zeros; `M` itself is returned as it is.
    fn merge_softmax(
        &self,
        records: Vec<IntValue<'ctx>>,
        head: IntValue<'ctx>,
        read: impl Fn(IntValue<'ctx>, IntValue<'ctx>) -> Built<[FloatValue<'ctx>; 3]>,
    ) -> Built<[FloatValue<'ctx>; 3]> {
        let parts = records
            .into_iter()
            .map(|r| read(r, head))
            .collect::<Built<Vec<_>>>()?;
        let mut m = self.float(f32::NEG_INFINITY);
        for [max, ..] in &parts {
            m = self.fmax(m, *max)?;
        }
        let at = self.finite_or_zero(m)?;
        let (mut l, mut a) = (self.float(0.0), self.float(0.0));
        for [max, total, acc] in &parts {
            let weight = self.exp(self.fsub(*max, at)?)?;
            l = self.fadd(l, self.fmul(*total, weight)?)?;
            a = self.fadd(a, self.fmul(*acc, weight)?)?;
        }
        Ok([m, l, a])
    }

    /// `acc / total`, 0 where no key was seen.
    fn normalised(
        &self,
        acc: FloatValue<'ctx>,
        total: FloatValue<'ctx>,
    ) -> Built<FloatValue<'ctx>> {
        let seen = self.fgt(total, self.float(0.0))?;
        self.select(seen, self.fdiv(acc, total)?, self.float(0.0))
    }

    /// `masked_softmax(out, x, cols, seq, causal)`: each row's softmax over
    /// the columns its query sees, zeros after (in place where `out = x`).
    /// Row `r` is query `r mod seq` of its segment, which sees columns up to
    /// its own with `causal`, all of them without.
    pub(super) fn masked_softmax(&self, name: &str) -> Built<()> {
        let (f, [out, x], [cols, seq, causal]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let row = self.sreg("ctaid.x")?;
        let base = self.mul(row, cols)?;
        let at = |i| self.add(base, i);
        let query = self.urem(row, seq)?;
        let is_causal = self
            .builder
            .build_int_compare(IntPredicate::NE, causal, self.int(0), "")
            .map_err(err)?;
        let visible = self.select(is_causal, self.add(query, self.int(1))?, cols)?;
        let max = self.row_sum(f, scratch, visible, true, |j| self.load_f32(x, at(j)?))?;
        let total = self.row_sum(f, scratch, visible, false, |j| {
            self.exp(self.fsub(self.load_f32(x, at(j)?)?, max)?)
        })?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, cols, self.sreg("ntid.x")?, |j| {
            let p = self.fdiv(self.exp(self.fsub(self.load_f32(x, at(j)?)?, max)?)?, total)?;
            let seen = self.ult(j, visible)?;
            let p = self.select(seen, p, self.float(0.0))?;
            self.store_f32(out, at(j)?, p)
        })?;
        self.ret()
    }
}
