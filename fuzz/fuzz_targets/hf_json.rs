//! The Hugging Face JSON loaders: config.json (LLaMA/Qwen2 and iFairy),
//! and tokenizer.json with the same bytes as its tokenizer_config.json.
#![no_main]

use fairyc_frontend::hf::read_config;
use fairyc_frontend::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("config.json", data);
    let _ = read_config(&path);
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = fairyc_frontend::ifairy::read_config(&path, json);
    }
    let origin = std::path::Path::new("tokenizer.json");
    let config = std::path::Path::new("tokenizer_config.json");
    let _ = Tokenizer::from_hf_bytes(data, origin, None);
    if let Ok(t) = Tokenizer::from_hf_bytes(data, origin, Some((data, config))) {
        if let Ok(ids) = t.encode("Hello, world!", true) {
            let _ = t.decode(&ids);
        }
    }
});
