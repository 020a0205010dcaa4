//! Quantization-aware training on the reference executor: the compiled
//! graph, its cross-entropy, the backward pass and AdamW, all one IR graph
//! (`fairyc_passes::autodiff::adamw_step`) that each step runs once.
//!
//! The master weights stay in f32 in a [`TrainStore`]; the quantized
//! weights exist only inside a step, where the executor derives them from
//! the masters (the same weight expressions `fairyc compile` freezes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fairyc_ir::{DType, Graph, Node, Op, Shape, TensorType, ValueId, WeightError, WeightStore};
use fairyc_passes::autodiff::{adamw_step, AdamW, GradOptions};
use fairyc_runtime::{Data, Executor, KvCache, Tensor};
use safetensors::tensor::TensorView;

use crate::Error;

/// Weights of a model being trained: tensors set here shadow the source.
#[derive(Clone)]
pub struct TrainStore {
    base: Arc<dyn WeightStore>,
    tensors: HashMap<String, (TensorType, Arc<Vec<f32>>)>,
}

impl TrainStore {
    pub fn new(base: Arc<dyn WeightStore>) -> TrainStore {
        TrainStore {
            base,
            tensors: HashMap::new(),
        }
    }

    pub fn set(&mut self, name: &str, ty: TensorType, data: Vec<f32>) {
        self.tensors.insert(name.to_string(), (ty, Arc::new(data)));
    }
}

impl WeightStore for TrainStore {
    fn names(&self) -> Vec<String> {
        let mut names = self.base.names();
        names.extend(
            self.tensors
                .keys()
                .filter(|k| self.base.tensor_type(k).is_none())
                .cloned(),
        );
        names
    }

    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        match self.tensors.get(name) {
            Some((t, _)) => Some(t.clone()),
            None => self.base.tensor_type(name),
        }
    }

    fn encoding(&self, name: &str) -> Option<String> {
        match self.tensors.get(name) {
            Some(_) => Some("f32".into()),
            None => self.base.encoding(name),
        }
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        match self.tensors.get(name) {
            Some((_, d)) => Ok(d.as_ref().clone()),
            None => self.base.read_f32(name),
        }
    }

    fn read_codes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        self.base.read_codes(name)
    }
}

/// The learning-rate schedule: linear warm-up, a stable phase, and an
/// optional cosine decay (WSD, Fairy2i section 4.3).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub peak: f32,
    pub warmup: usize,
    /// Start of the cosine decay; `None` keeps the peak.
    pub decay_start: Option<usize>,
    /// Length of the decay and the fraction of the peak it ends at.
    pub decay_steps: usize,
    pub min_ratio: f32,
}

impl Schedule {
    /// The rate of step `t` (1-based).
    pub fn at(&self, t: usize) -> f32 {
        if t <= self.warmup {
            return self.peak * t as f32 / self.warmup.max(1) as f32;
        }
        match self.decay_start {
            Some(s) if t > s => {
                let p = ((t - s) as f32 / self.decay_steps.max(1) as f32).min(1.0);
                let cos = 0.5 * (1.0 + (std::f32::consts::PI * p).cos());
                self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cos)
            }
            _ => self.peak,
        }
    }
}

/// A training run's state: the step graph, the master weights and moments.
pub struct Trainer {
    step_graph: Graph,
    /// The forward graph with its loss, for held-out evaluation.
    eval_graph: Graph,
    params: Vec<(String, TensorType)>,
    pub store: TrainStore,
    pub adam: AdamW,
    pub step: usize,
}

/// Adds `targets: i32[seq]` and the mean cross-entropy of the logits (the
/// graph's first output) as its only output.
fn with_loss(graph: &Graph) -> Result<(Graph, ValueId), Error> {
    let mut g = graph.clone();
    let logits = g.outputs[0];
    let rows = g.ty(logits).shape.dims()[..1].to_vec();
    g.nodes.push(Node {
        op: Op::Input {
            name: "targets".into(),
        },
        operands: vec![],
        ty: TensorType::new(DType::I32, Shape(rows)),
    });
    let targets = ValueId(g.nodes.len() - 1);
    g.nodes.push(Node {
        op: Op::CrossEntropy,
        operands: vec![logits, targets],
        ty: TensorType::new(DType::F32, Shape(vec![])),
    });
    let loss = ValueId(g.nodes.len() - 1);
    g.outputs = vec![loss];
    fairyc_ir::verify(&g).map_err(|e| Error::Usage(e.to_string()))?;
    Ok((g, loss))
}

impl Trainer {
    /// Prepares to train every weight of `graph` (a language-model graph,
    /// quantized or not) with AdamW, moments starting at zero.
    pub fn new(
        graph: &Graph,
        weights: Arc<dyn WeightStore>,
        adam: AdamW,
        options: &GradOptions,
    ) -> Result<Trainer, Error> {
        let (eval_graph, loss) = with_loss(graph)?;
        let ids: Vec<ValueId> = eval_graph.weights().map(|(id, _, _)| id).collect();
        let params: Vec<(String, TensorType)> = eval_graph
            .weights()
            .map(|(_, n, t)| (n.to_string(), t.clone()))
            .collect();
        let step_graph = adamw_step(&eval_graph, loss, &ids, &adam, options)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let mut store = TrainStore::new(weights);
        for (name, ty) in &params {
            let n: usize = ty.shape.concrete().map_or(0, |d| d.iter().product());
            store.set(&format!("adam.m.{name}"), ty.clone(), vec![0.0; n]);
            store.set(&format!("adam.v.{name}"), ty.clone(), vec![0.0; n]);
        }
        Ok(Trainer {
            step_graph,
            eval_graph,
            params,
            store,
            adam,
            step: 0,
        })
    }

    fn inputs(window: &[u32]) -> HashMap<String, Tensor> {
        let n = window.len() - 1;
        let ids: Vec<i32> = window[..n].iter().map(|&t| t as i32).collect();
        let targets: Vec<i32> = window[1..].iter().map(|&t| t as i32).collect();
        HashMap::from([
            ("tokens".to_string(), Tensor::i32(vec![n], ids)),
            (
                "positions".to_string(),
                Tensor::i32(vec![n], (0..n as i32).collect()),
            ),
            ("targets".to_string(), Tensor::i32(vec![n], targets)),
        ])
    }

    /// One AdamW step on `window` (inputs are all but its last token,
    /// targets all but its first); returns the loss before the step.
    pub fn train_step(&mut self, window: &[u32], lr: f32) -> Result<f32, Error> {
        self.step += 1;
        let t = self.step as i32;
        let mut inputs = Trainer::inputs(window);
        let scalar = |x: f32| Tensor::f32(vec![], vec![x]);
        inputs.insert("lr".into(), scalar(lr));
        inputs.insert("c1".into(), scalar(1.0 / (1.0 - self.adam.beta1.powi(t))));
        inputs.insert("c2".into(), scalar(1.0 / (1.0 - self.adam.beta2.powi(t))));
        let exec = Executor::new(self.step_graph.clone(), &self.store, &|_| {})?;
        let outs = exec.run(&inputs, &mut KvCache::new())?;
        let k = self.params.len();
        for (i, (name, ty)) in self.params.iter().enumerate() {
            let take = |t: &Tensor| match &t.data {
                Data::F32(d) => d.clone(),
                _ => unreachable!("master weights and moments are f32"),
            };
            self.store.set(name, ty.clone(), take(&outs[1 + i]));
            self.store.set(
                &format!("adam.m.{name}"),
                ty.clone(),
                take(&outs[1 + k + i]),
            );
            self.store.set(
                &format!("adam.v.{name}"),
                ty.clone(),
                take(&outs[1 + 2 * k + i]),
            );
        }
        Ok(outs[0]
            .as_f32()
            .and_then(|l| l.first().copied())
            .unwrap_or(f32::NAN))
    }

    /// Mean loss over `windows` with the current weights.
    pub fn eval_loss(&self, windows: &[&[u32]]) -> Result<f64, Error> {
        let exec = Executor::new(self.eval_graph.clone(), &self.store, &|_| {})?;
        let mut total = 0.0;
        for w in windows {
            let out = exec.run(&Trainer::inputs(w), &mut KvCache::new())?;
            total += f64::from(
                out[0]
                    .as_f32()
                    .and_then(|l| l.first().copied())
                    .unwrap_or(f32::NAN),
            );
        }
        Ok(total / windows.len().max(1) as f64)
    }

    /// Writes the master weights, the moments and the step, atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut entries: Vec<(String, Vec<usize>, Arc<Vec<f32>>)> = Vec::new();
        for (name, (ty, data)) in &self.store.tensors {
            entries.push((
                name.clone(),
                ty.shape.concrete().unwrap_or_default(),
                data.clone(),
            ));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes: Vec<Vec<u8>> = entries
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = entries
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).map(|v| (n.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Usage(format!("checkpoint: {e}")))?;
        let meta = HashMap::from([("fairyc.step".to_string(), self.step.to_string())]);
        let data = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Usage(format!("checkpoint: {e}")))?;
        fairyc_ir::atomic::write_atomically(path, |w| std::io::Write::write_all(w, &data))
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    }

    /// Restores a checkpoint written by [`Trainer::save`].
    pub fn load(&mut self, path: &Path) -> Result<(), Error> {
        let ckpt =
            fairyc_frontend::safetensors_store::SafetensorsStore::open(&[path.to_path_buf()])?;
        let step = ckpt
            .metadata()
            .get("fairyc.step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: not a fairyc checkpoint (no fairyc.step)",
                    path.display()
                ))
            })?;
        for name in ckpt.names() {
            let ty = ckpt.tensor_type(&name).expect("listed");
            let data = ckpt
                .read_f32(&name)
                .map_err(fairyc_runtime::RuntimeError::from)?;
            self.store.set(&name, ty, data);
        }
        self.step = step;
        Ok(())
    }
}
