//! Small but complete LLaMA-family models with seeded random weights,
//! written as real files for tests, examples and benchmarks.
//!
//! [`write_gguf`] writes what llama.cpp's converter would produce for the
//! model; [`write_hf`] writes the Hugging Face folder it would have been
//! converted from (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json). Both hold the same weights for the same
//! [`SynthConfig`]: they are generated once in Hugging Face's layout, and for
//! the GGUF llama architecture the rows of q and k are permuted the way
//! llama.cpp's converter permutes them (see [`write_gguf`]).
//!
//! The vocabulary is a byte-level BPE one: `<|endoftext|>` (BOS and EOS),
//! `<|im_start|>` and `<|im_end|>` (ids 0 to 2, control tokens), the 256
//! bytes in GPT-2's bytes-to-unicode spelling (id `3 + byte`), then one
//! token per merge. Texts are pre-tokenized like SmolLM2's (`smollm`: every
//! digit on its own, then GPT-2's regex), and the chat template is ChatML.
//!
//! ```no_run
//! use fairyc_frontend::gguf::GgmlType;
//! use fairyc_frontend::synth::{write_gguf, write_hf, HfDtype, SynthConfig};
//! # fn main() -> std::io::Result<()> {
//! let cfg = SynthConfig::tiny();
//! write_gguf("tiny.gguf".as_ref(), &cfg, GgmlType::Q8_0)?;
//! write_hf("tiny-hf".as_ref(), &cfg, HfDtype::F32)?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use fairyc_ir::atomic::write_atomically;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use crate::gguf::{GgmlType, GgufWriter, MetaArray, MetaValue};

/// The decoder family of a synthetic model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`, GGUF `llama`: no biases; llama.cpp permutes q/k.
    Llama,
    /// `Qwen2ForCausalLM`, GGUF `qwen2`: biases on q, k and v; no permutation.
    Qwen2,
}

impl Architecture {
    /// The GGUF `general.architecture` (and Hugging Face `model_type`).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The Hugging Face `architectures` entry.
    fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// The shape and seed of a synthetic model. The vocabulary is fixed by the
/// synthetic tokenizer: see [`SynthConfig::vocab_size`].
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// The decoder family.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the feed-forward layer.
    pub intermediate: usize,
    /// Number of decoder blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; `heads` must be a multiple of it.
    pub kv_heads: usize,
    /// Width of one head; even.
    pub head_dim: usize,
    /// RoPE base frequency (`rope_theta`).
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// The context length the files declare.
    pub context_length: usize,
    /// Reuse the embedding table as the output matrix (no `output.weight` /
    /// `lm_head.weight` is written).
    pub tied_embeddings: bool,
    /// Seed of the weights: the same seed gives the same weights.
    pub seed: u64,
    /// Control tokens appended to the vocabulary (`<|unused_N|>`, never
    /// produced from text), so that a benchmark model can have a real
    /// model's vocabulary size and so its output layer (SmolLM2's 49152).
    pub unused_tokens: usize,
}

impl SynthConfig {
    /// A two-block llama with 32-wide residuals, 4 query heads of 8 over 2
    /// KV heads, and a 64-wide feed-forward layer: every matrix row is a
    /// whole number of 32-element quantization blocks.
    pub fn tiny() -> SynthConfig {
        SynthConfig {
            architecture: Architecture::Llama,
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            context_length: 256,
            tied_embeddings: false,
            seed: 42,
            unused_tokens: 0,
        }
    }

    /// Number of tokens of the synthetic vocabulary.
    pub fn vocab_size(&self) -> usize {
        SPECIAL_TOKENS.len() + 256 + MERGES.len() + self.unused_tokens
    }

    fn check(&self) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "synthetic model: {} heads is not a positive multiple of {} KV heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "synthetic model: head dimension {} must be even and positive",
                self.head_dim
            ));
        }
        if self.hidden == 0 || self.intermediate == 0 || self.layers == 0 {
            return bad("synthetic model: hidden, intermediate and layers must be positive".into());
        }
        Ok(())
    }
}

/// Element type of the safetensors file [`write_hf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    /// Exactly the generated weights.
    F32,
    /// Rounded to bfloat16, as most Hugging Face checkpoints are.
    Bf16,
}

/// The special tokens, ids 0, 1, 2.
const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Id of `<|endoftext|>`, both BOS and EOS.
const ENDOFTEXT_ID: u32 = 0;
/// GGUF `token_type` of normal and control tokens.
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;

/// BPE merges, highest priority first; each adds the token it makes.
const MERGES: &[&str] = &[
    "Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "o n", "r e", "a t", "Ġ s", "e n", "o u", "Ġ w",
    "l l", "Ġ o", "i s",
];

/// ChatML, with a default system turn as SmolLM2's template has.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\nYou are a tiny synthetic model.<|im_end|>\n' }}\
{% endif %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
/// the others map to U+0100, U+0101, ... in byte order.
fn byte_symbol(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        char::from(b)
    } else {
        let shifted = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(0x100 + shifted).expect("below U+0200")
    }
}

/// Every token text, in id order.
fn tokens(unused: usize) -> Vec<String> {
    let specials = SPECIAL_TOKENS.iter().map(|t| t.to_string());
    let bytes = (0..=255u8).map(|b| byte_symbol(b).to_string());
    let merged = MERGES.iter().map(|m| m.replacen(' ', "", 1));
    let unused = (0..unused).map(|n| format!("<|unused_{n}|>"));
    specials.chain(bytes).chain(merged).chain(unused).collect()
}

/// One weight, in Hugging Face layout.
struct SynthTensor {
    hf_name: String,
    gguf_name: String,
    /// Row-major shape, e.g. `[out, in]` for a matrix.
    shape: Vec<usize>,
    data: Vec<f32>,
    /// For q and k (weights and biases): the number of heads whose rows
    /// llama.cpp interleaves for RoPE.
    rope_heads: Option<usize>,
}

/// The weights of `cfg`, generated from its seed in Hugging Face layout:
/// matrices uniform in ±√(3/fan_in) (unit-variance outputs for unit-variance
/// inputs, so attention is not uniform and logits spread by about one),
/// the embedding uniform in ±0.1, norm gains in 1 ± 0.1, biases in ±0.2.
fn weights(cfg: &SynthConfig) -> Vec<SynthTensor> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut out = Vec::new();
    let mut add = |hf_name: String,
                   gguf_name: String,
                   shape: Vec<usize>,
                   (center, spread): (f32, f32),
                   rope_heads: Option<usize>| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| center + spread * (2.0 * rng.random::<f32>() - 1.0))
            .collect();
        out.push(SynthTensor {
            hf_name,
            gguf_name,
            shape,
            data,
            rope_heads,
        });
    };
    let matrix = |fan_in: usize| (0.0, (3.0 / fan_in as f32).sqrt());
    let gain = (1.0, 0.1);
    let bias = (0.0, 0.2);
    let (h, f, vocab) = (cfg.hidden, cfg.intermediate, cfg.vocab_size());
    let (qw, kw) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let qwen2 = cfg.architecture == Architecture::Qwen2;
    add(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        vec![vocab, h],
        (0.0, 0.1),
        None,
    );
    for l in 0..cfg.layers {
        let hf = |part: &str| format!("model.layers.{l}.{part}");
        let gg = |part: &str| format!("blk.{l}.{part}");
        add(
            hf("input_layernorm.weight"),
            gg("attn_norm.weight"),
            vec![h],
            gain,
            None,
        );
        for (proj, name, rows, rope_heads) in [
            ("q_proj", "attn_q", qw, Some(cfg.heads)),
            ("k_proj", "attn_k", kw, Some(cfg.kv_heads)),
            ("v_proj", "attn_v", kw, None),
        ] {
            add(
                hf(&format!("self_attn.{proj}.weight")),
                gg(&format!("{name}.weight")),
                vec![rows, h],
                matrix(h),
                rope_heads,
            );
            if qwen2 {
                add(
                    hf(&format!("self_attn.{proj}.bias")),
                    gg(&format!("{name}.bias")),
                    vec![rows],
                    bias,
                    rope_heads,
                );
            }
        }
        add(
            hf("self_attn.o_proj.weight"),
            gg("attn_output.weight"),
            vec![h, qw],
            matrix(qw),
            None,
        );
        add(
            hf("post_attention_layernorm.weight"),
            gg("ffn_norm.weight"),
            vec![h],
            gain,
            None,
        );
        add(
            hf("mlp.gate_proj.weight"),
            gg("ffn_gate.weight"),
            vec![f, h],
            matrix(h),
            None,
        );
        add(
            hf("mlp.up_proj.weight"),
            gg("ffn_up.weight"),
            vec![f, h],
            matrix(h),
            None,
        );
        add(
            hf("mlp.down_proj.weight"),
            gg("ffn_down.weight"),
            vec![h, f],
            matrix(f),
            None,
        );
    }
    add(
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        vec![h],
        gain,
        None,
    );
    if !cfg.tied_embeddings {
        add(
            "lm_head.weight".into(),
            "output.weight".into(),
            vec![vocab, h],
            matrix(h),
            None,
        );
    }
    out
}

/// llama.cpp's `LlamaModel.permute` of q/k rows (weights or biases): within
/// each head of `D` rows, Hugging Face row `half * D/2 + j` becomes row
/// `2 * j + half`, so that the pairs RoPE rotates are adjacent.
fn interleave_rope_rows(data: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    crate::gguf_import::permute_rope_rows(data, shape[0], heads)
        .expect("synthetic heads have an even width")
}

/// llama.cpp's `general.file_type` for a model whose matrices are `ty`.
fn file_type(ty: GgmlType) -> io::Result<u32> {
    match ty {
        GgmlType::F32 => Ok(0),
        GgmlType::F16 => Ok(1),
        GgmlType::Q4_0 => Ok(2),
        GgmlType::Q4_1 => Ok(3),
        GgmlType::Q8_0 => Ok(7),
        GgmlType::BF16 => Ok(32),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("synthetic GGUF: cannot write {other}; use F32, F16, BF16, Q8_0, Q4_0, Q4_1"),
        )),
    }
}

/// Writes the model as a GGUF v3 file, atomically, with llama.cpp's
/// metadata keys and tensor names. Matrices are encoded as `weight_type`
/// (F32, F16, BF16, Q8_0, Q4_0 or Q4_1); norms and biases stay F32, as
/// llama.cpp keeps them. Quantized types need every matrix row (hidden,
/// intermediate and head widths) to be a multiple of 32.
///
/// For the llama architecture the rows of q and k are permuted like
/// llama.cpp's converter does, from Hugging Face's `rotate_half` layout to
/// adjacent RoPE pairs: within each head of `D` rows, Hugging Face row
/// `half * D/2 + j` becomes GGUF row `2 * j + half`. Qwen2 is left
/// unpermuted (llama.cpp runs it with NeoX-style RoPE).
pub fn write_gguf(path: &Path, cfg: &SynthConfig, weight_type: GgmlType) -> io::Result<()> {
    cfg.check()?;
    let file_type = file_type(weight_type)?;
    let arch = cfg.architecture.name();
    let mut w = GgufWriter::new();
    let u32_of = |n: usize| {
        u32::try_from(n)
            .map(MetaValue::U32)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{n} exceeds u32")))
    };
    let string = |s: &str| MetaValue::String(s.to_string());
    w.add_metadata("general.architecture", string(arch));
    w.add_metadata("general.name", string(&format!("fairyc synthetic {arch}")));
    w.add_metadata("general.file_type", MetaValue::U32(file_type));
    if !matches!(weight_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        w.add_metadata("general.quantization_version", MetaValue::U32(2));
    }
    for (key, value) in [
        ("vocab_size", cfg.vocab_size()),
        ("context_length", cfg.context_length),
        ("embedding_length", cfg.hidden),
        ("feed_forward_length", cfg.intermediate),
        ("block_count", cfg.layers),
        ("attention.head_count", cfg.heads),
        ("attention.head_count_kv", cfg.kv_heads),
        ("rope.dimension_count", cfg.head_dim),
    ] {
        w.add_metadata(format!("{arch}.{key}"), u32_of(value)?);
    }
    w.add_metadata(
        format!("{arch}.rope.freq_base"),
        MetaValue::F32(cfg.rope_base),
    );
    w.add_metadata(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(cfg.rms_eps),
    );

    let tokens = tokens(cfg.unused_tokens);
    let learned = tokens.len() - cfg.unused_tokens;
    let types = (0..tokens.len())
        .map(|i| {
            if i < SPECIAL_TOKENS.len() || i >= learned {
                TYPE_CONTROL
            } else {
                TYPE_NORMAL
            }
        })
        .collect();
    w.add_metadata("tokenizer.ggml.model", string("gpt2"));
    w.add_metadata("tokenizer.ggml.pre", string("smollm"));
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    w.add_metadata(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::I32(types)),
    );
    w.add_metadata(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::String(
            MERGES.iter().map(|m| m.to_string()).collect(),
        )),
    );
    w.add_metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(ENDOFTEXT_ID));
    w.add_metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(ENDOFTEXT_ID));
    w.add_metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    w.add_metadata("tokenizer.chat_template", string(CHAT_TEMPLATE));

    for t in weights(cfg) {
        let data = match t.rope_heads {
            Some(heads) if cfg.architecture == Architecture::Llama => {
                interleave_rope_rows(&t.data, &t.shape, heads)
            }
            _ => t.data,
        };
        let ty = if t.shape.len() == 1 {
            GgmlType::F32
        } else {
            weight_type
        };
        w.add_tensor_f32(&t.gguf_name, &t.shape, &data, ty)?;
    }
    w.write(path)
}

/// Writes the model as a Hugging Face folder (created if missing):
/// `config.json`, `model.safetensors` (in `dtype`), `tokenizer.json` and
/// `tokenizer_config.json`, each atomically. The weights are those
/// [`write_gguf`] writes for the same config, in Hugging Face's layout.
pub fn write_hf(dir: &Path, cfg: &SynthConfig, dtype: HfDtype) -> io::Result<()> {
    cfg.check()?;
    std::fs::create_dir_all(dir)?;
    let write_json = |name: &str, value: &Value| {
        let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
        write_atomically(&dir.join(name), |w| w.write_all(text.as_bytes()))
    };
    write_json("config.json", &hf_config(cfg, dtype))?;
    write_json("tokenizer.json", &tokenizer_json(cfg.unused_tokens))?;
    write_json(
        "tokenizer_config.json",
        &json!({
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": SPECIAL_TOKENS[0],
            "eos_token": SPECIAL_TOKENS[0],
            "unk_token": SPECIAL_TOKENS[0],
            "add_bos_token": false,
            "model_max_length": cfg.context_length,
            "chat_template": CHAT_TEMPLATE,
        }),
    )?;

    let weights = weights(cfg);
    let (st_dtype, bytes): (Dtype, Vec<Vec<u8>>) = match dtype {
        HfDtype::F32 => (
            Dtype::F32,
            weights
                .iter()
                .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
                .collect(),
        ),
        HfDtype::Bf16 => (
            Dtype::BF16,
            weights
                .iter()
                .map(|t| {
                    t.data
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect()
                })
                .collect(),
        ),
    };
    let views = weights
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(st_dtype, t.shape.clone(), b).map(|v| (t.hf_name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let encoded = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(metadata))
        .map_err(io::Error::other)?;
    write_atomically(&dir.join("model.safetensors"), |w| w.write_all(&encoded))
}

/// A synthetic iFairy (`ComplexNetLM`) model; widths are complex widths.
#[derive(Clone, Debug, PartialEq)]
pub struct IfairySynthConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub seed: u64,
}

impl IfairySynthConfig {
    /// Two blocks, 16 complex channels in 4 heads of 4, a 24-wide MLP.
    pub fn tiny() -> IfairySynthConfig {
        IfairySynthConfig {
            hidden: 16,
            intermediate: 24,
            layers: 2,
            heads: 4,
            kv_heads: 4,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            seed: 7,
        }
    }

    /// Number of tokens of the synthetic vocabulary.
    pub fn vocab_size(&self) -> usize {
        SPECIAL_TOKENS.len() + 256 + MERGES.len()
    }
}

/// Writes an iFairy checkpoint in the authors' Hugging Face layout
/// (`*.weight_real` / `*.weight_imag` pairs, `lm_head.weight` `[V, 2H]`,
/// config.json with `model_type: complexnet`), with the synthetic
/// tokenizer, atomically. Weights are latent full-precision values.
pub fn write_ifairy_hf(dir: &Path, cfg: &IfairySynthConfig) -> io::Result<()> {
    if cfg.heads == 0
        || !cfg.hidden.is_multiple_of(cfg.heads)
        || cfg.kv_heads == 0
        || !cfg.heads.is_multiple_of(cfg.kv_heads)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "synthetic iFairy: bad head counts",
        ));
    }
    std::fs::create_dir_all(dir)?;
    let (h, f, v) = (cfg.hidden, cfg.intermediate, cfg.vocab_size());
    let kvw = cfg.kv_heads * (h / cfg.heads);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, center: f32, spread: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| center + spread * (2.0 * rng.random::<f32>() - 1.0))
            .collect();
        tensors.push((name, shape, data));
    };
    for part in ["real", "imag"] {
        add(
            format!("token_embeddings_{part}.weight"),
            vec![v, h],
            0.0,
            0.5,
        );
    }
    let matrix = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    for l in 0..cfg.layers {
        let p = format!("layer.{l}");
        let linears = [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", kvw, h),
            ("self_attn.v_proj", kvw, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", f, h),
            ("mlp.up_proj", f, h),
            ("mlp.down_proj", h, f),
        ];
        for (name, rows, cols) in linears {
            for part in ["real", "imag"] {
                add(
                    format!("{p}.{name}.weight_{part}"),
                    vec![rows, cols],
                    0.0,
                    matrix(cols),
                );
            }
        }
        let norms = [
            ("pre_layernorm", h),
            ("self_attn.attn_layernorm", h),
            ("post_layernorm", h),
            ("mlp.ffn_layernorm", f),
        ];
        for (name, n) in norms {
            for part in ["real", "imag"] {
                add(format!("{p}.{name}.weight_{part}"), vec![n], 1.0, 0.1);
            }
        }
    }
    for part in ["real", "imag"] {
        add(format!("final_norm.weight_{part}"), vec![h], 1.0, 0.1);
    }
    add("lm_head.weight".into(), vec![v, 2 * h], 0.0, matrix(2 * h));

    let write_json = |name: &str, value: &Value| {
        let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
        write_atomically(&dir.join(name), |w| w.write_all(text.as_bytes()))
    };
    write_json(
        "config.json",
        &json!({
            "architectures": ["ComplexNetLM"],
            "model_type": "complexnet",
            "vocab_size": v,
            "hidden_size": h,
            "intermediate_size": f,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads,
            "num_key_value_heads": cfg.kv_heads,
            "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.rms_eps,
            "max_position_embeddings": 256,
            "tie_word_embeddings": false,
            "bos_token_id": ENDOFTEXT_ID,
            "eos_token_id": ENDOFTEXT_ID,
            "torch_dtype": "float32",
        }),
    )?;
    write_json("tokenizer.json", &tokenizer_json(0))?;
    write_json(
        "tokenizer_config.json",
        &json!({
            "bos_token": SPECIAL_TOKENS[0],
            "eos_token": SPECIAL_TOKENS[0],
            "add_bos_token": false,
            "chat_template": CHAT_TEMPLATE,
        }),
    )?;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (n.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let encoded = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), None)
        .map_err(io::Error::other)?;
    write_atomically(&dir.join("model.safetensors"), |w| w.write_all(&encoded))
}

/// config.json with the fields transformers writes for the architecture.
fn hf_config(cfg: &SynthConfig, dtype: HfDtype) -> Value {
    let mut c = json!({
        "architectures": [cfg.architecture.hf_class()],
        "model_type": cfg.architecture.name(),
        "vocab_size": cfg.vocab_size(),
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_base,
        "rope_scaling": null,
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": ENDOFTEXT_ID,
        "torch_dtype": match dtype {
            HfDtype::F32 => "float32",
            HfDtype::Bf16 => "bfloat16",
        },
    });
    match cfg.architecture {
        Architecture::Llama => {
            c["attention_bias"] = json!(false);
            c["mlp_bias"] = json!(false);
        }
        Architecture::Qwen2 => {
            c["use_sliding_window"] = json!(false);
        }
    }
    c
}

/// tokenizer.json: byte-level BPE with SmolLM2's pre-tokenizer.
fn tokenizer_json(unused: usize) -> Value {
    let tokens = tokens(unused);
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let learned = tokens.len() - unused;
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| id < SPECIAL_TOKENS.len() || id >= learned)
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": true}
            ]
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "vocab": vocab,
            "merges": MERGES,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn vocabulary_is_unique_and_sized() {
        let tokens = tokens(0);
        assert_eq!(tokens.len(), SynthConfig::tiny().vocab_size());
        let padded = SynthConfig {
            unused_tokens: 5,
            ..SynthConfig::tiny()
        };
        let with_unused = super::tokens(5);
        assert_eq!(with_unused.len(), padded.vocab_size());
        assert_eq!(with_unused[padded.vocab_size() - 1], "<|unused_4|>");
        assert_eq!(tokens.iter().collect::<HashSet<_>>().len(), tokens.len());
        assert_eq!(tokens[3 + usize::from(b' ')], "Ġ");
        assert_eq!(tokens[3 + usize::from(b'a')], "a");
        assert_eq!(tokens[3 + 0x0A], "Ċ");
        assert_eq!(tokens[3 + 0xAD], "Ń");
        assert_eq!(tokens[3 + 0xFF], "ÿ");
    }

    #[test]
    fn rope_rows_interleave_within_each_head() {
        // Two heads of 4 rows, 2 columns: row r holds [r, -r].
        let data: Vec<f32> = (0..8).flat_map(|r| [r as f32, -(r as f32)]).collect();
        let out = interleave_rope_rows(&data, &[8, 2], 2);
        let rows: Vec<f32> = out.chunks(2).map(|r| r[0]).collect();
        assert_eq!(rows, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert!(out.chunks(2).all(|r| r[1] == -r[0]));
        // Biases: one column.
        let bias = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(
            interleave_rope_rows(&bias, &[6], 1),
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
    }

    #[test]
    fn weights_follow_the_seed_and_the_architecture() {
        let cfg = SynthConfig::tiny();
        let a = weights(&cfg);
        assert_eq!(a.len(), 1 + 9 * cfg.layers + 2);
        assert_eq!(
            a.iter().map(|t| &t.data).collect::<Vec<_>>(),
            weights(&cfg).iter().map(|t| &t.data).collect::<Vec<_>>()
        );
        let other = weights(&SynthConfig {
            seed: 7,
            ..cfg.clone()
        });
        assert_ne!(a[1].data, other[1].data);
        let qwen2 = weights(&SynthConfig {
            architecture: Architecture::Qwen2,
            tied_embeddings: true,
            ..cfg
        });
        assert!(qwen2.iter().any(|t| t.gguf_name == "blk.1.attn_v.bias"));
        assert!(!qwen2.iter().any(|t| t.gguf_name == "output.weight"));
        assert!(a
            .iter()
            .all(|t| t.data.iter().all(|x| x.is_finite() && x.abs() < 1.2)));
    }

    #[test]
    fn bad_configs_and_types_are_rejected() {
        let dir = std::env::temp_dir().join(format!("fairyc-synth-bad-{}", std::process::id()));
        let cfg = SynthConfig {
            kv_heads: 3,
            ..SynthConfig::tiny()
        };
        let err = write_gguf(&dir.join("x.gguf"), &cfg, GgmlType::F32).unwrap_err();
        assert!(err.to_string().contains("KV heads"), "{err}");
        let err =
            write_gguf(&dir.join("x.gguf"), &SynthConfig::tiny(), GgmlType::Q4_K).unwrap_err();
        assert!(err.to_string().contains("Q4_K"), "{err}");
        assert!(!dir.exists());
    }
}
