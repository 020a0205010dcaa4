//! Hugging Face model folders: config.json + safetensors.

use std::path::Path;

use fairyc_ir::RopeLayout;
use serde::Deserialize;

use crate::llama::{LlamaConfig, Naming};
use crate::FrontendError;

/// The fields of config.json that a LLaMA-family decoder needs.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rope_theta")]
    rope_theta: f32,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f32,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
}

fn default_rope_theta() -> f32 {
    10000.0
}

fn default_rms_eps() -> f32 {
    1e-6
}

/// Reads `config.json` of a LlamaForCausalLM or Qwen2ForCausalLM model.
pub fn read_config(path: &Path) -> Result<LlamaConfig, FrontendError> {
    let file_err = |message: String| FrontendError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| FrontendError::io(path, e))?;
    let c: HfConfig = serde_json::from_str(&text)
        .map_err(|e| file_err(format!("not a config.json we understand: {e}")))?;
    let arch = c
        .architectures
        .first()
        .cloned()
        .or_else(|| c.model_type.clone())
        .unwrap_or_default();
    let (architecture, qkv_bias) = match arch.as_str() {
        "LlamaForCausalLM" | "llama" => ("llama", c.attention_bias),
        "Qwen2ForCausalLM" | "qwen2" => ("qwen2", true),
        other => {
            return Err(file_err(format!(
                "unsupported architecture `{other}`: expected LlamaForCausalLM or Qwen2ForCausalLM"
            )))
        }
    };
    if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(file_err("rope_scaling is not supported yet".into()));
    }
    if c.num_attention_heads == 0 {
        return Err(file_err("num_attention_heads must be positive".into()));
    }
    Ok(LlamaConfig {
        architecture: architecture.to_string(),
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
        rope_base: c.rope_theta,
        // Hugging Face checkpoints rotate the halves of each head.
        rope_layout: RopeLayout::HalfSplit,
        rms_eps: c.rms_norm_eps,
        qkv_bias,
        context_length: c.max_position_embeddings.unwrap_or(2048),
        naming: Naming::HuggingFace,
    })
}
