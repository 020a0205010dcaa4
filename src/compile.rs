//! From a compiled graph to a deployable artifact: every quantized weight
//! expression becomes stored codes and scales.

use std::fmt;

use fairyc_backends::reference::evaluate_constants;
use fairyc_backends::Data;
use fairyc_frontend::fairy::{ArtifactTensor, Storage};
use fairyc_ir::infer::scale_shape;
use fairyc_ir::quant::{self, pack_code_rows, phase_quant_with, Pairing};
use fairyc_ir::{
    DType, Graph, Op, Scheme, Shape, TensorType, UnaryFn, ValueId, WeightStore, WlPart,
};
use fairyc_passes::pipeline::CompileOptions;
use fairyc_passes::quantize::Method;
use fairyc_passes::rebuild::{eliminate_dead_code, rebuild};

use crate::Error;

/// A deployable model: the graph that reads the artifact's tensors, and
/// the tensors.
pub struct Frozen {
    pub graph: Graph,
    pub tensors: Vec<(String, ArtifactTensor)>,
}

/// The stored name of a quantization stage: the source weight, the
/// widely-linear part and the stage, e.g. `blk.0.attn_q.weight.u1`.
fn stage_name(graph: &Graph, quantize: ValueId) -> String {
    let mut r = graph.node(quantize).operands[0];
    let mut stage = 0;
    loop {
        match graph.node(r).op {
            Op::Sub => stage += 1,
            Op::Unary {
                func: UnaryFn::RoundBf16,
            } => {}
            _ => break,
        }
        r = graph.node(r).operands[0];
    }
    let part = match graph.node(r).op {
        Op::WidelyLinear {
            part: WlPart::U, ..
        } => "u",
        Op::WidelyLinear {
            part: WlPart::W, ..
        } => "w",
        _ => "q",
    };
    // The source weight: the first leaf down the first operands (for a
    // complex weight built from `*_real` and `*_imag` tensors, the real one).
    while let Some(&first) = graph.node(r).operands.first() {
        r = first;
    }
    match &graph.node(r).op {
        Op::Weight { name } => format!("{}.{part}{stage}", name.trim_end_matches("_real")),
        _ => format!("quantized.{}", quantize.0),
    }
}

/// Freezes `graph` with the weights of `store` (unquantized tensors in
/// `precision`) and writes the artifact to `output` (atomically), keeping
/// `graph` as its source IR.
pub fn write_artifact(
    output: &std::path::Path,
    graph: &Graph,
    store: &dyn WeightStore,
    precision: Precision,
    tokenizer: &fairyc_frontend::tokenizer::Tokenizer,
) -> Result<Frozen, Error> {
    let frozen = freeze_with(graph, store, precision)?;
    fairyc_frontend::fairy::write(output, &frozen.graph, graph, tokenizer, &frozen.tensors)?;
    Ok(frozen)
}

/// How [`freeze`] stores the tensors it does not quantize.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// The precision of the source: f32, f16 and bf16 tensors as they are,
    /// a GGUF Q8_0 matrix as q8 (the same blocks, exactly), other quantized
    /// GGUF matrices (Q4_0, Q4_1, Q4_K, Q6_K) as f16.
    #[default]
    Source,
    /// Every matrix (embeddings, an unquantized output matrix) as this;
    /// vectors (norms, biases) keep the source's precision.
    Matrices(Storage),
}

impl Precision {
    /// The storage of a tensor of `rank` whose source is `encoding`.
    pub fn storage(self, encoding: Option<&str>, rank: usize) -> Storage {
        match (self, encoding.map(str::to_ascii_lowercase).as_deref()) {
            (Precision::Matrices(s), _) if rank >= 2 => s,
            (_, Some("f16")) => Storage::F16,
            (_, Some("bf16")) => Storage::Bf16,
            (_, Some("q8_0" | "q8")) if rank == 2 => Storage::Q8,
            (_, Some("f32") | None) => Storage::F32,
            // Other GGUF block encodings decode to values f16 holds closely.
            (_, Some(_)) if rank >= 2 => Storage::F16,
            _ => Storage::F32,
        }
    }
}

/// [`freeze_with`] in the source's precision.
pub fn freeze(graph: &Graph, store: &dyn WeightStore) -> Result<Frozen, Error> {
    freeze_with(graph, store, Precision::Source)
}

/// Replaces each quantization of a weight expression by the stored codes
/// and scales it computes (PhaseQuant), or by its stored values (the real
/// baselines); every other weight the graph still reads is stored as
/// `precision` says.
pub fn freeze_with(
    graph: &Graph,
    store: &dyn WeightStore,
    precision: Precision,
) -> Result<Frozen, Error> {
    let quantized: Vec<ValueId> = graph
        .ids()
        .filter(|&v| matches!(graph.node(v).op, Op::Quantize { .. }))
        .collect();
    let mut wanted: Vec<ValueId> = Vec::new();
    for &q in &quantized {
        match graph.node(q).op {
            Op::Quantize {
                scheme: Scheme::Phase | Scheme::PhaseIfairy,
                ..
            } => wanted.push(graph.node(q).operands[0]),
            _ => wanted.push(q),
        }
    }
    let values = evaluate_constants(graph, store, &wanted)?;
    let mut tensors: Vec<(String, ArtifactTensor)> = Vec::new();
    let deployed = rebuild(graph, |b, id, node, _| {
        let Op::Quantize {
            scheme,
            granularity,
            arithmetic,
        } = node.op
        else {
            return Ok(None);
        };
        let name = stage_name(graph, id);
        if !matches!(scheme, Scheme::Phase | Scheme::PhaseIfairy) {
            let Data::F32(v) = &values[&id.0].data else {
                unreachable!("real quantizers give f32")
            };
            tensors.push((
                name.clone(),
                ArtifactTensor::F32 {
                    shape: values[&id.0].shape.clone(),
                    data: v.clone(),
                },
            ));
            return Ok(Some(b.weight(name, node.ty.clone())));
        }
        let input = &values[&node.operands[0].0];
        let (n, m) = (input.shape[0], input.shape[1]);
        let Data::C64(w) = &input.data else {
            unreachable!("PhaseQuant reads complex weights")
        };
        let q = phase_quant_with(w, n, m, granularity, arithmetic).map_err(|e| {
            fairyc_ir::BuildError {
                graph: graph.name.clone(),
                op: "quantize",
                message: e.to_string(),
            }
        })?;
        let packed = pack_code_rows(&q.codes, n, m).map_err(|e| fairyc_ir::BuildError {
            graph: graph.name.clone(),
            op: "quantize",
            message: e.to_string(),
        })?;
        let scales_shape = scale_shape(granularity, n, m);
        let codes_name = format!("{name}.codes");
        let scales_name = format!("{name}.scales");
        let codes = b.weight(
            codes_name.clone(),
            TensorType::new(DType::Code2, Shape::new([n, m])),
        );
        let scales = b.weight(
            scales_name.clone(),
            TensorType::new(DType::F32, scales_shape.clone()),
        );
        tensors.push((
            codes_name,
            ArtifactTensor::Codes {
                rows: n,
                cols: m,
                packed,
            },
        ));
        tensors.push((
            scales_name,
            ArtifactTensor::F32 {
                shape: scales_shape.concrete().expect("scale shapes are fixed"),
                data: q.scales,
            },
        ));
        Ok(Some(b.push(Op::Dequant { granularity }, &[codes, scales])?))
    })
    .map_err(|e| Error::Usage(e.to_string()))?;
    // The source weights and derivations behind the stored codes are dead
    // now; each quantized layer runs from its packed codes.
    let deployed = eliminate_dead_code(&deployed);
    let deployed = fairyc_passes::legalize::pack_quantized_linears(&deployed)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let stored: std::collections::HashSet<String> =
        tensors.iter().map(|(n, _)| n.clone()).collect();
    for (_, name, ty) in deployed.weights() {
        if stored.contains(name) {
            continue;
        }
        let data = store
            .read_f32(name)
            .map_err(fairyc_backends::BackendError::from)?;
        let shape = ty.shape.concrete().expect("weights have fixed shapes");
        let storage = precision.storage(store.encoding(name).as_deref(), shape.len());
        tensors.push((
            name.to_string(),
            ArtifactTensor::encode(shape, data, storage),
        ));
    }
    Ok(Frozen {
        graph: deployed,
        tensors,
    })
}

/// Where an artifact's bytes go.
pub struct SizeBreakdown {
    /// Real parameters of the quantized layers (of the source matrices).
    pub quantized_params: usize,
    pub code_bytes: usize,
    pub scale_bytes: usize,
    pub full_precision_params: usize,
    pub full_precision_bytes: usize,
    /// Of those, parameters stored as f32, f16/bf16 and q8.
    pub by_storage: [(Storage, usize); 4],
}

impl SizeBreakdown {
    /// Sizes of a frozen model; `source` is the graph before freezing, whose
    /// quantized source weights give the parameter count.
    pub fn of(frozen: &Frozen, source: &Graph) -> SizeBreakdown {
        // The source weights behind every quantizer (through the split, the
        // residual stages, or the joining of real and imaginary parts).
        let mut quantized_params = 0;
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<ValueId> = source
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Quantize { .. }))
            .flat_map(|n| n.operands.clone())
            .collect();
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            let node = source.node(v);
            match node.op {
                Op::Weight { .. } => {
                    quantized_params += node
                        .ty
                        .shape
                        .concrete()
                        .map_or(0, |d| d.iter().product::<usize>())
                }
                _ => stack.extend(node.operands.iter().copied()),
            }
        }
        let mut b = SizeBreakdown {
            quantized_params,
            code_bytes: 0,
            scale_bytes: 0,
            full_precision_params: 0,
            full_precision_bytes: 0,
            by_storage: [
                (Storage::F32, 0),
                (Storage::F16, 0),
                (Storage::Bf16, 0),
                (Storage::Q8, 0),
            ],
        };
        for (name, t) in &frozen.tensors {
            match t.storage() {
                None => b.code_bytes += t.bytes(),
                Some(Storage::F32) if name.ends_with(".scales") => b.scale_bytes += t.bytes(),
                Some(s) => {
                    b.full_precision_params += t.len();
                    b.full_precision_bytes += t.bytes();
                    for (k, n) in &mut b.by_storage {
                        if *k == s {
                            *n += t.len();
                        }
                    }
                }
            }
        }
        b
    }
}

impl fmt::Display for SizeBreakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = |bytes: usize, params: usize| {
            if params == 0 {
                0.0
            } else {
                bytes as f64 * 8.0 / params as f64
            }
        };
        writeln!(
            f,
            "quantized layers: {} real parameters in {} bytes of codes ({:.4} bits/parameter) + {} bytes of scales ({:.4} bits/parameter with scales)",
            self.quantized_params,
            self.code_bytes,
            bits(self.code_bytes, self.quantized_params),
            self.scale_bytes,
            bits(self.code_bytes + self.scale_bytes, self.quantized_params)
        )?;
        let parts: Vec<String> = self
            .by_storage
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{n} as {}", storage_name(*s)))
            .collect();
        write!(
            f,
            "unquantized:      {} parameters in {} bytes ({})",
            self.full_precision_params,
            self.full_precision_bytes,
            parts.join(", ")
        )
    }
}

/// The name `--embeddings` gives a storage.
pub fn storage_name(s: Storage) -> &'static str {
    match s {
        Storage::F32 => "f32",
        Storage::F16 => "f16",
        Storage::Bf16 => "bf16",
        Storage::Q8 => "q8",
    }
}

/// The mean, over the layers `options` quantizes, of the relative
/// reconstruction error `||R - R̂|| / ||R||` of each real weight `R` (for
/// Fairy2i, `R̂` is the real matrix of the quantized widely-linear form,
/// eq. 7). Computed with the same reference functions the IR's ops use.
pub fn reconstruction_error(
    graph: &Graph,
    store: &dyn WeightStore,
    options: &CompileOptions,
) -> Result<Option<f64>, Error> {
    let Some(method) = options.method else {
        return Ok(None);
    };
    let layers = fairyc_passes::lower::plan(graph, &options.lower);
    let mut total = 0.0;
    for (name, &(row_block, col_block)) in &layers {
        let ty = store
            .tensor_type(name)
            .ok_or_else(|| Error::Usage(format!("weight \"{name}\" is missing")))?;
        let (rows, cols) = match ty.shape.concrete().as_deref() {
            Some(&[r, c]) => (r, c),
            _ => return Err(Error::Usage(format!("weight \"{name}\" is not a matrix"))),
        };
        let r = store
            .read_f32(name)
            .map_err(fairyc_backends::BackendError::from)?;
        let g = options.granularity;
        let approx = match method {
            Method::Fairy2i { stages } => quant::fairy2i_quantize(
                &r,
                rows,
                cols,
                &quant::Fairy2iConfig {
                    stages,
                    granularity: g,
                    row_pairing: Pairing::from_block(row_block),
                    col_pairing: Pairing::from_block(col_block),
                    arithmetic: options.lower.arithmetic,
                },
            )
            .map(|q| q.a_q),
            Method::RealBinary => quant::binary_quant(&r, rows, cols, g).map(|q| q.values),
            Method::RealTernary => quant::ternary_quant(&r, rows, cols, g).map(|q| q.values),
        }
        .map_err(|e| Error::Usage(format!("weight \"{name}\": {e}")))?;
        total += quant::relative_error(&r, &approx);
    }
    Ok((!layers.is_empty()).then(|| total / layers.len() as f64))
}
