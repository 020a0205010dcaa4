//! The IR text parser and the verifier.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(graph) = fairyc_ir::text::parse(text, "input.fir") {
        let _ = fairyc_ir::verify(&graph);
        let _ = fairyc_ir::text::print(&graph);
    }
});
