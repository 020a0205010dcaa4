//! Writes a synthetic llama as a GGUF with seeded random weights, in the
//! shape given: how benchmarks get models of real sizes (LLaMA-7B's widths,
//! a few blocks) that every engine can load.
//!
//! `cargo run --release -p fairyc-frontend --example synth_gguf -- OUT.gguf
//! HIDDEN INTERMEDIATE LAYERS HEADS HEAD_DIM [KV_HEADS] [f32|f16]
//! [vocab=N]` (KV_HEADS defaults to HEADS, the type to f16, the vocabulary
//! to the synthetic tokenizer's 275 tokens; a larger N pads it with unused
//! tokens, for a real model's output layer).
//!
//! LLaMA-7B's widths: `4096 11008 LAYERS 32 128`; SmolLM2-135M's:
//! `576 1536 30 9 64 3 vocab=49152`.

use std::process::ExitCode;

use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: synth_gguf OUT.gguf HIDDEN INTERMEDIATE LAYERS HEADS HEAD_DIM [KV_HEADS] [f32|f16] [vocab=N]";
    if !(6..=9).contains(&args.len()) {
        eprintln!("{usage}");
        return ExitCode::FAILURE;
    }
    let number = |i: usize| -> Result<usize, String> {
        args[i]
            .parse()
            .map_err(|_| format!("argument {i} must be a number, got {:?}\n{usage}", args[i]))
    };
    let config = (|| -> Result<(SynthConfig, GgmlType), String> {
        let heads = number(4)?;
        let mut kv_heads = heads;
        let mut weight_type = GgmlType::F16;
        let mut vocab = None;
        for (i, arg) in args.iter().enumerate().skip(6) {
            match arg.as_str() {
                "f16" => weight_type = GgmlType::F16,
                "f32" => weight_type = GgmlType::F32,
                _ => match arg.strip_prefix("vocab=") {
                    Some(n) => {
                        vocab = Some(n.parse::<usize>().map_err(|_| {
                            format!("vocab= takes a number of tokens, got {n:?}\n{usage}")
                        })?)
                    }
                    None => kv_heads = number(i)?,
                },
            }
        }
        let natural = SynthConfig::tiny().vocab_size();
        let unused_tokens = match vocab {
            Some(n) if n < natural => {
                return Err(format!(
                    "vocab={n} is below the synthetic tokenizer's {natural} tokens"
                ))
            }
            Some(n) => n - natural,
            None => 0,
        };
        Ok((
            SynthConfig {
                hidden: number(1)?,
                intermediate: number(2)?,
                layers: number(3)?,
                heads,
                kv_heads,
                head_dim: number(5)?,
                context_length: 4096,
                unused_tokens,
                ..SynthConfig::tiny()
            },
            weight_type,
        ))
    })();
    let (config, weight_type) = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match write_gguf(args[0].as_ref(), &config, weight_type) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", args[0]);
            ExitCode::FAILURE
        }
    }
}
