//! Row and column reductions: norms, softmax, the losses and their
//! gradients (one block a row, warp-shuffle and shared-memory sums).

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `rms_norm(out, x, gain, cols, eps)`: one block per row of `cols`
    /// elements (complex elements for the complex form), written rounded to
    /// bf16 with `bf16`.
    pub(super) fn rms_norm(&self, name: &str, complex: bool, bf16: bool) -> Built<()> {
        if complex && bf16 {
            return Err("complex rows are not written rounded to bf16".into());
        }
        let (f, [out, x, gain], [cols], eps) = self.declare_kernel_f32(name);
        let scratch = self.shared_scratch(name);
        let row = self.sreg("ctaid.x")?;
        let words = if complex {
            self.mul(cols, self.int(2))?
        } else {
            cols
        };
        let base = self.mul(row, words)?;
        let ss = self.row_sum(f, scratch, words, false, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            self.fmul(v, v)
        })?;
        let cols_f = self
            .builder
            .build_unsigned_int_to_float(cols, self.f32(), "")
            .map_err(err)?;
        let mean = self.fadd(self.fdiv(ss, cols_f)?, eps)?;
        let inv = self.fdiv(self.float(1.0), self.sqrt(mean)?)?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, words, self.sreg("ntid.x")?, |i| {
            // Complex rows: word 2j is re_j (gain j), 2j+1 is im_j (gain cols + j).
            let g = if complex {
                let j = self.udiv(i, self.int(2))?;
                let odd = self.urem(i, self.int(2))?;
                self.add(j, self.mul(odd, cols)?)?
            } else {
                i
            };
            let v = self.load_f32(x, self.add(base, i)?)?;
            let y = self.fmul(self.fmul(v, inv)?, self.load_f32(gain, g)?)?;
            self.store_real(out, self.add(base, i)?, y, bf16)
        })?;
        self.ret()
    }

    /// `act_quant(out, x, cols, q)`: iFairy's activation quantizer
    /// (`fairyc_ir::quant::ifairy::act_quant`), one block per row of `cols`
    /// elements: each part (real; or real and imaginary apart) scaled so
    /// that its largest magnitude is `q`, rounded to an integer (ties to
    /// even), clamped to `[-q-1, q]` and scaled back.
    pub(super) fn act_quant(&self, name: &str, complex: bool) -> Built<()> {
        let (f, [out, x], [cols], q) = self.declare_kernel_f32(name);
        let scratch = self.shared_scratch(name);
        let parts = if complex { 2 } else { 1 };
        let words = self.mul(cols, self.int(parts))?;
        let base = self.mul(self.sreg("ctaid.x")?, words)?;
        let mut alphas = Vec::new();
        for part in 0..parts {
            let largest = self.row_sum(f, scratch, cols, true, |i| {
                let word = self.add(self.mul(i, self.int(parts))?, self.int(part))?;
                self.fabs(self.load_f32(x, self.add(base, word)?)?)
            })?;
            let floor = self.float(fairyc_ir::quant::ifairy::FLOOR);
            alphas.push(self.fdiv(q, self.fmax(largest, floor)?)?);
        }
        let low = self.fsub(self.fneg(q)?, self.float(1.0))?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, words, self.sreg("ntid.x")?, |i| {
            let alpha = if complex {
                let odd = self.eq_int(self.urem(i, self.int(2))?, self.int(1))?;
                self.select(odd, alphas[1], alphas[0])?
            } else {
                alphas[0]
            };
            let v = self.load_f32(x, self.add(base, i)?)?;
            let level = self.round_even(self.fmul(v, alpha)?)?;
            let level = self.fmin(self.fmax(level, low)?, q)?;
            self.store_f32(out, self.add(base, i)?, self.fdiv(level, alpha)?)
        })?;
        self.ret()
    }

    /// `softmax(out, x, cols)`: one block per row.
    pub(super) fn softmax(&self, name: &str) -> Built<()> {
        let (f, [out, x], [cols]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let base = self.mul(self.sreg("ctaid.x")?, cols)?;
        let at = |i| self.add(base, i);
        let max = self.row_sum(f, scratch, cols, true, |i| self.load_f32(x, at(i)?))?;
        let total = self.row_sum(f, scratch, cols, false, |i| {
            self.exp(self.fsub(self.load_f32(x, at(i)?)?, max)?)
        })?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, cols, self.sreg("ntid.x")?, |i| {
            let e = self.exp(self.fsub(self.load_f32(x, at(i)?)?, max)?)?;
            self.store_f32(out, at(i)?, self.fdiv(e, total)?)
        })?;
        self.ret()
    }

    /// `softmax_grad(out, y, dy, cols)`: `y · (dy − Σ y·dy)` per row.
    pub(super) fn softmax_grad(&self, name: &str) -> Built<()> {
        let (f, [out, y, dy], [cols]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let base = self.mul(self.sreg("ctaid.x")?, cols)?;
        let at = |i| self.add(base, i);
        let dot = self.row_sum(f, scratch, cols, false, |i| {
            self.fmul(self.load_f32(y, at(i)?)?, self.load_f32(dy, at(i)?)?)
        })?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, cols, self.sreg("ntid.x")?, |i| {
            let v = self.fsub(self.load_f32(dy, at(i)?)?, dot)?;
            self.store_f32(out, at(i)?, self.fmul(self.load_f32(y, at(i)?)?, v)?)
        })?;
        self.ret()
    }

    /// `run_sums(out, x, n, run)`: `out[b]` is the sum of the `b`-th run of
    /// `run` consecutive words of the `n` in `x` (the last run may be
    /// shorter); one block a run, its loads coalesced.
    pub(super) fn run_sums(&self, name: &str) -> Built<()> {
        let (f, [out, x], [n, run]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let b = self.sreg("ctaid.x")?;
        let start = self.mul(b, run)?;
        let count = self.umin(run, self.sub(n, start)?)?;
        let total = self.row_sum(f, scratch, count, false, |j| {
            self.load_f32(x, self.add(start, j)?)
        })?;
        self.when(f, self.first_thread()?, || self.store_f32(out, b, total))?;
        self.ret()
    }

    /// `sum_squares(out, partials, arrivals, x, n, run)`: `out[0] = Σ x²`
    /// over the `n` words of `x`. Each block adds the squares of `run`
    /// consecutive words (the last run may be shorter) into
    /// `partials[block]`; the last block to arrive (counted in
    /// `arrivals[0]`) adds the partials up in order, so every run gives the
    /// same sum. One launch where a square, a sum of runs and a sum of
    /// those took three (a gradient's squared norm, per parameter).
    pub(super) fn sum_squares(&self, name: &str) -> Built<()> {
        let (f, [out, partials, arrivals, x], [n, run]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let b = self.sreg("ctaid.x")?;
        let start = self.mul(b, run)?;
        let count = self.umin(run, self.sub(n, start)?)?;
        let total = self.row_sum(f, scratch, count, false, |j| {
            let v = self.load_f32(x, self.add(start, j)?)?;
            self.fmul(v, v)
        })?;
        self.when(f, self.first_thread()?, || {
            self.store_f32(partials, b, total)
        })?;
        let blocks = self.sreg("nctaid.x")?;
        self.when_last_block(f, name, (arrivals, self.int(0)), blocks, || {
            let sum = self.row_sum(f, scratch, blocks, false, |k| {
                self.load_f32_volatile(partials, k)
            })?;
            self.when(f, self.first_thread()?, || {
                self.store_f32(out, self.int(0), sum)
            })
        })?;
        self.ret()
    }

    /// `column_sum(out, x, rows, cols)`.
    pub(super) fn column_sum(&self, name: &str) -> Built<()> {
        let (f, [out, x], [rows, cols]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let c = self.sreg("ctaid.x")?;
        let total = self.row_sum(f, scratch, rows, false, |r| {
            self.load_f32(x, self.add(self.mul(r, cols)?, c)?)
        })?;
        self.when(f, self.first_thread()?, || self.store_f32(out, c, total))?;
        self.ret()
    }

    /// `cross_entropy_rows(out, logits, targets, vocab[, statistics])`:
    /// `out[2r..2r+2]`; with `keep`, the row's maximum and `Σ exp(logit −
    /// max)` in `statistics[2r..2r+2]` too.
    pub(super) fn cross_entropy_rows(&self, name: &str, keep: bool) -> Built<()> {
        let mut params = vec![Param::Ptr, Param::Ptr, Param::Ptr, Param::I64];
        if keep {
            params.push(Param::Ptr);
        }
        let f = self.declare(name, &params);
        let scratch = self.shared_scratch(name);
        let (out, logits, targets, vocab) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_int(f, 3),
        );
        let r = self.sreg("ctaid.x")?;
        let base = self.mul(r, vocab)?;
        let at = |i| self.add(base, i);
        let (max, total) = self.max_and_exp_sum(f, scratch, logits, base, vocab)?;
        if keep {
            let statistics = self.param_ptr(f, 4);
            self.store_row_loss(f, statistics, r, max, total)?;
        }
        let lse = self.log_of(max, total)?;
        let (t, scored) = self.target(targets, r)?;
        let safe = self.select(scored, t, self.int(0))?;
        let loss = self.fsub(lse, self.load_f32(logits, at(safe)?)?)?;
        let zero = self.float(0.0);
        let loss = self.select(scored, loss, zero)?;
        let flag = self.select(scored, self.float(1.0), zero)?;
        self.store_row_loss(f, out, r, loss, flag)?;
        self.ret()
    }

    /// Whether this is the block's first thread.
    pub(super) fn first_thread(&self) -> Built<IntValue<'ctx>> {
        self.eq_int(self.sreg("tid.x")?, self.int(0))
    }

    /// `out[2r..2r+2] = (loss, flag)` (or another pair), by the block's
    /// first thread.
    fn store_row_loss(
        &self,
        f: FunctionValue<'ctx>,
        out: PointerValue<'ctx>,
        r: IntValue<'ctx>,
        loss: FloatValue<'ctx>,
        flag: FloatValue<'ctx>,
    ) -> Built<()> {
        self.when(f, self.first_thread()?, || {
            let at = self.mul(r, self.int(2))?;
            self.store_f32(out, at, loss)?;
            self.store_f32(out, self.add(at, self.int(1))?, flag)
        })
    }

    /// The parameters of a loss gradient kernel `name(out, logits, other,
    /// dloss, rows, vocab)`, then `more` pointers, and its shared scratch.
    fn loss_grad_kernel(&self, name: &str, more: usize) -> LossGrad<'ctx> {
        let mut params = vec![
            Param::Ptr,
            Param::Ptr,
            Param::Ptr,
            Param::Ptr,
            Param::I64,
            Param::I64,
        ];
        params.extend(std::iter::repeat_n(Param::Ptr, more));
        let f = self.declare(name, &params);
        LossGrad {
            f,
            scratch: self.shared_scratch(name),
            out: self.param_ptr(f, 0),
            logits: self.param_ptr(f, 1),
            other: self.param_ptr(f, 2),
            dloss: self.param_ptr(f, 3),
            rows: self.param_int(f, 4),
            vocab: self.param_int(f, 5),
        }
    }

    /// `scored_mean(out, sums)`: one thread.
    pub(super) fn scored_mean(&self, name: &str) -> Built<()> {
        let (_, [out, sums], []) = self.declare_kernel(name);
        let total = self.load_f32(sums, self.int(0))?;
        let count = self.load_f32(sums, self.int(1))?;
        let any = self
            .builder
            .build_float_compare(FloatPredicate::OGT, count, self.float(0.0), "")
            .map_err(err)?;
        let mean = self.fdiv(total, count)?;
        let mean = self.select(any, mean, self.float(0.0))?;
        self.store_f32(out, self.int(0), mean)?;
        self.ret()
    }

    /// The log-sum-exp of row `base..base + cols` of `x`: `max + ln Σ
    /// exp(x − max)`.
    fn log_sum_exp(
        &self,
        f: FunctionValue<'ctx>,
        scratch: PointerValue<'ctx>,
        x: PointerValue<'ctx>,
        base: IntValue<'ctx>,
        cols: IntValue<'ctx>,
    ) -> Built<FloatValue<'ctx>> {
        let (max, total) = self.max_and_exp_sum(f, scratch, x, base, cols)?;
        self.log_of(max, total)
    }

    /// `max + ln total`: the log-sum-exp from [`Gen::max_and_exp_sum`]'s
    /// two values.
    fn log_of(&self, max: FloatValue<'ctx>, total: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let log2 = self.intrinsic("llvm.nvvm.lg2.approx.f", &[])?;
        let lg = self.call(log2, &[total.into()])?.into_float_value();
        self.fadd(max, self.fmul(lg, self.float(std::f32::consts::LN_2))?)
    }

    /// Row `base..base + cols` of `x`'s maximum and `Σ exp(x − max)`, in
    /// one pass over the row (a vocabulary's logits are read from memory
    /// once, not once for each): each thread keeps its own running maximum
    /// and its sum relative to it, rescaled as the maximum grows (one
    /// exponential an element, `exp(−|x − m|)`), and the block's sums are
    /// rescaled to the block's maximum before they are added.
    fn max_and_exp_sum(
        &self,
        f: FunctionValue<'ctx>,
        scratch: PointerValue<'ctx>,
        x: PointerValue<'ctx>,
        base: IntValue<'ctx>,
        cols: IntValue<'ctx>,
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let below = |a, b| {
            self.builder
                .build_float_compare(FloatPredicate::OLT, a, b, "")
                .map_err(err)
        };
        let neg_inf = self.float(f32::NEG_INFINITY);
        let (max, sum) = (self.local(neg_inf)?, self.local(self.float(0.0))?);
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, cols, self.sreg("ntid.x")?, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            let (m, s) = (self.get(max)?, self.get(sum)?);
            let e = self.exp(self.fneg(self.fabs(self.fsub(v, m)?)?)?)?;
            // −∞ adds nothing (and −∞ − −∞ would be NaN); a NaN makes the
            // sum NaN, as it should.
            let at_neg_inf = self
                .builder
                .build_float_compare(FloatPredicate::OEQ, v, neg_inf, "")
                .map_err(err)?;
            let e = self.select(at_neg_inf, self.float(0.0), e)?;
            let grows = below(m, v)?;
            let rescaled = self.fadd(self.fmul(s, e)?, self.float(1.0))?;
            self.set(sum, self.select(grows, rescaled, self.fadd(s, e)?)?)?;
            self.set(max, self.select(grows, v, m)?)
        })?;
        let (m, s) = (self.get(max)?, self.get(sum)?);
        let row_max = self.block_reduce(scratch, m, true)?;
        let s = self.fmul(s, self.exp(self.fsub(m, row_max)?)?)?;
        let s = self.select(below(neg_inf, m)?, s, self.float(0.0))?;
        Ok((row_max, self.block_reduce(scratch, s, false)?))
    }

    /// `kl_div_rows(out, student, teacher, vocab)`: `out[2r..2r+2] = (Σ_j
    /// p_t (log p_t − log p_s), 1)`.
    pub(super) fn kl_div_rows(&self, name: &str) -> Built<()> {
        let (f, [out, student, teacher], [vocab]) = self.declare_kernel(name);
        let scratch = self.shared_scratch(name);
        let r = self.sreg("ctaid.x")?;
        let base = self.mul(r, vocab)?;
        let at = |i| self.add(base, i);
        let lse_s = self.log_sum_exp(f, scratch, student, base, vocab)?;
        let lse_t = self.log_sum_exp(f, scratch, teacher, base, vocab)?;
        let kl = self.row_sum(f, scratch, vocab, false, |i| {
            let log_t = self.fsub(self.load_f32(teacher, at(i)?)?, lse_t)?;
            let log_s = self.fsub(self.load_f32(student, at(i)?)?, lse_s)?;
            self.fmul(self.exp(log_t)?, self.fsub(log_t, log_s)?)
        })?;
        self.store_row_loss(f, out, r, kl, self.float(1.0))?;
        self.ret()
    }

    /// `kl_div_grad(out, student, teacher, dloss, rows, vocab)`, written
    /// rounded to bf16 with `bf16`.
    pub(super) fn kl_div_grad(&self, name: &str, bf16: bool) -> Built<()> {
        let LossGrad {
            f,
            scratch,
            out,
            logits: student,
            other: teacher,
            dloss,
            rows,
            vocab,
        } = self.loss_grad_kernel(name, 0);
        let r = self.sreg("ctaid.x")?;
        let rows_f = self
            .builder
            .build_signed_int_to_float(rows, self.f32(), "")
            .map_err(err)?;
        let scale = self.fdiv(
            self.load_f32(dloss, self.int(0))?,
            self.fmax(rows_f, self.float(1.0))?,
        )?;
        let base = self.mul(r, vocab)?;
        let at = |i| self.add(base, i);
        let lse_s = self.log_sum_exp(f, scratch, student, base, vocab)?;
        let lse_t = self.log_sum_exp(f, scratch, teacher, base, vocab)?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, vocab, self.sreg("ntid.x")?, |i| {
            let p_s = self.exp(self.fsub(self.load_f32(student, at(i)?)?, lse_s)?)?;
            let p_t = self.exp(self.fsub(self.load_f32(teacher, at(i)?)?, lse_t)?)?;
            self.store_real(out, at(i)?, self.fmul(self.fsub(p_s, p_t)?, scale)?, bf16)
        })?;
        self.ret()
    }

    /// `cross_entropy_grad(out, logits, targets, dloss, rows, vocab[,
    /// statistics, sums])`, written rounded to bf16 with `bf16`. With
    /// `kept`, the row's maximum and exponentials' sum are the loss kernel's
    /// `statistics[2r..2r+2]` and the scored rows' count its `sums[1]`.
    pub(super) fn cross_entropy_grad(&self, name: &str, bf16: bool, kept: bool) -> Built<()> {
        let LossGrad {
            f,
            scratch,
            out,
            logits,
            other: targets,
            dloss,
            rows,
            vocab,
        } = self.loss_grad_kernel(name, if kept { 2 } else { 0 });
        let r = self.sreg("ctaid.x")?;
        let base = self.mul(r, vocab)?;
        let at = |i| self.add(base, i);
        let (count, max, total) = if kept {
            let (statistics, sums) = (self.param_ptr(f, 6), self.param_ptr(f, 7));
            let at = self.mul(r, self.int(2))?;
            (
                self.load_f32(sums, self.int(1))?,
                self.load_f32(statistics, at)?,
                self.load_f32(statistics, self.add(at, self.int(1))?)?,
            )
        } else {
            // Every block counts the scored rows (the targets are few).
            let count = self.row_sum(f, scratch, rows, false, |k| {
                let t = self.load_i32(targets, k)?;
                let scored = self
                    .builder
                    .build_int_compare(IntPredicate::SGE, t, self.i32().const_zero(), "")
                    .map_err(err)?;
                self.select(scored, self.float(1.0), self.float(0.0))
            })?;
            let (max, total) = self.max_and_exp_sum(f, scratch, logits, base, vocab)?;
            (count, max, total)
        };
        let scale = self.fdiv(
            self.load_f32(dloss, self.int(0))?,
            self.fmax(count, self.float(1.0))?,
        )?;
        let (t, scored) = self.target(targets, r)?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, vocab, self.sreg("ntid.x")?, |i| {
            let p = self.fdiv(
                self.exp(self.fsub(self.load_f32(logits, at(i)?)?, max)?)?,
                total,
            )?;
            let hit = self.eq_int(i, t)?;
            let p = self.select(hit, self.fsub(p, self.float(1.0))?, p)?;
            let d = self.fmul(p, scale)?;
            let d = self.select(scored, d, self.float(0.0))?;
            self.store_real(out, at(i)?, d, bf16)
        })?;
        self.ret()
    }

    /// `rms_norm_grad(out, x, gain, dy, cols, eps)`: rows of `cols`
    /// elements (complex: complex elements, the gain's first half for real
    /// parts). Input: `dx = r g dy − x r³ Σ(g dy x) / cols`; gain: the
    /// terms `dy x r` at the gain's index, `[rows, gain.len()]`.
    pub(super) fn rms_norm_grad(&self, name: &str, complex: bool, gain_part: bool) -> Built<()> {
        let (f, [out, x, gain, dy], [cols], eps) = self.declare_kernel_f32(name);
        let scratch = self.shared_scratch(name);
        let row = self.sreg("ctaid.x")?;
        let words = if complex {
            self.mul(cols, self.int(2))?
        } else {
            cols
        };
        let base = self.mul(row, words)?;
        let gain_at = |i: IntValue<'ctx>| -> Built<IntValue<'ctx>> {
            if complex {
                let j = self.udiv(i, self.int(2))?;
                let odd = self.urem(i, self.int(2))?;
                self.add(j, self.mul(odd, cols)?)
            } else {
                Ok(i)
            }
        };
        let ss = self.row_sum(f, scratch, words, false, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            self.fmul(v, v)
        })?;
        let n = self.i64_to_f32(cols)?;
        let r = self.fdiv(
            self.float(1.0),
            self.sqrt(self.fadd(self.fdiv(ss, n)?, eps)?)?,
        )?;
        let tid = self.sreg("tid.x")?;
        let threads = self.sreg("ntid.x")?;
        if gain_part {
            self.strided_loop(f, tid, words, threads, |i| {
                let v = self.load_f32(x, self.add(base, i)?)?;
                let g = self.load_f32(dy, self.add(base, i)?)?;
                self.store_f32(
                    out,
                    self.add(base, gain_at(i)?)?,
                    self.fmul(self.fmul(g, v)?, r)?,
                )
            })?;
            return self.ret();
        }
        let dot = self.row_sum(f, scratch, words, false, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            let g = self.load_f32(dy, self.add(base, i)?)?;
            self.fmul(self.fmul(g, v)?, self.load_f32(gain, gain_at(i)?)?)
        })?;
        let r3 = self.fmul(self.fmul(r, r)?, r)?;
        let coefficient = self.fdiv(self.fmul(r3, dot)?, n)?;
        self.strided_loop(f, tid, words, threads, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            let g = self.load_f32(dy, self.add(base, i)?)?;
            let w = self.load_f32(gain, gain_at(i)?)?;
            let d = self.fsub(self.fmul(self.fmul(r, w)?, g)?, self.fmul(v, coefficient)?)?;
            self.store_f32(out, self.add(base, i)?, d)
        })?;
        self.ret()
    }
}

/// A loss gradient kernel's function, scratch and parameters.
struct LossGrad<'ctx> {
    f: FunctionValue<'ctx>,
    scratch: PointerValue<'ctx>,
    out: PointerValue<'ctx>,
    logits: PointerValue<'ctx>,
    /// The targets (cross-entropy) or the teacher's logits (KL).
    other: PointerValue<'ctx>,
    dloss: PointerValue<'ctx>,
    rows: IntValue<'ctx>,
    vocab: IntValue<'ctx>,
}
