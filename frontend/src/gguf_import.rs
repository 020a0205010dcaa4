//! GGUF models: the weight store over a GGUF file, the model config from
//! its metadata, and its tokenizer.

use fairyc_ir::{DType, RopeLayout, Shape, TensorType, WeightError, WeightStore};

use crate::gguf::{dequant, GgufError, GgufFile};
use crate::llama::{LlamaConfig, Naming};
use crate::tokenizer::{GgufVocab, Tokenizer};
use crate::FrontendError;

/// The tensors of a GGUF file, decoded to f32 on demand from the memory map.
pub struct GgufStore {
    file: GgufFile,
}

impl GgufStore {
    pub fn new(file: GgufFile) -> GgufStore {
        GgufStore { file }
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
        self.file.tensor_f32(name).map_err(|e| WeightError {
            name: name.to_string(),
            message: e.to_string(),
        })
    }
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
        // llama.cpp permutes llama's q/k rows so that RoPE pairs are adjacent.
        "llama" => RopeLayout::Interleaved,
        "qwen2" => RopeLayout::HalfSplit,
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
