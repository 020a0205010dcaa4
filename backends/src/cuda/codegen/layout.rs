//! Gathers and copies: embeddings, RoPE, slices and concatenations,
//! permutations, pairings, the widely-linear gradient.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `embed(out, ids, table, n, width, vocab)`: `n` output words, rows
    /// of `width`; an id outside `0..vocab` gives a zero row (the host
    /// checks the ids it is given, so this only guards memory).
    pub(super) fn embed(&self, name: &str) -> Built<()> {
        let (f, [out, ids, table], [n, width, vocab]) = self.declare_kernel(name);
        self.grid_loop(f, n, |i| {
            let t = self.udiv(i, width)?;
            let c = self.urem(i, width)?;
            let (id, known) = self.token(ids, t, vocab)?;
            let at = self.add(self.mul(id, width)?, c)?;
            let v = self.load_i32(table, at)?;
            let v = self.select(known, v, self.i32().const_zero())?;
            self.store_i32(out, i, v)
        })?;
        self.ret()
    }

    /// `embed_grad(out, ids, dy, n, width, vocab)`: `n` words of `dy`,
    /// rows of `width` words; ids outside `0..vocab` add nothing.
    pub(super) fn embed_grad(&self, name: &str) -> Built<()> {
        let (f, [out, ids, dy], [n, width, vocab]) = self.declare_kernel(name);
        self.grid_loop(f, n, |i| {
            let t = self.udiv(i, width)?;
            let c = self.urem(i, width)?;
            let (id, known) = self.token(ids, t, vocab)?;
            self.when(
                self.builder
                    .get_insert_block()
                    .and_then(|b| b.get_parent())
                    .expect("in a function"),
                known,
                || {
                    self.atomic_add(
                        out,
                        self.add(self.mul(id, width)?, c)?,
                        self.load_f32(dy, i)?,
                    )
                },
            )
        })?;
        self.ret()
    }

    /// `rope(out, x, positions, freqs, pairs, width, seq, head_dim)`:
    /// `pairs` rotations; `width` and `head_dim` in elements (complex:
    /// complex elements, each its own pair); written rounded to bf16 with
    /// `bf16`.
    pub(super) fn rope(
        &self,
        name: &str,
        layout: RopeLayout,
        complex: bool,
        bf16: bool,
    ) -> Built<()> {
        if complex && bf16 {
            return Err("complex rows are not written rounded to bf16".into());
        }
        let (f, [out, x, positions, freqs], [pairs, width, seq, head_dim]) =
            self.declare_kernel(name);
        self.grid_loop(f, pairs, |p| {
            let half = self.udiv(head_dim, self.int(2))?;
            // Pairs per row: width/2 for real rows, width for complex ones.
            let per_row = if complex {
                width
            } else {
                self.udiv(width, self.int(2))?
            };
            let row = self.udiv(p, per_row)?;
            let q = self.urem(p, per_row)?;
            let head = self.udiv(q, half)?;
            let j = self.urem(q, half)?;
            let (c, s) = self.rope_cos_sin((positions, seq), freqs, row, j)?;
            let row_base = self.mul(
                row,
                if complex {
                    self.mul(width, self.int(2))?
                } else {
                    width
                },
            )?;
            let (a, b) = if complex {
                let at = self.add(row_base, self.mul(q, self.int(2))?)?;
                (at, self.add(at, self.int(1))?)
            } else {
                let head_base = self.add(row_base, self.mul(head, head_dim)?)?;
                match layout {
                    RopeLayout::Interleaved => {
                        let a = self.add(head_base, self.mul(j, self.int(2))?)?;
                        (a, self.add(a, self.int(1))?)
                    }
                    RopeLayout::HalfSplit => {
                        let a = self.add(head_base, j)?;
                        (a, self.add(a, half)?)
                    }
                }
            };
            let (x0, x1) = (self.load_f32(x, a)?, self.load_f32(x, b)?);
            let y0 = self.fsub(self.fmul(x0, c)?, self.fmul(x1, s)?)?;
            self.store_real(out, a, y0, bf16)?;
            self.store_real(
                out,
                b,
                self.fadd(self.fmul(x0, s)?, self.fmul(x1, c)?)?,
                bf16,
            )
        })?;
        self.ret()
    }

    /// The cosine and sine of row `row`'s rotary angle for pair `j`: its
    /// position `positions[row mod seq]` times `freqs[j]` (f64), reduced to
    /// [-π, π] in f64 before the f32 approximations.
    pub(super) fn rope_cos_sin(
        &self,
        (positions, seq): (PointerValue<'ctx>, IntValue<'ctx>),
        freqs: PointerValue<'ctx>,
        row: IntValue<'ctx>,
        j: IntValue<'ctx>,
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let sin = self.intrinsic("llvm.nvvm.sin.approx.f", &[])?;
        let cos = self.intrinsic("llvm.nvvm.cos.approx.f", &[])?;
        let round = self.intrinsic("llvm.rint", &[self.f64().into()])?;
        let pos = self.load_i32(positions, self.urem(row, seq)?)?;
        let pos = self
            .builder
            .build_signed_int_to_float(pos, self.f64(), "")
            .map_err(err)?;
        let fp = self.gep(self.f64(), freqs, j)?;
        let freq = self
            .builder
            .build_load(self.f64(), fp, "")
            .map_err(err)?
            .into_float_value();
        let theta = self.builder.build_float_mul(pos, freq, "").map_err(err)?;
        let two_pi = self.f64().const_float(std::f64::consts::TAU);
        let turns = self
            .builder
            .build_float_div(theta, two_pi, "")
            .map_err(err)?;
        let turns = self.call(round, &[turns.into()])?.into_float_value();
        let reduced = self
            .builder
            .build_float_sub(
                theta,
                self.builder
                    .build_float_mul(turns, two_pi, "")
                    .map_err(err)?,
                "",
            )
            .map_err(err)?;
        let r = self
            .builder
            .build_float_trunc(reduced, self.f32(), "")
            .map_err(err)?;
        let c = self.call(cos, &[r.into()])?.into_float_value();
        let s = self.call(sin, &[r.into()])?.into_float_value();
        Ok((c, s))
    }

    /// Word `e` of the real row at `row_base` of `x` after its rotary
    /// embedding (heads of `head_dim` words paired by `layout`), as the
    /// `rope` kernel computes it: `x0·c − x1·s` for a pair's first word,
    /// `x0·s + x1·c` for its second.
    pub(super) fn roped_word(
        &self,
        x: PointerValue<'ctx>,
        (row_base, e): (IntValue<'ctx>, IntValue<'ctx>),
        (head_dim, layout): (IntValue<'ctx>, RopeLayout),
        turn: impl FnOnce(IntValue<'ctx>) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)>,
    ) -> Built<FloatValue<'ctx>> {
        let within = self.urem(e, head_dim)?;
        let head_base = self.add(row_base, self.sub(e, within)?)?;
        let (j, second, offset) = match layout {
            RopeLayout::Interleaved => {
                let j = self.udiv(within, self.int(2))?;
                let second = self.eq_int(self.urem(within, self.int(2))?, self.int(1))?;
                (j, second, self.mul(j, self.int(2))?)
            }
            RopeLayout::HalfSplit => {
                let half = self.udiv(head_dim, self.int(2))?;
                let second = self.not(self.ult(within, half)?)?;
                let j = self.select(second, self.sub(within, half)?, within)?;
                (j, second, j)
            }
        };
        let step = match layout {
            RopeLayout::Interleaved => self.int(1),
            RopeLayout::HalfSplit => self.udiv(head_dim, self.int(2))?,
        };
        let a = self.add(head_base, offset)?;
        let (x0, x1) = (self.load_f32(x, a)?, self.load_f32(x, self.add(a, step)?)?);
        let (c, s) = turn(j)?;
        let first_word = self.fsub(self.fmul(x0, c)?, self.fmul(x1, s)?)?;
        let second_word = self.fadd(self.fmul(x0, s)?, self.fmul(x1, c)?)?;
        self.select(second, second_word, first_word)
    }

    /// `copy2d(dst, src, rows, cols, dst_stride, dst_off, src_stride, src_off)`.
    pub(super) fn copy2d(&self, name: &str) -> Built<()> {
        let (f, [dst, src], [rows, cols, dst_stride, dst_off, src_stride, src_off]) =
            self.declare_kernel(name);
        let n = self.mul(rows, cols)?;
        self.grid_loop(f, n, |i| {
            let (r, c) = (self.udiv(i, cols)?, self.urem(i, cols)?);
            let from = self.add(self.add(self.mul(r, src_stride)?, src_off)?, c)?;
            let to = self.add(self.add(self.mul(r, dst_stride)?, dst_off)?, c)?;
            let v = self.load_i32(src, from)?;
            self.store_i32(dst, to, v)
        })?;
        self.ret()
    }

    /// `append_rows(dst, src, lengths, slot, row_words, words)`: `src`'s
    /// `words` words into `dst` after its first `lengths[slot]` rows (of
    /// `row_words` words): a KV cache extended in place, at an offset read
    /// on the device, so that a captured decoding step replays at any
    /// position. With `rope` the words are f32 keys, rotated as they are
    /// written, by the parameters `positions, freqs, seq, head_dim` after
    /// those (as the `rope` kernel's).
    pub(super) fn append_rows(&self, name: &str, rope: Option<RopeLayout>) -> Built<()> {
        let mut params = vec![Param::Ptr; 3];
        params.extend([Param::I64; 3]);
        if rope.is_some() {
            params.extend([Param::Ptr, Param::Ptr, Param::I64, Param::I64]);
        }
        let f = self.declare(name, &params);
        let [dst, src, lengths] = [0, 1, 2].map(|k| self.param_ptr(f, k));
        let [slot, row_words, words] = [3, 4, 5].map(|k| self.param_int(f, k));
        let rows = self.widen(self.load_i32(lengths, slot)?)?;
        let offset = self.mul(rows, row_words)?;
        self.grid_loop(f, words, |i| match rope {
            None => {
                let v = self.load_i32(src, i)?;
                self.store_i32(dst, self.add(offset, i)?, v)
            }
            Some(layout) => {
                let (positions, freqs) = (self.param_ptr(f, 6), self.param_ptr(f, 7));
                let (seq, head_dim) = (self.param_int(f, 8), self.param_int(f, 9));
                let row = self.udiv(i, row_words)?;
                let e = self.urem(i, row_words)?;
                let base = self.mul(row, row_words)?;
                let v = self.roped_word(src, (base, e), (head_dim, layout), |j| {
                    self.rope_cos_sin((positions, seq), freqs, row, j)
                })?;
                self.store_f32(dst, self.add(offset, i)?, v)
            }
        })?;
        self.ret()
    }

    /// `permute(dst, src, n, dims[8], strides[8])`: output element `i`,
    /// written as digits of the output's dims (outermost first, unused
    /// leading dims 1), reads the source at the digits' strides.
    pub(super) fn permute(&self, name: &str) -> Built<()> {
        let mut params = vec![Param::Ptr; 2];
        params.extend(std::iter::repeat_n(Param::I64, 1 + 2 * GATHER_RANK));
        let f = self.declare(name, &params);
        let (dst, src, n) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_int(f, 2),
        );
        self.grid_loop(f, n, |i| {
            let mut rest = i;
            let mut from = self.int(0);
            for axis in (0..GATHER_RANK as u32).rev() {
                let dim = self.param_int(f, 3 + axis);
                let stride = self.param_int(f, 3 + GATHER_RANK as u32 + axis);
                let digit = self.urem(rest, dim)?;
                rest = self.udiv(rest, dim)?;
                from = self.add(from, self.mul(digit, stride)?)?;
            }
            let v = self.load_i32(src, from)?;
            self.store_i32(dst, i, v)
        })?;
        self.ret()
    }

    /// `gather_columns(out, x, index, rows, out_cols, in_cols)`.
    pub(super) fn gather_columns(&self, name: &str) -> Built<()> {
        let (f, [out, x, index], [rows, out_cols, in_cols]) = self.declare_kernel(name);
        self.grid_loop(f, self.mul(rows, out_cols)?, |i| {
            let (r, c) = (self.udiv(i, out_cols)?, self.urem(i, out_cols)?);
            let from = self.load_i32(index, c)?;
            let missing = self
                .builder
                .build_int_compare(IntPredicate::SLT, from, self.i32().const_zero(), "")
                .map_err(err)?;
            let from = self.widen(from)?;
            let safe = self.select(missing, self.int(0), from)?;
            let v = self.load_i32(x, self.add(self.mul(r, in_cols)?, safe)?)?;
            let v = self.select(missing, self.i32().const_zero(), v)?;
            self.store_i32(out, i, v)
        })?;
        self.ret()
    }

    /// `widely_linear_grad(out, d, row_index, col_index, rows, cols, m)`:
    /// `row_index[r] = 2a + (r is an imaginary channel of slot a)`, likewise
    /// for columns; `d` is `[n, m]` complex.
    pub(super) fn widely_linear_grad(&self, name: &str, part: fairyc_ir::WlPart) -> Built<()> {
        let (f, [out, d, row_index, col_index], [rows, cols, m]) = self.declare_kernel(name);
        self.grid_loop(f, self.mul(rows, cols)?, |i| {
            let (r, c) = (self.udiv(i, cols)?, self.urem(i, cols)?);
            let ra = self.widen(self.load_i32(row_index, r)?)?;
            let cb = self.widen(self.load_i32(col_index, c)?)?;
            let (a, row_im) = (self.udiv(ra, self.int(2))?, self.urem(ra, self.int(2))?);
            let (b, col_im) = (self.udiv(cb, self.int(2))?, self.urem(cb, self.int(2))?);
            let mixed = self
                .builder
                .build_int_compare(IntPredicate::NE, row_im, col_im, "")
                .map_err(err)?;
            let imag_word = self
                .builder
                .build_int_z_extend(mixed, self.i64(), "")
                .map_err(err)?;
            let word = self.add(
                self.mul(self.add(self.mul(a, m)?, b)?, self.int(2))?,
                imag_word,
            )?;
            let v = self.fmul(self.load_f32(d, word)?, self.float(0.5))?;
            // U: R12 = −Im; W: R22 = −Re.
            let (neg_row, neg_col) = match part {
                fairyc_ir::WlPart::U => (0, 1),
                fairyc_ir::WlPart::W => (1, 1),
            };
            let is = |x: IntValue<'ctx>, want: u64| self.eq_int(x, self.int(want));
            let negative = self
                .builder
                .build_and(is(row_im, neg_row)?, is(col_im, neg_col)?, "")
                .map_err(err)?;
            let v = self.select(negative, self.fneg(v)?, v)?;
            self.store_f32(out, i, v)
        })?;
        self.ret()
    }

    /// `widely_linear(out, r, row_slots, col_slots, rows, cols, n, m)`: the
    /// `U` or `W` part `[n, m]` of the real `r[rows, cols]` (eq. 3), the
    /// real row and column of each slot's real and imaginary part in
    /// `row_slots` and `col_slots` (`[2n]`, `[2m]`; past the matrix:
    /// padding, zero); f32 arithmetic, halving first.
    pub(super) fn widely_linear(&self, name: &str, part: fairyc_ir::WlPart) -> Built<()> {
        let (f, [out, r, row_slots, col_slots], [rows, cols, n, m]) = self.declare_kernel(name);
        let split = SplitSource {
            r,
            row_slots,
            col_slots,
            rows,
            cols,
        };
        self.grid_loop(f, self.mul(n, m)?, |k| {
            let (p, q) = (self.udiv(k, m)?, self.urem(k, m)?);
            let (_, entries) = self.split_entries(&split, p, q)?;
            let (re, im) = self.split_part(part, entries)?;
            let at = self.mul(k, self.int(2))?;
            self.store_f32(out, at, re)?;
            self.store_f32(out, self.add(at, self.int(1))?, im)
        })?;
        self.ret()
    }

    /// The real rows and columns `[ra, ia, rb, ib]` behind complex slot
    /// `(p, q)` of `split` (`a` the row slot's real and imaginary rows, `b`
    /// the column slot's), and the four entries `[r11, r12, r21, r22]` of
    /// the real matrix there (`r[ra, rb]`, `r[ra, ib]`, `r[ia, rb]`,
    /// `r[ia, ib]`), zero where a row or column is padding.
    pub(super) fn split_entries(
        &self,
        split: &SplitSource<'ctx>,
        p: IntValue<'ctx>,
        q: IntValue<'ctx>,
    ) -> Built<([IntValue<'ctx>; 4], [FloatValue<'ctx>; 4])> {
        let slot = |table, s: IntValue<'ctx>, part: u64| {
            self.widen(self.load_i32(table, self.add(self.mul(s, self.int(2))?, self.int(part))?)?)
        };
        let (ra, ia) = (slot(split.row_slots, p, 0)?, slot(split.row_slots, p, 1)?);
        let (rb, ib) = (slot(split.col_slots, q, 0)?, slot(split.col_slots, q, 1)?);
        let at = |i: IntValue<'ctx>, j: IntValue<'ctx>| -> Built<FloatValue<'ctx>> {
            let inside = self.split_inside(split, i, j)?;
            let safe = |v, bound| -> Built<IntValue<'ctx>> { self.select(inside, v, bound) };
            let word = self.add(
                self.mul(safe(i, self.int(0))?, split.cols)?,
                safe(j, self.int(0))?,
            )?;
            self.select(inside, self.load_f32(split.r, word)?, self.float(0.0))
        };
        Ok((
            [ra, ia, rb, ib],
            [at(ra, rb)?, at(ra, ib)?, at(ia, rb)?, at(ia, ib)?],
        ))
    }

    /// Whether real row `i` and column `j` lie inside `split`'s matrix (not
    /// padding).
    pub(super) fn split_inside(
        &self,
        split: &SplitSource<'ctx>,
        i: IntValue<'ctx>,
        j: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        self.builder
            .build_and(self.ult(i, split.rows)?, self.ult(j, split.cols)?, "")
            .map_err(err)
    }

    /// The `U` or `W` entry (eq. 3) of the real entries `[r11, r12, r21,
    /// r22]` of [`Gen::split_entries`], in f32, halving first:
    /// `U = ½(r11 + r22) + ½(r21 − r12)i`, `W = ½(r11 − r22) + ½(r12 + r21)i`.
    pub(super) fn split_part(
        &self,
        part: fairyc_ir::WlPart,
        [r11, r12, r21, r22]: [FloatValue<'ctx>; 4],
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let half = |a: FloatValue<'ctx>, b: FloatValue<'ctx>| {
            self.fadd(
                self.fmul(self.float(0.5), a)?,
                self.fmul(self.float(0.5), b)?,
            )
        };
        Ok(match part {
            fairyc_ir::WlPart::U => (half(r11, r22)?, half(r21, self.fneg(r12)?)?),
            fairyc_ir::WlPart::W => (half(r11, self.fneg(r22)?)?, half(r12, r21)?),
        })
    }
}

/// A real matrix `r[rows, cols]` read as the complex slots of its
/// widely-linear split (eq. 3): each slot's real and imaginary row (column)
/// in `row_slots` (`col_slots`), past the matrix for padding.
#[derive(Clone, Copy)]
pub(super) struct SplitSource<'ctx> {
    pub r: PointerValue<'ctx>,
    pub row_slots: PointerValue<'ctx>,
    pub col_slots: PointerValue<'ctx>,
    pub rows: IntValue<'ctx>,
    pub cols: IntValue<'ctx>,
}
