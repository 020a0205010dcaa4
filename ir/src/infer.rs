//! Type rules: the result type of every op from its operand types.
//!
//! The builder uses these rules to type new nodes and the verifier re-runs
//! them to check every node after a transformation.

use crate::op::{AttentionOperand, Granularity, NormOperand, Op, Scheme, UnaryFn};
use crate::types::{DType, Dim, Shape, TensorType};

/// Infers the result type of a non-leaf op. Leaf ops (`input`, `weight`)
/// and `zeros` carry a declared type and are not inferred.
pub fn infer_type(op: &Op, operands: &[&TensorType]) -> Result<TensorType, String> {
    if !op.arity().accepts(operands.len()) {
        return Err(format!(
            "`{}` takes {} operands, found {}",
            op.mnemonic(),
            op.arity(),
            operands.len()
        ));
    }
    match op {
        Op::Input { .. } | Op::Weight { .. } | Op::Zeros => {
            Err(format!("`{}` has a declared type", op.mnemonic()))
        }
        Op::Embed => {
            let (ids, table) = (operands[0], operands[1]);
            expect_rank(table, 2, "embedding table")?;
            expect_numeric(table, "embedding table")?;
            if ids.dtype != DType::I32 {
                return Err(format!("token ids must be i32, found {}", ids.dtype));
            }
            let mut dims = ids.shape.dims().to_vec();
            dims.push(table.shape.dims()[1].clone());
            Ok(TensorType::new(table.dtype, Shape(dims)))
        }
        Op::Linear => {
            let (x, w) = (operands[0], operands[1]);
            expect_numeric(x, "input")?;
            expect_rank(w, 2, "weight")?;
            same_dtype(x, w)?;
            let k = last(x, "input")?;
            if *k != w.shape.dims()[1] {
                return Err(format!(
                    "input's last dimension {k} does not match the weight's in-features {} (weight {})",
                    w.shape.dims()[1],
                    w
                ));
            }
            Ok(TensorType::new(
                x.dtype,
                x.shape.with_last(w.shape.dims()[0].clone()),
            ))
        }
        Op::RmsNorm { eps } => {
            let (x, gain) = (operands[0], operands[1]);
            expect_float(x, "input")?;
            if gain.dtype != DType::F32 {
                return Err(format!("gain must be f32, found {gain}"));
            }
            if !(eps.is_finite() && *eps >= 0.0) {
                return Err(format!("eps must be finite and non-negative, found {eps}"));
            }
            expect_rank(gain, 1, "gain")?;
            // A complex norm has two real gains, for the real and imaginary parts.
            let want = match (x.dtype, last(x, "input")?) {
                (DType::C64, Dim::Fixed(n)) => Dim::Fixed(
                    n.checked_mul(2)
                        .ok_or_else(|| format!("the input {x} has too many channels"))?,
                ),
                (_, d) => d.clone(),
            };
            if gain.shape.dims()[0] != want {
                return Err(format!(
                    "gain {gain} does not match {x}: expected {want} gains"
                ));
            }
            Ok(x.clone())
        }
        Op::Rope { head_dim, base, .. } => {
            let (x, pos) = (operands[0], operands[1]);
            expect_float(x, "input")?;
            if *head_dim == 0 || head_dim % 2 != 0 {
                return Err(format!(
                    "head_dim must be even and positive, found {head_dim}"
                ));
            }
            if !(base.is_finite() && *base > 0.0) {
                return Err(format!("base must be positive, found {base}"));
            }
            // A complex input holds two real channels per element.
            let channels = match (x.dtype, last(x, "input")?) {
                (DType::C64, Dim::Fixed(n)) => Dim::Fixed(
                    n.checked_mul(2)
                        .ok_or_else(|| format!("the input {x} has too many channels"))?,
                ),
                (_, d) => d.clone(),
            };
            divisible(&channels, *head_dim, "the input's channels", "head_dim")?;
            expect_positions(x, pos)?;
            Ok(x.clone())
        }
        Op::Attention {
            heads,
            kv_heads,
            segment,
            ..
        } => {
            let (q, k, v) = (operands[0], operands[1], operands[2]);
            expect_float(q, "queries")?;
            same_dtype(q, k)?;
            same_dtype(q, v)?;
            if *heads == 0 || *kv_heads == 0 || heads % kv_heads != 0 {
                return Err(format!(
                    "heads ({heads}) must be a positive multiple of kv_heads ({kv_heads})"
                ));
            }
            for (t, what) in [(q, "queries"), (k, "keys"), (v, "values")] {
                if t.shape.rank() < 2 {
                    return Err(format!("{what} must be [..., seq, channels], found {t}"));
                }
            }
            // Keys and values may be longer than the queries (a KV cache
            // before them); batch dimensions agree everywhere.
            let r = q.shape.rank();
            if k.shape.rank() != r || v.shape.rank() != r {
                return Err(format!(
                    "queries {q}, keys {k} and values {v} must have the same rank"
                ));
            }
            // Segments are sequences of the queries' own rows: no cache.
            if let Some(n) = segment {
                if r != 2 {
                    return Err(format!(
                        "segment = {n} needs [rows, channels] operands, found queries {q}"
                    ));
                }
                let rows = &q.shape.dims()[r - 2];
                if k.shape.dims()[r - 2] != *rows {
                    return Err(format!(
                        "with segment = {n}, keys {k} must be the queries' own rows {q}"
                    ));
                }
                if let Dim::Fixed(_) = rows {
                    divisible(rows, *n, "the rows", "segment")?;
                }
            }
            if k.shape.dims()[..r - 1] != v.shape.dims()[..r - 1]
                || k.shape.dims()[..r - 2] != q.shape.dims()[..r - 2]
            {
                return Err(format!(
                    "queries {q}, keys {k} and values {v} must agree on their batch dimensions, keys and values on all but the last"
                ));
            }
            let qd = head_width(last(q, "queries")?, *heads, "queries")?;
            let kd = head_width(last(k, "keys")?, *kv_heads, "keys")?;
            let vd = head_width(last(v, "values")?, *kv_heads, "values")?;
            if qd != kd {
                return Err(format!(
                    "query head width {qd} differs from key head width {kd}"
                ));
            }
            let width = heads
                .checked_mul(vd)
                .ok_or_else(|| format!("{heads} heads of width {vd} overflow a size"))?;
            Ok(TensorType::new(
                q.dtype,
                q.shape.with_last(Dim::Fixed(width)),
            ))
        }
        Op::Silu | Op::Softmax => {
            expect_real(operands[0], "input")?;
            Ok(operands[0].clone())
        }
        Op::Unary { func } => {
            let x = operands[0];
            match func {
                // Negated positions turn RoPE back.
                UnaryFn::Neg if x.dtype == DType::I32 => {}
                UnaryFn::Neg | UnaryFn::RoundBf16 => expect_numeric(x, "input")?,
                _ => expect_real(x, "input")?,
            }
            Ok(x.clone())
        }
        Op::Div => {
            expect_real(operands[0], "left operand")?;
            infer_type(&Op::Add, operands)
        }
        Op::Add | Op::Mul => {
            let (a, b) = (operands[0], operands[1]);
            expect_numeric(a, "left operand")?;
            same_dtype(a, b)?;
            let (ad, bd) = (a.shape.dims(), b.shape.dims());
            if bd.len() > ad.len() || ad[ad.len() - bd.len()..] != *bd {
                return Err(format!(
                    "right operand {b} must have the left operand's shape {} or a suffix of it",
                    a.shape
                ));
            }
            Ok(a.clone())
        }
        Op::Reshape { shape } => {
            let x = operands[0];
            let from = x.shape.symbolic_size();
            let to = shape.symbolic_size();
            if from.is_none() || to.is_none() || from != to {
                return Err(format!(
                    "cannot reshape {} to {shape}: element counts differ",
                    x.shape
                ));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Transpose { perm } => {
            let x = operands[0];
            let mut seen = vec![false; x.shape.rank()];
            if perm.len() != x.shape.rank() {
                return Err(format!(
                    "perm {perm:?} does not match rank {} of {x}",
                    x.shape.rank()
                ));
            }
            for &p in perm {
                match seen.get_mut(p) {
                    Some(s) if !*s => *s = true,
                    _ => return Err(format!("perm {perm:?} is not a permutation")),
                }
            }
            let dims = perm.iter().map(|&p| x.shape.dims()[p].clone()).collect();
            Ok(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Slice { axis, start, end } => {
            let x = operands[0];
            let d = axis_dim(x, *axis)?;
            match d {
                Dim::Fixed(n) if start < end && *end <= n => {}
                _ => {
                    return Err(format!(
                        "slice {start}..{end} is empty or outside dimension {axis} ({d}) of {x}"
                    ))
                }
            }
            let mut dims = x.shape.dims().to_vec();
            dims[*axis] = Dim::Fixed(end - start);
            Ok(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Concat { axis } => {
            let first = operands[0];
            axis_dim(first, *axis)?;
            let mut total = 0usize;
            let mut symbolic: Vec<String> = Vec::new();
            for t in operands {
                same_dtype(first, t)?;
                let mut a = t.shape.dims().to_vec();
                let mut b = first.shape.dims().to_vec();
                if a.len() != b.len() {
                    return Err(format!("concat operands {first} and {t} differ in rank"));
                }
                match a[*axis].clone() {
                    Dim::Fixed(n) => {
                        total = total
                            .checked_add(n)
                            .ok_or_else(|| format!("concat along axis {axis} overflows a size"))?
                    }
                    Dim::Sym(s) => symbolic.push(s),
                }
                a[*axis] = Dim::Fixed(0);
                b[*axis] = Dim::Fixed(0);
                if a != b {
                    return Err(format!(
                        "concat operands {first} and {t} differ outside axis {axis}"
                    ));
                }
            }
            // Along symbolic sizes the result's size is their sum, named
            // as such (`past_plus_seq`): bound when the graph runs.
            let mut dims = first.shape.dims().to_vec();
            dims[*axis] = if symbolic.is_empty() {
                Dim::Fixed(total)
            } else {
                if total > 0 {
                    symbolic.push(total.to_string());
                }
                Dim::Sym(symbolic.join("_plus_"))
            };
            Ok(TensorType::new(first.dtype, Shape(dims)))
        }
        Op::Pack { block } => {
            let x = operands[0];
            expect_real(x, "input")?;
            let n = fixed_last(x)?;
            check_block(n, *block)?;
            Ok(TensorType::new(
                DType::C64,
                x.shape.with_last(Dim::Fixed(n.div_ceil(2))),
            ))
        }
        Op::Unpack { block } => {
            let x = operands[0];
            expect_complex(x)?;
            let m = fixed_last(x)?
                .checked_mul(2)
                .ok_or_else(|| format!("the input {x} has too many channels"))?;
            check_block(m, *block)?;
            Ok(TensorType::new(
                DType::F32,
                x.shape.with_last(Dim::Fixed(m)),
            ))
        }
        Op::Sub => {
            let (a, b) = (operands[0], operands[1]);
            infer_type(&Op::Add, &[a, b])
        }
        Op::WidelyLinear {
            row_block,
            col_block,
            ..
        } => {
            let r = operands[0];
            expect_real(r, "weight")?;
            let (rows, cols) = matrix(r)?;
            check_block(rows, *row_block)?;
            check_block(cols, *col_block)?;
            Ok(TensorType::new(
                DType::C64,
                Shape::new([rows.div_ceil(2), cols.div_ceil(2)]),
            ))
        }
        Op::Quantize {
            scheme,
            granularity,
            ..
        } => {
            let w = operands[0];
            match scheme {
                Scheme::Phase => expect_complex(w)?,
                Scheme::PhaseIfairy => {
                    expect_complex(w)?;
                    if *granularity != Granularity::Tensor {
                        return Err("iFairy PhaseQuant has per-tensor scales only".into());
                    }
                }
                Scheme::Binary | Scheme::Ternary => expect_real(w, "weight")?,
            }
            matrix(w)?;
            check_granularity(*granularity)?;
            Ok(w.clone())
        }
        Op::PhaseCodes { .. } => {
            let w = operands[0];
            expect_complex(w)?;
            matrix(w)?;
            Ok(TensorType::new(DType::Code2, w.shape.clone()))
        }
        Op::PhaseScales { granularity, .. } => {
            let w = operands[0];
            expect_complex(w)?;
            let (n, m) = matrix(w)?;
            check_granularity(*granularity)?;
            Ok(TensorType::new(DType::F32, scale_shape(*granularity, n, m)))
        }
        Op::CReluSquared => {
            expect_complex(operands[0])?;
            Ok(operands[0].clone())
        }
        Op::ActQuant { bits } => {
            let x = operands[0];
            expect_numeric(x, "input")?;
            fixed_last(x)?;
            if !(2..=16).contains(bits) {
                return Err(format!("bits must be in 2..=16, found {bits}"));
            }
            Ok(x.clone())
        }
        Op::Dequant { granularity } => {
            let (codes, scales) = (operands[0], operands[1]);
            if codes.dtype != DType::Code2 {
                return Err(format!("codes must be code2, found {codes}"));
            }
            let (n, m) = matrix(codes)?;
            check_granularity(*granularity)?;
            let want = scale_shape(*granularity, n, m);
            if scales.dtype != DType::F32 || scales.shape != want {
                return Err(format!(
                    "scales must be f32{want} for {codes}, found {scales}"
                ));
            }
            Ok(TensorType::new(DType::C64, codes.shape.clone()))
        }
        Op::QuantLinear {
            u_stages,
            w_stages,
            granularity,
        } => {
            let x = operands[0];
            expect_complex(x)?;
            let weights = &operands[1..];
            let stages = u_stages
                .checked_add(*w_stages)
                .filter(|&t| t > 0 && t <= 64)
                .ok_or_else(|| {
                    format!("`quant_linear` needs 1 to 64 stages, found {u_stages} + {w_stages}")
                })?;
            if weights.len() != 2 * stages {
                return Err(format!(
                    "`quant_linear` with {stages} stages takes x and {} codes and scales (U's stages, then W's), found {}",
                    2 * stages,
                    weights.len()
                ));
            }
            let want = TensorType::new(DType::Code2, weights[0].shape.clone());
            let (n, m) = matrix(weights[0])?;
            check_granularity(*granularity)?;
            for pair in weights.chunks_exact(2) {
                if *pair[0] != want {
                    return Err(format!(
                        "every stage's codes must be {want} as the first, found {}",
                        pair[0]
                    ));
                }
                infer_type(
                    &Op::Dequant {
                        granularity: *granularity,
                    },
                    &[pair[0], pair[1]],
                )?;
            }
            if *last(x, "input")? != Dim::Fixed(m) {
                return Err(format!(
                    "input {x} does not match the codes' in-features {m}"
                ));
            }
            Ok(TensorType::new(
                DType::C64,
                x.shape.with_last(Dim::Fixed(n)),
            ))
        }
        Op::Conj => {
            expect_complex(operands[0])?;
            Ok(operands[0].clone())
        }
        Op::CrossEntropy => {
            let (logits, targets) = (operands[0], operands[1]);
            expect_targets(logits, targets)?;
            Ok(TensorType::new(DType::F32, Shape::default()))
        }
        Op::CrossEntropyGrad => {
            let (logits, targets, dloss) = (operands[0], operands[1], operands[2]);
            expect_targets(logits, targets)?;
            if dloss.dtype != DType::F32 || dloss.shape.rank() != 0 {
                return Err(format!("the loss gradient must be f32[], found {dloss}"));
            }
            Ok(logits.clone())
        }
        Op::KlDiv | Op::KlDivGrad => {
            let (student, teacher) = (operands[0], operands[1]);
            expect_real(student, "student logits")?;
            if teacher != student {
                return Err(format!(
                    "teacher logits {teacher} must have the student's type {student}"
                ));
            }
            if let Op::KlDivGrad = op {
                expect_f32_scalar(operands[2], "the loss gradient")?;
                Ok(student.clone())
            } else {
                Ok(TensorType::new(DType::F32, Shape::default()))
            }
        }
        Op::Sample { temperature } => {
            let (logits, draws) = (operands[0], operands[1]);
            let dims = logits.shape.dims();
            if logits.dtype != DType::F32 || dims.last().is_none_or(|v| *v == Dim::Fixed(0)) {
                return Err(format!(
                    "logits must be f32[..., vocab] over a vocabulary, found {logits}"
                ));
            }
            if draws.dtype != DType::F32 || draws.shape.dims() != &dims[..dims.len() - 1] {
                return Err(format!(
                    "draws must be f32 of the logits' leading shape; found {draws} for logits {logits}"
                ));
            }
            if !(temperature.is_finite() && *temperature >= 0.0) {
                return Err(format!(
                    "the temperature must be 0 or positive, found {temperature}"
                ));
            }
            Ok(TensorType::new(DType::I32, draws.shape.clone()))
        }
        Op::Fill { value } => {
            expect_numeric(operands[0], "template")?;
            if !value.is_finite() {
                return Err(format!("fill value must be finite, found {value}"));
            }
            Ok(operands[0].clone())
        }
        Op::Scale { factor } => {
            expect_numeric(operands[0], "input")?;
            if !factor.is_finite() {
                return Err(format!("scale factor must be finite, found {factor}"));
            }
            Ok(operands[0].clone())
        }
        Op::AdamUpdate { eps } => {
            let p = operands[0];
            expect_real(p, "parameter")?;
            for (t, what) in [
                (operands[1], "first moment"),
                (operands[2], "second moment"),
            ] {
                if t != p {
                    return Err(format!("{what} {t} must have the parameter's type {p}"));
                }
            }
            for (t, what) in [
                (operands[3], "lr"),
                (operands[4], "c1"),
                (operands[5], "c2"),
                (operands[6], "weight_decay"),
            ] {
                expect_f32_scalar(t, what)?;
            }
            if !(eps.is_finite() && *eps > 0.0) {
                return Err(format!("eps ({eps}) must be positive"));
            }
            Ok(p.clone())
        }
        Op::SumSquares => {
            expect_real(operands[0], "input")?;
            Ok(TensorType::new(DType::F32, Shape(vec![])))
        }
        Op::AllReduce => {
            let x = operands[0];
            if !x.dtype.is_real_float() {
                return Err(format!("input must be a real float tensor, found {x}"));
            }
            Ok(x.clone())
        }
        Op::BroadcastFrom { .. } => {
            let x = operands[0];
            if !(x.dtype.is_real_float() || matches!(x.dtype, DType::C64 | DType::Code2)) {
                return Err(format!(
                    "input must be a real float, c64 or code2 tensor, found {x}"
                ));
            }
            Ok(x.clone())
        }
        Op::ClipFactor { max_norm } => {
            expect_f32_scalar(operands[0], "squared norm")?;
            if !(max_norm.is_finite() && *max_norm > 0.0) {
                return Err(format!("max_norm ({max_norm}) must be positive"));
            }
            Ok(operands[0].clone())
        }
        Op::ReduceTo { shape } => {
            let x = operands[0];
            expect_numeric(x, "input")?;
            let d = x.shape.dims();
            if shape.rank() > d.len() || d[d.len() - shape.rank()..] != *shape.dims() {
                return Err(format!("{shape} is not a suffix of the shape of {x}"));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let x = operands[0];
            expect_numeric(x, "input")?;
            let Dim::Fixed(n) = axis_dim(x, *axis)? else {
                return Err(format!("cannot pad symbolic dimension {axis} of {x}"));
            };
            let mut dims = x.shape.dims().to_vec();
            let padded = before
                .checked_add(n)
                .and_then(|m| m.checked_add(*after))
                .ok_or_else(|| format!("padding {before} + {n} + {after} overflows a size"))?;
            dims[*axis] = Dim::Fixed(padded);
            Ok(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::LinearWeightGrad => {
            let (dy, x) = (operands[0], operands[1]);
            expect_float(dy, "output gradient")?;
            same_dtype(dy, x)?;
            let (rd, rx) = (dy.shape.dims(), x.shape.dims());
            if rd.len() != rx.len() || rd[..rd.len() - 1] != rx[..rx.len() - 1] {
                return Err(format!(
                    "output gradient {dy} and input {x} must agree on all but the last dimension"
                ));
            }
            Ok(TensorType::new(
                x.dtype,
                Shape(vec![
                    last(dy, "output gradient")?.clone(),
                    last(x, "input")?.clone(),
                ]),
            ))
        }
        Op::EmbedGrad { vocab } => {
            let (ids, dy) = (operands[0], operands[1]);
            if ids.dtype != DType::I32 {
                return Err(format!("token ids must be i32, found {}", ids.dtype));
            }
            expect_float(dy, "output gradient")?;
            if dy.shape.dims()[..dy.shape.rank() - 1] != *ids.shape.dims() {
                return Err(format!(
                    "output gradient {dy} must be the ids' shape {} plus a width",
                    ids.shape
                ));
            }
            Ok(TensorType::new(
                dy.dtype,
                Shape(vec![
                    Dim::Fixed(*vocab),
                    last(dy, "output gradient")?.clone(),
                ]),
            ))
        }
        Op::Crelu2Grad => {
            let (z, dy) = (operands[0], operands[1]);
            expect_complex(z)?;
            same_type(z, dy)?;
            Ok(z.clone())
        }
        Op::SiluGrad | Op::SoftmaxGrad => {
            let (x, dy) = (operands[0], operands[1]);
            expect_real(x, "input")?;
            same_type(x, dy)?;
            Ok(x.clone())
        }
        Op::RmsNormGrad { eps, which } => {
            let (x, gain, dy) = (operands[0], operands[1], operands[2]);
            let y = infer_type(&Op::RmsNorm { eps: *eps }, &[x, gain])?;
            same_type(&y, dy)?;
            Ok(match which {
                NormOperand::Input => x.clone(),
                NormOperand::Gain => gain.clone(),
            })
        }
        Op::AttentionGrad {
            which,
            heads,
            kv_heads,
            scale,
            causal,
            segment,
        } => {
            let attention = Op::Attention {
                heads: *heads,
                kv_heads: *kv_heads,
                scale: *scale,
                causal: *causal,
                segment: *segment,
            };
            let y = infer_type(&attention, &operands[..3])?;
            // A training step: keys and values are the queries' own sequence.
            let (q, k) = (operands[0], operands[1]);
            if k.shape.dims()[..k.shape.rank() - 1] != q.shape.dims()[..q.shape.rank() - 1] {
                return Err(format!(
                    "keys {k} must cover the queries' positions {q} (no KV cache in a gradient)"
                ));
            }
            same_type(&y, operands[3])?;
            Ok(match which {
                AttentionOperand::Q => operands[0].clone(),
                AttentionOperand::K => operands[1].clone(),
                AttentionOperand::V => operands[2].clone(),
            })
        }
        Op::WidelyLinearGrad {
            part,
            row_block,
            col_block,
        } => {
            let (r, d) = (operands[0], operands[1]);
            let wl = Op::WidelyLinear {
                part: *part,
                row_block: *row_block,
                col_block: *col_block,
                arithmetic: crate::op::Arithmetic::F32,
            };
            same_type(&infer_type(&wl, &[r])?, d)?;
            Ok(r.clone())
        }
        Op::QuantizeGrad {
            scheme,
            granularity,
            arithmetic,
        } => {
            let (w, dq) = (operands[0], operands[1]);
            if *scheme == Scheme::PhaseIfairy {
                return Err(
                    "the scale-aware gradient is derived for phase, binary and ternary only".into(),
                );
            }
            let q = Op::Quantize {
                scheme: *scheme,
                granularity: *granularity,
                arithmetic: *arithmetic,
            };
            same_type(&infer_type(&q, &[w])?, dq)?;
            Ok(w.clone())
        }
    }
}

/// Logits `f32[..., V]` and targets `i32[...]` of the same leading shape.
fn expect_targets(logits: &TensorType, targets: &TensorType) -> Result<(), String> {
    if logits.dtype != DType::F32 || logits.shape.rank() == 0 {
        return Err(format!("logits must be f32[..., vocab], found {logits}"));
    }
    let r = logits.shape.rank();
    if targets.dtype != DType::I32 || targets.shape.dims() != &logits.shape.dims()[..r - 1] {
        return Err(format!(
            "targets must be i32 of the logits' leading shape; found {targets} for logits {logits}"
        ));
    }
    Ok(())
}

fn same_type(want: &TensorType, got: &TensorType) -> Result<(), String> {
    if want == got {
        Ok(())
    } else {
        Err(format!("expected a gradient of type {want}, found {got}"))
    }
}

/// The shape of the scales of an `[n, m]` weight: an (re, im) pair per
/// tensor, per row, or per group of inputs within a row.
pub fn scale_shape(g: Granularity, n: usize, m: usize) -> Shape {
    match g {
        Granularity::Tensor => Shape::new([2]),
        Granularity::Channel => Shape::new([n, 2]),
        Granularity::Group(size) => Shape::new([n, m.div_ceil(size.max(1)), 2]),
    }
}

fn check_granularity(g: Granularity) -> Result<(), String> {
    match g {
        Granularity::Group(0) => Err("group_size must be positive".into()),
        _ => Ok(()),
    }
}

/// Pairing blocks must tile the dimension and hold whole pairs.
fn check_block(n: usize, block: usize) -> Result<(), String> {
    if block == 0 || (block.is_multiple_of(2) && n.is_multiple_of(block)) {
        Ok(())
    } else {
        Err(format!(
            "pairing block {block} must be even and divide the dimension {n} (or be 0 for halves)"
        ))
    }
}

fn fixed_last(t: &TensorType) -> Result<usize, String> {
    match t.shape.last() {
        Some(Dim::Fixed(n)) if *n > 0 => Ok(*n),
        _ => Err(format!("the last dimension of {t} must be a positive size")),
    }
}

fn matrix(t: &TensorType) -> Result<(usize, usize), String> {
    match t.shape.dims() {
        [Dim::Fixed(r), Dim::Fixed(c)] if *r > 0 && *c > 0 => Ok((*r, *c)),
        _ => Err(format!("expected a matrix of fixed size, found {t}")),
    }
}

fn expect_rank(t: &TensorType, rank: usize, what: &str) -> Result<(), String> {
    if t.shape.rank() == rank {
        Ok(())
    } else {
        Err(format!("{what} must have rank {rank}, found {t}"))
    }
}

fn expect_numeric(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_numeric() {
        Ok(())
    } else {
        Err(format!(
            "{what} must be a real or complex float tensor, found {t}"
        ))
    }
}

/// Real or complex, and at least rank 1.
fn expect_float(t: &TensorType, what: &str) -> Result<(), String> {
    expect_numeric(t, what)?;
    last(t, what).map(|_| ())
}

fn expect_real(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_real_float() && t.shape.rank() > 0 {
        Ok(())
    } else {
        Err(format!("{what} must be a real float tensor, found {t}"))
    }
}

fn expect_complex(t: &TensorType) -> Result<(), String> {
    if t.dtype == DType::C64 && t.shape.rank() > 0 {
        Ok(())
    } else {
        Err(format!("input must be a c64 tensor, found {t}"))
    }
}

fn same_dtype(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.dtype == b.dtype {
        Ok(())
    } else {
        Err(format!("element types differ: {a} and {b}"))
    }
}

fn last<'a>(t: &'a TensorType, what: &str) -> Result<&'a Dim, String> {
    t.shape
        .last()
        .ok_or_else(|| format!("{what} must have at least one dimension, found {t}"))
}

fn axis_dim(t: &TensorType, axis: usize) -> Result<Dim, String> {
    t.shape
        .dims()
        .get(axis)
        .cloned()
        .ok_or_else(|| format!("axis {axis} is out of range for {t}"))
}

fn divisible(d: &Dim, by: usize, what: &str, by_what: &str) -> Result<usize, String> {
    match d {
        Dim::Fixed(n) if n % by == 0 => Ok(n / by),
        _ => Err(format!(
            "{what} ({d}) must be a multiple of {by_what} ({by})"
        )),
    }
}

fn head_width(d: &Dim, heads: usize, what: &str) -> Result<usize, String> {
    divisible(d, heads, &format!("{what}' channels"), "their head count")
}

fn expect_positions(x: &TensorType, pos: &TensorType) -> Result<(), String> {
    let r = x.shape.rank();
    if pos.dtype != DType::I32
        || pos.shape.rank() != 1
        || r < 2
        || pos.shape.dims()[0] != x.shape.dims()[r - 2]
    {
        return Err(format!(
            "positions must be i32[seq] matching the input's sequence dimension; found {pos} for input {x}"
        ));
    }
    Ok(())
}

fn expect_f32_scalar(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype != DType::F32 || t.shape.rank() != 0 {
        return Err(format!("{what} must be an f32[] scalar, found {t}"));
    }
    Ok(())
}
