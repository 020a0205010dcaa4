//! Training a `.fairy` artifact. Its quantized layers are stored as what
//! their quantizers computed (2-bit codes and scales, or the real
//! baselines' values), not as the full-precision masters training updates.
//! The masters are the source checkpoint's weights when the artifact is
//! exactly their quantization: its `fairyc.source_ir` names that
//! checkpoint, and freezing the source IR with its weights again must give
//! the artifact's tensors. Then training starts from the source IR and the
//! checkpoint's weights; otherwise it is refused, saying why.

use std::path::Path;

use fairyc_frontend::fairy::{read_source_graph, ArtifactTensor};
use fairyc_frontend::import::{detect, Format};
use fairyc_ir::{DType, Graph, Op, WeightStore};

use super::TrainConfig;
use crate::{import, Error, Imported};

/// For an artifact at `path` whose source IR quantizes, the model to train
/// from its re-derived masters (and the teacher when distilling), or the
/// reason it cannot be trained; `None` for any other model, which trains as
/// imported.
pub(super) fn masters(
    path: &Path,
    artifact: &Imported,
    config: &TrainConfig,
) -> Result<Option<(Imported, Option<Graph>)>, Error> {
    if !matches!(detect(path), Ok(Format::Fairy)) {
        return Ok(None);
    }
    let source_ir = read_source_graph(path)?;
    if !source_ir
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Quantize { .. }))
    {
        return Ok(None);
    }
    if config.quant.is_some() {
        return Err(Error::Usage(format!(
            "{} is a compiled artifact whose layers are quantized already: train it without --quant",
            path.display()
        )));
    }
    let codes = artifact
        .graph
        .weights()
        .any(|(_, _, ty)| ty.dtype == DType::Code2);
    let refuse = |reason: String| {
        Error::Usage(format!(
            "{}: the artifact holds only the quantized weights of its quantized layers ({}), not the full-precision masters that training updates; {reason}",
            path.display(),
            if codes { "2-bit codes and scales" } else { "their quantized values" },
        ))
    };
    let source = match source_ir.meta.get("source") {
        Some(s) if source_ir.meta.get("format").map(String::as_str) != Some("random") => s,
        Some(s) => {
            return Err(refuse(format!(
                "it was trained from {s}, so its masters exist only in the checkpoint of that run: resume it (--checkpoint, --resume)"
            )))
        }
        None => {
            return Err(refuse(
                "its source IR names no source checkpoint to re-derive them from: train from the source checkpoint instead".into(),
            ))
        }
    };
    // A relative source is relative to the artifact's folder (as a .fir's).
    let source = path.parent().unwrap_or(Path::new(".")).join(source);
    if !source.exists() {
        return Err(refuse(format!(
            "they can only be re-derived from its source checkpoint {}, which is not there: train from the source checkpoint instead",
            source.display()
        )));
    }
    let origin = import(&source).map_err(|e| {
        refuse(format!(
            "its source checkpoint {} cannot be read ({e}): train from the source checkpoint instead",
            source.display()
        ))
    })?;
    let mismatch = |why: String| {
        refuse(format!(
            "{why}, so the masters cannot be re-derived from its source checkpoint {}: train from that checkpoint, or resume the checkpoint of the run that wrote the artifact",
            source.display()
        ))
    };
    fairyc_ir::verify(&source_ir)
        .and_then(|()| fairyc_ir::verify_weights(&source_ir, origin.weights.as_ref()))
        .map_err(|e| mismatch(format!("its source IR does not fit the checkpoint ({e})")))?;
    let frozen = crate::compile::freeze(&source_ir, origin.weights.as_ref())?;
    if let Some(name) = frozen
        .tensors
        .iter()
        .find(|(name, t)| !stored_equal(artifact.weights.as_ref(), name, t))
        .map(|(name, _)| name)
    {
        return Err(mismatch(format!(
            "its tensor `{name}` is not the quantization of the checkpoint's weights (the artifact was trained, or the checkpoint changed since it was compiled)"
        )));
    }
    tracing::info!(source = %source.display(), "training the artifact's masters from its source checkpoint");
    let teacher = config.distill.then(|| origin.graph.clone());
    Ok(Some((
        Imported {
            graph: source_ir,
            ..origin
        },
        teacher,
    )))
}

/// Whether the artifact stores `name` as `tensor`: codes byte for byte,
/// other values to rounding in whichever precision the artifact stores them
/// (`fairyc compile --embeddings` may have chosen another than the source's).
fn stored_equal(store: &dyn WeightStore, name: &str, tensor: &ArtifactTensor) -> bool {
    use fairyc_frontend::fairy::Storage;
    let Some(values) = tensor.values() else {
        let ArtifactTensor::Codes { packed, .. } = tensor else {
            return false;
        };
        return store.read_codes(name).is_ok_and(|c| &c == packed);
    };
    let Ok(stored) = store.read_f32(name) else {
        return false;
    };
    let shape = store
        .tensor_type(name)
        .and_then(|t| t.shape.concrete())
        .unwrap_or_default();
    [Storage::F32, Storage::F16, Storage::Bf16, Storage::Q8]
        .into_iter()
        .filter_map(|storage| {
            ArtifactTensor::encode(shape.clone(), values.clone(), storage).values()
        })
        .any(|d| {
            d.len() == stored.len()
                && d.iter()
                    .zip(&stored)
                    .all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-30))
        })
}
