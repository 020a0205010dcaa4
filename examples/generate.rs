//! The Rust API end to end: import a model, summarize its IR, and stream a
//! greedy answer to a chat prompt.
//!
//! ```sh
//! cargo run --release --example generate [MODEL] [PROMPT]
//! ```
//!
//! `MODEL` is a GGUF file, a Hugging Face folder or a `.fir` file
//! (default `models/SmolLM2-135M-Instruct.Q4_1.gguf`; `make model` fetches it).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use fairyc::{import, report, GenerateOptions, Model};

fn main() -> Result<(), fairyc::Error> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    );
    let prompt = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".into());

    // Import: the verified graph, its weight store and tokenizer.
    let imported = import(&path)?;
    print!(
        "{}",
        report::summary(&imported.graph, imported.weights.as_ref())
    );

    // Decode the weights and bind them to the graph.
    let start = Instant::now();
    let model = Model::from_imported(imported, &|_| {})?;
    println!("loaded in {:.2}s", start.elapsed().as_secs_f64());

    // The prompt as one user turn of the model's chat template.
    let ids = model.encode_prompt(&prompt, true)?;
    println!("\n> {prompt} ({} prompt tokens)", ids.len());

    let options = GenerateOptions {
        max_new_tokens: 48,
        ..GenerateOptions::default()
    };
    let start = Instant::now();
    let mut stdout = std::io::stdout();
    let generation = model.generate(&ids, &options, &mut |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "\n[{} tokens in {secs:.2}s, {:.1} tokens/s, stop: {:?}]",
        generation.tokens.len(),
        generation.tokens.len() as f64 / secs,
        generation.stop
    );
    Ok(())
}
