//! PhaseQuant on the GPU (`quantize` with scheme `phase` in f32: eq.
//! 10-12, or iFairy's `phase_ifairy`), in two passes over the weights:
//! each group's axis sums (the blocks' partial sums added into f64 totals
//! by atomics), then every entry's code times its group's scale. The codes
//! follow `fairyc_ir::quant::Code::nearest` (or `quant::ifairy::
//! nearest_ifairy`) exactly, ties and NaN included, and the scales their
//! floors.

use fairyc_ir::Arithmetic;
use inkwell::values::BasicValue;

use super::layout::SplitSource;
use super::*;

impl<'ctx> Gen<'ctx> {
    /// `phase_sums(sums, w, n, m, groups_per_row, group_len, per_tensor)`:
    /// over each (row, group of the row) of complex `w[n, m]`; adds
    /// `(Σ|re| over entries coded ±1, their count, Σ|im| over entries coded
    /// ±i, their count)` into `sums[4·group..]` (f64, zeroed before); finite
    /// parts only, but every part for iFairy (as its reference).
    pub(super) fn phase_sums(&self, name: &str, ifairy: bool) -> Built<()> {
        self.group_sums(name, 4, |w, entry, partial| {
            let at = self.mul(entry, self.int(2))?;
            let re = self.load_f32(w, at)?;
            let im = self.load_f32(w, self.add(at, self.int(1))?)?;
            self.add_phase_sums(re, im, ifairy, partial)
        })
    }

    /// Adds the complex entry `(re, im)` into PhaseQuant's four partial
    /// sums (see [`Gen::phase_sums`]).
    fn add_phase_sums(
        &self,
        re: FloatValue<'ctx>,
        im: FloatValue<'ctx>,
        ifairy: bool,
        partial: &[PointerValue<'ctx>],
    ) -> Built<()> {
        let (imaginary, _) = self.nearest_code(re, im, ifairy)?;
        let (zero, one) = (self.float(0.0), self.float(1.0));
        for (axis, part) in [(false, re), (true, im)] {
            let on_axis = if axis {
                imaginary
            } else {
                self.builder.build_not(imaginary, "").map_err(err)?
            };
            let counted = if ifairy {
                on_axis
            } else {
                self.builder
                    .build_and(on_axis, self.is_finite(part)?, "")
                    .map_err(err)?
            };
            let select =
                |a: FloatValue<'ctx>| -> Built<FloatValue<'ctx>> { self.select(counted, a, zero) };
            let k = 2 * usize::from(axis);
            self.set(
                partial[k],
                self.fadd(self.get(partial[k])?, select(self.fabs(part)?)?)?,
            )?;
            self.set(
                partial[k + 1],
                self.fadd(self.get(partial[k + 1])?, select(one)?)?,
            )?;
        }
        Ok(())
    }

    /// `phase_stage_sums(sums, w, n, m, groups_per_row, group_len,
    /// per_tensor, stride)`: [`Gen::phase_sums`] of the residual that
    /// stages `0..stage` of Fairy2i's PhaseQuant leave of complex `w[n, m]`
    /// (each entry's residual rebuilt from the earlier stages' totals),
    /// into stage `stage`'s totals. Stage `s`'s totals are at
    /// `sums[s·stride..]` (f64, `stride = 4·groups`, zeroed before).
    ///
    /// With `split`, `w` is a real matrix and the kernel takes five more
    /// parameters, `(row_slots, col_slots, rows, cols, half_words)`: it
    /// quantizes the `U` (`ctaid.y = 0`) and `W` (`ctaid.y = 1`) parts of
    /// its widely-linear split `[n, m]` (as [`Gen::widely_linear`] computes
    /// them), each half's totals `half_words` f64 after the one before.
    pub(super) fn phase_stage_sums(&self, name: &str, stage: usize, split: bool) -> Built<()> {
        self.staged_group_sums(name, 4, Some(stage), split, |at, partial| {
            let (re, im) = self.group_entry(at)?;
            let stride = at.stride.expect("a staged kernel has a stride");
            let group = at.group.expect("a staged kernel knows its group");
            let mut residual = (re, im);
            for s in 0..stage {
                let q = self.stage_value(at.sums, stride, s, group, residual)?;
                residual = (self.fsub(residual.0, q.0)?, self.fsub(residual.1, q.1)?);
            }
            self.add_phase_sums(residual.0, residual.1, false, partial)
        })
    }

    /// `phase_stages_dequant(out, w, sums, n, m, groups_per_row, group_len,
    /// per_tensor, stride)`: Fairy2i's PhaseQuant of complex `w[n, m]` with
    /// `stages` residual stages (eq. 13) from their totals
    /// ([`Gen::phase_stage_sums`]): each entry's codes times their scales,
    /// summed stage by stage (`(q₁ + q₂) + q₃`), the residuals and sums in
    /// f32 as the unfused `sub` and `add` compute them; one thread an entry.
    pub(super) fn phase_stages_dequant(&self, name: &str, stages: usize) -> Built<()> {
        let (f, [out, w, sums], [n, m, groups_per_row, group_len, per_tensor, stride]) =
            self.declare_kernel(name);
        let tensor = self.is_set(per_tensor)?;
        self.grid_loop(f, self.mul(n, m)?, |k| {
            let (row, j) = (self.udiv(k, m)?, self.urem(k, m)?);
            let group = self.scale_group(row, j, (groups_per_row, group_len), tensor)?;
            let at = self.mul(k, self.int(2))?;
            let entry = (
                self.load_f32(w, at)?,
                self.load_f32(w, self.add(at, self.int(1))?)?,
            );
            let (re, im) = self.stages_value(sums, stride, stages, group, entry)?;
            self.store_f32(out, at, re)?;
            self.store_f32(out, self.add(at, self.int(1))?, im)
        })?;
        self.ret()
    }

    /// `split_phase_stages_dequant(out, r, sums, n, m, groups_per_row,
    /// group_len, per_tensor, stride, row_slots, col_slots, rows, cols,
    /// half_words)`: the real form `2·(widely_linear_grad_u(U_q) +
    /// widely_linear_grad_w(W_q))` of the
    /// quantized halves of the real `r[rows, cols]`'s widely-linear split
    /// `[n, m]` (eq. 3), from both halves' totals
    /// ([`Gen::phase_stage_sums`] with `split`): each slot's `U` and `W`
    /// entries quantized as [`Gen::phase_stages_dequant`] does, then its
    /// four real entries as `widely_linear_grad`, their `add` and the
    /// `scale` by 2 compute them, in f32; one thread a slot. With `bf16`,
    /// the real form is written rounded to bf16 ([`Elem::Bf16`]).
    pub(super) fn split_phase_stages_dequant(
        &self,
        name: &str,
        stages: usize,
        bf16: bool,
    ) -> Built<()> {
        let mut params = vec![Param::Ptr, Param::Ptr, Param::Ptr];
        params.extend([Param::I64; 6]);
        params.extend([Param::Ptr, Param::Ptr]);
        params.extend([Param::I64; 3]);
        let f = self.declare(name, &params);
        let [out, r, sums, row_slots, col_slots] = [0, 1, 2, 9, 10].map(|k| self.param_ptr(f, k));
        let [n, m, groups_per_row, group_len, per_tensor, stride, rows, cols, half_words] =
            [3, 4, 5, 6, 7, 8, 11, 12, 13].map(|k| self.param_int(f, k));
        let split = SplitSource {
            r,
            row_slots,
            col_slots,
            rows,
            cols,
        };
        let tensor = self.is_set(per_tensor)?;
        let w_sums = self.gep(self.f64(), sums, half_words)?;
        self.grid_loop(f, self.mul(n, m)?, |k| {
            let (p, q) = (self.udiv(k, m)?, self.urem(k, m)?);
            let group = self.scale_group(p, q, (groups_per_row, group_len), tensor)?;
            let ([ra, ia, rb, ib], entries) = self.split_entries(&split, p, q)?;
            let quantized = |part, totals| -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
                let entry = self.split_part(part, entries)?;
                self.stages_value(totals, stride, stages, group, entry)
            };
            let (u_re, u_im) = quantized(fairyc_ir::WlPart::U, sums)?;
            let (w_re, w_im) = quantized(fairyc_ir::WlPart::W, w_sums)?;
            // Each half's ±½ of a part (the adjoint of the split), their
            // sum, twice: the unfused nodes' f32 operations.
            let real = |u: FloatValue<'ctx>, u_neg: bool, w: FloatValue<'ctx>, w_neg: bool| {
                let halved = |v: FloatValue<'ctx>, neg: bool| -> Built<FloatValue<'ctx>> {
                    let v = self.fmul(v, self.float(0.5))?;
                    if neg {
                        self.fneg(v)
                    } else {
                        Ok(v)
                    }
                };
                self.fmul(
                    self.fadd(halved(u, u_neg)?, halved(w, w_neg)?)?,
                    self.float(2.0),
                )
            };
            let values = [
                (ra, rb, real(u_re, false, w_re, false)?),
                (ra, ib, real(u_im, true, w_im, false)?),
                (ia, rb, real(u_im, false, w_im, false)?),
                (ia, ib, real(u_re, false, w_re, true)?),
            ];
            for (i, j, v) in values {
                self.when(f, self.split_inside(&split, i, j)?, || {
                    self.store_real(out, self.add(self.mul(i, cols)?, j)?, v, bf16)
                })?;
            }
            Ok(())
        })?;
        self.ret()
    }

    /// Fairy2i's PhaseQuant with `stages` residual stages of `entry` in
    /// group `group` from their totals (stage `s`'s at `sums[s·stride..]`):
    /// the stages' codes times their scales, summed stage by stage
    /// (`(q₁ + q₂) + q₃`), the residuals in f32 as the unfused `sub`s
    /// compute them.
    fn stages_value(
        &self,
        sums: PointerValue<'ctx>,
        stride: IntValue<'ctx>,
        stages: usize,
        group: IntValue<'ctx>,
        entry: (FloatValue<'ctx>, FloatValue<'ctx>),
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let mut residual = entry;
        let mut sum: Option<(FloatValue<'ctx>, FloatValue<'ctx>)> = None;
        for s in 0..stages {
            let q = self.stage_value(sums, stride, s, group, residual)?;
            sum = Some(match sum {
                None => q,
                Some(a) => (self.fadd(a.0, q.0)?, self.fadd(a.1, q.1)?),
            });
            if s + 1 < stages {
                residual = (self.fsub(residual.0, q.0)?, self.fsub(residual.1, q.1)?);
            }
        }
        Ok(sum.expect("at least one stage"))
    }

    /// The complex entry a group-sums kernel's step is at: loaded from `w`,
    /// or computed from the real matrix of a split kernel.
    fn group_entry(&self, at: &GroupEntry<'ctx>) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let Some((split, is_w)) = &at.split else {
            let entry = self.mul(at.entry, self.int(2))?;
            let re = self.load_f32(at.w, entry)?;
            let im = self.load_f32(at.w, self.add(entry, self.int(1))?)?;
            return Ok((re, im));
        };
        let (_, entries) = self.split_entries(split, at.row, at.col)?;
        let u = self.split_part(fairyc_ir::WlPart::U, entries)?;
        let w = self.split_part(fairyc_ir::WlPart::W, entries)?;
        Ok((self.select(*is_w, w.0, u.0)?, self.select(*is_w, w.1, u.1)?))
    }

    /// Stage `stage`'s PhaseQuant of `(re, im)` in group `group`: its code
    /// times the stage's scale, `(q_re, q_im)`, with the totals at
    /// `sums[stage·stride + 4·group..]`.
    fn stage_value(
        &self,
        sums: PointerValue<'ctx>,
        stride: IntValue<'ctx>,
        stage: usize,
        group: IntValue<'ctx>,
        (re, im): (FloatValue<'ctx>, FloatValue<'ctx>),
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let base = self.mul(self.int(stage as u64), stride)?;
        self.coded(sums, Some(base), group, (re, im), false)
    }

    /// The code of `(re, im)` times the scale of group `group`'s totals
    /// (see [`Gen::phase_dequant`]), at `sums[base + 4·group..]`:
    /// `(±s_re, 0)` or `(0, ±s_im)`.
    fn coded(
        &self,
        sums: PointerValue<'ctx>,
        base: Option<IntValue<'ctx>>,
        group: IntValue<'ctx>,
        (re, im): (FloatValue<'ctx>, FloatValue<'ctx>),
        ifairy: bool,
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let (imaginary, negative) = self.nearest_code(re, im, ifairy)?;
        let axis = self
            .builder
            .build_int_z_extend(imaginary, self.i64(), "")
            .map_err(err)?;
        let first = self.add(self.mul(group, self.int(4))?, self.mul(axis, self.int(2))?)?;
        let first = match base {
            Some(base) => self.add(base, first)?,
            None => first,
        };
        let scale = self.mean_scale(sums, first, ifairy)?;
        let signed = self.select(negative, self.fneg(scale)?, scale)?;
        let zero = self.float(0.0);
        Ok((
            self.select(imaginary, zero, signed)?,
            self.select(imaginary, signed, zero)?,
        ))
    }

    /// A group-sums kernel `name(sums, w, n, m, groups_per_row, group_len,
    /// per_tensor)` over the (row, group of the row) units of `w[n, m]`,
    /// each block from its own unit on, a grid apart: each thread adds its
    /// entries into `count` f32 partial sums (`each(w, entry, partials)`,
    /// `entry` the row-major index), and the block's sums go into the f64
    /// totals of its group, `sums[count·group + i]` for the `i`-th, where
    /// the group is the block, or 0 per tensor. So the host launches a
    /// block a unit, except per tensor, where fewer blocks may share the
    /// one group.
    pub(super) fn group_sums(
        &self,
        name: &str,
        count: usize,
        each: impl Fn(PointerValue<'ctx>, IntValue<'ctx>, &[PointerValue<'ctx>]) -> Built<()>,
    ) -> Built<()> {
        self.staged_group_sums(name, count, None, false, |at, partials| {
            each(at.w, at.entry, partials)
        })
    }

    /// [`Gen::group_sums`], or with `stage`, of one stage of several: the
    /// kernel takes a parameter `stride` after the others and adds into
    /// `sums[stage·stride + count·group + i]`, and each entry's step sees
    /// its group, the totals and the stride. With `split` (staged kernels
    /// only) five more follow, as [`Gen::phase_stage_sums`] says.
    fn staged_group_sums(
        &self,
        name: &str,
        count: usize,
        stage: Option<usize>,
        split: bool,
        each: impl Fn(&GroupEntry<'ctx>, &[PointerValue<'ctx>]) -> Built<()>,
    ) -> Built<()> {
        let mut params = vec![Param::Ptr, Param::Ptr];
        params.extend([Param::I64; 5]);
        if stage.is_some() {
            params.push(Param::I64);
        }
        if split {
            params.extend([Param::Ptr, Param::Ptr, Param::I64, Param::I64, Param::I64]);
        }
        let f = self.declare(name, &params);
        let scratch = self.shared_scratch(name);
        let (sums, w) = (self.param_ptr(f, 0), self.param_ptr(f, 1));
        // A split kernel's half (`U` or `W`) and that half's totals.
        let (source, sums) = if split {
            let is_w = self
                .builder
                .build_int_compare(IntPredicate::NE, self.sreg("ctaid.y")?, self.int(0), "")
                .map_err(err)?;
            let source = SplitSource {
                r: w,
                row_slots: self.param_ptr(f, 8),
                col_slots: self.param_ptr(f, 9),
                rows: self.param_int(f, 10),
                cols: self.param_int(f, 11),
            };
            let half_words = self.param_int(f, 12);
            let offset = self.select(is_w, half_words, self.int(0))?;
            (Some((source, is_w)), self.gep(self.f64(), sums, offset)?)
        } else {
            (None, sums)
        };
        let [n, m, groups_per_row, group_len, per_tensor] =
            [2, 3, 4, 5, 6].map(|k| self.param_int(f, k));
        let stride = stage.map(|_| self.param_int(f, 7));
        let block = self.sreg("ctaid.x")?;
        let group_of_block = || -> Built<IntValue<'ctx>> {
            let tensor = self.is_set(per_tensor)?;
            self.select(tensor, self.int(0), block)
        };
        // A staged kernel's entries need their group inside the loop.
        let early_group = stage.map(|_| group_of_block()).transpose()?;
        let partials = (0..count)
            .map(|_| self.local(self.float(0.0)))
            .collect::<Built<Vec<_>>>()?;
        // Each (row, group of the row) from the block's own on, a grid
        // apart: one a block, except per tensor, where the host launches
        // fewer blocks than rows (one group: fewer atomics on its totals).
        let units = self.mul(n, groups_per_row)?;
        let blocks = self.sreg("nctaid.x")?;
        self.strided_loop(f, block, units, blocks, |unit| {
            let row = self.udiv(unit, groups_per_row)?;
            let start = self.mul(self.urem(unit, groups_per_row)?, group_len)?;
            let end = self.umin(self.add(start, group_len)?, m)?;
            let from = self.add(start, self.sreg("tid.x")?)?;
            self.strided_loop(f, from, end, self.sreg("ntid.x")?, |j| {
                let at = GroupEntry {
                    w,
                    entry: self.add(self.mul(row, m)?, j)?,
                    row,
                    col: j,
                    split: source,
                    group: early_group,
                    sums,
                    stride,
                };
                each(&at, &partials)
            })
        })?;
        let totals = partials
            .iter()
            .map(|p| self.block_reduce(scratch, self.get(*p)?, false))
            .collect::<Built<Vec<_>>>()?;
        let group = match early_group {
            Some(group) => group,
            None => group_of_block()?,
        };
        let width = self.int(count as u64);
        let base = match (stage, stride) {
            (Some(stage), Some(stride)) => self.mul(self.int(stage as u64), stride)?,
            _ => self.int(0),
        };
        self.when(f, self.first_thread()?, || {
            for (k, total) in totals.iter().enumerate() {
                let at = self.add(self.mul(group, width)?, self.int(k as u64))?;
                let at = if stage.is_some() {
                    self.add(base, at)?
                } else {
                    at
                };
                let v = self
                    .builder
                    .build_float_ext(*total, self.f64(), "")
                    .map_err(err)?;
                self.atomic_add(sums, at, v)?;
            }
            Ok(())
        })?;
        self.ret()
    }

    /// `phase_dequant(out, w, sums, n, m, groups_per_row, group_len,
    /// per_tensor)`: each entry of `w[n, m]` as its code times its group's
    /// scale from [`Gen::phase_sums`]'s totals (`mean` in f64, as f32,
    /// at least the scheme's floor): `±s_re` or `±i·s_im`; one thread an
    /// entry.
    pub(super) fn phase_dequant(&self, name: &str, ifairy: bool) -> Built<()> {
        let (f, [out, w, sums], [n, m, groups_per_row, group_len, per_tensor]) =
            self.declare_kernel(name);
        let tensor = self.is_set(per_tensor)?;
        self.grid_loop(f, self.mul(n, m)?, |k| {
            let (row, j) = (self.udiv(k, m)?, self.urem(k, m)?);
            let group = self.scale_group(row, j, (groups_per_row, group_len), tensor)?;
            let at = self.mul(k, self.int(2))?;
            let re = self.load_f32(w, at)?;
            let im = self.load_f32(w, self.add(at, self.int(1))?)?;
            let (q_re, q_im) = self.coded(sums, None, group, (re, im), ifairy)?;
            self.store_f32(out, at, q_re)?;
            self.store_f32(out, self.add(at, self.int(1))?, q_im)
        })?;
        self.ret()
    }

    /// `phase_codes(out, w, n, m, words)`: the code of each entry of
    /// complex `w[n, m]` as [`Gen::phase_dequant`] chooses it (Fairy2i's
    /// `Code::nearest`), packed as `dequant` reads them: four a byte (the
    /// `k`-th of a byte in bits `2k..2k+1`, bit 0 the axis, bit 1 the sign),
    /// each row `ceil(m/4)` bytes, its padding `+1` (zero bits), the bytes
    /// little-endian in `words` 32-bit words; one thread a word.
    pub(super) fn phase_codes(&self, name: &str) -> Built<()> {
        let (f, [out, w], [n, m, words]) = self.declare_kernel(name);
        let stride = self.udiv(self.add(m, self.int(3))?, self.int(4))?;
        let bytes = self.mul(n, stride)?;
        self.grid_loop(f, words, |k| {
            let mut word = self.int(0);
            for t in 0..4u64 {
                let byte = self.add(self.mul(k, self.int(4))?, self.int(t))?;
                let (row, col) = (self.udiv(byte, stride)?, self.urem(byte, stride)?);
                for c in 0..4u64 {
                    let j = self.add(self.mul(col, self.int(4))?, self.int(c))?;
                    let inside = self
                        .builder
                        .build_and(self.ult(byte, bytes)?, self.ult(j, m)?, "")
                        .map_err(err)?;
                    // Past the end (padding, the last word's tail): entry 0
                    // is read (a word implies one) and its code dropped.
                    let entry =
                        self.select(inside, self.add(self.mul(row, m)?, j)?, self.int(0))?;
                    let at = self.mul(entry, self.int(2))?;
                    let re = self.load_f32(w, at)?;
                    let im = self.load_f32(w, self.add(at, self.int(1))?)?;
                    let (imaginary, negative) = self.nearest_code(re, im, false)?;
                    let widen = |b: IntValue<'ctx>| -> Built<IntValue<'ctx>> {
                        self.builder
                            .build_int_z_extend(b, self.i64(), "")
                            .map_err(err)
                    };
                    let code =
                        self.add(widen(imaginary)?, self.mul(widen(negative)?, self.int(2))?)?;
                    let code = self.select(inside, code, self.int(0))?;
                    let shifted = self.mul(code, self.int(1 << (8 * t + 2 * c)))?;
                    word = self.builder.build_or(word, shifted, "").map_err(err)?;
                }
            }
            let word = self
                .builder
                .build_int_truncate(word, self.i32(), "")
                .map_err(err)?;
            self.store_i32(out, k, word)
        })?;
        self.ret()
    }

    /// `phase_scales(out, w, sums, n, m, groups_per_row, group_len,
    /// per_tensor)`: each group's `(s_re, s_im)` from [`Gen::phase_sums`]'s
    /// totals, the scales [`Gen::phase_dequant`] multiplies its codes by
    /// (so `dequant` of `phase_codes` and these is `quantize`, bit for
    /// bit), in `dequant`'s layout (`out[2·group..]`); one thread a group.
    /// `w` is not read: the parameters are the quantizer's last pass's.
    pub(super) fn phase_scales(&self, name: &str) -> Built<()> {
        let (f, [out, _, sums], [n, _, groups_per_row, _, per_tensor]) = self.declare_kernel(name);
        let tensor = self.is_set(per_tensor)?;
        let groups = self.select(tensor, self.int(1), self.mul(n, groups_per_row)?)?;
        self.grid_loop(f, groups, |g| {
            let first = self.mul(g, self.int(4))?;
            let s_re = self.mean_scale(sums, first, false)?;
            let s_im = self.mean_scale(sums, self.add(first, self.int(2))?, false)?;
            let at = self.mul(g, self.int(2))?;
            self.store_f32(out, at, s_re)?;
            self.store_f32(out, self.add(at, self.int(1))?, s_im)
        })?;
        self.ret()
    }

    /// `Code::nearest(re, im)` (or iFairy's `nearest_ifairy`) as
    /// (imaginary axis, negative).
    fn nearest_code(
        &self,
        re: FloatValue<'ctx>,
        im: FloatValue<'ctx>,
        ifairy: bool,
    ) -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
        let b = &self.builder;
        let cmp = |p, a, c| b.build_float_compare(p, a, c, "").map_err(err);
        let and = |a, c| b.build_and(a, c, "").map_err(err);
        let or = |a, c| b.build_or(a, c, "").map_err(err);
        let not = |a| b.build_not(a, "").map_err(err);
        let (ar, ai) = (self.fabs(re)?, self.fabs(im)?);
        let zero = self.float(0.0);
        let real_wins = cmp(FloatPredicate::OGT, ar, ai)?;
        let imag_wins = cmp(FloatPredicate::OGT, ai, ar)?;
        let re_positive = cmp(FloatPredicate::OGT, re, zero)?;
        let im_positive = cmp(FloatPredicate::OGT, im, zero)?;
        if ifairy {
            // The larger magnitude wins; otherwise +1 for re > 0 or a zero
            // row, else a tie with re < 0 (or NaN): −1 above the real
            // axis, −i below.
            let real = or(
                or(real_wins, re_positive)?,
                cmp(FloatPredicate::OEQ, ar, zero)?,
            )?;
            let tie = and(not(imag_wins)?, not(real)?)?;
            let imaginary = or(imag_wins, and(tie, not(im_positive)?)?)?;
            let negative = or(
                or(
                    and(imag_wins, not(im_positive)?)?,
                    and(
                        and(not(imag_wins)?, real)?,
                        cmp(FloatPredicate::OLT, re, zero)?,
                    )?,
                )?,
                tie,
            )?;
            return Ok((imaginary, negative));
        }
        // The larger magnitude wins; where neither is larger (NaN
        // included) and |re| > 0, the imaginary axis if the signs agree,
        // else the real one; zero and NaN give +1.
        let neither = not(or(real_wins, imag_wins)?)?;
        let tie = and(neither, cmp(FloatPredicate::OGT, ar, zero)?)?;
        let same_sign = b
            .build_int_compare(IntPredicate::EQ, re_positive, im_positive, "")
            .map_err(err)?;
        let imaginary = or(imag_wins, and(tie, same_sign)?)?;
        let real_signed = or(real_wins, and(tie, not(same_sign)?)?)?;
        let negative = or(
            and(real_signed, not(re_positive)?)?,
            and(imaginary, not(im_positive)?)?,
        )?;
        Ok((imaginary, negative))
    }

    /// The scale `sums[first] / sums[first + 1]` in f64, as f32, at least
    /// the scheme's floor (which a count of 0 gives too); an infinite mean
    /// is the largest bf16 for Fairy2i's PhaseQuant (as its reference) and
    /// the floor for iFairy's.
    fn mean_scale(
        &self,
        sums: PointerValue<'ctx>,
        first: IntValue<'ctx>,
        ifairy: bool,
    ) -> Built<FloatValue<'ctx>> {
        let load = |at: IntValue<'ctx>| -> Built<FloatValue<'ctx>> {
            let p = self.gep(self.f64(), sums, at)?;
            let v = self.builder.build_load(self.f64(), p, "").map_err(err)?;
            Ok(v.into_float_value())
        };
        let total = load(first)?;
        let count = load(self.add(first, self.int(1))?)?;
        let mean = self
            .builder
            .build_float_div(total, count, "")
            .map_err(err)?;
        let mean = self
            .builder
            .build_float_trunc(mean, self.f32(), "")
            .map_err(err)?;
        let (floor, infinite) = if ifairy {
            (
                fairyc_ir::quant::ifairy::FLOOR,
                fairyc_ir::quant::ifairy::FLOOR,
            )
        } else {
            (Arithmetic::F32.min_scale(), half::bf16::MAX.to_f32())
        };
        let select = |c, a, b| -> Built<FloatValue<'ctx>> {
            Ok(self
                .builder
                .build_select(c, a, b, "")
                .map_err(err)?
                .as_basic_value_enum()
                .into_float_value())
        };
        // NaN (0 / 0) and anything below the floor become the floor.
        let above = self
            .builder
            .build_float_compare(FloatPredicate::OGE, mean, self.float(floor), "")
            .map_err(err)?;
        let mean = select(above, mean, self.float(floor))?;
        select(self.is_finite(mean)?, mean, self.float(infinite))
    }

    /// Whether `x` is finite (neither infinite nor NaN).
    pub(super) fn is_finite(&self, x: FloatValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder
            .build_float_compare(
                FloatPredicate::OLT,
                self.fabs(x)?,
                self.float(f32::INFINITY),
                "",
            )
            .map_err(err)
    }
}

/// What a group-sums kernel's step for one entry sees.
struct GroupEntry<'ctx> {
    w: PointerValue<'ctx>,
    /// The entry's row-major index.
    entry: IntValue<'ctx>,
    /// Its row and column.
    row: IntValue<'ctx>,
    col: IntValue<'ctx>,
    /// In a split kernel: the real matrix `w` is, and whether the block
    /// quantizes its `W` half.
    split: Option<(SplitSource<'ctx>, IntValue<'ctx>)>,
    /// The entry's group, in a staged kernel.
    group: Option<IntValue<'ctx>>,
    sums: PointerValue<'ctx>,
    /// How many f64 totals lie between one stage's and the next's, in a
    /// staged kernel.
    stride: Option<IntValue<'ctx>>,
}
