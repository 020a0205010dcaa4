//! Models that start from random weights: a Hugging Face config.json (a
//! LLaMA-family or an iFairy one) and a tokenizer, for training from
//! scratch.
//!
//! The initialisation is iFairy's (`_init_weights` of the authors' model,
//! ../shared/research/ifairy-architecture.md section 11), applied to both
//! families so that comparisons start alike: matrices and embeddings
//! N(0, 0.02²); the real and imaginary parts of a complex linear weight
//! each N(0, 0.02²/2), so the complex weight has variance 0.02²; norm
//! gains 1 (both gains of a complex norm); biases 0.

use std::path::Path;
use std::sync::Arc;

use fairyc_ir::{Graph, MemoryStore};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::import::Imported;
use crate::tokenizer::Tokenizer;
use crate::{hf, ifairy, llama, FrontendError};

/// The standard deviation of a matrix entry.
const STD: f32 = 0.02;

/// A model of the architecture `config` describes, with weights drawn from
/// `seed`, and `tokenizer`, whose vocabulary must fit the config's.
pub fn random_model(
    config: &Path,
    tokenizer: Tokenizer,
    seed: u64,
) -> Result<Imported, FrontendError> {
    let bad = |message: String| FrontendError::File {
        path: config.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(config).map_err(|e| FrontendError::io(config, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let (graph, vocab) = if ifairy::is_ifairy(&json) {
        let cfg = ifairy::read_config(config, json)?;
        (ifairy::graph_for_config(&cfg), cfg.vocab_size)
    } else {
        if json.get("tie_word_embeddings") == Some(&serde_json::Value::Bool(true)) {
            return Err(bad(
                "random initialisation builds a separate output matrix: set tie_word_embeddings to false".into(),
            ));
        }
        let cfg = hf::read_config(config)?;
        (llama::graph_for_config(&cfg), cfg.vocab_size)
    };
    let mut graph = graph.map_err(|e| bad(e.to_string()))?;
    if tokenizer.vocab_size() > vocab {
        return Err(bad(format!(
            "vocab_size {vocab} is smaller than the tokenizer's {} tokens",
            tokenizer.vocab_size()
        )));
    }
    let store = initialise(&graph, seed);
    graph
        .meta
        .insert("source".into(), format!("random init, seed {seed}"));
    graph.meta.insert("format".into(), "random".into());
    Ok(Imported {
        graph,
        weights: Arc::new(store),
        tokenizer,
        source: config.to_path_buf(),
    })
}

/// Draws every weight `graph` references, by its role (see the module docs).
fn initialise(graph: &Graph, seed: u64) -> MemoryStore {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut store = MemoryStore::default();
    let mut weights: Vec<_> = graph.weights().collect();
    // The graph's order is the builder's; draw in name order so that the
    // values do not depend on it.
    weights.sort_by(|a, b| a.1.cmp(b.1));
    for (_, name, ty) in weights {
        let n: usize = ty.shape.concrete().map_or(0, |d| d.iter().product());
        let data = if ty.shape.rank() == 1 {
            let value = if name.ends_with(".bias") { 0.0 } else { 1.0 };
            vec![value; n]
        } else {
            let complex_part = name.ends_with(".weight_real") || name.ends_with(".weight_imag");
            let std = if complex_part { STD / 2f32.sqrt() } else { STD };
            let normal = Normal::new(0.0, std).expect("a positive standard deviation");
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        };
        store.insert(name, ty.clone(), data);
    }
    store
}
