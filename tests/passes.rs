//! The Fairy2i passes end to end on real (synthetic and SmolLM2) models:
//! exactness of the widely-linear form, the IR after every pass, the cost
//! model's choices, the e-graph bounds, and the .fairy artifact.

mod common;

use std::path::{Path, PathBuf};

use common::TempDir;
use fairyc::{compile, import, Imported, Model};
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, write_hf, HfDtype, SynthConfig};
use fairyc_ir::{text, DType, Granularity, Graph, Op};
use fairyc_passes::cost::CostModel;
use fairyc_passes::lower::{LowerOptions, Pairing};
use fairyc_passes::pipeline::CompileOptions;
use fairyc_passes::quantize::Method;
use fairyc_passes::simplify::SimplifyOptions;

const PROMPT: &[u32] = &[40, 77, 104, 108, 108, 111, 3, 90, 100, 120];

fn options(method: Option<Method>, pairing: Pairing, tokens: f64) -> CompileOptions {
    CompileOptions {
        widely_linear: true,
        method,
        lower: LowerOptions {
            pairing,
            ..LowerOptions::default()
        },
        simplify: SimplifyOptions {
            identities: true,
            gauss: true,
            cost: CostModel {
                tokens,
                ..CostModel::default()
            },
        },
        ..CompileOptions::default()
    }
}

fn logits(imported: Imported, ids: &[u32]) -> Vec<f32> {
    let model = Model::from_imported(imported, &|_| {}).unwrap();
    model.logits(ids).unwrap().as_f32().unwrap().to_vec()
}

fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn count(graph: &Graph, pred: impl Fn(&fairyc_ir::Node) -> bool) -> usize {
    graph.nodes.iter().filter(|n| pred(n)).count()
}

fn tiny_gguf(dir: &TempDir) -> PathBuf {
    let path = dir.path("tiny.gguf");
    write_gguf(&path, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    path
}

#[test]
fn widely_linear_form_is_exact_for_every_pairing_and_cost() {
    let dir = TempDir::new("wl-exact");
    let gguf = tiny_gguf(&dir);
    let hf = dir.path("hf");
    write_hf(&hf, &SynthConfig::tiny(), HfDtype::F32).unwrap();
    for path in [&gguf, &hf] {
        let want = logits(import(path).unwrap(), PROMPT);
        for pairing in [Pairing::Paper, Pairing::Rope] {
            for tokens in [1.0, 4096.0] {
                let (compiled, _) =
                    compile(import(path).unwrap(), &options(None, pairing, tokens)).unwrap();
                let got = logits(compiled, PROMPT);
                let d = rel_diff(&got, &want);
                assert!(
                    d < 1e-5,
                    "{path:?} {pairing:?} tokens {tokens}: relative difference {d}"
                );
            }
        }
    }
}

#[test]
fn rope_pairing_runs_rope_and_attention_in_complex_form() {
    let dir = TempDir::new("wl-rope");
    let gguf = tiny_gguf(&dir);
    let (paper, _) = compile(import(&gguf).unwrap(), &options(None, Pairing::Paper, 1.0)).unwrap();
    let (rope, _) = compile(import(&gguf).unwrap(), &options(None, Pairing::Rope, 1.0)).unwrap();
    let complex = |g: &Graph, mnemonic: &str| {
        count(g, |n| {
            n.op.mnemonic() == mnemonic && n.ty.dtype == DType::C64
        })
    };
    let layers = SynthConfig::tiny().layers;
    assert_eq!(complex(&paper.graph, "attention"), 0);
    assert_eq!(complex(&rope.graph, "attention"), layers);
    assert_eq!(complex(&rope.graph, "rope"), 2 * layers);
    // The attention output flows into o_proj without an unpack/pack pair.
    let pack_of_unpack = count(&rope.graph, |n| {
        matches!(n.op, Op::Pack { .. })
            && matches!(rope.graph.node(n.operands[0]).op, Op::Unpack { .. })
    });
    assert_eq!(pack_of_unpack, 0);
}

#[test]
fn the_cost_model_picks_gauss_for_batches_only() {
    let dir = TempDir::new("gauss");
    let gguf = tiny_gguf(&dir);
    let complex_products = |g: &Graph| count(g, |n| n.op == Op::Linear && n.ty.dtype == DType::C64);
    let (decode, _) = compile(import(&gguf).unwrap(), &options(None, Pairing::Paper, 1.0)).unwrap();
    let (batch, _) = compile(
        import(&gguf).unwrap(),
        &options(None, Pairing::Paper, 4096.0),
    )
    .unwrap();
    let layers = SynthConfig::tiny().layers;
    // Seven layers a block, two complex products (U and W) each.
    assert_eq!(complex_products(&decode.graph), 14 * layers);
    assert_eq!(
        complex_products(&batch.graph),
        0,
        "Gauss replaces every complex product"
    );
    assert_eq!(
        count(&batch.graph, |n| n.op == Op::Linear),
        3 * 14 * layers + 1
    );
}

/// A target whose complex products cost what a real one does (a table
/// look-up kernel reads both parts at once): Gauss's extra additions never
/// pay there, even for batches where the flop-counting target picks it.
#[derive(Debug)]
struct LookupTarget;

impl fairyc_ir::cost::TargetCost for LookupTarget {
    fn op_work(
        &self,
        op: &Op,
        ty: &fairyc_ir::TensorType,
        operands: &[&fairyc_ir::TensorType],
        context: f64,
    ) -> f64 {
        let flops = fairyc_ir::cost::FlopCost::default();
        match op {
            Op::Linear if ty.dtype == DType::C64 => {
                let real = fairyc_ir::TensorType::new(DType::F32, ty.shape.clone());
                flops.op_work(op, &real, operands, context)
            }
            _ => flops.op_work(op, ty, operands, context),
        }
    }

    fn weight_byte_cost(&self, _dtype: DType) -> f64 {
        8.0
    }
}

#[test]
fn extraction_chooses_per_target() {
    let dir = TempDir::new("gauss-target");
    let gguf = tiny_gguf(&dir);
    let complex_products = |g: &Graph| count(g, |n| n.op == Op::Linear && n.ty.dtype == DType::C64);
    let mut lookup = options(None, Pairing::Paper, 4096.0);
    lookup.simplify.cost.target = std::sync::Arc::new(LookupTarget);
    let (on_lookup, _) = compile(import(&gguf).unwrap(), &lookup).unwrap();
    let (on_flops, _) = compile(
        import(&gguf).unwrap(),
        &options(None, Pairing::Paper, 4096.0),
    )
    .unwrap();
    let layers = SynthConfig::tiny().layers;
    assert_eq!(complex_products(&on_flops.graph), 0);
    assert_eq!(complex_products(&on_lookup.graph), 14 * layers);
}

/// The IR after each pass, W2 with each pairing.
#[test]
fn ir_after_every_pass_snapshot() {
    let dir = TempDir::new("snap");
    let gguf = tiny_gguf(&dir);
    for (pairing, tag) in [(Pairing::Paper, "paper"), (Pairing::Rope, "rope")] {
        let imported = import(&gguf).unwrap();
        let source = imported.graph.meta["source"].clone();
        let (_, passes) = compile(
            imported,
            &options(Some(Method::Fairy2i { stages: 2 }), pairing, 1.0),
        )
        .unwrap();
        let names: Vec<&str> = passes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["lower", "quantize", "simplify"]);
        for pass in &passes {
            let printed = text::print(&pass.graph).replace(&source, "<tmp>/tiny.gguf");
            assert_eq!(
                text::parse(&printed, "x").unwrap().nodes.len(),
                pass.graph.nodes.len()
            );
            insta::assert_snapshot!(format!("{tag}_{}", pass.name), printed);
        }
    }
}

#[test]
fn quantization_stages_and_baselines_change_the_model_as_expected() {
    let dir = TempDir::new("quant");
    let gguf = tiny_gguf(&dir);
    let want = logits(import(&gguf).unwrap(), PROMPT);
    let mut errors = Vec::new();
    for stages in 1..=3 {
        let (g, _) = compile(
            import(&gguf).unwrap(),
            &options(Some(Method::Fairy2i { stages }), Pairing::Paper, 1.0),
        )
        .unwrap();
        assert_eq!(
            count(&g.graph, |n| matches!(n.op, Op::Quantize { .. })),
            stages * 2 * 7 * 2
        );
        errors.push(rel_diff(&logits(g, PROMPT), &want));
    }
    // More stages, closer to the full-precision model.
    assert!(errors[0] > errors[1] && errors[1] > errors[2], "{errors:?}");
    for method in [Method::RealBinary, Method::RealTernary] {
        let opts = CompileOptions {
            widely_linear: false,
            ..options(Some(method), Pairing::Paper, 1.0)
        };
        let (g, _) = compile(import(&gguf).unwrap(), &opts).unwrap();
        assert_eq!(count(&g.graph, |n| n.ty.dtype == DType::C64), 0);
        assert_eq!(
            count(&g.graph, |n| matches!(n.op, Op::Quantize { .. })),
            7 * 2
        );
        assert!(rel_diff(&logits(g, PROMPT), &want) > 1e-3);
    }
}

fn compile_artifact(
    model: &Path,
    out: &Path,
    method: Method,
    granularity: Granularity,
) -> (Imported, fairyc::compile::SizeBreakdown) {
    let opts = CompileOptions {
        granularity,
        ..options(Some(method), Pairing::Paper, 1.0)
    };
    let (compiled, _) = compile(import(model).unwrap(), &opts).unwrap();
    let frozen = fairyc::compile::freeze(&compiled.graph, compiled.weights.as_ref()).unwrap();
    let sizes = fairyc::compile::SizeBreakdown::of(&frozen, &compiled.graph);
    fairyc_frontend::fairy::write(
        out,
        &frozen.graph,
        &compiled.graph,
        &compiled.tokenizer,
        &frozen.tensors,
    )
    .unwrap();
    (compiled, sizes)
}

#[test]
fn artifact_stores_t_bits_per_parameter_and_runs_like_the_compiled_graph() {
    let dir = TempDir::new("artifact");
    let gguf = tiny_gguf(&dir);
    for (stages, granularity) in [
        (1, Granularity::Tensor),
        (2, Granularity::Tensor),
        (3, Granularity::Tensor),
        (2, Granularity::Channel),
        (2, Granularity::Group(8)),
    ] {
        let out = dir.path(&format!("w{stages}.fairy"));
        let (compiled, sizes) =
            compile_artifact(&gguf, &out, Method::Fairy2i { stages }, granularity);
        let bits = sizes.code_bytes as f64 * 8.0 / sizes.quantized_params as f64;
        assert_eq!(bits, stages as f64, "codes take T bits per real parameter");
        let want = logits(compiled, PROMPT);
        let artifact = import(&out).unwrap();
        assert!(artifact
            .graph
            .weights()
            .any(|(_, _, t)| t.dtype == DType::Code2));
        assert_eq!(
            count(&artifact.graph, |n| matches!(n.op, Op::Quantize { .. })),
            0
        );
        let got = logits(artifact, PROMPT);
        assert!(
            rel_diff(&got, &want) < 1e-6,
            "stored codes reproduce the compiled model"
        );
    }
}

#[test]
fn smollm2_lowered_matches_the_original_and_egraphs_stay_bounded() {
    let Some(path) = common::smollm2_or_skip("smollm2_lowered_matches_the_original") else {
        return;
    };
    let ids: Vec<u32> = (0..24).map(|i| 100 + 37 * i).collect();
    let want = logits(import(&path).unwrap(), &ids);
    for pairing in [Pairing::Paper, Pairing::Rope] {
        let (compiled, passes) =
            compile(import(&path).unwrap(), &options(None, pairing, 1.0)).unwrap();
        for pass in &passes {
            let stats = pass
                .egraph
                .as_ref()
                .expect("lower and simplify use e-graphs");
            eprintln!("{stats}");
            assert!(stats.egraph_nodes < 200_000, "{stats}");
        }
        let d = rel_diff(&logits(compiled, &ids), &want);
        eprintln!("SmolLM2 {pairing:?}: relative logit difference {d:.2e}");
        assert!(d < 1e-4, "{pairing:?}: {d}");
    }
    let (w2, passes) = compile(
        import(&path).unwrap(),
        &options(Some(Method::Fairy2i { stages: 2 }), Pairing::Paper, 1.0),
    )
    .unwrap();
    assert!(passes
        .iter()
        .filter_map(|p| p.egraph.as_ref())
        .all(|s| s.egraph_nodes < 200_000));
    let text = logits(w2, &ids);
    assert!(text.iter().all(|v| v.is_finite()));
}

/// Checks the stored codes and scales of `layers` of a model compiled
/// with bf16 arithmetic and `stages` stages against the authors' bf16 code
/// (as `fairy2i_reference_bf16` reproduces it; ir/tests/quant_golden.rs
/// checks that against their code), and the deployed weights (the sums of
/// the stages) against their bf16 partial sums. Returns the number of
/// code tensors compared.
fn check_bf16_against_the_authors(model: &Path, stages: usize, layers: &[&str]) -> usize {
    use fairyc_frontend::fairy::ArtifactTensor;
    use fairyc_ir::quant::{dequantize_sum, fairy2i_reference_bf16, pack_code_rows};
    use fairyc_ir::{Arithmetic, WlPart};

    let mut opts = options(Some(Method::Fairy2i { stages }), Pairing::Paper, 1.0);
    opts.lower.arithmetic = Arithmetic::Bf16Exact;
    let (compiled, _) = compile(import(model).unwrap(), &opts).unwrap();
    let graph = &compiled.graph;
    let frozen = fairyc::compile::freeze(graph, compiled.weights.as_ref()).unwrap();
    let stored = |name: &str| {
        frozen
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{name} is not stored"))
    };
    // The deployed U and W of every layer: the weight operand of each
    // complex linear, traced back to its split and source weight.
    let mut deployed = std::collections::HashMap::new();
    for node in &graph.nodes {
        if node.op != Op::Linear || graph.node(node.operands[1]).ty.dtype != DType::C64 {
            continue;
        }
        let sum = node.operands[1];
        let mut r = sum;
        while !matches!(graph.node(r).op, Op::WidelyLinear { .. }) {
            r = graph.node(r).operands[0];
        }
        let Op::WidelyLinear { part, .. } = graph.node(r).op else {
            unreachable!()
        };
        let Op::Weight { name } = &graph.node(graph.node(r).operands[0]).op else {
            panic!("the split reads a weight")
        };
        if layers.iter().any(|l| name.contains(l)) {
            deployed.insert((name.clone(), part == WlPart::U), sum);
        }
    }
    let ids: Vec<_> = deployed.values().copied().collect();
    let values =
        fairyc_backends::reference::evaluate_constants(graph, compiled.weights.as_ref(), &ids)
            .unwrap();
    let mut checked = 0;
    for (&(ref name, is_u), &sum) in &deployed {
        let ty = compiled.weights.tensor_type(name).unwrap();
        let [rows, cols] = ty.shape.concrete().unwrap()[..] else {
            panic!()
        };
        let a: Vec<half::bf16> = compiled
            .weights
            .read_f32(name)
            .unwrap()
            .into_iter()
            .map(half::bf16::from_f32)
            .collect();
        let (_, u, w) = fairy2i_reference_bf16(&a, rows, cols, stages).unwrap();
        let (part, ref_stages) = if is_u { ("u", &u) } else { ("w", &w) };
        let (n, m) = (rows / 2, cols / 2);
        for (t, q) in ref_stages.iter().enumerate() {
            let base = format!("{name}.{part}{t}");
            let ArtifactTensor::Codes { packed, .. } = stored(&format!("{base}.codes")) else {
                panic!()
            };
            let ArtifactTensor::F32 { data, .. } = stored(&format!("{base}.scales")) else {
                panic!()
            };
            let want = pack_code_rows(&q.codes, n, m).unwrap();
            let differ = packed.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert!(
                differ == 0,
                "T = {stages}, {base}: {differ} of {} code bytes differ from the authors'",
                want.len()
            );
            assert_eq!(*data, q.scales, "T = {stages}, {base} scales");
            checked += 1;
        }
        let want =
            dequantize_sum(ref_stages, n, m, Granularity::Tensor, Arithmetic::Bf16Exact).unwrap();
        let fairyc_runtime::Data::C64(got) = &values[&sum.0].data else {
            panic!("complex weights")
        };
        assert!(
            *got == want,
            "T = {stages}, {name}.{part}: the deployed sum is not the authors' bf16 sum"
        );
    }
    checked
}

/// With bf16 arithmetic, the compiled codes, scales and deployed weights of
/// a bf16 checkpoint are those of the authors' bf16 code, for T = 1..4.
#[test]
fn bf16_arithmetic_stores_the_authors_codes() {
    let dir = TempDir::new("bf16");
    let hf = dir.path("hf");
    write_hf(&hf, &SynthConfig::tiny(), HfDtype::Bf16).unwrap();
    let layers = ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"];
    for stages in 1..=4 {
        // 3 layers in 2 blocks, U and W, every stage.
        assert_eq!(
            check_bf16_against_the_authors(&hf, stages, &layers),
            3 * 2 * 2 * stages
        );
    }
}

/// The same on SmolLM2's real layers (q, k, v, o, gate, up and down of
/// blocks 0, 5 and 29, or of all 30 blocks) through the whole pipeline, T = 1..4: every residual
/// and partial sum is rounded to bf16 as the authors round them, so the
/// third and fourth stages match too.
#[test]
fn bf16_arithmetic_matches_the_authors_on_smollm2_for_every_stage_count() {
    let Some(path) = common::smollm2_or_skip("bf16_arithmetic_matches_the_authors_on_smollm2")
    else {
        return;
    };
    // FAIRYC_BF16_ALL_LAYERS=1 checks all 30 blocks (about 4 minutes here).
    let all = std::env::var_os("FAIRYC_BF16_ALL_LAYERS").is_some();
    let layers: &[&str] = if all {
        &["blk."]
    } else {
        &["blk.0.", "blk.5.", "blk.29."]
    };
    let blocks = if all { 30 } else { 3 };
    for stages in 1..=4 {
        let checked = check_bf16_against_the_authors(&path, stages, layers);
        assert_eq!(checked, blocks * 7 * 2 * stages);
        eprintln!("T = {stages}: {checked} code tensors and their scales equal the authors'");
    }
}

/// Odd dimensions: the feed-forward width 63 pads one zero channel in the
/// split (the paper's remark) and drops it again; the form stays exact.
#[test]
fn odd_dimensions_are_padded_exactly() {
    let dir = TempDir::new("odd");
    let path = dir.path("odd.gguf");
    let cfg = SynthConfig {
        intermediate: 63,
        ..SynthConfig::tiny()
    };
    write_gguf(&path, &cfg, GgmlType::F32).unwrap();
    let want = logits(import(&path).unwrap(), PROMPT);
    let (compiled, _) =
        compile(import(&path).unwrap(), &options(None, Pairing::Paper, 1.0)).unwrap();
    assert!(compiled
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Slice { end: 63, .. })));
    let d = rel_diff(&logits(compiled, PROMPT), &want);
    assert!(d < 1e-5, "relative difference {d}");
    let (w2, _) = compile(
        import(&path).unwrap(),
        &options(Some(Method::Fairy2i { stages: 2 }), Pairing::Paper, 1.0),
    )
    .unwrap();
    assert!(logits(w2, PROMPT).iter().all(|v| v.is_finite()));
}

/// The GGUF name of a Hugging Face weight name of the tiny llama.
fn gguf_name(hf: &str) -> String {
    let mut s = hf.to_string();
    for (h, g) in [
        ("model.layers.", "blk."),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
    ] {
        s = s.replace(h, g);
    }
    s
}

/// llama.cpp's converter permutes llama's q/k rows; the GGUF file of a
/// checkpoint must still compile to the Fairy2i model of its Hugging Face
/// folder: the authors pair real and imaginary halves in Hugging Face row
/// order.
#[test]
fn gguf_and_hugging_face_files_compile_to_the_same_codes_and_scales() {
    use fairyc_frontend::fairy::ArtifactTensor;
    let dir = TempDir::new("gguf-hf-codes");
    let gguf = tiny_gguf(&dir);
    let hf = dir.path("hf");
    write_hf(&hf, &SynthConfig::tiny(), HfDtype::F32).unwrap();
    for (stages, granularity) in [(2, Granularity::Tensor), (1, Granularity::Channel)] {
        let frozen = |model: &Path| {
            let opts = CompileOptions {
                granularity,
                ..options(Some(Method::Fairy2i { stages }), Pairing::Paper, 1.0)
            };
            let (compiled, _) = compile(import(model).unwrap(), &opts).unwrap();
            fairyc::compile::freeze(&compiled.graph, compiled.weights.as_ref()).unwrap()
        };
        let (g, h) = (frozen(&gguf), frozen(&hf));
        let from_gguf: std::collections::HashMap<&str, &ArtifactTensor> =
            g.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut compared = 0;
        for (name, t) in &h.tensors {
            let other = gguf_name(name);
            let Some(&u) = from_gguf.get(other.as_str()) else {
                panic!("{other} is not in the GGUF compile")
            };
            match (t, u) {
                (
                    ArtifactTensor::Codes { packed: a, .. },
                    ArtifactTensor::Codes { packed: b, .. },
                ) => {
                    assert!(a == b, "{name}: codes differ from {other}'s");
                    compared += 1;
                }
                (ArtifactTensor::F32 { data: a, .. }, ArtifactTensor::F32 { data: b, .. }) => {
                    assert!(a == b, "{name}: values differ from {other}'s");
                }
                _ => panic!("{name} and {other} are stored differently"),
            }
        }
        assert_eq!(g.tensors.len(), h.tensors.len());
        // q, k, v, o, gate, up, down in 2 blocks, U and W, every stage.
        assert_eq!(compared, 7 * 2 * 2 * stages);
    }
}

/// Layers are selected by the role the frontend gave their weight, not by
/// the weight's name: renamed weights still compile to every layer
/// quantized. Without roles, or with a planned layer left real, the
/// compile fails and names what it could not quantize.
#[test]
fn layers_are_selected_by_role_and_every_planned_layer_is_quantized() {
    use fairyc_ir::roles::{roles, Role, ROLES_META};
    use fairyc_ir::MemoryStore;
    use fairyc_passes::pipeline::{incomplete_layers, PassError};
    use std::sync::Arc;

    let dir = TempDir::new("roles");
    let gguf = tiny_gguf(&dir);
    let original = import(&gguf).unwrap();
    let tagged = roles(&original.graph).unwrap();
    // q, k, v, o, gate, up, down in 2 blocks, and the output matrix.
    assert_eq!(tagged.len(), 7 * 2 + 1);
    assert_eq!(tagged["blk.1.ffn_down.weight"], Role::Down);
    assert_eq!(tagged["output.weight"], Role::LmHead);
    let w2 = options(Some(Method::Fairy2i { stages: 2 }), Pairing::Paper, 1.0);
    let quantized_params = |imported: Imported| {
        let (compiled, _) = compile(imported, &w2).unwrap();
        let frozen = fairyc::compile::freeze(&compiled.graph, compiled.weights.as_ref()).unwrap();
        fairyc::compile::SizeBreakdown::of(&frozen, &compiled.graph).quantized_params
    };
    let want = quantized_params(import(&gguf).unwrap());
    assert_eq!(want, 2 * (32 * 32 * 2 + 16 * 32 * 2 + 64 * 32 * 3));

    // The same model with its weights named in nobody's convention.
    let rename = |n: &str| n.replace("blk.", "decoder_").replace(".weight", ".w");
    let mut graph = original.graph.clone();
    let mut store = MemoryStore::default();
    for node in &mut graph.nodes {
        if let Op::Weight { name } = &mut node.op {
            let data = original.weights.read_f32(name).unwrap();
            *name = rename(name);
            store.insert(name.clone(), node.ty.clone(), data);
        }
    }
    let renamed = graph.meta[ROLES_META]
        .split(',')
        .map(rename)
        .collect::<Vec<_>>()
        .join(",");
    graph.meta.insert(ROLES_META.into(), renamed);
    let renamed = Imported {
        graph: graph.clone(),
        weights: Arc::new(store),
        ..import(&gguf).unwrap()
    };
    assert_eq!(quantized_params(renamed), want);

    // No roles: nothing is planned, and that is an error, not 0 bits.
    let mut bare = import(&gguf).unwrap();
    bare.graph.meta.remove(ROLES_META);
    let err = compile(bare, &w2)
        .err()
        .expect("a graph without roles compiled");
    assert!(matches!(err, fairyc::Error::Pass(PassError::Incomplete(_))));
    assert!(err.to_string().contains("nothing to quantize"), "{err}");

    // A planned layer that was not lowered and quantized is named.
    let plan = fairyc_passes::lower::plan(&original.graph, &w2.lower);
    let missing = incomplete_layers(&original.graph, &plan, true, true);
    assert_eq!(missing.len(), 14);
    assert!(missing.contains(&"blk.0.attn_q.weight".to_string()));
}

/// Unquantized tensors are stored in the source's precision: a GGUF Q8_0
/// matrix as q8 (exactly: the artifact computes what the compiled graph
/// does), bf16 tensors as bf16, f32 as f32; or as asked.
#[test]
fn artifacts_store_unquantized_tensors_in_the_source_precision() {
    use fairyc::compile::{freeze_with, Precision};
    use fairyc_frontend::fairy::Storage;

    let dir = TempDir::new("precision");
    let storage_of = |model: &Path, precision: Precision| {
        let opts = options(Some(Method::Fairy2i { stages: 2 }), Pairing::Paper, 1.0);
        let (compiled, _) = compile(import(model).unwrap(), &opts).unwrap();
        let frozen = freeze_with(&compiled.graph, compiled.weights.as_ref(), precision).unwrap();
        let of = |name: &str| {
            frozen
                .tensors
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .and_then(|(_, t)| t.storage())
        };
        let storage = (
            of("token_embd.weight").or(of("model.embed_tokens.weight")),
            of("output_norm.weight").or(of("model.norm.weight")),
        );
        let bytes: usize = frozen.tensors.iter().map(|(_, t)| t.bytes()).sum();
        let out = dir.path("m.fairy");
        fairyc_frontend::fairy::write(
            &out,
            &frozen.graph,
            &compiled.graph,
            &compiled.tokenizer,
            &frozen.tensors,
        )
        .unwrap();
        let d = rel_diff(
            &logits(import(&out).unwrap(), PROMPT),
            &logits(compiled, PROMPT),
        );
        (storage, bytes, d)
    };
    let q8_gguf = dir.path("q8.gguf");
    write_gguf(&q8_gguf, &SynthConfig::tiny(), GgmlType::Q8_0).unwrap();
    let (storage, _, d) = storage_of(&q8_gguf, Precision::Source);
    assert_eq!(storage, (Some(Storage::Q8), Some(Storage::F32)));
    assert!(d < 1e-6, "q8 of a Q8_0 source is exact: {d}");

    let hf = dir.path("hf");
    write_hf(&hf, &SynthConfig::tiny(), HfDtype::Bf16).unwrap();
    let (storage, _, d) = storage_of(&hf, Precision::Source);
    assert_eq!(storage.0, Some(Storage::Bf16));
    assert!(d < 1e-6, "bf16 of a bf16 source is exact: {d}");

    let f32_gguf = tiny_gguf(&dir);
    let (storage, f32_bytes, d) = storage_of(&f32_gguf, Precision::Source);
    assert_eq!(storage, (Some(Storage::F32), Some(Storage::F32)));
    assert!(d < 1e-6);
    let (storage, q8_bytes, d) = storage_of(&f32_gguf, Precision::Matrices(Storage::Q8));
    assert_eq!(storage, (Some(Storage::Q8), Some(Storage::F32)));
    assert!(q8_bytes * 2 < f32_bytes, "{q8_bytes} against {f32_bytes}");
    assert!(
        d > 0.0 && d < 1e-2,
        "8-bit embeddings change the logits a little: {d}"
    );
}

#[path = "../ir/tests/golden/authors.rs"]
mod authors;

/// The golden test compiled through the pipeline: each of the matrices the
/// authors' own code quantized (ir/tests/quant_golden.rs) becomes the weight
/// of a one-layer graph, compiled with bf16 arithmetic and T = 1..4 stages
/// (lower, quantize, simplify); the deployed weights the compiled graph
/// computes, merged back into a real matrix, hash to the authors' V1-V4.
#[test]
fn pipeline_in_bf16_deploys_the_authors_weights_v1_to_v4() {
    use fairyc_ir::quant::{widely_linear_inverse_with, Pairing as QPairing};
    use fairyc_ir::roles::ROLES_META;
    use fairyc_ir::{Arithmetic, Dim, GraphBuilder, MemoryStore, Shape, TensorType, WlPart};

    for &(seed, rows, cols, a_hash, a_q_hashes) in authors::GOLDEN {
        let a = authors::weights(seed, rows, cols);
        assert_eq!(authors::fnv(&a), a_hash, "generator drifted (seed {seed})");
        let mut b = GraphBuilder::new("golden");
        let x = b.input(
            "x",
            TensorType::new(DType::F32, Shape(vec![Dim::sym("seq"), Dim::Fixed(cols)])),
        );
        let ty = TensorType::new(DType::F32, Shape::new([rows, cols]));
        let w = b.weight("w", ty.clone());
        let y = b.push(Op::Linear, &[x, w]).unwrap();
        b.meta(ROLES_META, "w=q");
        let graph = b.finish(&[y]);
        let mut store = MemoryStore::default();
        store.insert("w", ty, a.iter().map(|v| v.to_f32()).collect());
        for (stages, &want) in (1..=4).zip(&a_q_hashes) {
            let mut opts = options(Some(Method::Fairy2i { stages }), Pairing::Paper, 1.0);
            opts.lower.arithmetic = Arithmetic::Bf16Exact;
            let (compiled, _) = fairyc_passes::pipeline::compile(&graph, &opts).unwrap();
            // The deployed U and W: the weights of the complex products.
            let mut parts = [None, None];
            for node in &compiled.nodes {
                if node.op != Op::Linear || compiled.node(node.operands[1]).ty.dtype != DType::C64 {
                    continue;
                }
                let mut r = node.operands[1];
                while !matches!(compiled.node(r).op, Op::WidelyLinear { .. }) {
                    r = compiled.node(r).operands[0];
                }
                let Op::WidelyLinear { part, .. } = compiled.node(r).op else {
                    unreachable!()
                };
                parts[usize::from(part == WlPart::W)] = Some(node.operands[1]);
            }
            let [Some(u), Some(w)] = parts else {
                panic!("V{stages}: the compiled layer has no U and W products")
            };
            let values =
                fairyc_backends::reference::evaluate_constants(&compiled, &store, &[u, w]).unwrap();
            let complex = |id: fairyc_ir::ValueId| match &values[&id.0].data {
                fairyc_runtime::Data::C64(v) => v.clone(),
                _ => panic!("complex weights"),
            };
            let (u, w) = (complex(u), complex(w));
            let (n, m) = (rows.div_ceil(2), cols.div_ceil(2));
            let a_q = widely_linear_inverse_with(
                &u,
                &w,
                n,
                m,
                rows,
                cols,
                QPairing::Halves,
                QPairing::Halves,
                Arithmetic::Bf16Exact,
            )
            .unwrap();
            let a_q: Vec<half::bf16> = a_q.into_iter().map(half::bf16::from_f32).collect();
            assert_eq!(authors::fnv(&a_q), want, "{rows}x{cols} V{stages}");
        }
    }
}
