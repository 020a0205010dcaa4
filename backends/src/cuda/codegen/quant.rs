//! Fairy2i's `quant_linear` on packed 2-bit codes.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `quant_linear(out, x, (codes, scales) per stage..., rows, n, m,
    /// groups_per_row, group_len, per_tensor)`: `x[rows, m]` complex,
    /// `out[rows, n]` complex; codes `[n, ceil(m/4)]` bytes, code `b` of a
    /// byte in bits `2b..2b+2` (0: +1, 1: +i, 2: −1, 3: −i); each group's
    /// scales `(s_re, s_im)` at `2·(i·groups_per_row + g)`, or at 0 for a
    /// per-tensor scale.
    pub(super) fn quant_linear(&self, name: &str, u_stages: usize, w_stages: usize) -> Built<()> {
        let stages = u_stages + w_stages;
        let mut params = vec![Param::Ptr; 2 + 2 * stages];
        params.extend([Param::I64; 6]);
        let f = self.declare(name, &params);
        let (out, x) = (self.param_ptr(f, 0), self.param_ptr(f, 1));
        let base = 2 + 2 * stages as u32;
        let [rows, n, m, groups_per_row, group_len, per_tensor] =
            [0, 1, 2, 3, 4, 5].map(|k| self.param_int(f, base + k));
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let warp = self.udiv(tid, self.int(32))?;
        let row = self.add(
            self.mul(self.sreg("ctaid.x")?, self.int(QUANT_ROWS_PER_BLOCK as u64))?,
            warp,
        )?;
        // Whole warps leave together: no barrier follows.
        let work = self.context.append_basic_block(f, "work");
        let done = self.context.append_basic_block(f, "done");
        let inside = self.ult(row, n)?;
        self.builder
            .build_conditional_branch(inside, work, done)
            .map_err(err)?;
        self.builder.position_at_end(work);
        let stride = self.udiv(self.add(m, self.int(3))?, self.int(4))?;
        let tensor = self.is_set(per_tensor)?;
        let (acc_re, acc_im) = (self.local(self.float(0.0))?, self.local(self.float(0.0))?);
        self.strided_loop(f, self.int(0), rows, self.int(1), |r| {
            self.set(acc_re, self.float(0.0))?;
            self.set(acc_im, self.float(0.0))?;
            let x_base = self.mul(self.mul(r, m)?, self.int(2))?;
            self.strided_loop(f, lane, m, self.int(32), |j| {
                let xr = self.load_f32(x, self.add(x_base, self.mul(j, self.int(2))?)?)?;
                let xi = self.load_f32(
                    x,
                    self.add(x_base, self.add(self.mul(j, self.int(2))?, self.int(1))?)?,
                )?;
                let (byte_at, shift, scale_at) =
                    self.code_position(row, j, stride, (groups_per_row, group_len), tensor)?;
                for s in 0..stages {
                    let codes = self.param_ptr(f, 2 + 2 * s as u32);
                    let scales = self.param_ptr(f, 3 + 2 * s as u32);
                    let (scale, imaginary) =
                        self.code_scale(codes, byte_at, shift, scales, scale_at)?;
                    // conj(x) for the W stages.
                    let xi = if s >= u_stages { self.fneg(xi)? } else { xi };
                    // The product with x is ±s_re·(xr, xi) or ±s_im·(−xi, xr).
                    let a = self.select(imaginary, self.fneg(xi)?, xr)?;
                    let b = self.select(imaginary, xr, xi)?;
                    self.set(acc_re, self.fadd(self.get(acc_re)?, self.fmul(scale, a)?)?)?;
                    self.set(acc_im, self.fadd(self.get(acc_im)?, self.fmul(scale, b)?)?)?;
                }
                Ok(())
            })?;
            let re = self.warp_sum(self.get(acc_re)?)?;
            let im = self.warp_sum(self.get(acc_im)?)?;
            let first = self.context.append_basic_block(f, "first_lane");
            let next = self.context.append_basic_block(f, "next_row");
            let is_first = self.eq_int(lane, self.int(0))?;
            self.builder
                .build_conditional_branch(is_first, first, next)
                .map_err(err)?;
            self.builder.position_at_end(first);
            let at = self.mul(self.add(self.mul(r, n)?, row)?, self.int(2))?;
            self.store_f32(out, at, re)?;
            self.store_f32(out, self.add(at, self.int(1))?, im)?;
            self.builder.build_unconditional_branch(next).map_err(err)?;
            self.builder.position_at_end(next);
            Ok(())
        })?;
        self.builder.build_unconditional_branch(done).map_err(err)?;
        self.builder.position_at_end(done);
        self.ret()
    }

    /// Where the code of `(row, j)` lies (its byte in rows of `stride`
    /// bytes, its bit) and its group's scales: `2·(row·groups_per_row +
    /// j / group_len)`, or 0 for a per-tensor scale.
    fn code_position(
        &self,
        row: IntValue<'ctx>,
        j: IntValue<'ctx>,
        stride: IntValue<'ctx>,
        (groups_per_row, group_len): (IntValue<'ctx>, IntValue<'ctx>),
        tensor: IntValue<'ctx>,
    ) -> Built<(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>)> {
        let group = self.scale_group(row, j, (groups_per_row, group_len), tensor)?;
        let scale_at = self.mul(group, self.int(2))?;
        let byte_at = self.add(self.mul(row, stride)?, self.udiv(j, self.int(4))?)?;
        let shift = self.mul(self.urem(j, self.int(4))?, self.int(2))?;
        let shift = self
            .builder
            .build_int_truncate(shift, self.context.i8_type(), "")
            .map_err(err)?;
        Ok((byte_at, shift, scale_at))
    }

    /// The scale group of entry `(row, j)`: `row·groups_per_row + j /
    /// group_len`, or 0 where `tensor` (one scale pair for the tensor).
    pub(super) fn scale_group(
        &self,
        row: IntValue<'ctx>,
        j: IntValue<'ctx>,
        (groups_per_row, group_len): (IntValue<'ctx>, IntValue<'ctx>),
        tensor: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        let group = self.add(self.mul(row, groups_per_row)?, self.udiv(j, group_len)?)?;
        self.select(tensor, self.int(0), group)
    }

    /// The signed scale of the code at bit `shift` of byte `byte_at` of
    /// `codes` and whether it is imaginary: codes 0..3 are +1, +i, −1, −i,
    /// with the group's scales `(s_re, s_im)` at `scale_at` of `scales`.
    fn code_scale(
        &self,
        codes: PointerValue<'ctx>,
        byte_at: IntValue<'ctx>,
        shift: IntValue<'ctx>,
        scales: PointerValue<'ctx>,
        scale_at: IntValue<'ctx>,
    ) -> Built<(FloatValue<'ctx>, IntValue<'ctx>)> {
        let byte_ty = self.context.i8_type();
        let p = self.gep(byte_ty, codes, byte_at)?;
        let byte = self
            .builder
            .build_load(byte_ty, p, "")
            .map_err(err)?
            .into_int_value();
        let code = self
            .builder
            .build_right_shift(byte, shift, false, "")
            .map_err(err)?;
        let code = self
            .builder
            .build_and(code, byte_ty.const_int(3, false), "")
            .map_err(err)?;
        let s_re = self.load_f32(scales, scale_at)?;
        let s_im = self.load_f32(scales, self.add(scale_at, self.int(1))?)?;
        let imaginary = self
            .builder
            .build_and(code, byte_ty.const_int(1, false), "")
            .map_err(err)?;
        let imaginary = self
            .builder
            .build_int_compare(IntPredicate::NE, imaginary, byte_ty.const_int(0, false), "")
            .map_err(err)?;
        let negative = self
            .builder
            .build_int_compare(IntPredicate::UGE, code, byte_ty.const_int(2, false), "")
            .map_err(err)?;
        let scale = self.select(imaginary, s_im, s_re)?;
        let scale = self.select(negative, self.fneg(scale)?, scale)?;
        Ok((scale, imaginary))
    }

    /// `dequant(out, codes, scales, n, m, groups_per_row, group_len,
    /// per_tensor)`: `out[n, m]` complex, each code times its group's
    /// scale (the layouts of [`Gen::quant_linear`]); one thread an element.
    pub(super) fn dequant(&self, name: &str) -> Built<()> {
        let (f, [out, codes, scales], [n, m, groups_per_row, group_len, per_tensor]) =
            self.declare_kernel(name);
        let stride = self.udiv(self.add(m, self.int(3))?, self.int(4))?;
        let tensor = self.is_set(per_tensor)?;
        self.grid_loop(f, self.mul(n, m)?, |k| {
            let (row, j) = (self.udiv(k, m)?, self.urem(k, m)?);
            let (byte_at, shift, scale_at) =
                self.code_position(row, j, stride, (groups_per_row, group_len), tensor)?;
            let (scale, imaginary) = self.code_scale(codes, byte_at, shift, scales, scale_at)?;
            let zero = self.float(0.0);
            let pick = |on: bool| -> Built<FloatValue<'ctx>> {
                let (a, b) = if on { (scale, zero) } else { (zero, scale) };
                self.select(imaginary, a, b)
            };
            let at = self.mul(k, self.int(2))?;
            self.store_f32(out, at, pick(false)?)?;
            self.store_f32(out, self.add(at, self.int(1))?, pick(true)?)
        })?;
        self.ret()
    }
}
