//! Elementwise kernels: an expression over suffix-broadcast operands.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `map(out, operands..., n, lens...)`: `n` output elements (real ones
    /// rounded to bf16 where `out` is [`Elem::Bf16`]).
    pub(super) fn map(&self, name: &str, expr: &Expr, operands: &[Elem], out: Elem) -> Built<()> {
        let k = operands.len() as u32;
        let mut params = vec![Param::Ptr; 1 + k as usize];
        params.extend(std::iter::repeat_n(Param::I64, 1 + k as usize));
        let f = self.declare(name, &params);
        let n = self.param_int(f, 1 + k);
        self.grid_loop(f, n, |i| {
            let mut values = Vec::new();
            for (j, elem) in operands.iter().enumerate() {
                let len = self.param_int(f, 2 + k + j as u32);
                let same = self.eq_int(len, n)?;
                let wrapped = self.urem(i, len)?;
                let at = self.select(same, i, wrapped)?;
                let ptr = self.param_ptr(f, 1 + j as u32);
                values.push(match elem {
                    Elem::Real => Val::Real(self.load_f32(ptr, at)?),
                    Elem::Complex => {
                        let at2 = self.mul(at, self.int(2))?;
                        let at2i = self.add(at2, self.int(1))?;
                        Val::Complex(self.load_f32(ptr, at2)?, self.load_f32(ptr, at2i)?)
                    }
                    Elem::Int => Val::Int(self.load_i32(ptr, at)?),
                    Elem::Code2 | Elem::Bf16 => {
                        return Err(format!("elementwise kernels take no {elem:?} operands"))
                    }
                });
            }
            let bf16 = out == Elem::Bf16;
            let result = self.eval(expr, &values, if bf16 { Elem::Real } else { out })?;
            let dst = self.param_ptr(f, 0);
            match result {
                Val::Real(v) => self.store_real(dst, i, v, bf16),
                Val::Complex(re, im) => {
                    let at2 = self.mul(i, self.int(2))?;
                    self.store_f32(dst, at2, re)?;
                    self.store_f32(dst, self.add(at2, self.int(1))?, im)
                }
                Val::Int(v) => self.store_i32(dst, i, v),
            }
        })?;
        self.ret()
    }

    /// `to_bf16(out, x, pairs, n)`: [`Kernel::ToBf16`] over the `n` words
    /// of `x`.
    pub(super) fn to_bf16(&self, name: &str) -> Built<()> {
        let (f, [out, x], [pairs, n]) = self.declare_kernel(name);
        self.grid_loop(f, pairs, |p| {
            let lo_at = self.mul(p, self.int(2))?;
            let hi_at = self.add(lo_at, self.int(1))?;
            let inside = self
                .builder
                .build_int_compare(IntPredicate::SLT, hi_at, n, "")
                .map_err(err)?;
            let lo = self.load_f32(x, lo_at)?;
            let hi = self.load_f32(x, self.select(inside, hi_at, lo_at)?)?;
            let hi = self.select(inside, hi, self.float(0.0))?;
            self.store_i32(out, p, self.pack(lo, hi)?)
        })?;
        self.ret()
    }

    pub(super) fn eval(&self, expr: &Expr, operands: &[Val<'ctx>], out: Elem) -> Built<Val<'ctx>> {
        let (op, args) = match expr {
            Expr::Operand(k) => return Ok(operands[*k]),
            Expr::Apply(op, args) => (op, args),
        };
        let args = args
            .iter()
            .map(|a| self.eval(a, operands, out))
            .collect::<Built<Vec<_>>>()?;
        let both = |f: &dyn Fn(FloatValue<'ctx>) -> Built<FloatValue<'ctx>>,
                    v: Val<'ctx>|
         -> Built<Val<'ctx>> {
            Ok(match v {
                Val::Real(x) => Val::Real(f(x)?),
                Val::Complex(re, im) => Val::Complex(f(re)?, f(im)?),
                Val::Int(_) => return Err(format!("{op:?} takes floats")),
            })
        };
        let real = |v: Val<'ctx>| match v {
            Val::Real(x) => Ok(x),
            _ => Err(format!("{op:?} takes real operands")),
        };
        Ok(match (op, args.as_slice()) {
            (MapOp::Add | MapOp::Sub, [a, b]) => {
                let f = |x, y| {
                    if *op == MapOp::Add {
                        self.fadd(x, y)
                    } else {
                        self.fsub(x, y)
                    }
                };
                match (a, b) {
                    (Val::Real(x), Val::Real(y)) => Val::Real(f(*x, *y)?),
                    (Val::Complex(a, b), Val::Complex(c, d)) => {
                        Val::Complex(f(*a, *c)?, f(*b, *d)?)
                    }
                    _ => return Err("operands of one element type".into()),
                }
            }
            (MapOp::Mul, [a, b]) => match (a, b) {
                (Val::Real(x), Val::Real(y)) => Val::Real(self.fmul(*x, *y)?),
                (Val::Complex(a, b), Val::Complex(c, d)) => Val::Complex(
                    self.fsub(self.fmul(*a, *c)?, self.fmul(*b, *d)?)?,
                    self.fadd(self.fmul(*a, *d)?, self.fmul(*b, *c)?)?,
                ),
                _ => return Err("operands of one element type".into()),
            },
            (MapOp::Div, [a, b]) => Val::Real(self.fdiv(real(*a)?, real(*b)?)?),
            (MapOp::Unary(UnaryFn::Neg), [Val::Int(v)]) => {
                Val::Int(self.builder.build_int_neg(*v, "").map_err(err)?)
            }
            (MapOp::Unary(func), [a]) => match func {
                UnaryFn::Neg => both(&|x| self.fneg(x), *a)?,
                UnaryFn::RoundBf16 => both(&|x| self.round_bf16(x), *a)?,
                UnaryFn::Exp => Val::Real(self.exp(real(*a)?)?),
                UnaryFn::Sqrt => Val::Real(self.sqrt(real(*a)?)?),
                UnaryFn::Recip => Val::Real(self.fdiv(self.float(1.0), real(*a)?)?),
                UnaryFn::Sigmoid => {
                    let e = self.exp(self.fneg(real(*a)?)?)?;
                    Val::Real(self.fdiv(self.float(1.0), self.fadd(self.float(1.0), e)?)?)
                }
            },
            (MapOp::Silu, [a]) => {
                let x = real(*a)?;
                let e = self.exp(self.fneg(x)?)?;
                Val::Real(self.fdiv(x, self.fadd(self.float(1.0), e)?)?)
            }
            (MapOp::Scale(s), [a]) => both(&|x| self.fmul(x, self.float(*s)), *a)?,
            (MapOp::Fill(v), [_]) => match out {
                Elem::Complex => Val::Complex(self.float(*v), self.float(0.0)),
                _ => Val::Real(self.float(*v)),
            },
            (MapOp::Conj, [Val::Complex(re, im)]) => Val::Complex(*re, self.fneg(*im)?),
            (MapOp::ClipFactor(max_norm), [a]) => {
                let norm = self.sqrt(self.fmax(real(*a)?, self.float(0.0))?)?;
                let over = self
                    .builder
                    .build_float_compare(FloatPredicate::OGT, norm, self.float(*max_norm), "")
                    .map_err(err)?;
                let factor = self.fdiv(self.float(*max_norm), norm)?;
                Val::Real(self.select(over, factor, self.float(1.0))?)
            }
            (MapOp::CReluSquared, [Val::Complex(re, im)]) => {
                let third = self.third_quadrant(*re, *im)?;
                let pick = |v: FloatValue<'ctx>| self.zero_where(third, self.fmul(v, v)?);
                Val::Complex(pick(*re)?, pick(*im)?)
            }
            (MapOp::CReluSquaredGrad, [Val::Complex(re, im), Val::Complex(dre, dim)]) => {
                let third = self.third_quadrant(*re, *im)?;
                let pick = |v: FloatValue<'ctx>, d: FloatValue<'ctx>| {
                    self.zero_where(third, self.fmul(self.fmul(self.float(2.0), v)?, d)?)
                };
                Val::Complex(pick(*re, *dre)?, pick(*im, *dim)?)
            }
            (op, args) => return Err(format!("{op:?} with {} operands", args.len())),
        })
    }

    /// Whether `re + i·im` lies in the open third quadrant (CReLU²'s zero).
    fn third_quadrant(&self, re: FloatValue<'ctx>, im: FloatValue<'ctx>) -> Built<IntValue<'ctx>> {
        let zero = self.float(0.0);
        let neg = |v| {
            self.builder
                .build_float_compare(FloatPredicate::OLT, v, zero, "")
                .map_err(err)
        };
        self.builder.build_and(neg(re)?, neg(im)?, "").map_err(err)
    }

    /// 0 where `cond`, else `v`.
    fn zero_where(&self, cond: IntValue<'ctx>, v: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.select(cond, self.float(0.0), v)
    }
}
