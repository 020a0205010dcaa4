//! Attention and its gradients: one block per (query, head).

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `attention(out, q, k, v, scores, seq, kv_len, heads, kv_heads, d,
    /// dv, scale, causal)`: block `b` is query `b / heads`, head `b % heads`;
    /// `scores` holds `kv_len` floats per block; `d`, `dv` in words.
    pub(super) fn attention(&self, name: &str) -> Built<()> {
        let mut params = vec![Param::Ptr; 5];
        params.extend([Param::I64; 7]);
        params.push(Param::F32);
        let f = self.declare(name, &params);
        let scratch = self.shared_scratch(name);
        let (out, q, k, v, scores) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_ptr(f, 3),
            self.param_ptr(f, 4),
        );
        let (seq, kv_len, heads, kv_heads, d, dv, causal) = (
            self.param_int(f, 5),
            self.param_int(f, 6),
            self.param_int(f, 7),
            self.param_int(f, 8),
            self.param_int(f, 9),
            self.param_int(f, 10),
            self.param_int(f, 11),
        );
        let scale = self.param_float(f, 12);
        let block = self.sreg("ctaid.x")?;
        let (i, h) = (self.udiv(block, heads)?, self.urem(block, heads)?);
        let group = self.udiv(heads, kv_heads)?;
        let kh = self.udiv(h, group)?;
        let past = self.builder.build_int_sub(kv_len, seq, "").map_err(err)?;
        let causal_visible = self.add(self.add(past, i)?, self.int(1))?;
        let is_causal = self
            .builder
            .build_int_compare(IntPredicate::NE, causal, self.int(0), "")
            .map_err(err)?;
        let visible = self
            .builder
            .build_select(is_causal, causal_visible, kv_len, "")
            .map_err(err)?
            .into_int_value();
        let q_base = self.add(self.mul(i, self.mul(heads, d)?)?, self.mul(h, d)?)?;
        let kw = self.mul(kv_heads, d)?;
        let vw = self.mul(kv_heads, dv)?;
        let s_base = self.mul(block, kv_len)?;
        let tid = self.sreg("tid.x")?;
        let step = self.sreg("ntid.x")?;
        // Scores, and their maximum.
        let acc = self.local(self.float(f32::NEG_INFINITY))?;
        let dot = self.local(self.float(0.0))?;
        self.strided_loop(f, tid, visible, step, |j| {
            let k_base = self.add(self.mul(j, kw)?, self.mul(kh, d)?)?;
            self.set(dot, self.float(0.0))?;
            self.strided_loop(f, self.int(0), d, self.int(1), |c| {
                let a = self.load_f32(q, self.add(q_base, c)?)?;
                let b = self.load_f32(k, self.add(k_base, c)?)?;
                self.set(dot, self.fadd(self.get(dot)?, self.fmul(a, b)?)?)
            })?;
            let s = self.fmul(self.get(dot)?, scale)?;
            self.store_f32(scores, self.add(s_base, j)?, s)?;
            self.set(acc, self.fmax(self.get(acc)?, s)?)
        })?;
        let max = self.block_reduce(scratch, self.get(acc)?, true)?;
        // Exponentials in place, and their sum (the block reduction's
        // barrier makes them visible to every thread).
        let total = self.row_sum(f, scratch, visible, false, |j| {
            let at = self.add(s_base, j)?;
            let e = self.exp(self.fsub(self.load_f32(scores, at)?, max)?)?;
            self.store_f32(scores, at, e)?;
            Ok(e)
        })?;
        let o_base = self.add(self.mul(i, self.mul(heads, dv)?)?, self.mul(h, dv)?)?;
        let sum = self.local(self.float(0.0))?;
        self.strided_loop(f, tid, dv, step, |c| {
            self.set(sum, self.float(0.0))?;
            self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                let p = self.load_f32(scores, self.add(s_base, j)?)?;
                let x = self.load_f32(
                    v,
                    self.add(self.add(self.mul(j, vw)?, self.mul(kh, dv)?)?, c)?,
                )?;
                self.set(sum, self.fadd(self.get(sum)?, self.fmul(p, x)?)?)
            })?;
            self.store_f32(out, self.add(o_base, c)?, self.fdiv(self.get(sum)?, total)?)
        })?;
        self.ret()
    }

    /// `attention_grad(out, q, k, v, dout, scratch, seq, heads, kv_heads, d,
    /// dv, scale, causal)`: as the reference (no past keys: `kv_len =
    /// seq`); `scratch` holds `2·seq` floats per block; `d`, `dv` in words.
    pub(super) fn attention_grad(
        &self,
        name: &str,
        which: fairyc_ir::AttentionOperand,
    ) -> Built<()> {
        use fairyc_ir::AttentionOperand;
        let mut params = vec![Param::Ptr; 6];
        params.extend([Param::I64; 5]);
        params.extend([Param::F32, Param::I64]);
        let f = self.declare(name, &params);
        let scratch = self.shared_scratch(name);
        let [out, q, k, v, dout, work] = [0, 1, 2, 3, 4, 5].map(|i| self.param_ptr(f, i));
        let [seq, heads, kv_heads, d, dv] = [6, 7, 8, 9, 10].map(|i| self.param_int(f, i));
        let (scale, causal) = (self.param_float(f, 11), self.param_int(f, 12));
        let block = self.sreg("ctaid.x")?;
        let (i, h) = (self.udiv(block, heads)?, self.urem(block, heads)?);
        let kh = self.udiv(h, self.udiv(heads, kv_heads)?)?;
        let is_causal = self
            .builder
            .build_int_compare(IntPredicate::NE, causal, self.int(0), "")
            .map_err(err)?;
        let visible = self
            .builder
            .build_select(is_causal, self.add(i, self.int(1))?, seq, "")
            .map_err(err)?
            .into_int_value();
        let q_base = self.add(self.mul(i, self.mul(heads, d)?)?, self.mul(h, d)?)?;
        let o_base = self.add(self.mul(i, self.mul(heads, dv)?)?, self.mul(h, dv)?)?;
        let (kw, vw) = (self.mul(kv_heads, d)?, self.mul(kv_heads, dv)?);
        let k_at = |j| self.add(self.mul(j, kw)?, self.mul(kh, d)?);
        let v_at = |j| self.add(self.mul(j, vw)?, self.mul(kh, dv)?);
        let p_base = self.mul(block, self.mul(seq, self.int(2))?)?;
        let dp_base = self.add(p_base, seq)?;
        let tid = self.sreg("tid.x")?;
        let step = self.sreg("ntid.x")?;
        let dot = self.local(self.float(0.0))?;
        let row_dot = |a: PointerValue<'ctx>,
                       a_base: IntValue<'ctx>,
                       b: PointerValue<'ctx>,
                       b_base: IntValue<'ctx>,
                       len: IntValue<'ctx>|
         -> Built<FloatValue<'ctx>> {
            self.set(dot, self.float(0.0))?;
            self.strided_loop(f, self.int(0), len, self.int(1), |c| {
                let x = self.load_f32(a, self.add(a_base, c)?)?;
                let y = self.load_f32(b, self.add(b_base, c)?)?;
                self.set(dot, self.fadd(self.get(dot)?, self.fmul(x, y)?)?)
            })?;
            self.get(dot)
        };
        // Scores and their maximum.
        let max = self.row_sum(f, scratch, visible, true, |j| {
            let s = self.fmul(row_dot(q, q_base, k, k_at(j)?, d)?, scale)?;
            self.store_f32(work, self.add(p_base, j)?, s)?;
            Ok(s)
        })?;
        let total = self.row_sum(f, scratch, visible, false, |j| {
            let at = self.add(p_base, j)?;
            let e = self.exp(self.fsub(self.load_f32(work, at)?, max)?)?;
            self.store_f32(work, at, e)?;
            Ok(e)
        })?;
        // p_j, and for Q and K the terms dp_j = dout_i · v_j.
        let mean = self.row_sum(f, scratch, visible, false, |j| {
            let at = self.add(p_base, j)?;
            let p = self.fdiv(self.load_f32(work, at)?, total)?;
            self.store_f32(work, at, p)?;
            if which == AttentionOperand::V {
                return Ok(self.float(0.0));
            }
            let dp = row_dot(dout, o_base, v, v_at(j)?, dv)?;
            self.store_f32(work, self.add(dp_base, j)?, dp)?;
            self.fmul(p, dp)
        })?;
        // The row sums' barriers made p and dp visible to the block.
        match which {
            AttentionOperand::V => {
                self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                    let p = self.load_f32(work, self.add(p_base, j)?)?;
                    self.strided_loop(f, tid, dv, step, |c| {
                        let g = self.load_f32(dout, self.add(o_base, c)?)?;
                        self.atomic_add(out, self.add(v_at(j)?, c)?, self.fmul(p, g)?)
                    })
                })?;
            }
            AttentionOperand::Q => {
                let acc = self.local(self.float(0.0))?;
                self.strided_loop(f, tid, d, step, |c| {
                    self.set(acc, self.float(0.0))?;
                    self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                        let p = self.load_f32(work, self.add(p_base, j)?)?;
                        let dp = self.load_f32(work, self.add(dp_base, j)?)?;
                        let ds = self.fmul(scale, self.fmul(p, self.fsub(dp, mean)?)?)?;
                        let kv = self.load_f32(k, self.add(k_at(j)?, c)?)?;
                        self.set(acc, self.fadd(self.get(acc)?, self.fmul(ds, kv)?)?)
                    })?;
                    self.store_f32(out, self.add(q_base, c)?, self.get(acc)?)
                })?;
            }
            AttentionOperand::K => {
                self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                    let p = self.load_f32(work, self.add(p_base, j)?)?;
                    let dp = self.load_f32(work, self.add(dp_base, j)?)?;
                    let ds = self.fmul(scale, self.fmul(p, self.fsub(dp, mean)?)?)?;
                    self.strided_loop(f, tid, d, step, |c| {
                        let qv = self.load_f32(q, self.add(q_base, c)?)?;
                        self.atomic_add(out, self.add(k_at(j)?, c)?, self.fmul(ds, qv)?)
                    })
                })?;
            }
        }
        self.ret()
    }
}
