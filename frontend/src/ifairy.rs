//! iFairy (Fairy±i) models: complex everywhere, from the Hugging Face
//! layout of the authors' `ComplexNetLM` (../shared/research/ifairy-architecture.md).
//!
//! Every complex parameter is stored as a `*_real` / `*_imag` pair; the
//! graph joins each pair into one complex weight as a weight expression
//! (`pack(concat(real, imag))`, evaluated once at load). Each complex
//! linear layer computes `y = Ŵ · conj(x̂)` with `Ŵ` the iFairy PhaseQuant of
//! its latent weight and `x̂` the input quantized to int8 per token, exactly
//! as the model code does in every forward pass.

use std::path::Path;

use fairyc_ir::{Arithmetic, Granularity, Graph, GraphBuilder, Op, Scheme, ValueId, WeightStore};
use serde::Deserialize;

use crate::llama::{language_model_inputs, real_weight};
use crate::FrontendError;

/// The attention scale `c` in `c · Re(q conj(k))` (spec open question 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionScale {
    /// `(2D)^(-1/2)`: the flash-attention path the models were trained and
    /// evaluated with (the default).
    Flash,
    /// `D^(-1/2)`: the eager path, sglang and llama.cpp.
    Eager,
}

/// Hyper-parameters of an iFairy model (widths are complex widths).
#[derive(Clone, Debug, PartialEq)]
pub struct IfairyConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub attention_scale: AttentionScale,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    /// fairyc's own key: `"flash"` (default) or `"eager"`.
    #[serde(default)]
    attention_scale: Option<String>,
}

fn default_theta() -> f32 {
    10000.0
}

fn default_eps() -> f32 {
    1e-5
}

fn default_context() -> usize {
    2048
}

/// Whether a config.json describes an iFairy model (`model_type`
/// `complexnet` or architecture `ComplexNetLM`).
pub fn is_ifairy(config: &serde_json::Value) -> bool {
    config.get("model_type").and_then(|v| v.as_str()) == Some("complexnet")
        || config
            .get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("ComplexNetLM")))
}

/// Reads an iFairy config.json.
pub fn read_config(path: &Path, json: serde_json::Value) -> Result<IfairyConfig, FrontendError> {
    let bad = |message: String| FrontendError::File {
        path: path.to_path_buf(),
        message,
    };
    let c: RawConfig =
        serde_json::from_value(json).map_err(|e| bad(format!("not an iFairy config.json: {e}")))?;
    let attention_scale = match c.attention_scale.as_deref() {
        None | Some("flash") => AttentionScale::Flash,
        Some("eager") => AttentionScale::Eager,
        Some(other) => {
            return Err(bad(format!(
                "attention_scale `{other}`: expected flash or eager"
            )))
        }
    };
    let kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
    let positive = [
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        kv_heads,
    ];
    // The graph doubles the hidden size and the head dimension (real and
    // imaginary parts), and multiplies the head dimension by the KV heads.
    if c.hidden_size.checked_mul(2).is_none() {
        return Err(bad(format!(
            "hidden_size {} overflows a size when doubled",
            c.hidden_size
        )));
    }
    if positive.contains(&0)
        || !c.hidden_size.is_multiple_of(c.num_attention_heads)
        || !c.num_attention_heads.is_multiple_of(kv_heads)
    {
        return Err(bad(format!(
            "sizes must be positive, hidden_size ({}) a multiple of num_attention_heads ({}), and that a multiple of num_key_value_heads ({kv_heads})",
            c.hidden_size, c.num_attention_heads
        )));
    }
    Ok(IfairyConfig {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads,
        rope_theta: c.rope_theta,
        rms_eps: c.rms_norm_eps,
        context_length: c.max_position_embeddings,
        attention_scale,
    })
}

struct Builder<'a> {
    b: GraphBuilder,
    store: Option<&'a dyn WeightStore>,
}

impl Builder<'_> {
    fn op(&mut self, op: Op, operands: &[ValueId]) -> Result<ValueId, FrontendError> {
        self.b
            .push(op, operands)
            .map_err(|e| FrontendError::Model(e.to_string()))
    }

    fn real(&mut self, name: &str, shape: &[usize]) -> Result<ValueId, FrontendError> {
        real_weight(&mut self.b, self.store, name, shape)
    }

    /// The complex `[rows, cols]` weight from `{base}_real` and `{base}_imag`.
    fn complex(&mut self, base: &str, rows: usize, cols: usize) -> Result<ValueId, FrontendError> {
        let re = self.real(&format!("{base}_real"), &[rows, cols])?;
        let im = self.real(&format!("{base}_imag"), &[rows, cols])?;
        let both = self.op(Op::Concat { axis: 1 }, &[re, im])?;
        self.op(Op::Pack { block: 0 }, &[both])
    }

    /// A norm's two real gains, `[re; im]`.
    fn gains(&mut self, base: &str, n: usize) -> Result<ValueId, FrontendError> {
        let re = self.real(&format!("{base}.weight_real"), &[n])?;
        let im = self.real(&format!("{base}.weight_imag"), &[n])?;
        self.op(Op::Concat { axis: 0 }, &[re, im])
    }

    /// `y = Ŵ · conj(x̂)`: iFairy PhaseQuant weights, int8 activations.
    fn linear(
        &mut self,
        x: ValueId,
        base: &str,
        rows: usize,
        cols: usize,
    ) -> Result<ValueId, FrontendError> {
        let w = self.complex(&format!("{base}.weight"), rows, cols)?;
        let wq = self.op(
            Op::Quantize {
                scheme: Scheme::PhaseIfairy,
                granularity: Granularity::Tensor,
                arithmetic: Arithmetic::F32,
            },
            &[w],
        )?;
        let xq = self.op(Op::ActQuant { bits: 8 }, &[x])?;
        let xc = self.op(Op::Conj, &[xq])?;
        self.op(Op::Linear, &[xc, wq])
    }
}

/// Builds the iFairy decoder: inputs `tokens` and `positions`, output the
/// real logits `f32[seq, vocab]` from `[x_re; x_im]`.
pub fn build_graph(cfg: &IfairyConfig, store: &dyn WeightStore) -> Result<Graph, FrontendError> {
    build(cfg, Some(store))
}

/// The iFairy graph of a model whose weights do not exist yet (random
/// initialisation).
pub fn graph_for_config(cfg: &IfairyConfig) -> Result<Graph, FrontendError> {
    build(cfg, None)
}

fn build(cfg: &IfairyConfig, store: Option<&dyn WeightStore>) -> Result<Graph, FrontendError> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let d = h / cfg.heads;
    let kvw = cfg.kv_heads * d;
    let mut g = Builder {
        b: GraphBuilder::new("ifairy"),
        store,
    };
    let (tokens, positions) = language_model_inputs(&mut g.b, "ifairy", cfg.context_length);
    // The embedding tables are `token_embeddings_{real,imag}.weight`.
    let re = g.real("token_embeddings_real.weight", &[v, h])?;
    let im = g.real("token_embeddings_imag.weight", &[v, h])?;
    let both = g.op(Op::Concat { axis: 1 }, &[re, im])?;
    let table = g.op(Op::Pack { block: 0 }, &[both])?;
    let mut x = g.op(Op::Embed, &[tokens, table])?;
    let norm = Op::RmsNorm { eps: cfg.rms_eps };
    // RoPE on complex slots: slot j of a head turns by p·θ^(-j/D), which
    // is the real rope with head_dim 2D.
    let rope = Op::Rope {
        base: cfg.rope_theta,
        layout: fairyc_ir::RopeLayout::Interleaved,
        head_dim: 2 * d,
    };
    let scale = match cfg.attention_scale {
        AttentionScale::Flash => 1.0 / ((2 * d) as f32).sqrt(),
        AttentionScale::Eager => 1.0 / (d as f32).sqrt(),
    };
    let attention = Op::Attention {
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        scale,
        causal: true,
        segment: None,
    };
    for l in 0..cfg.layers {
        let p = format!("layer.{l}");
        let gain = g.gains(&format!("{p}.pre_layernorm"), h)?;
        let n = g.op(norm.clone(), &[x, gain])?;
        let q = g.linear(n, &format!("{p}.self_attn.q_proj"), h, h)?;
        let k = g.linear(n, &format!("{p}.self_attn.k_proj"), kvw, h)?;
        let vv = g.linear(n, &format!("{p}.self_attn.v_proj"), kvw, h)?;
        let q = g.op(rope.clone(), &[q, positions])?;
        let k = g.op(rope.clone(), &[k, positions])?;
        let a = g.op(attention.clone(), &[q, k, vv])?;
        let gain = g.gains(&format!("{p}.self_attn.attn_layernorm"), h)?;
        let a = g.op(norm.clone(), &[a, gain])?;
        let o = g.linear(a, &format!("{p}.self_attn.o_proj"), h, h)?;
        x = g.op(Op::Add, &[x, o])?;
        let gain = g.gains(&format!("{p}.post_layernorm"), h)?;
        let n = g.op(norm.clone(), &[x, gain])?;
        let gate = g.linear(n, &format!("{p}.mlp.gate_proj"), f, h)?;
        let up = g.linear(n, &format!("{p}.mlp.up_proj"), f, h)?;
        let act = g.op(Op::CReluSquared, &[gate])?;
        let act = g.op(Op::Conj, &[act])?;
        let m = g.op(Op::Mul, &[act, up])?;
        let gain = g.gains(&format!("{p}.mlp.ffn_layernorm"), f)?;
        let m = g.op(norm.clone(), &[m, gain])?;
        let down = g.linear(m, &format!("{p}.mlp.down_proj"), h, f)?;
        x = g.op(Op::Add, &[x, down])?;
    }
    let gain = g.gains("final_norm", h)?;
    let x = g.op(norm, &[x, gain])?;
    let flat = g.op(Op::Unpack { block: 0 }, &[x])?;
    let head = g.real("lm_head.weight", &[v, 2 * h])?;
    let logits = g.op(Op::Linear, &[flat, head])?;
    Ok(g.b.finish(&[logits]))
}
