//! The operations of the IR.
//!
//! The set is kept small and regular on purpose: every op needs a type rule
//! (here and in `infer`), an executor kernel, a gradient rule and a path to
//! every backend. Ops act on the trailing dimensions of their operands, so
//! leading batch dimensions pass through unchanged.

use std::fmt;

use crate::types::Shape;

/// How RoPE pairs the channels of one head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Channels (2j, 2j+1) form a pair: the layout of llama weights in GGUF.
    Interleaved,
    /// Channels (j, j + d/2) form a pair: the layout of Hugging Face weights.
    HalfSplit,
}

impl RopeLayout {
    pub fn name(self) -> &'static str {
        match self {
            RopeLayout::Interleaved => "interleaved",
            RopeLayout::HalfSplit => "half_split",
        }
    }

    pub fn from_name(name: &str) -> Option<RopeLayout> {
        match name {
            "interleaved" => Some(RopeLayout::Interleaved),
            "half_split" => Some(RopeLayout::HalfSplit),
            _ => None,
        }
    }
}

/// One operation. Each node of a graph applies one op to its operands and
/// defines exactly one value.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input, bound by name when the graph runs (token ids, positions).
    Input {
        name: String,
    },
    /// A named tensor of the weight store; the graph holds only the reference.
    Weight {
        name: String,
    },
    /// Row gather: `ids: i32[...]`, `table[V, H]` -> `[..., H]`.
    Embed,
    /// `x[..., K] · w[N, K]ᵀ` -> `[..., N]`; real or complex (`c64`) alike.
    Linear,
    /// `x / rms(x) * gain` over the last dimension.
    RmsNorm {
        eps: f32,
    },
    /// Rotary position embedding of `x[..., S, heads * head_dim]` at
    /// positions `i32[S]`.
    Rope {
        base: f32,
        layout: RopeLayout,
        head_dim: usize,
    },
    /// Multi-head attention of `q[..., S, heads * d]` over `k`, `v`
    /// (`kv_heads` heads, grouped). For complex operands the scores are
    /// `scale · Re(qᴴk)`. In incremental decoding the executor keeps each
    /// attention node's keys and values in its KV cache.
    Attention {
        heads: usize,
        kv_heads: usize,
        scale: f32,
        causal: bool,
    },
    /// `x · sigmoid(x)`.
    Silu,
    /// Elementwise sum; the second operand may be a suffix-shaped broadcast.
    Add,
    /// Elementwise product; the second operand may be a suffix-shaped broadcast.
    Mul,
    /// Softmax over the last dimension.
    Softmax,
    Reshape {
        shape: Shape,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// `x[..., start..end, ...]` along `axis`; a split is a set of slices.
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    Concat {
        axis: usize,
    },
    /// Real `[..., L]` -> complex `[..., ceil(L/2)]`. The last dimension is
    /// cut into blocks of `block` channels (`0`: the whole dimension); in
    /// each block the first half holds real parts, the second half imaginary
    /// parts. `block = 0` is the Fairy2i paper's pairing, `block = 2` pairs
    /// adjacent channels, `block = head_dim` pairs RoPE's half-split pairs.
    /// An odd length is padded with one zero channel first.
    Pack {
        block: usize,
    },
    /// Complex `[..., m]` -> real `[..., 2m]`, the inverse of `Pack`.
    Unpack {
        block: usize,
    },
    /// Complex conjugate.
    Conj,
    /// Elementwise difference; the second operand may be a suffix-shaped broadcast.
    Sub,
    /// Rounds every real (or real and imaginary part) to the nearest bf16
    /// value, ties to even; the element type stays f32 or c64. Carries the
    /// authors' bf16 arithmetic through the residual stages and their sum.
    /// Training passes gradients straight through.
    RoundBf16,
    /// The Fairy2i widely-linear split (eq. 3) of a real weight `R[r, c]`:
    /// the complex `U` or `W` `[ceil(r/2), ceil(c/2)]` with
    /// `pack(R x) = U pack(x) + W conj(pack(x))`, outputs paired by
    /// `row_block` and inputs by `col_block` as in `Pack`.
    WidelyLinear {
        part: WlPart,
        row_block: usize,
        col_block: usize,
        arithmetic: Arithmetic,
    },
    /// One quantization stage of a weight: PhaseQuant onto
    /// {±s_re, ±i·s_im} for complex weights (eq. 10-12), or the real
    /// binary / ternary baselines. The result holds the dequantized values;
    /// training passes gradients straight through. `arithmetic = bf16`
    /// rounds as the authors' bf16 code does (bit-compatible codes).
    Quantize {
        scheme: Scheme,
        granularity: Granularity,
        arithmetic: Arithmetic,
    },
    /// iFairy's complex ReLU²: zero where both parts are negative (the third
    /// quadrant), otherwise the real and imaginary parts squared separately.
    CReluSquared,
    /// Symmetric absmax quantization of each row (per token) to `bits` bits,
    /// returned dequantized; complex rows quantize their real and imaginary
    /// parts separately. Training passes gradients straight through.
    ActQuant {
        bits: usize,
    },
    /// Complex weights from packed {+1, -1, +i, -i} codes `code2[n, m]` and
    /// their axis scales (`f32[2]`, `[n, 2]` or `[n, ceil(m/G), 2]`).
    Dequant {
        granularity: Granularity,
    },
    /// Mean negative log-likelihood of `targets: i32[...]` under
    /// `logits: f32[..., V]`, over the positions whose target is `>= 0`
    /// (`-1` marks a position to ignore; no scored position gives 0): `f32[]`.
    CrossEntropy,
    /// The mean over rows of `KL(softmax(teacher) ‖ softmax(student))` of
    /// `student, teacher: f32[..., V]`: `f32[]`. Distillation's loss; the
    /// teacher is a target, so no gradient flows into it.
    KlDiv,
    /// The gradient of `kl_div` for the student logits, from
    /// `student, teacher` and the loss gradient `f32[]`:
    /// `dloss · (softmax(student) − softmax(teacher)) / rows`.
    KlDivGrad,
    /// `x` with every element set to `value`; the shape and element type
    /// of its operand. Seeds and zero gradients.
    Fill {
        value: f32,
    },
    /// `x · factor` for a real `factor`, real or complex `x`.
    Scale {
        factor: f32,
    },
    /// AdamW's parameter update (decoupled weight decay):
    /// `p - lr · (m·c1 / (sqrt(v·c2) + eps) + weight_decay · p)` for the
    /// parameter `p`, its updated moments `m`, `v` (same shape), and the
    /// scalars `lr`, `c1 = 1/(1-β1^t)`, `c2 = 1/(1-β2^t)` and
    /// `weight_decay` (`f32[]`, inputs so that schedules can move them).
    AdamUpdate {
        eps: f32,
    },
    /// `Σ x²` over every element of a real `x`: `f32[]`. Squared norms for
    /// gradient clipping and L2 terms.
    SumSquares,
    /// `min(1, max_norm / sqrt(s))` of a squared norm `s: f32[]` (`1` for
    /// `s = 0`): the factor that clips a gradient to `max_norm`.
    ClipFactor {
        max_norm: f32,
    },
    /// Sums `x` over its leading dimensions down to the suffix `shape` of
    /// its own shape (`[]` sums everything): the adjoint of broadcasting.
    ReduceTo {
        shape: Shape,
    },
    /// Zeros around `x` along `axis`: `before` in front, `after` behind.
    /// The adjoint of `slice`.
    Pad {
        axis: usize,
        before: usize,
        after: usize,
    },
    /// `rope` turned back: the same rotation by minus the angle, its
    /// inverse and (being orthogonal) its adjoint.
    RopeInverse {
        base: f32,
        layout: RopeLayout,
        head_dim: usize,
    },
    /// `dy[..., N]`, `x[..., K]` -> `[N, K]`: `Σ_rows dyᵀ · x`, no
    /// conjugation (the gradient pass conjugates complex `x` itself).
    LinearWeightGrad,
    /// `(ids, dy[..., H])` -> `[vocab, H]`: each row of `dy` added to the
    /// row its id names. The adjoint of `embed`.
    EmbedGrad {
        vocab: usize,
    },
    /// `(x, dy)` -> `dy · silu'(x)`.
    SiluGrad,
    /// `(z, dy)` -> the gradient of `crelu2(z)`: `2 Re z · Re dy +
    /// i 2 Im z · Im dy` outside the third quadrant, 0 inside.
    Crelu2Grad,
    /// `(y, dy)` -> `y ∘ (dy − Σ dy ∘ y)` over the last dimension, with `y`
    /// the softmax's output.
    SoftmaxGrad,
    /// `(x, gain, dy)` -> the gradient of `rms_norm(x, gain)` with respect
    /// to `x` or to `gain` (summed over rows).
    RmsNormGrad {
        eps: f32,
        which: NormOperand,
    },
    /// `(q, k, v, dout)` -> the gradient of `attention(q, k, v)` with
    /// respect to one of its operands; the other attributes are the
    /// attention's. Complex operands follow the `Re(qᴴk)` scores. Keys and
    /// values are the queries' own sequence (a training step, no KV cache).
    AttentionGrad {
        which: AttentionOperand,
        heads: usize,
        kv_heads: usize,
        scale: f32,
        causal: bool,
    },
    /// `(r, d)` -> the real `r`-shaped adjoint of `widely_linear` (the
    /// gradient with respect to `R` of a loss whose gradient with respect
    /// to `U` or `W` is `d`): half of eq. 7 applied to `d` alone.
    WidelyLinearGrad {
        part: WlPart,
        row_block: usize,
        col_block: usize,
    },
    /// `(w, dq)` -> the scale-aware straight-through gradient of
    /// `quantize(w)`: `dq` plus the gradient through the scales' dependence
    /// on `w` (the codes count as constants), with the codes and sets of
    /// the forward quantizer in its `arithmetic`.
    QuantizeGrad {
        scheme: Scheme,
        granularity: Granularity,
        arithmetic: Arithmetic,
    },
    /// `(logits, targets, dloss: f32[])` -> the gradient of
    /// `cross_entropy(logits, targets)` scaled by `dloss`.
    CrossEntropyGrad,
}

/// Which operand of `rms_norm` a gradient is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormOperand {
    Input,
    Gain,
}

/// Which operand of `attention` a gradient is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionOperand {
    Q,
    K,
    V,
}

/// Which half of the widely-linear form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WlPart {
    /// The linear part `U` (acts on `x`).
    U,
    /// The conjugate-linear part `W` (acts on `conj(x)`).
    W,
}

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

pub use crate::quant::{Arithmetic, Granularity};

/// An attribute value as it appears in the textual form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(usize),
    Float(f32),
    Bool(bool),
    Ident(String),
    List(Vec<Attr>),
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Int(n) => write!(f, "{n}"),
            // `{:?}` is the shortest text that parses back to the same f32.
            Attr::Float(x) => write!(f, "{x:?}"),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Ident(s) => f.write_str(s),
            Attr::List(items) => {
                f.write_str("[")?;
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
        }
    }
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

impl Op {
    /// The op's mnemonic in the textual form.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::Embed => "embed",
            Op::Linear => "linear",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Silu => "silu",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Softmax => "softmax",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Pack { .. } => "pack",
            Op::Unpack { .. } => "unpack",
            Op::Conj => "conj",
            Op::Sub => "sub",
            Op::RoundBf16 => "round_bf16",
            Op::WidelyLinear { .. } => "widely_linear",
            Op::Quantize { .. } => "quantize",
            Op::Dequant { .. } => "dequant",
            Op::CReluSquared => "crelu2",
            Op::ActQuant { .. } => "act_quant",
            Op::CrossEntropy => "cross_entropy",
            Op::Fill { .. } => "fill",
            Op::Scale { .. } => "scale",
            Op::AdamUpdate { .. } => "adam_update",
            Op::SumSquares => "sum_squares",
            Op::ClipFactor { .. } => "clip_factor",
            Op::ReduceTo { .. } => "reduce_to",
            Op::Pad { .. } => "pad",
            Op::RopeInverse { .. } => "rope_inverse",
            Op::LinearWeightGrad => "linear_weight_grad",
            Op::EmbedGrad { .. } => "embed_grad",
            Op::SiluGrad => "silu_grad",
            Op::Crelu2Grad => "crelu2_grad",
            Op::SoftmaxGrad => "softmax_grad",
            Op::RmsNormGrad { .. } => "rms_norm_grad",
            Op::AttentionGrad { .. } => "attention_grad",
            Op::WidelyLinearGrad { .. } => "widely_linear_grad",
            Op::QuantizeGrad { .. } => "quantize_grad",
            Op::CrossEntropyGrad => "cross_entropy_grad",
            Op::KlDiv => "kl_div",
            Op::KlDivGrad => "kl_div_grad",
        }
    }

    pub fn arity(&self) -> Arity {
        match self {
            Op::Input { .. } | Op::Weight { .. } => Arity::Exactly(0),
            Op::Silu
            | Op::Softmax
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Pack { .. }
            | Op::Unpack { .. }
            | Op::Conj
            | Op::RoundBf16
            | Op::WidelyLinear { .. }
            | Op::Quantize { .. }
            | Op::CReluSquared
            | Op::ActQuant { .. }
            | Op::Fill { .. }
            | Op::Scale { .. }
            | Op::SumSquares
            | Op::ClipFactor { .. }
            | Op::ReduceTo { .. }
            | Op::Pad { .. } => Arity::Exactly(1),
            Op::Embed
            | Op::Linear
            | Op::RmsNorm { .. }
            | Op::Rope { .. }
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Dequant { .. }
            | Op::CrossEntropy
            | Op::KlDiv
            | Op::RopeInverse { .. }
            | Op::LinearWeightGrad
            | Op::EmbedGrad { .. }
            | Op::SiluGrad
            | Op::Crelu2Grad
            | Op::SoftmaxGrad
            | Op::WidelyLinearGrad { .. }
            | Op::QuantizeGrad { .. } => Arity::Exactly(2),
            Op::Attention { .. }
            | Op::RmsNormGrad { .. }
            | Op::CrossEntropyGrad
            | Op::KlDivGrad => Arity::Exactly(3),
            Op::AttentionGrad { .. } => Arity::Exactly(4),
            Op::AdamUpdate { .. } => Arity::Exactly(7),
            Op::Concat { .. } => Arity::AtLeast(1),
        }
    }

    /// The name of an `input` or `weight`, which the text form writes as a
    /// quoted string operand.
    pub fn symbol(&self) -> Option<&str> {
        match self {
            Op::Input { name } | Op::Weight { name } => Some(name),
            _ => None,
        }
    }

    /// Attributes in the order the printer writes them.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        match self {
            Op::RmsNorm { eps } => vec![("eps", Attr::Float(*eps))],
            Op::Rope {
                base,
                layout,
                head_dim,
            }
            | Op::RopeInverse {
                base,
                layout,
                head_dim,
            } => vec![
                ("base", Attr::Float(*base)),
                ("layout", Attr::Ident(layout.name().to_string())),
                ("head_dim", Attr::Int(*head_dim)),
            ],
            Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
            } => vec![
                ("heads", Attr::Int(*heads)),
                ("kv_heads", Attr::Int(*kv_heads)),
                ("scale", Attr::Float(*scale)),
                ("causal", Attr::Bool(*causal)),
            ],
            Op::Reshape { shape } | Op::ReduceTo { shape } => vec![("shape", shape_attr(shape))],
            Op::Fill { value } => vec![("value", Attr::Float(*value))],
            Op::Scale { factor } => vec![("factor", Attr::Float(*factor))],
            Op::AdamUpdate { eps } => vec![("eps", Attr::Float(*eps))],
            Op::ClipFactor { max_norm } => vec![("max_norm", Attr::Float(*max_norm))],
            Op::Pad {
                axis,
                before,
                after,
            } => vec![
                ("axis", Attr::Int(*axis)),
                ("before", Attr::Int(*before)),
                ("after", Attr::Int(*after)),
            ],
            Op::EmbedGrad { vocab } => vec![("vocab", Attr::Int(*vocab))],
            Op::RmsNormGrad { eps, which } => vec![
                ("eps", Attr::Float(*eps)),
                (
                    "which",
                    Attr::Ident(
                        match which {
                            NormOperand::Input => "input",
                            NormOperand::Gain => "gain",
                        }
                        .into(),
                    ),
                ),
            ],
            Op::AttentionGrad {
                which,
                heads,
                kv_heads,
                scale,
                causal,
            } => vec![
                (
                    "which",
                    Attr::Ident(
                        match which {
                            AttentionOperand::Q => "q",
                            AttentionOperand::K => "k",
                            AttentionOperand::V => "v",
                        }
                        .into(),
                    ),
                ),
                ("heads", Attr::Int(*heads)),
                ("kv_heads", Attr::Int(*kv_heads)),
                ("scale", Attr::Float(*scale)),
                ("causal", Attr::Bool(*causal)),
            ],
            Op::Transpose { perm } => vec![(
                "perm",
                Attr::List(perm.iter().map(|&p| Attr::Int(p)).collect()),
            )],
            Op::Slice { axis, start, end } => vec![
                ("axis", Attr::Int(*axis)),
                ("start", Attr::Int(*start)),
                ("end", Attr::Int(*end)),
            ],
            Op::Concat { axis } => vec![("axis", Attr::Int(*axis))],
            Op::Pack { block } | Op::Unpack { block } => vec![("block", Attr::Int(*block))],
            Op::WidelyLinear {
                part,
                row_block,
                col_block,
                arithmetic,
            } => vec![
                part_attr(*part),
                ("row_block", Attr::Int(*row_block)),
                ("col_block", Attr::Int(*col_block)),
                arithmetic_attr(*arithmetic),
            ],
            Op::WidelyLinearGrad {
                part,
                row_block,
                col_block,
            } => vec![
                part_attr(*part),
                ("row_block", Attr::Int(*row_block)),
                ("col_block", Attr::Int(*col_block)),
            ],
            Op::Quantize {
                scheme,
                granularity,
                arithmetic,
            }
            | Op::QuantizeGrad {
                scheme,
                granularity,
                arithmetic,
            } => {
                let mut a = vec![(
                    "scheme",
                    Attr::Ident(
                        match scheme {
                            Scheme::Phase => "phase",
                            Scheme::PhaseIfairy => "phase_ifairy",
                            Scheme::Binary => "binary",
                            Scheme::Ternary => "ternary",
                        }
                        .into(),
                    ),
                )];
                a.extend(granularity_attrs(*granularity));
                a.push(arithmetic_attr(*arithmetic));
                a
            }
            Op::Dequant { granularity } => granularity_attrs(*granularity),
            Op::ActQuant { bits } => vec![("bits", Attr::Int(*bits))],
            _ => Vec::new(),
        }
    }
}

fn arithmetic_attr(a: Arithmetic) -> (&'static str, Attr) {
    let name = match a {
        Arithmetic::F32 => "f32",
        Arithmetic::Bf16Exact => "bf16",
    };
    ("arithmetic", Attr::Ident(name.into()))
}

fn arithmetic(take: &mut impl FnMut(&str) -> Result<Attr, String>) -> Result<Arithmetic, String> {
    match ident(&take("arithmetic")?, "arithmetic")?.as_str() {
        "f32" => Ok(Arithmetic::F32),
        "bf16" => Ok(Arithmetic::Bf16Exact),
        other => Err(format!(
            "unknown arithmetic `{other}`: expected f32 or bf16"
        )),
    }
}

fn shape_attr(shape: &Shape) -> Attr {
    Attr::List(
        shape
            .dims()
            .iter()
            .map(|d| match d {
                crate::Dim::Fixed(n) => Attr::Int(*n),
                crate::Dim::Sym(s) => Attr::Ident(s.clone()),
            })
            .collect(),
    )
}

fn part_attr(part: WlPart) -> (&'static str, Attr) {
    let name = match part {
        WlPart::U => "u",
        WlPart::W => "w",
    };
    ("part", Attr::Ident(name.into()))
}

fn granularity_attrs(g: Granularity) -> Vec<(&'static str, Attr)> {
    match g {
        Granularity::Tensor => vec![("granularity", Attr::Ident("tensor".into()))],
        Granularity::Channel => vec![("granularity", Attr::Ident("channel".into()))],
        Granularity::Group(n) => vec![
            ("granularity", Attr::Ident("group".into())),
            ("group_size", Attr::Int(n)),
        ],
    }
}

/// Attributes as parsed, before they are checked against an op.
pub type AttrMap = std::collections::BTreeMap<String, Attr>;

impl Op {
    /// Builds an op from its textual parts; the inverse of `mnemonic`,
    /// `symbol` and `attrs`. Errors name what is missing or unexpected.
    pub fn from_parts(
        mnemonic: &str,
        symbol: Option<String>,
        mut attrs: AttrMap,
    ) -> Result<Op, String> {
        let needs_symbol = matches!(mnemonic, "input" | "weight");
        if needs_symbol != symbol.is_some() {
            return Err(if needs_symbol {
                format!("`{mnemonic}` needs a quoted name, e.g. {mnemonic} \"tokens\"")
            } else {
                format!("`{mnemonic}` takes no quoted name")
            });
        }
        let mut take = |key: &str| {
            attrs
                .remove(key)
                .ok_or_else(|| format!("`{mnemonic}` needs attribute `{key}`"))
        };
        let op = match mnemonic {
            "input" => Op::Input {
                name: symbol.unwrap_or_default(),
            },
            "weight" => Op::Weight {
                name: symbol.unwrap_or_default(),
            },
            "embed" => Op::Embed,
            "linear" => Op::Linear,
            "rms_norm" => Op::RmsNorm {
                eps: float(&take("eps")?, "eps")?,
            },
            "rope" | "rope_inverse" => {
                let (base, layout, head_dim) = (
                    float(&take("base")?, "base")?,
                    match take("layout")? {
                        Attr::Ident(s) => RopeLayout::from_name(&s).ok_or_else(|| {
                            format!("unknown rope layout `{s}`: expected interleaved or half_split")
                        })?,
                        other => return Err(format!("`layout` must be a name, found {other}")),
                    },
                    int(&take("head_dim")?, "head_dim")?,
                );
                if mnemonic == "rope" {
                    Op::Rope {
                        base,
                        layout,
                        head_dim,
                    }
                } else {
                    Op::RopeInverse {
                        base,
                        layout,
                        head_dim,
                    }
                }
            }
            "attention" => Op::Attention {
                heads: int(&take("heads")?, "heads")?,
                kv_heads: int(&take("kv_heads")?, "kv_heads")?,
                scale: float(&take("scale")?, "scale")?,
                causal: boolean(&take("causal")?, "causal")?,
            },
            "attention_grad" => Op::AttentionGrad {
                which: match ident(&take("which")?, "which")?.as_str() {
                    "q" => AttentionOperand::Q,
                    "k" => AttentionOperand::K,
                    "v" => AttentionOperand::V,
                    other => return Err(format!("unknown operand `{other}`: expected q, k or v")),
                },
                heads: int(&take("heads")?, "heads")?,
                kv_heads: int(&take("kv_heads")?, "kv_heads")?,
                scale: float(&take("scale")?, "scale")?,
                causal: boolean(&take("causal")?, "causal")?,
            },
            "silu" => Op::Silu,
            "add" => Op::Add,
            "mul" => Op::Mul,
            "softmax" => Op::Softmax,
            "reshape" => Op::Reshape {
                shape: shape(take("shape")?)?,
            },
            "transpose" => Op::Transpose {
                perm: match take("perm")? {
                    Attr::List(items) => items
                        .iter()
                        .map(|a| int(a, "perm"))
                        .collect::<Result<_, _>>()?,
                    other => return Err(format!("`perm` must be a list, found {other}")),
                },
            },
            "slice" => Op::Slice {
                axis: int(&take("axis")?, "axis")?,
                start: int(&take("start")?, "start")?,
                end: int(&take("end")?, "end")?,
            },
            "concat" => Op::Concat {
                axis: int(&take("axis")?, "axis")?,
            },
            "pack" => Op::Pack {
                block: int(&take("block")?, "block")?,
            },
            "unpack" => Op::Unpack {
                block: int(&take("block")?, "block")?,
            },
            "conj" => Op::Conj,
            "sub" => Op::Sub,
            "round_bf16" => Op::RoundBf16,
            "widely_linear" | "widely_linear_grad" => {
                let part = match ident(&take("part")?, "part")?.as_str() {
                    "u" => WlPart::U,
                    "w" => WlPart::W,
                    other => return Err(format!("unknown part `{other}`: expected u or w")),
                };
                let row_block = int(&take("row_block")?, "row_block")?;
                let col_block = int(&take("col_block")?, "col_block")?;
                if mnemonic == "widely_linear" {
                    Op::WidelyLinear {
                        part,
                        row_block,
                        col_block,
                        arithmetic: arithmetic(&mut take)?,
                    }
                } else {
                    Op::WidelyLinearGrad {
                        part,
                        row_block,
                        col_block,
                    }
                }
            }
            "quantize" | "quantize_grad" => {
                let scheme = match ident(&take("scheme")?, "scheme")?.as_str() {
                    "phase" => Scheme::Phase,
                    "phase_ifairy" => Scheme::PhaseIfairy,
                    "binary" => Scheme::Binary,
                    "ternary" => Scheme::Ternary,
                    other => {
                        return Err(format!(
                        "unknown scheme `{other}`: expected phase, phase_ifairy, binary or ternary"
                    ))
                    }
                };
                let granularity = granularity(&mut take)?;
                let arithmetic = arithmetic(&mut take)?;
                if mnemonic == "quantize" {
                    Op::Quantize {
                        scheme,
                        granularity,
                        arithmetic,
                    }
                } else {
                    Op::QuantizeGrad {
                        scheme,
                        granularity,
                        arithmetic,
                    }
                }
            }
            "dequant" => Op::Dequant {
                granularity: granularity(&mut take)?,
            },
            "crelu2" => Op::CReluSquared,
            "act_quant" => Op::ActQuant {
                bits: int(&take("bits")?, "bits")?,
            },
            "cross_entropy" => Op::CrossEntropy,
            "cross_entropy_grad" => Op::CrossEntropyGrad,
            "kl_div" => Op::KlDiv,
            "kl_div_grad" => Op::KlDivGrad,
            "fill" => Op::Fill {
                value: float(&take("value")?, "value")?,
            },
            "scale" => Op::Scale {
                factor: float(&take("factor")?, "factor")?,
            },
            "adam_update" => Op::AdamUpdate {
                eps: float(&take("eps")?, "eps")?,
            },
            "sum_squares" => Op::SumSquares,
            "clip_factor" => Op::ClipFactor {
                max_norm: float(&take("max_norm")?, "max_norm")?,
            },
            "reduce_to" => Op::ReduceTo {
                shape: shape(take("shape")?)?,
            },
            "pad" => Op::Pad {
                axis: int(&take("axis")?, "axis")?,
                before: int(&take("before")?, "before")?,
                after: int(&take("after")?, "after")?,
            },
            "linear_weight_grad" => Op::LinearWeightGrad,
            "embed_grad" => Op::EmbedGrad {
                vocab: int(&take("vocab")?, "vocab")?,
            },
            "silu_grad" => Op::SiluGrad,
            "crelu2_grad" => Op::Crelu2Grad,
            "softmax_grad" => Op::SoftmaxGrad,
            "rms_norm_grad" => Op::RmsNormGrad {
                eps: float(&take("eps")?, "eps")?,
                which: match ident(&take("which")?, "which")?.as_str() {
                    "input" => NormOperand::Input,
                    "gain" => NormOperand::Gain,
                    other => {
                        return Err(format!("unknown operand `{other}`: expected input or gain"))
                    }
                },
            },
            other => return Err(format!("unknown op `{other}`")),
        };
        if let Some(key) = attrs.keys().next() {
            return Err(format!("`{mnemonic}` has no attribute `{key}`"));
        }
        Ok(op)
    }
}

fn shape(a: Attr) -> Result<Shape, String> {
    match a {
        Attr::List(items) => Ok(Shape(
            items
                .into_iter()
                .map(|a| match a {
                    Attr::Int(n) => Ok(crate::Dim::Fixed(n)),
                    Attr::Ident(s) => Ok(crate::Dim::Sym(s)),
                    other => Err(format!("bad dimension {other} in `shape`")),
                })
                .collect::<Result<_, _>>()?,
        )),
        other => Err(format!("`shape` must be a list, found {other}")),
    }
}

fn boolean(a: &Attr, key: &str) -> Result<bool, String> {
    match a {
        Attr::Bool(b) => Ok(*b),
        other => Err(format!("`{key}` must be true or false, found {other}")),
    }
}

fn ident(a: &Attr, key: &str) -> Result<String, String> {
    match a {
        Attr::Ident(s) => Ok(s.clone()),
        other => Err(format!("`{key}` must be a name, found {other}")),
    }
}

fn granularity(take: &mut impl FnMut(&str) -> Result<Attr, String>) -> Result<Granularity, String> {
    Ok(
        match ident(&take("granularity")?, "granularity")?.as_str() {
            "tensor" => Granularity::Tensor,
            "channel" => Granularity::Channel,
            "group" => match int(&take("group_size")?, "group_size")? {
                0 => return Err("`group_size` must be positive".into()),
                g => Granularity::Group(g),
            },
            other => {
                return Err(format!(
                    "unknown granularity `{other}`: expected tensor, channel or group"
                ))
            }
        },
    )
}

fn int(a: &Attr, key: &str) -> Result<usize, String> {
    match a {
        Attr::Int(n) => Ok(*n),
        other => Err(format!(
            "`{key}` must be a non-negative integer, found {other}"
        )),
    }
}

fn float(a: &Attr, key: &str) -> Result<f32, String> {
    match a {
        Attr::Float(x) => Ok(*x),
        // Integers are exact in f32 only up to 2^24; larger ones are refused.
        Attr::Int(n) if *n <= 1 << 24 => Ok(*n as f32),
        other => Err(format!("`{key}` must be a number, found {other}")),
    }
}
