//! Attention one block per (query, head), for decoding over a KV cache;
//! training's batched attention and its gradients are cuBLAS products
//! around [`Gen::masked_softmax`] (`program::attention`).

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
        let visible = self.select_int(is_causal, causal_visible, kv_len)?;
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

    /// `masked_softmax(out, x, cols, seq, causal)`: each row's softmax over
    /// the columns its query sees, zeros after (in place where `out = x`).
    /// Row `r` is query `r mod seq` of its segment, which sees columns up to
    /// its own with `causal`, all of them without.
    pub(super) fn masked_softmax(&self, name: &str) -> Built<()> {
        let f = self.declare(
            name,
            &[Param::Ptr, Param::Ptr, Param::I64, Param::I64, Param::I64],
        );
        let scratch = self.shared_scratch(name);
        let (out, x) = (self.param_ptr(f, 0), self.param_ptr(f, 1));
        let [cols, seq, causal] = [2, 3, 4].map(|i| self.param_int(f, i));
        let row = self.sreg("ctaid.x")?;
        let base = self.mul(row, cols)?;
        let at = |i| self.add(base, i);
        let query = self.urem(row, seq)?;
        let is_causal = self
            .builder
            .build_int_compare(IntPredicate::NE, causal, self.int(0), "")
            .map_err(err)?;
        let visible = self.select_int(is_causal, self.add(query, self.int(1))?, cols)?;
        let max = self.row_sum(f, scratch, visible, true, |j| self.load_f32(x, at(j)?))?;
        let total = self.row_sum(f, scratch, visible, false, |j| {
            self.exp(self.fsub(self.load_f32(x, at(j)?)?, max)?)
        })?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, cols, self.sreg("ntid.x")?, |j| {
            let p = self.fdiv(self.exp(self.fsub(self.load_f32(x, at(j)?)?, max)?)?, total)?;
            let seen = self
                .builder
                .build_int_compare(IntPredicate::ULT, j, visible, "")
                .map_err(err)?;
            let p = self.select_float(seen, p, self.float(0.0))?;
            self.store_f32(out, at(j)?, p)
        })?;
        self.ret()
    }
}
