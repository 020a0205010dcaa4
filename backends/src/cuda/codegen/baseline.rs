//! The real baselines' quantizers on the GPU (`quantize` with scheme
//! `binary` or `ternary`, `fairyc_ir::quant::baseline`), in two passes as
//! PhaseQuant's: each group's sum of |w| and count over its finite entries
//! (the block's f32 partial sums added into f64 totals by atomics), then
//! every entry's code times its group's mean. The codes follow the
//! reference's rules: binary `w < 0 ? −1 : +1` (−0 and NaN give +1),
//! ternary `clamp(round(w / (γ + 1e-5)), −1, 1)` with ties to 0 (NaN gives
//! 0); a group without finite entries has the scale 0. The mean is summed
//! in another order than the reference's f64 sum, so it can differ in its
//! last bits, and with it a ternary code whose `w / (γ + 1e-5)` lies that
//! close to ±0.5.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `real_sums(sums, w, n, m, groups_per_row, group_len, per_tensor)`:
    /// over each (row, group of the row) of real `w[n, m]`; adds
    /// `(Σ|w|, count)` over the group's finite entries into
    /// `sums[2·group..]` (f64, zeroed before).
    pub(super) fn real_sums(&self, name: &str) -> Built<()> {
        self.group_sums(name, 2, |w, entry, partial| {
            let x = self.load_f32(w, entry)?;
            let finite = self.is_finite(x)?;
            let zero = self.float(0.0);
            let counted =
                |v: FloatValue<'ctx>| -> Built<FloatValue<'ctx>> { self.select(finite, v, zero) };
            let [total, count] = [partial[0], partial[1]];
            self.set(total, self.fadd(self.get(total)?, counted(self.fabs(x)?)?)?)?;
            self.set(
                count,
                self.fadd(self.get(count)?, counted(self.float(1.0))?)?,
            )
        })
    }

    /// `real_dequant(out, w, sums, n, m, groups_per_row, group_len,
    /// per_tensor)`: each entry of real `w[n, m]` as its binary or ternary
    /// code times its group's mean |w| from [`Gen::real_sums`]'s totals (in
    /// f64, as f32; 0 without finite entries); one thread an entry.
    pub(super) fn real_dequant(&self, name: &str, ternary: bool) -> Built<()> {
        let (f, [out, w, sums], [n, m, groups_per_row, group_len, per_tensor]) =
            self.declare_kernel(name);
        let tensor = self.is_set(per_tensor)?;
        let b = &self.builder;
        let select = |c, x: FloatValue<'ctx>, y: FloatValue<'ctx>| -> Built<FloatValue<'ctx>> {
            Ok(b.build_select(c, x, y, "").map_err(err)?.into_float_value())
        };
        let cmp = |p, x, y| b.build_float_compare(p, x, y, "").map_err(err);
        self.grid_loop(f, self.mul(n, m)?, |k| {
            let (row, j) = (self.udiv(k, m)?, self.urem(k, m)?);
            let group = self.scale_group(row, j, (groups_per_row, group_len), tensor)?;
            let load = |at: IntValue<'ctx>| -> Built<FloatValue<'ctx>> {
                let p = self.gep(self.f64(), sums, at)?;
                Ok(b.build_load(self.f64(), p, "")
                    .map_err(err)?
                    .into_float_value())
            };
            let first = self.mul(group, self.int(2))?;
            let total = load(first)?;
            let count = load(self.add(first, self.int(1))?)?;
            let mean = b.build_float_div(total, count, "").map_err(err)?;
            let mean = b.build_float_trunc(mean, self.f32(), "").map_err(err)?;
            let none = b
                .build_float_compare(FloatPredicate::OEQ, count, self.f64().const_zero(), "")
                .map_err(err)?;
            // No finite entry: the scale 0 (not 0 / 0).
            let scale = select(none, self.float(0.0), mean)?;
            let x = self.load_f32(w, k)?;
            let value = if ternary {
                let t = self.fdiv(x, self.fadd(scale, self.float(1e-5))?)?;
                let up = cmp(FloatPredicate::OGT, t, self.float(0.5))?;
                let down = cmp(FloatPredicate::OLT, t, self.float(-0.5))?;
                let zero_or_down = select(down, self.fneg(scale)?, self.float(0.0))?;
                select(up, scale, zero_or_down)?
            } else {
                let negative = cmp(FloatPredicate::OLT, x, self.float(0.0))?;
                select(negative, self.fneg(scale)?, scale)?
            };
            self.store_f32(out, k, value)
        })?;
        self.ret()
    }
}
