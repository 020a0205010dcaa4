//! Reads the real SmolLM2-135M-Instruct Q4_1 model, if it has been fetched.

use fairyc_frontend::gguf::{GgmlType, GgufFile};

#[path = "../../tests/common/assets.rs"]
#[allow(dead_code)]
mod assets;

#[test]
fn smollm2_reads_and_dequantizes() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = assets::smollm2_or_skip("smollm2_reads_and_dequantizes") else {
        return Ok(());
    };
    let f = GgufFile::open(&path)?;
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);

    assert_eq!(f.get_str("general.architecture")?, Some("llama"));
    assert_eq!(f.get_u32("llama.block_count")?, Some(30));
    assert_eq!(f.get_u32("llama.context_length")?, Some(8192));
    assert_eq!(f.get_u32("llama.embedding_length")?, Some(576));
    assert_eq!(f.get_u32("llama.feed_forward_length")?, Some(1536));
    assert_eq!(f.get_u32("llama.attention.head_count")?, Some(9));
    assert_eq!(f.get_u32("llama.attention.head_count_kv")?, Some(3));
    assert_eq!(f.get_u32("llama.rope.dimension_count")?, Some(64));
    assert_eq!(f.get_u32("llama.vocab_size")?, Some(49152));
    assert_eq!(f.get_f32("llama.rope.freq_base")?, Some(100000.0));
    assert_eq!(
        f.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        Some(1e-5)
    );
    assert_eq!(f.get_str("tokenizer.ggml.model")?, Some("gpt2"));
    assert_eq!(f.get_bool("tokenizer.ggml.add_bos_token")?, Some(false));
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id")?, Some(1));
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id")?, Some(2));
    let tokens = f
        .get_str_array("tokenizer.ggml.tokens")?
        .unwrap_or_default();
    assert_eq!(tokens.len(), 49152);
    let token_types = f.get_i32_array("tokenizer.ggml.token_type")?;
    assert_eq!(token_types.map(|t| t.len()), Some(49152));
    let merges = f
        .get_str_array("tokenizer.ggml.merges")?
        .unwrap_or_default();
    assert_eq!(merges.len(), 48900);
    assert!(f
        .get_str("tokenizer.chat_template")?
        .is_some_and(|t| t.contains("messages")));
    // A string is not a u32: the error names the file and the key.
    let err = f.get_u32("general.architecture").unwrap_err().to_string();
    assert!(err.contains("SmolLM2") && err.contains("general.architecture"));

    assert_eq!(f.tensors().len(), 272);
    let embd = f
        .tensor("token_embd.weight")
        .ok_or("no token_embd.weight")?;
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(embd.shape_row_major(), [49152, 576]);
    let ffn_down = f
        .tensor("blk.0.ffn_down.weight")
        .ok_or("no blk.0.ffn_down.weight")?;
    assert_eq!(ffn_down.ggml_type, GgmlType::Q4_1);
    assert_eq!(ffn_down.shape_row_major(), [576, 1536]);

    let mut counts = [0usize; 3];
    let mut total = 0u64;
    for t in f.tensors() {
        let values = f.tensor_f32(&t.name)?;
        assert_eq!(values.len() as u64, t.n_elements(), "{}", t.name);
        assert!(values.iter().all(|v| v.is_finite()), "{}", t.name);
        assert_eq!(f.tensor_bytes(t).len() as u64, t.byte_size());
        total += t.n_elements();
        match t.ggml_type {
            GgmlType::F32 => counts[0] += 1,
            GgmlType::Q8_0 => counts[1] += 1,
            GgmlType::Q4_1 => counts[2] += 1,
            other => panic!("unexpected type {other} for {}", t.name),
        }
    }
    assert_eq!(counts, [61, 1, 210]);
    assert_eq!(total, 134_515_008);
    Ok(())
}
