//! JIT execution from Rust: load a model, bind it to each CPU backend in
//! turn (the look-up-table kernels are generated for this host as it
//! binds), and time a greedy generation on each.
//!
//! ```sh
//! cargo run --release --example jit [MODEL] [PROMPT]
//! ```
//!
//! `MODEL` is a `.fairy` artifact, a GGUF file, a Hugging Face folder or a
//! `.fir` file (default `models/smollm2-w2.fairy`; `make demo` writes it).

use std::path::PathBuf;
use std::time::Instant;

use fairyc::{Backend, Cranelift, GenerateOptions, Llvm, Model, Reference};

fn main() -> Result<(), fairyc::Error> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/smollm2-w2.fairy".into()),
    );
    let prompt = args
        .next()
        .unwrap_or_else(|| "The capital of France is".into());
    let mut model = Model::load(&path)?;
    let ids = model.encode_prompt(&prompt, false)?;
    let options = GenerateOptions {
        max_new_tokens: 32,
        ..GenerateOptions::default()
    };
    let backends: [&dyn Backend; 3] = [
        &Reference::default(),
        &Cranelift::default(),
        &Llvm::default(),
    ];
    for backend in backends {
        let start = Instant::now();
        model = model.backend(backend)?;
        let bound = start.elapsed();
        let generation = model.generate(&ids, &options, &mut |_| {})?;
        let steps = generation.tokens.len().saturating_sub(1);
        println!(
            "{:>9}: bound in {:.2}s, prompt {:.1} ms, {:.1} decode tokens/s: {:?}",
            backend.name(),
            bound.as_secs_f64(),
            generation.prompt_time.as_secs_f64() * 1e3,
            steps as f64 / generation.decode_time.as_secs_f64().max(1e-9),
            generation.text
        );
    }
    Ok(())
}
