//! The operations of the IR, declared once in one table.
//!
//! Each entry of [`define_ops!`] below names an op's variant, its mnemonic,
//! its attributes (the variant's fields, whose types say how they print and
//! parse: [`attr::AttrField`]), its operands and its kind. The enum, the
//! mnemonic, arity, operand names, attribute list, printer and parser all
//! come from that one entry; the type rule (`infer`), the kernels and,
//! where an op has one, the gradient rule (`fairyc_passes::autodiff`) and
//! the decomposition of a composite ([`crate::decompose`]) are keyed by the
//! variant. Adding an op means adding an entry here and its rules there.
//!
//! Ops act on the trailing dimensions of their operands, so leading batch
//! dimensions pass through unchanged.

mod attr;

use attr::named_attr;
pub use attr::{Attr, AttrField, AttrMap, AttrReader, NamedAttr};

use std::fmt;

pub use crate::quant::{Arithmetic, Granularity};
use crate::types::Shape;

/// What a backend owes an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Graph inputs and weight references: bound, not computed. (Not
    /// every op without operands: `zeros` is computed.)
    Leaf,
    /// The core IR: every backend implements these.
    Primitive,
    /// Has a decomposition into primitives ([`crate::decompose`]); a backend
    /// may implement it natively or take the decomposition.
    Composite,
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exactly(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// Generates [`Op`] and everything derived from its table: see the module
/// docs. An entry is
/// `Variant { field: Type, .. } => "mnemonic" (operand, ..) [variadic], kind;`
/// where `variadic` means the last operand repeats (at least once).
macro_rules! define_ops {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident $({ $($field:ident : $fty:ty),* $(,)? })?
            => $mnemonic:literal ($($operand:ident),*) $($variadic:ident)?, $kind:ident;
    )*) => {
        /// One operation. Each node of a graph applies one op to its
        /// operands and defines exactly one value.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $( $(#[doc = $doc])* $variant $({ $($field: $fty),* })?, )*
        }

        impl Op {
            /// Every op's mnemonic, in table order.
            pub const MNEMONICS: &'static [&'static str] = &[$($mnemonic),*];

            /// The op's mnemonic in the textual form.
            pub fn mnemonic(&self) -> &'static str {
                match self { $(Op::$variant { .. } => $mnemonic,)* }
            }

            /// The operands' names, as the table declares them.
            pub fn operand_names(&self) -> &'static [&'static str] {
                match self { $(Op::$variant { .. } => &[$(stringify!($operand)),*],)* }
            }

            pub fn arity(&self) -> Arity {
                let n = self.operand_names().len();
                let variadic = match self {
                    $(Op::$variant { .. } => false $(|| stringify!($variadic) == "variadic")?,)*
                };
                if variadic { Arity::AtLeast(n) } else { Arity::Exactly(n) }
            }

            pub fn kind(&self) -> OpKind {
                match self { $(Op::$variant { .. } => OpKind::$kind,)* }
            }

            /// Attributes in the order the printer writes them.
            pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
                match self {
                    $(Op::$variant $({ $($field),* })? => {
                        #[allow(unused_mut)]
                        let mut out = Vec::new();
                        $($( $field.write_attr(stringify!($field), &mut out); )*)?
                        out
                    })*
                }
            }

            /// The name of an `input` or `weight`, which the text form
            /// writes as a quoted string operand.
            pub fn symbol(&self) -> Option<&str> {
                match self {
                    $(Op::$variant $({ $($field),* })? => {
                        $($( if let Some(s) = $field.as_symbol() { return Some(s); } )*)?
                        None
                    })*
                }
            }

            /// Builds an op from its textual parts; the inverse of
            /// `mnemonic`, `symbol` and `attrs`. Errors name what is
            /// missing or unexpected.
            pub fn from_parts(
                mnemonic: &str,
                symbol: Option<String>,
                attrs: AttrMap,
            ) -> Result<Op, String> {
                #[allow(unused_mut)]
                let mut reader = AttrReader::new(mnemonic, symbol, attrs);
                let op = match mnemonic {
                    $($mnemonic => Op::$variant $({ $($field:
                        <$fty as AttrField>::read_attr(stringify!($field), &mut reader)?),* })?,)*
                    other => return Err(format!("unknown op `{other}`")),
                };
                reader.finish()?;
                Ok(op)
            }
        }
    };
}

define_ops! {
    /// A graph input, bound by name when the graph runs (token ids, positions).
    Input { name: String } => "input" (), Leaf;
    /// A named tensor of the weight store; the graph holds only the reference.
    Weight { name: String } => "weight" (), Leaf;
    /// Row gather: `ids: i32[...]`, `table[V, H]` -> `[..., H]`.
    Embed => "embed" (ids, table), Primitive;
    /// `x[..., K] · w[N, K]ᵀ` -> `[..., N]`; real or complex (`c64`) alike.
    Linear => "linear" (x, w), Primitive;
    /// `x / rms(x) * gain` over the last dimension.
    RmsNorm { eps: f32 } => "rms_norm" (x, gain), Primitive;
    /// Rotary position embedding of `x[..., S, heads * head_dim]` at
    /// positions `i32[S]`; negated positions turn it back (its inverse and,
    /// being orthogonal, its adjoint).
    Rope { base: f32, layout: RopeLayout, head_dim: usize } => "rope" (x, positions), Primitive;
    /// Multi-head attention of `q[..., S, heads * d]` over `k`, `v`
    /// (`kv_heads` heads, grouped). For complex operands the scores are
    /// `scale · Re(qᴴk)`. In incremental decoding the executor keeps each
    /// attention node's keys and values in its KV cache. With `segment =
    /// n` (and no cached keys) the rows are independent sequences of `n`
    /// rows each, a batch of training windows, each attending only within
    /// itself; without it (the text form omits it) they are one sequence.
    Attention { heads: usize, kv_heads: usize, scale: f32, causal: bool, segment: Option<usize> }
        => "attention" (q, k, v), Primitive;
    /// `x · sigmoid(x)`.
    Silu => "silu" (x), Composite;
    /// An elementwise function of one operand: `neg` (any numeric type),
    /// `round_bf16` (to the nearest bf16 value, ties to even, of each real
    /// or real and imaginary part; the element type stays: it carries the
    /// authors' bf16 arithmetic through the residual stages and their sum;
    /// training passes gradients straight through), `exp`, `sqrt`, `recip`,
    /// `sigmoid` (real).
    Unary { func: UnaryFn } => "unary" (x), Primitive;
    /// Elementwise sum; the second operand may be a suffix-shaped broadcast.
    Add => "add" (a, b), Primitive;
    /// Elementwise difference; the second operand may be a suffix-shaped broadcast.
    Sub => "sub" (a, b), Composite;
    /// Elementwise product; the second operand may be a suffix-shaped broadcast.
    Mul => "mul" (a, b), Primitive;
    /// Elementwise quotient of real operands; the second may be a
    /// suffix-shaped broadcast.
    Div => "div" (a, b), Primitive;
    /// Softmax over the last dimension.
    Softmax => "softmax" (x), Primitive;
    Reshape { shape: Shape } => "reshape" (x), Primitive;
    Transpose { perm: Vec<usize> } => "transpose" (x), Primitive;
    /// `x[..., start..end, ...]` along `axis`; a split is a set of slices.
    Slice { axis: usize, start: usize, end: usize } => "slice" (x), Primitive;
    Concat { axis: usize } => "concat" (parts) variadic, Primitive;
    /// Real `[..., L]` -> complex `[..., ceil(L/2)]`. The last dimension is
    /// cut into blocks of `block` channels (`0`: the whole dimension); in
    /// each block the first half holds real parts, the second half imaginary
    /// parts. `block = 0` is the Fairy2i paper's pairing, `block = 2` pairs
    /// adjacent channels, `block = head_dim` pairs RoPE's half-split pairs.
    /// An odd length is padded with one zero channel first.
    Pack { block: usize } => "pack" (x), Primitive;
    /// Complex `[..., m]` -> real `[..., 2m]`, the inverse of `Pack`.
    Unpack { block: usize } => "unpack" (z), Primitive;
    /// Complex conjugate.
    Conj => "conj" (z), Primitive;
    /// The Fairy2i widely-linear split (eq. 3) of a real weight `R[r, c]`:
    /// the complex `U` or `W` `[ceil(r/2), ceil(c/2)]` with
    /// `pack(R x) = U pack(x) + W conj(pack(x))`, outputs paired by
    /// `row_block` and inputs by `col_block` as in `Pack`.
    WidelyLinear { part: WlPart, row_block: usize, col_block: usize, arithmetic: Arithmetic }
        => "widely_linear" (r), Primitive;
    /// One quantization stage of a weight: PhaseQuant onto
    /// {±s_re, ±i·s_im} for complex weights (eq. 10-12), or the real
    /// binary / ternary baselines. The result holds the dequantized values;
    /// training passes gradients straight through. `arithmetic = bf16`
    /// rounds as the authors' bf16 code does (bit-compatible codes).
    Quantize { scheme: Scheme, granularity: Granularity, arithmetic: Arithmetic }
        => "quantize" (w), Primitive;
    /// Complex weights from packed {+1, -1, +i, -i} codes `code2[n, m]` and
    /// their axis scales (`f32[2]`, `[n, 2]` or `[n, ceil(m/G), 2]`).
    Dequant { granularity: Granularity } => "dequant" (codes, scales), Primitive;
    /// Zeros of the declared type (no operands; any element type: f32,
    /// c64, i32, code2, whose all-zero bits are the code `+1`; a fixed
    /// shape). As with an `input`, the type stands as written, but nothing
    /// binds it: every backend computes it, in each run (not held as a
    /// constant: [`Op::runs_each_time`]). The placeholder into which a rank
    /// that does not hold a tensor receives it (`broadcast_from`).
    Zeros => "zeros" (), Primitive;
    /// The PhaseQuant codes `code2[n, m]` of a complex `w: c64[n, m]`, each
    /// entry's code chosen as `quantize {scheme = phase, arithmetic}`
    /// chooses it. With `phase_scales`, the two halves of that quantizer:
    /// `dequant {granularity} (phase_codes (w), phase_scales (w))` equals
    /// `quantize {scheme = phase, granularity, arithmetic} (w)` bit for bit,
    /// so that the rank that owns a master can quantize it and send the
    /// others its 2-bit codes and scales (sharded masters).
    PhaseCodes { arithmetic: Arithmetic } => "phase_codes" (w), Primitive;
    /// The axis scales of `quantize {scheme = phase, granularity,
    /// arithmetic}` of a complex `w: c64[n, m]`, in the layout `dequant`
    /// takes (`f32[2]`, `[n, 2]` or `[n, ceil(m/G), 2]`); see `phase_codes`.
    PhaseScales { granularity: Granularity, arithmetic: Arithmetic }
        => "phase_scales" (w), Primitive;
    /// The Fairy2i linear layer on packed codes:
    /// `Σ_t dequant(u_t) · x + Σ_t dequant(w_t) · conj(x)` for complex
    /// `x[..., m]`, with the operands the codes and scales of the `u_stages`
    /// stages of `U`, then of the `w_stages` stages of `W` (`code2[n, m]`
    /// and their scales, as `dequant`'s; iFairy layers have `W` alone).
    /// A backend computes it from the codes, never from a dense matrix.
    QuantLinear { u_stages: usize, w_stages: usize, granularity: Granularity }
        => "quant_linear" (x, codes_and_scales) variadic, Primitive;
    /// iFairy's complex ReLU²: zero where both parts are negative (the third
    /// quadrant), otherwise the real and imaginary parts squared separately.
    CReluSquared => "crelu2" (z), Primitive;
    /// Symmetric absmax quantization of each row (per token) to `bits` bits,
    /// returned dequantized; complex rows quantize their real and imaginary
    /// parts separately. Training passes gradients straight through.
    ActQuant { bits: usize } => "act_quant" (x), Primitive;
    /// Mean negative log-likelihood of `targets: i32[...]` under
    /// `logits: f32[..., V]`, over the positions whose target is `>= 0`
    /// (`-1` marks a position to ignore; no scored position gives 0): `f32[]`.
    CrossEntropy => "cross_entropy" (logits, targets), Primitive;
    /// `(logits, targets, dloss: f32[])` -> the gradient of
    /// `cross_entropy(logits, targets)` scaled by `dloss`.
    CrossEntropyGrad => "cross_entropy_grad" (logits, targets, dloss), Primitive;
    /// The mean over rows of `KL(softmax(teacher) ‖ softmax(student))` of
    /// `student, teacher: f32[..., V]`: `f32[]`. Distillation's loss; the
    /// teacher is a target, so no gradient flows into it.
    KlDiv => "kl_div" (student, teacher), Primitive;
    /// The gradient of `kl_div` for the student logits, from
    /// `student, teacher` and the loss gradient `f32[]`:
    /// `dloss · (softmax(student) − softmax(teacher)) / rows`.
    KlDivGrad => "kl_div_grad" (student, teacher, dloss), Primitive;
    /// A token drawn from each row of `logits: f32[..., V]` at
    /// `temperature`, by the row's uniform `draws: f32[...]` in [0, 1):
    /// with weights `w = exp((logits − max) / temperature)`, the first id
    /// whose running sum of `w` reaches `draws · Σ w` (inverse-CDF
    /// sampling; the last id of positive weight where rounding leaves none);
    /// temperature 0 takes the first maximum. `i32[...]`. Decoding draws on
    /// the device, so that only ids, not logits, come back.
    Sample { temperature: f32 } => "sample" (logits, draws), Primitive;
    /// `x` with every element set to `value`; the shape and element type
    /// of its operand. Constants, seeds and zero gradients.
    Fill { value: f32 } => "fill" (like), Primitive;
    /// `x · factor` for a real `factor`, real or complex `x`.
    Scale { factor: f32 } => "scale" (x), Composite;
    /// AdamW's parameter update (decoupled weight decay):
    /// `p - lr · (m·c1 / (sqrt(v·c2) + eps) + weight_decay · p)` for the
    /// parameter `p`, its updated moments `m`, `v` (same shape), and the
    /// scalars `lr`, `c1 = 1/(1-β1^t)`, `c2 = 1/(1-β2^t)` and
    /// `weight_decay` (`f32[]`, inputs so that schedules can move them).
    AdamUpdate { eps: f32 } => "adam_update" (p, m, v, lr, c1, c2, weight_decay), Composite;
    /// `Σ x²` over every element of a real `x`: `f32[]`. Squared norms for
    /// gradient clipping and L2 terms.
    SumSquares => "sum_squares" (x), Composite;
    /// `min(1, max_norm / sqrt(s))` of a squared norm `s: f32[]` (`1` for
    /// `s = 0`): the factor that clips a gradient to `max_norm`.
    ClipFactor { max_norm: f32 } => "clip_factor" (s), Primitive;
    /// The sum of a real `x` over the data-parallel ranks that run this
    /// graph together (each on its own windows), the same on every rank
    /// (the reference backend adds in rank order, NCCL in its own): how a
    /// replicated training step adds the ranks' gradients before the
    /// update. With one rank it is `x`.
    AllReduce => "all_reduce" (x), Primitive;
    /// Rank `root`'s `x` on every data-parallel rank (each passes a tensor
    /// of the same type; only the root's values matter): how the rank that
    /// owns a parameter's optimizer state hands its new value to the others
    /// (ZeRO stage 1). With one rank (root 0) it is `x`.
    BroadcastFrom { root: usize } => "broadcast_from" (x), Primitive;
    /// Sums `x` over its leading dimensions down to the suffix `shape` of
    /// its own shape (`[]` sums everything): the general reduction, and the
    /// adjoint of broadcasting.
    ReduceTo { shape: Shape } => "reduce_to" (x), Primitive;
    /// Zeros around `x` along `axis`: `before` in front, `after` behind.
    /// The adjoint of `slice`.
    Pad { axis: usize, before: usize, after: usize } => "pad" (x), Primitive;
    /// `dy[..., N]`, `x[..., K]` -> `[N, K]`: `Σ_rows dyᵀ · x`, no
    /// conjugation (the gradient pass conjugates complex `x` itself): a
    /// transposed `linear`.
    LinearWeightGrad => "linear_weight_grad" (dy, x), Composite;
    /// `(ids, dy[..., H])` -> `[vocab, H]`: each row of `dy` added to the
    /// row its id names. The adjoint of `embed` (a scatter-add).
    EmbedGrad { vocab: usize } => "embed_grad" (ids, dy), Primitive;
    /// `(x, dy)` -> `dy · silu'(x)`.
    SiluGrad => "silu_grad" (x, dy), Composite;
    /// `(z, dy)` -> the gradient of `crelu2(z)`: `2 Re z · Re dy +
    /// i 2 Im z · Im dy` outside the third quadrant, 0 inside.
    Crelu2Grad => "crelu2_grad" (z, dy), Primitive;
    /// `(y, dy)` -> `y ∘ (dy − Σ dy ∘ y)` over the last dimension, with `y`
    /// the softmax's output.
    SoftmaxGrad => "softmax_grad" (y, dy), Primitive;
    /// `(x, gain, dy)` -> the gradient of `rms_norm(x, gain)` with respect
    /// to `x` or to `gain` (summed over rows).
    RmsNormGrad { eps: f32, which: NormOperand } => "rms_norm_grad" (x, gain, dy), Primitive;
    /// `(q, k, v, dout)` -> the gradient of `attention(q, k, v)` with
    /// respect to one of its operands; the other attributes are the
    /// attention's. Complex operands follow the `Re(qᴴk)` scores. Keys and
    /// values are the queries' own sequence (a training step, no KV cache).
    AttentionGrad { which: AttentionOperand, heads: usize, kv_heads: usize, scale: f32, causal: bool, segment: Option<usize> }
        => "attention_grad" (q, k, v, dout), Primitive;
    /// `(r, d)` -> the real `r`-shaped adjoint of `widely_linear` (the
    /// gradient with respect to `R` of a loss whose gradient with respect
    /// to `U` or `W` is `d`): half of eq. 7 applied to `d` alone.
    WidelyLinearGrad { part: WlPart, row_block: usize, col_block: usize }
        => "widely_linear_grad" (r, d), Primitive;
    /// `(w, dq)` -> the scale-aware straight-through gradient of
    /// `quantize(w)`: `dq` plus the gradient through the scales' dependence
    /// on `w` (the codes count as constants), with the codes and sets of
    /// the forward quantizer in its `arithmetic`.
    QuantizeGrad { scheme: Scheme, granularity: Granularity, arithmetic: Arithmetic }
        => "quantize_grad" (w, dq), Primitive;
}

impl Op {
    /// Whether the op exchanges values with the other data-parallel ranks
    /// (`all_reduce`, `broadcast_from`): its value is never a constant of
    /// the weights, even where its operand is (a rank receives into
    /// `zeros`), so it runs with the program, not at load.
    pub fn is_collective(&self) -> bool {
        matches!(self, Op::AllReduce | Op::BroadcastFrom { .. })
    }

    /// Whether a node of this op is computed by each run even where its
    /// operands are constants of the weights: a collective (see
    /// [`Op::is_collective`]), and `zeros`, which costs a memset a run but
    /// would otherwise be held for the program's life (a rank's placeholder
    /// for a master it does not hold, as large as the master).
    pub fn runs_each_time(&self) -> bool {
        self.is_collective() || matches!(self, Op::Zeros)
    }

    /// Whether a node of this op has the type it was declared with, not
    /// one inferred from operands (it has none): inputs, weights, `zeros`.
    pub fn has_declared_type(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Weight { .. } | Op::Zeros)
    }

    /// Whether the op reads operand `k` for its type alone, never its
    /// values: `widely_linear_grad`'s `r`, which gives the real weight's
    /// shape. A pass may give such an operand any value of its type.
    pub fn reads_only_type_of(&self, k: usize) -> bool {
        k == 0 && matches!(self, Op::WidelyLinearGrad { .. })
    }
}

/// How RoPE pairs the channels of one head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Channels (2j, 2j+1) form a pair: the layout of llama weights in GGUF.
    Interleaved,
    /// Channels (j, j + d/2) form a pair: the layout of Hugging Face weights.
    HalfSplit,
}

named_attr!(RopeLayout, "rope layout", {
    RopeLayout::Interleaved => "interleaved",
    RopeLayout::HalfSplit => "half_split",
});

/// The functions of `unary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryFn {
    Neg,
    RoundBf16,
    Exp,
    Sqrt,
    Recip,
    Sigmoid,
}

named_attr!(UnaryFn, "function", {
    UnaryFn::Neg => "neg",
    UnaryFn::RoundBf16 => "round_bf16",
    UnaryFn::Exp => "exp",
    UnaryFn::Sqrt => "sqrt",
    UnaryFn::Recip => "recip",
    UnaryFn::Sigmoid => "sigmoid",
});

/// Which operand of `rms_norm` a gradient is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormOperand {
    Input,
    Gain,
}

named_attr!(NormOperand, "operand", {
    NormOperand::Input => "input",
    NormOperand::Gain => "gain",
});

/// Which operand of `attention` a gradient is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionOperand {
    Q,
    K,
    V,
}

named_attr!(AttentionOperand, "operand", {
    AttentionOperand::Q => "q",
    AttentionOperand::K => "k",
    AttentionOperand::V => "v",
});

/// Which half of the widely-linear form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WlPart {
    /// The linear part `U` (acts on `x`).
    U,
    /// The conjugate-linear part `W` (acts on `conj(x)`).
    W,
}

named_attr!(WlPart, "part", {
    WlPart::U => "u",
    WlPart::W => "w",
});

/// A weight quantizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Fairy2i PhaseQuant on complex weights (the authors' tie rule).
    Phase,
    /// iFairy's PhaseQuant: per tensor, its own tie rule, scales floored at 1e-5.
    PhaseIfairy,
    /// sign(w) · mean|w| on real weights.
    Binary,
    /// BitNet b1.58 absmean ternary on real weights.
    Ternary,
}

named_attr!(Scheme, "scheme", {
    Scheme::Phase => "phase",
    Scheme::PhaseIfairy => "phase_ifairy",
    Scheme::Binary => "binary",
    Scheme::Ternary => "ternary",
});
