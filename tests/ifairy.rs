//! Natively complex iFairy models end to end: a tiny checkpoint written in
//! the authors' Hugging Face layout imports, runs with its KV cache,
//! compiles to 1-bit codes and generates from the artifact.

mod common;

use std::process::Command;

use common::TempDir;
use fairyc::{compile, import, Imported, Model, Session};
use fairyc_frontend::synth::{write_ifairy_hf, IfairySynthConfig};
use fairyc_ir::{text, DType, Op};
use fairyc_passes::pipeline::CompileOptions;

const PROMPT: &[u32] = &[40, 77, 104, 108, 108, 111, 3, 90];

fn logits(imported: Imported, ids: &[u32]) -> Vec<f32> {
    let model = Model::from_imported(imported, &|_| {}).unwrap();
    model.logits(ids).unwrap().as_f32().unwrap().to_vec()
}

fn native() -> CompileOptions {
    CompileOptions {
        widely_linear: false,
        method: None,
        ..CompileOptions::default()
    }
}

#[test]
fn checkpoint_imports_complex_everywhere() {
    let dir = TempDir::new("ifairy-import");
    let path = dir.path("m");
    let cfg = IfairySynthConfig::tiny();
    write_ifairy_hf(&path, &cfg).unwrap();
    let imported = import(&path).unwrap();
    let g = &imported.graph;
    let count =
        |pred: &dyn Fn(&fairyc_ir::Node) -> bool| g.nodes.iter().filter(|n| pred(n)).count();
    // Seven complex linear layers a block, each with iFairy PhaseQuant
    // weights and int8 activations; the only real product is lm_head.
    assert_eq!(
        count(&|n| matches!(n.op, Op::Quantize { .. })),
        7 * cfg.layers
    );
    assert_eq!(
        count(&|n| matches!(n.op, Op::ActQuant { bits: 8 })),
        7 * cfg.layers
    );
    assert_eq!(
        count(&|n| n.op == Op::Linear && n.ty.dtype == DType::C64),
        7 * cfg.layers
    );
    assert_eq!(
        count(&|n| n.op == Op::Linear && n.ty.dtype == DType::F32),
        1
    );
    assert_eq!(
        count(&|n| n.op.mnemonic() == "attention" && n.ty.dtype == DType::C64),
        cfg.layers
    );
    assert_eq!(
        count(&|n| n.op.mnemonic() == "rope" && n.ty.dtype == DType::C64),
        2 * cfg.layers
    );
    assert_eq!(count(&|n| n.op == Op::CReluSquared), cfg.layers);
    // Two norms and two sub-norms a block, and the final one, all complex.
    assert_eq!(
        count(&|n| matches!(n.op, Op::RmsNorm { .. }) && n.ty.dtype == DType::C64),
        4 * cfg.layers + 1
    );
    assert_eq!(
        g.weights().count(),
        2 + cfg.layers * (7 * 2 + 4 * 2) + 2 + 1
    );
    let v = cfg.vocab_size();
    let out = g.ty(g.outputs[0]);
    assert_eq!(out.to_string(), format!("f32[seq, {v}]"));
    let l = logits(imported, PROMPT);
    assert!(l.iter().all(|x| x.is_finite()));
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let dir = TempDir::new("ifairy-bad");
    let path = dir.path("m");
    write_ifairy_hf(&path, &IfairySynthConfig::tiny()).unwrap();
    let config = path.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let e = import(&path).err().unwrap().to_string();
    assert!(
        e.contains("layer.2.pre_layernorm.weight_real") && e.contains("missing"),
        "{e}"
    );
    std::fs::write(
        &config,
        text.replace("\"intermediate_size\": 24", "\"intermediate_size\": 20"),
    )
    .unwrap();
    let e = import(&path).err().unwrap().to_string();
    assert!(
        e.contains("mlp.gate_proj.weight_real") && e.contains("expected"),
        "{e}"
    );
}

#[test]
fn attention_scale_is_configurable() {
    let dir = TempDir::new("ifairy-scale");
    let path = dir.path("m");
    write_ifairy_hf(&path, &IfairySynthConfig::tiny()).unwrap();
    let flash = logits(import(&path).unwrap(), PROMPT);
    let g = import(&path).unwrap().graph;
    let scale = g.nodes.iter().find_map(|n| match n.op {
        Op::Attention { scale, .. } => Some(scale),
        _ => None,
    });
    // Head width D = 4 complex slots: (2D)^(-1/2).
    assert_eq!(scale, Some(1.0 / 8f32.sqrt()));
    let config = path.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen('{', "{\"attention_scale\": \"eager\",", 1),
    )
    .unwrap();
    let eager = logits(import(&path).unwrap(), PROMPT);
    assert!(flash.iter().zip(&eager).any(|(a, b)| (a - b).abs() > 1e-4));
}

#[test]
fn incremental_decoding_equals_the_full_forward() {
    let dir = TempDir::new("ifairy-kv");
    let path = dir.path("m");
    write_ifairy_hf(&path, &IfairySynthConfig::tiny()).unwrap();
    let model = Model::from_imported(import(&path).unwrap(), &|_| {}).unwrap();
    let full = model.logits(PROMPT).unwrap();
    let vocab = full.cols();
    let full = full.as_f32().unwrap();
    // The executor behind the model is reached through a session.
    let executor = fairyc_backends::reference::Executor::new(
        fairyc_backends::state::expose_kv_cache(&import(&path).unwrap().graph).unwrap(),
        import(&path).unwrap().weights.as_ref(),
        &|_| {},
    )
    .unwrap();
    let mut session = Session::new(&executor);
    for (i, &t) in PROMPT.iter().enumerate() {
        let row = session.feed(&[t]).unwrap();
        for (a, b) in row
            .as_f32()
            .unwrap()
            .iter()
            .zip(&full[i * vocab..(i + 1) * vocab])
        {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "position {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn compiles_to_one_bit_codes_and_generates_from_the_artifact() {
    let dir = TempDir::new("ifairy-compile");
    let path = dir.path("m");
    write_ifairy_hf(&path, &IfairySynthConfig::tiny()).unwrap();
    let imported = import(&path).unwrap();
    let source = imported.graph.meta["source"].clone();
    insta::assert_snapshot!(
        "ifairy_imported",
        text::print(&imported.graph).replace(&source, "<tmp>/m")
    );
    let (compiled, passes) = compile(imported, &native()).unwrap();
    for pass in &passes {
        insta::assert_snapshot!(
            format!("ifairy_{}", pass.name),
            text::print(&pass.graph).replace(&source, "<tmp>/m")
        );
    }
    let want = logits(compiled, PROMPT);
    let out = dir.path("m.fairy");
    let exe = env!("CARGO_BIN_EXE_fairyc");
    let run = Command::new(exe)
        .args([
            "compile",
            path.to_str().unwrap(),
            "--quant",
            "native",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Two bits per complex weight: one bit per real parameter.
    assert!(stdout.contains("(1.0000 bits/parameter)"), "{stdout}");
    let artifact = import(&out).unwrap();
    assert!(artifact
        .graph
        .weights()
        .any(|(_, _, t)| t.dtype == DType::Code2));
    let got = logits(artifact, PROMPT);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let gen = Command::new(exe)
        .args(["run", out.to_str().unwrap(), "-p", "hello", "-n", "6"])
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    assert!(String::from_utf8_lossy(&gen.stderr).contains("6 generated"));
}

/// Without its own quantizers (`--quant float`) the model is iFairy in
/// full precision: no quantize or act_quant op is left, the complex
/// products stay, and the logits move away from the quantized model's.
#[test]
fn stripping_the_quantizers_gives_the_full_precision_model() {
    let dir = TempDir::new("ifairy-float");
    let path = dir.path("m");
    let cfg = IfairySynthConfig::tiny();
    write_ifairy_hf(&path, &cfg).unwrap();
    let float = CompileOptions {
        strip_quantizers: true,
        ..native()
    };
    let (stripped, passes) = compile(import(&path).unwrap(), &float).unwrap();
    assert_eq!(passes[0].name, "strip");
    let g = &stripped.graph;
    assert!(!g
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Quantize { .. } | Op::ActQuant { .. })));
    assert_eq!(
        g.nodes
            .iter()
            .filter(|n| n.op == Op::Linear && n.ty.dtype == DType::C64)
            .count(),
        7 * cfg.layers
    );
    let full = logits(stripped, PROMPT);
    let quantized = logits(import(&path).unwrap(), PROMPT);
    assert!(full.iter().all(|v| v.is_finite()));
    let diff = full
        .iter()
        .zip(&quantized)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff > 1e-3, "the quantizers change the logits ({diff})");
}
