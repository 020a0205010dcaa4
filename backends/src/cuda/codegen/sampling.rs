//! `sample`: a token drawn from each row of logits on the device, so that a
//! decoding step returns ids instead of its logits (a lockstep step of 256
//! rows of SmolLM2's 49,152 logits is 50 MB to bring to the host).
//!
//! One block a row. Each thread takes a contiguous chunk of the row; the
//! block finds the row's maximum, then each thread its chunk's first
//! maximum and (sampling) its chunk's sum of weights. The first
//! thread then does what the reference does in one sequential pass, but
//! over the chunks' sums and then within the one chunk that holds the
//! draw: the ids agree with the reference but where rounding of the sums'
//! order moves a draw across a boundary.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `sample(out, logits, draws, cols, temperature)`: `out[r]` (i32) from
    /// row `r` of `logits` (`cols` words) and `draws[r]`; launched with
    /// [`ROW_THREADS`] threads a block.
    pub(super) fn sample(&self, name: &str) -> Built<()> {
        let (f, [out, logits, draws], [cols], temperature) = self.declare_kernel_f32(name);
        let scratch = self.shared_scratch(name);
        let threads = self.int(ROW_THREADS as u64);
        let shared = |what: &str, array: inkwell::types::ArrayType<'ctx>| {
            self.shared_array(array, &format!("{name}_{what}"))
                .as_pointer_value()
        };
        let (sums, firsts) = (
            shared("sums", self.f32().array_type(ROW_THREADS)),
            shared("firsts", self.i32().array_type(ROW_THREADS)),
        );
        let r = self.sreg("ctaid.x")?;
        let base = self.mul(r, cols)?;
        let logit = |j| self.load_f32(logits, self.add(base, j)?);
        let tid = self.sreg("tid.x")?;
        let chunk = self.udiv(self.add(cols, self.int(ROW_THREADS as u64 - 1))?, threads)?;
        let chunk_of = |t: IntValue<'ctx>| -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
            let lo = self.umin(self.mul(t, chunk)?, cols)?;
            Ok((lo, self.umin(self.add(lo, chunk)?, cols)?))
        };
        let max = self.row_sum(f, scratch, cols, true, logit)?;
        let greedy = self
            .builder
            .build_float_compare(FloatPredicate::OEQ, temperature, self.float(0.0), "")
            .map_err(err)?;
        // exp((l − max) / temperature) as one ex2 of a product.
        let log2_scale = self.fdiv(self.float(std::f32::consts::LOG2_E), temperature)?;
        let weight = |j| -> Built<FloatValue<'ctx>> {
            let x = self.fmul(self.fsub(logit(j)?, max)?, log2_scale)?;
            self.ex2(x)
        };
        let (lo, hi) = chunk_of(tid)?;
        // This thread's share: its chunk's first maximum (`cols` where it
        // has none), and its chunk's sum of weights.
        let first = self.local_i64(cols)?;
        let sum = self.local(self.float(0.0))?;
        self.strided_loop(f, lo, hi, self.int(1), |j| {
            let is_max = self
                .builder
                .build_float_compare(FloatPredicate::OEQ, logit(j)?, max, "")
                .map_err(err)?;
            let unseen = self.eq_int(self.get_i64(first)?, cols)?;
            let take = self.builder.build_and(is_max, unseen, "").map_err(err)?;
            self.set_i64(first, self.select(take, j, self.get_i64(first)?)?)?;
            self.when(f, self.not(greedy)?, || {
                self.set(sum, self.fadd(self.get(sum)?, weight(j)?)?)
            })
        })?;
        self.store_f32(sums, tid, self.get(sum)?)?;
        let first32 = self
            .builder
            .build_int_truncate(self.get_i64(first)?, self.i32(), "")
            .map_err(err)?;
        self.store_i32(firsts, tid, first32)?;
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        self.call_void(barrier, &[])?;
        self.when(f, self.first_thread()?, || {
            let id = self.local_i64(cols)?;
            // Greedy: the first of the chunks' first maxima; 0 where no
            // logit equals the maximum (a row of NaNs), as the reference.
            self.strided_loop(f, self.int(0), threads, self.int(1), |t| {
                let candidate = self.widen(self.load_i32(firsts, t)?)?;
                self.set_i64(id, self.umin(self.get_i64(id)?, candidate)?)
            })?;
            let none = self.eq_int(self.get_i64(id)?, cols)?;
            self.set_i64(id, self.select(none, self.int(0), self.get_i64(id)?)?)?;
            self.when(f, self.not(greedy)?, || {
                self.draw(f, (sums, threads), draws, r, &chunk_of, &weight, id)
            })?;
            let id = self
                .builder
                .build_int_truncate(self.get_i64(id)?, self.i32(), "")
                .map_err(err)?;
            self.store_i32(out, r, id)
        })?;
        self.ret()
    }

    /// The sampling path of [`Gen::sample`], on the block's first thread:
    /// the draw's target `u · Σ w`, the chunk whose running sum reaches it,
    /// then the first id within that chunk whose running sum does (and
    /// whose weight is positive), else that chunk's last id of positive
    /// weight; into `id`.
    #[allow(clippy::too_many_arguments)]
    fn draw(
        &self,
        f: FunctionValue<'ctx>,
        (sums, threads): (PointerValue<'ctx>, IntValue<'ctx>),
        draws: PointerValue<'ctx>,
        r: IntValue<'ctx>,
        chunk_of: &dyn Fn(IntValue<'ctx>) -> Built<(IntValue<'ctx>, IntValue<'ctx>)>,
        weight: &dyn Fn(IntValue<'ctx>) -> Built<FloatValue<'ctx>>,
        id: PointerValue<'ctx>,
    ) -> Built<()> {
        // 0 where no weight is positive (non-finite logits), as the
        // reference.
        self.set_i64(id, self.int(0))?;
        let total = self.local(self.float(0.0))?;
        self.strided_loop(f, self.int(0), threads, self.int(1), |t| {
            self.set(total, self.fadd(self.get(total)?, self.load_f32(sums, t)?)?)
        })?;
        let target = self.fmul(self.load_f32(draws, r)?, self.get(total)?)?;
        // The chunk: the first whose running sum reaches the target, else
        // the last with any weight.
        let (running, before) = (self.local(self.float(0.0))?, self.local(self.float(0.0))?);
        let none = threads;
        let (found, last) = (self.local_i64(none)?, self.local_i64(none)?);
        self.strided_loop(f, self.int(0), threads, self.int(1), |t| {
            let s = self.load_f32(sums, t)?;
            let reached = self.fadd(self.get(running)?, s)?;
            let positive = self.fgt(s, self.float(0.0))?;
            let hit = self
                .builder
                .build_and(self.fge(reached, target)?, positive, "")
                .map_err(err)?;
            let unseen = self.eq_int(self.get_i64(found)?, none)?;
            self.when(
                f,
                self.builder.build_and(hit, unseen, "").map_err(err)?,
                || {
                    self.set_i64(found, t)?;
                    self.set(before, self.get(running)?)
                },
            )?;
            self.set_i64(last, self.select(positive, t, self.get_i64(last)?)?)?;
            self.set(running, reached)
        })?;
        let missed = self.eq_int(self.get_i64(found)?, none)?;
        self.when(f, missed, || self.set_i64(found, self.get_i64(last)?))?;
        self.when(
            f,
            self.not(self.eq_int(self.get_i64(found)?, none)?)?,
            || {
                let (lo, hi) = chunk_of(self.get_i64(found)?)?;
                let (cumulative, picked, positive_id) = (
                    self.local(self.get(before)?)?,
                    self.local_i64(self.int(u64::MAX))?,
                    self.local_i64(lo)?,
                );
                self.strided_loop(f, lo, hi, self.int(1), |j| {
                    let w = weight(j)?;
                    let reached = self.fadd(self.get(cumulative)?, w)?;
                    let positive = self.fgt(w, self.float(0.0))?;
                    let hit = self
                        .builder
                        .build_and(self.fge(reached, target)?, positive, "")
                        .map_err(err)?;
                    let unpicked = self.eq_int(self.get_i64(picked)?, self.int(u64::MAX))?;
                    let take = self.builder.build_and(hit, unpicked, "").map_err(err)?;
                    self.set_i64(picked, self.select(take, j, self.get_i64(picked)?)?)?;
                    self.set_i64(
                        positive_id,
                        self.select(positive, j, self.get_i64(positive_id)?)?,
                    )?;
                    self.set(cumulative, reached)
                })?;
                let unpicked = self.eq_int(self.get_i64(picked)?, self.int(u64::MAX))?;
                let chosen =
                    self.select(unpicked, self.get_i64(positive_id)?, self.get_i64(picked)?)?;
                self.set_i64(id, chosen)
            },
        )
    }
}
