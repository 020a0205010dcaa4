//! The import entry point on one file: GGUF, .fir IR text or a .fairy
//! artifact (safetensors), detected by content, verified against its
//! weights; then every weight of an imported model is read.
#![no_main]

use fairyc_frontend::import::import;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("input.model", data);
    let Ok(imported) = import(&path) else {
        return;
    };
    let store = imported.weights.as_ref();
    for name in store.names() {
        if store.encoding(&name).as_deref() == Some("code2") {
            let _ = store.read_codes(&name);
        } else {
            let _ = store.read_f32(&name);
        }
    }
});
