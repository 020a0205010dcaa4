//! Quantization-aware training through the Rust API, without the CLI: W2
//! (Fairy2i, 2 bits per real parameter) on a text file, then a short
//! greedy generation from the trained artifact.
//!
//! ```sh
//! cargo run --release --example train [MODEL DATA]
//! ```
//!
//! Without arguments it trains a synthetic tiny model on ../shared/corpus/public.txt.

use std::path::PathBuf;

use fairyc::train::{train, Event, ModelSource, TrainConfig};
use fairyc::{GenerateOptions, Model};
use fairyc_passes::pipeline::CompileOptions;

fn main() -> Result<(), fairyc::Error> {
    let dir = std::env::temp_dir().join(format!("fairyc-train-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fairyc::Error::Usage(e.to_string()))?;
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let (model, data) = match (args.next(), args.next()) {
        (Some(model), Some(data)) => (model, data),
        _ => {
            let model = dir.join("tiny.gguf");
            let tiny = fairyc_frontend::synth::SynthConfig::tiny();
            fairyc_frontend::synth::write_gguf(&model, &tiny, fairyc_frontend::gguf::GgmlType::F32)
                .map_err(|e| fairyc::Error::Usage(e.to_string()))?;
            (
                model,
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/public.txt"),
            )
        }
    };
    let output = dir.join("trained.fairy");
    let config = TrainConfig {
        quant: Some(CompileOptions::default()), // W2
        data: vec![data],
        steps: 40,
        seq: 32,
        lr: 1e-2,
        warmup: 5,
        output: Some(output.clone()),
        ..TrainConfig::default()
    };
    let report = train(
        ModelSource::Path(model),
        &config,
        &mut |event| match event {
            Event::Prepared { parameters, .. } => println!("training {parameters} parameters"),
            Event::Step { record, .. } if record.step % 10 == 0 => {
                println!("step {:3}  loss {:.4}", record.step, record.loss)
            }
            _ => {}
        },
    )?;
    println!(
        "held-out loss {:.4} -> {:.4}; {} tokens in {:.1}s; wrote {}",
        report.held_out_before.unwrap_or(f64::NAN),
        report.held_out_after.unwrap_or(f64::NAN),
        report.tokens,
        report.elapsed.as_secs_f64(),
        output.display()
    );
    let model = Model::load(&output)?;
    let prompt = model.encode_prompt("The ", false)?;
    let options = GenerateOptions {
        max_new_tokens: 16,
        ..GenerateOptions::default()
    };
    let generation = model.generate(&prompt, &options, &mut |_| {})?;
    println!("The {}", generation.text);
    Ok(())
}
