//! The LLaMA-family decoder as an IR graph, driven by a config that the
//! GGUF and Hugging Face importers fill in.

use fairyc_ir::{
    DType, Dim, Graph, GraphBuilder, Op, RopeLayout, Shape, TensorType, ValueId, WeightStore,
    CONTEXT_LENGTH_META,
};

use std::collections::BTreeMap;

use fairyc_ir::roles::Role;

use crate::FrontendError;

/// Where the weights' names come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// llama.cpp's names: `blk.0.attn_q.weight`, `token_embd.weight`, ...
    Gguf,
    /// Hugging Face's names: `model.layers.0.self_attn.q_proj.weight`, ...
    HuggingFace,
}

/// Hyper-parameters of a LLaMA-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// `llama` or `qwen2` (Qwen2 adds biases to q, k and v).
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    pub qkv_bias: bool,
    pub context_length: usize,
    pub naming: Naming,
}

/// The weight names of one part of the model.
#[derive(Clone, Copy)]
enum Part {
    Embed,
    FinalNorm,
    Output,
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

fn name(naming: Naming, part: Part, layer: usize, suffix: &str) -> String {
    let (gguf, hf) = match part {
        Part::Embed => return pick(naming, "token_embd.weight", "model.embed_tokens.weight"),
        Part::FinalNorm => return pick(naming, "output_norm.weight", "model.norm.weight"),
        Part::Output => return pick(naming, "output.weight", "lm_head.weight"),
        Part::AttnNorm => ("attn_norm", "input_layernorm"),
        Part::Q => ("attn_q", "self_attn.q_proj"),
        Part::K => ("attn_k", "self_attn.k_proj"),
        Part::V => ("attn_v", "self_attn.v_proj"),
        Part::O => ("attn_output", "self_attn.o_proj"),
        Part::FfnNorm => ("ffn_norm", "post_attention_layernorm"),
        Part::Gate => ("ffn_gate", "mlp.gate_proj"),
        Part::Up => ("ffn_up", "mlp.up_proj"),
        Part::Down => ("ffn_down", "mlp.down_proj"),
    };
    match naming {
        Naming::Gguf => format!("blk.{layer}.{gguf}.{suffix}"),
        Naming::HuggingFace => format!("model.layers.{layer}.{hf}.{suffix}"),
    }
}

fn pick(naming: Naming, gguf: &str, hf: &str) -> String {
    match naming {
        Naming::Gguf => gguf.to_string(),
        Naming::HuggingFace => hf.to_string(),
    }
}

struct Builder<'a> {
    b: GraphBuilder,
    store: Option<&'a dyn WeightStore>,
    cfg: &'a LlamaConfig,
    /// The role of every projection weight (written to `meta roles`).
    roles: BTreeMap<String, Role>,
}

impl Builder<'_> {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<ValueId, FrontendError> {
        real_weight(&mut self.b, self.store, name, shape)
    }

    fn op(&mut self, op: Op, operands: &[ValueId]) -> Result<ValueId, FrontendError> {
        self.b
            .push(op, operands)
            .map_err(|e| FrontendError::Model(e.to_string()))
    }

    fn linear(
        &mut self,
        x: ValueId,
        part: Part,
        layer: usize,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<ValueId, FrontendError> {
        let naming = self.cfg.naming;
        let weight_name = name(naming, part, layer, "weight");
        let role = match part {
            Part::Q => Role::Q,
            Part::K => Role::K,
            Part::V => Role::V,
            Part::O => Role::O,
            Part::Gate => Role::Gate,
            Part::Up => Role::Up,
            Part::Down => Role::Down,
            Part::Output => Role::LmHead,
            _ => unreachable!("not a projection"),
        };
        self.roles.insert(weight_name.clone(), role);
        let w = self.weight(&weight_name, &[out, inp])?;
        let y = self.op(Op::Linear, &[x, w])?;
        if !bias {
            return Ok(y);
        }
        let b = self.weight(&name(naming, part, layer, "bias"), &[out])?;
        self.op(Op::Add, &[y, b])
    }
}

/// Starts a language-model graph: records the architecture and context
/// length, and adds the inputs every such graph takes, `tokens` and
/// `positions` (`i32[seq]`), which the runtime's generation feeds.
pub(crate) fn language_model_inputs(
    b: &mut GraphBuilder,
    architecture: &str,
    context_length: usize,
) -> (ValueId, ValueId) {
    b.meta("architecture", architecture);
    b.meta(CONTEXT_LENGTH_META, context_length.to_string());
    let ids = || TensorType::new(DType::I32, Shape(vec![Dim::sym("seq")]));
    (b.input("tokens", ids()), b.input("positions", ids()))
}

/// References the real tensor `name` (read as f32), checking that `store`
/// holds it with the expected shape (when there is a store to check).
pub(crate) fn real_weight(
    b: &mut GraphBuilder,
    store: Option<&dyn WeightStore>,
    name: &str,
    shape: &[usize],
) -> Result<ValueId, FrontendError> {
    let expected = Shape::new(shape.iter().copied());
    let Some(store) = store else {
        return Ok(b.weight(name, TensorType::new(DType::F32, expected)));
    };
    let ty = store
        .tensor_type(name)
        .ok_or_else(|| FrontendError::Model(format!("tensor `{name}` is missing")))?;
    if ty.shape != expected || !ty.dtype.is_real_float() {
        return Err(FrontendError::Model(format!(
            "tensor `{name}` is {ty}, expected a real tensor of shape {expected}"
        )));
    }
    Ok(b.weight(name, TensorType::new(DType::F32, expected)))
}

/// Builds the decoder graph: inputs `tokens` and `positions` (`i32[seq]`),
/// output the logits `f32[seq, vocab]`. Every weight is checked against
/// `store`; the output matrix is the embedding when the store has none.
pub fn build_graph(cfg: &LlamaConfig, store: &dyn WeightStore) -> Result<Graph, FrontendError> {
    build(cfg, Some(store))
}

/// The decoder graph of a model whose weights do not exist yet (random
/// initialisation), with its own output matrix.
pub fn graph_for_config(cfg: &LlamaConfig) -> Result<Graph, FrontendError> {
    build(cfg, None)
}

fn build(cfg: &LlamaConfig, store: Option<&dyn WeightStore>) -> Result<Graph, FrontendError> {
    check_config(cfg)?;
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (qw, kw) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let mut g = Builder {
        b: GraphBuilder::new(cfg.architecture.clone()),
        store,
        cfg,
        roles: BTreeMap::new(),
    };
    let (tokens, positions) =
        language_model_inputs(&mut g.b, &cfg.architecture, cfg.context_length);
    let embed_name = name(cfg.naming, Part::Embed, 0, "");
    let table = g.weight(&embed_name, &[cfg.vocab_size, h])?;
    let mut x = g.op(Op::Embed, &[tokens, table])?;
    let rope = Op::Rope {
        base: cfg.rope_base,
        layout: cfg.rope_layout,
        head_dim: cfg.head_dim,
    };
    let attention = Op::Attention {
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        causal: true,
        segment: None,
    };
    let norm = Op::RmsNorm { eps: cfg.rms_eps };
    for l in 0..cfg.layers {
        let gain = g.weight(&name(cfg.naming, Part::AttnNorm, l, "weight"), &[h])?;
        let hn = g.op(norm.clone(), &[x, gain])?;
        let q = g.linear(hn, Part::Q, l, qw, h, cfg.qkv_bias)?;
        let k = g.linear(hn, Part::K, l, kw, h, cfg.qkv_bias)?;
        let v = g.linear(hn, Part::V, l, kw, h, cfg.qkv_bias)?;
        let q = g.op(rope.clone(), &[q, positions])?;
        let k = g.op(rope.clone(), &[k, positions])?;
        let a = g.op(attention.clone(), &[q, k, v])?;
        let o = g.linear(a, Part::O, l, h, qw, false)?;
        x = g.op(Op::Add, &[x, o])?;
        let gain = g.weight(&name(cfg.naming, Part::FfnNorm, l, "weight"), &[h])?;
        let hn = g.op(norm.clone(), &[x, gain])?;
        let gate = g.linear(hn, Part::Gate, l, f, h, false)?;
        let up = g.linear(hn, Part::Up, l, f, h, false)?;
        let gate = g.op(Op::Silu, &[gate])?;
        let m = g.op(Op::Mul, &[gate, up])?;
        let d = g.linear(m, Part::Down, l, h, f, false)?;
        x = g.op(Op::Add, &[x, d])?;
    }
    let gain = g.weight(&name(cfg.naming, Part::FinalNorm, 0, ""), &[h])?;
    let x = g.op(norm, &[x, gain])?;
    let output_name = name(cfg.naming, Part::Output, 0, "");
    // Tied embeddings: without an output matrix the embedding table is reused.
    let head = if store.is_none_or(|s| s.tensor_type(&output_name).is_some()) {
        g.weight(&output_name, &[cfg.vocab_size, h])?
    } else {
        table
    };
    let logits = g.op(Op::Linear, &[x, head])?;
    let head_name = if head == table {
        embed_name
    } else {
        output_name
    };
    g.roles.insert(head_name, Role::LmHead);
    let roles = fairyc_ir::roles::encode(&g.roles);
    g.b.meta(fairyc_ir::roles::ROLES_META, roles);
    Ok(g.b.finish(&[logits]))
}

fn check_config(cfg: &LlamaConfig) -> Result<(), FrontendError> {
    let bad = |m: String| Err(FrontendError::Model(m));
    if cfg.heads == 0 || cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
        return bad(format!(
            "head count {} must be a positive multiple of the KV head count {}",
            cfg.heads, cfg.kv_heads
        ));
    }
    if cfg.head_dim == 0 || !cfg.head_dim.is_multiple_of(2) {
        return bad(format!("head dimension {} must be even", cfg.head_dim));
    }
    if cfg.heads.checked_mul(cfg.head_dim).is_none() {
        return bad(format!(
            "{} heads of dimension {} overflow a size",
            cfg.heads, cfg.head_dim
        ));
    }
    if cfg.layers == 0 || cfg.hidden_size == 0 || cfg.vocab_size == 0 || cfg.intermediate_size == 0
    {
        return bad(
            "layer count, hidden size, vocabulary and feed-forward size must be positive".into(),
        );
    }
    Ok(())
}
