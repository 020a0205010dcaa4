//! The GGUF reader: header, metadata, tensor table, every tensor decoded,
//! the typed getters.
#![no_main]

use fairyc_frontend::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("input.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let keys: Vec<String> = file.metadata().keys().cloned().collect();
    for key in &keys {
        let _ = file.get_u32(key);
        let _ = file.get_u64(key);
        let _ = file.get_i64(key);
        let _ = file.get_f32(key);
        let _ = file.get_bool(key);
        let _ = file.get_str(key);
        let _ = file.get_str_array(key);
        let _ = file.get_i32_array(key);
        let _ = file.get_f32_array(key);
    }
    let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
    for name in &names {
        let _ = file.tensor_f32(name);
    }
});
