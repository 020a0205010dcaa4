//! GGUF models: the weight store over a GGUF file, the model config from
//! its metadata, and its tokenizer.

use std::collections::HashMap;

use fairyc_ir::{DType, RopeLayout, Shape, TensorType, WeightError, WeightStore};

use crate::gguf::{dequant, GgufError, GgufFile};
use crate::llama::{LlamaConfig, Naming};
use crate::tokenizer::{GgufVocab, Tokenizer};
use crate::FrontendError;

/// The tensors of a GGUF file, decoded to f32 on demand from the memory map.
///
/// llama.cpp's converter permutes the rows of llama's `attn_q` and `attn_k`
/// so that RoPE's pairs are adjacent (interleaved RoPE). A store made with
/// [`GgufStore::hf_order`] undoes that permutation as it reads, so that
/// every tensor has its Hugging Face row order (half-split RoPE): the same
/// checkpoint then gives the same graph, weights and Fairy2i pairing
/// whichever format it comes in.
pub struct GgufStore {
    file: GgufFile,
    /// Tensors read with their q/k rows un-permuted: name -> head count.
    unpermute: HashMap<String, usize>,
}

impl GgufStore {
    /// The tensors as the file stores them.
    pub fn new(file: GgufFile) -> GgufStore {
        GgufStore {
            file,
            unpermute: HashMap::new(),
        }
    }

    /// The tensors in Hugging Face row order: for the llama architecture,
    /// the q and k weights (and biases) of every block are un-permuted.
    pub fn hf_order(file: GgufFile, config: &LlamaConfig) -> GgufStore {
        let mut unpermute = HashMap::new();
        if config.architecture == "llama" {
            for l in 0..config.layers {
                for (part, heads) in [("attn_q", config.heads), ("attn_k", config.kv_heads)] {
                    for suffix in ["weight", "bias"] {
                        unpermute.insert(format!("blk.{l}.{part}.{suffix}"), heads);
                    }
                }
            }
        }
        GgufStore { file, unpermute }
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightStore for GgufStore {
    fn names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| t.name.clone()).collect()
    }

    /// Every float or quantized tensor reads as f32: the decoded form.
    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        let t = self.file.tensor(name)?;
        dequant::is_supported(t.ggml_type)
            .then(|| TensorType::new(DType::F32, Shape::new(t.shape_row_major())))
    }

    fn encoding(&self, name: &str) -> Option<String> {
        self.file.tensor(name).map(|t| t.ggml_type.to_string())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let err = |message: String| WeightError {
            name: name.to_string(),
            message,
        };
        let data = self.file.tensor_f32(name).map_err(|e| err(e.to_string()))?;
        match self.unpermute.get(name) {
            Some(&heads) => {
                let rows = self
                    .file
                    .tensor(name)
                    .and_then(|t| t.shape_row_major().first().copied())
                    .unwrap_or(0);
                unpermute_rope_rows(&data, rows, heads).map_err(err)
            }
            None => Ok(data),
        }
    }
}

/// Undoes llama.cpp's `LlamaModel.permute` of q/k rows: within each head
/// of `D` rows, GGUF row `2 * j + half` goes back to Hugging Face row
/// `half * D/2 + j`.
pub fn unpermute_rope_rows(data: &[f32], rows: usize, heads: usize) -> Result<Vec<f32>, String> {
    move_rope_rows(data, rows, heads, |hf, gguf| (gguf, hf))
}

/// llama.cpp's permutation itself (what its converter writes): Hugging
/// Face row `half * D/2 + j` becomes GGUF row `2 * j + half`.
pub fn permute_rope_rows(data: &[f32], rows: usize, heads: usize) -> Result<Vec<f32>, String> {
    move_rope_rows(data, rows, heads, |hf, gguf| (hf, gguf))
}

/// Copies the rows of `data` between the two orders: `pick(hf, gguf)`
/// gives (source row, destination row) for each pair of corresponding rows.
fn move_rope_rows(
    data: &[f32],
    rows: usize,
    heads: usize,
    pick: impl Fn(usize, usize) -> (usize, usize),
) -> Result<Vec<f32>, String> {
    if rows == 0 || heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {heads} heads of an even width"
        ));
    }
    let cols = data.len() / rows;
    let (d, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0.0; data.len()];
    for head in 0..heads {
        for part in 0..2 {
            for j in 0..half {
                let (src, dst) = pick(head * d + part * half + j, head * d + 2 * j + part);
                out[dst * cols..][..cols].copy_from_slice(&data[src * cols..][..cols]);
            }
        }
    }
    Ok(out)
}

fn required<T>(
    file: &GgufFile,
    key: &str,
    v: Result<Option<T>, GgufError>,
) -> Result<T, FrontendError> {
    v?.ok_or_else(|| FrontendError::File {
        path: file.path().to_path_buf(),
        message: format!("metadata `{key}` is missing"),
    })
}

/// The decoder's hyper-parameters from `general.architecture` and the
/// `<arch>.*` keys, as llama.cpp writes them.
pub fn read_config(file: &GgufFile) -> Result<LlamaConfig, FrontendError> {
    let arch = required(
        file,
        "general.architecture",
        file.get_str("general.architecture"),
    )?
    .to_string();
    let rope_layout = match arch.as_str() {
        // llama.cpp permutes llama's q/k rows so that RoPE pairs are
        // adjacent; the store made by `GgufStore::hf_order` undoes it, so
        // RoPE is half-split as in the Hugging Face checkpoint.
        "llama" | "qwen2" => RopeLayout::HalfSplit,
        other => {
            return Err(FrontendError::File {
                path: file.path().to_path_buf(),
                message: format!("unsupported architecture `{other}`: expected llama or qwen2"),
            })
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize, FrontendError> {
        let k = key(k);
        Ok(required(file, &k, file.get_u64(&k))? as usize)
    };
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    let kv_heads = match file.get_u64(&key("attention.head_count_kv"))? {
        Some(n) => n as usize,
        None => heads,
    };
    let head_dim = match file.get_u64(&key("rope.dimension_count"))? {
        Some(n) => n as usize,
        None => hidden / heads.max(1),
    };
    let vocab_size = match file.tensor("token_embd.weight") {
        Some(t) => t.shape_row_major()[0],
        None => {
            return Err(FrontendError::File {
                path: file.path().to_path_buf(),
                message: "tensor `token_embd.weight` is missing".into(),
            })
        }
    };
    let rms_key = key("attention.layer_norm_rms_epsilon");
    Ok(LlamaConfig {
        architecture: arch.clone(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: u("feed_forward_length")?,
        layers: u("block_count")?,
        heads,
        kv_heads,
        head_dim,
        rope_base: file.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_layout,
        rms_eps: required(file, &rms_key, file.get_f32(&rms_key))?,
        qkv_bias: arch == "qwen2",
        context_length: u("context_length")?,
        naming: Naming::Gguf,
    })
}

/// The tokenizer stored in `tokenizer.ggml.*` metadata.
pub fn read_tokenizer(file: &GgufFile) -> Result<Tokenizer, FrontendError> {
    let id = |k: &str| -> Result<Option<u32>, FrontendError> { Ok(file.get_u32(k)?) };
    let vocab = GgufVocab {
        model: required(
            file,
            "tokenizer.ggml.model",
            file.get_str("tokenizer.ggml.model"),
        )?
        .to_string(),
        pre: file.get_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: required(
            file,
            "tokenizer.ggml.tokens",
            file.get_str_array("tokenizer.ggml.tokens"),
        )?
        .to_vec(),
        token_types: file.get_i32_array("tokenizer.ggml.token_type")?,
        merges: file
            .get_str_array("tokenizer.ggml.merges")?
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?,
        chat_template: file.get_str("tokenizer.chat_template")?.map(str::to_string),
    };
    Tokenizer::from_gguf_vocab(vocab).map_err(|e| FrontendError::File {
        path: file.path().to_path_buf(),
        message: e.to_string(),
    })
}
