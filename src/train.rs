//! Training: quantization-aware training of a compiled model,
//! distillation to its full-precision self, and training from scratch, on
//! any backend that runs the training ops (the reference on the CPU, cuda
//! on a GPU). A step is one graph
//! (`fairyc_passes::optimizer::adamw_step`): the forward pass over the
//! step's windows stacked (attention segmented by window), the loss, the
//! backward pass and AdamW (clipping by the global norm, decoupled weight
//! decay), with the master weights and the moments as the graph's state,
//! which stays where the program runs between steps.
//!
//! The masters are f32; the quantized weights exist only inside a step,
//! derived from the masters once (the same weight expressions `fairyc
//! compile` freezes), each quantized layer trained as one real product
//! (`fairyc_passes::real_products`). A [`TrainStore`] holds what the host
//! sees: synced for checkpoints, evaluation and the artifact.
//!
//! [`train`] runs a whole training run from a [`TrainConfig`] (what
//! `fairyc train` does); [`Trainer`] is its step-by-step engine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fairyc_backends::cuda::Communicator;
use fairyc_backends::state::STATE_META;
use fairyc_backends::Tensor;
use fairyc_backends::{Backend, Cuda, GpuAttention, GpuMatmul, Program, Rank, Reference};
use fairyc_ir::{
    Graph, GraphBuilder, MemoryStore, Op, TensorType, ValueId, WeightError, WeightStore,
};
use fairyc_passes::autodiff::{gradients, GradOptions};
use fairyc_passes::cost::CostModel;
use fairyc_passes::egraph::Limits;
use fairyc_passes::optimizer::{
    adamw_step, parameter_owners, step_state, AdamW, Replicas, RANK_SHARE,
};
use fairyc_passes::real_products::{fold_split_gradients, real_products};
use fairyc_passes::rebuild::eliminate_dead_code;
use fairyc_passes::simplify::{simplify, SimplifyOptions};
use fairyc_runtime::score::{segmented, window_inputs, with_cross_entropy, WindowLoss};
use safetensors::tensor::TensorView;

use crate::Error;

mod artifact;
mod run;
mod teacher_data;

pub use run::{
    read_records, train, Event, ModelSource, ScheduleKind, StepRecord, TrainConfig, TrainReport,
    CSV_HEADER,
};
pub use teacher_data::TeacherData;

/// The prefix of a distillation teacher's weights: `teacher.<name>` reads
/// the source's `<name>`, which training never changes.
const TEACHER: &str = "teacher.";

/// Weights of a model being trained: tensors set here (held in a
/// [`MemoryStore`]) shadow the source.
#[derive(Clone)]
pub struct TrainStore {
    base: Arc<dyn WeightStore>,
    tensors: MemoryStore,
}

impl TrainStore {
    pub fn new(base: Arc<dyn WeightStore>) -> TrainStore {
        TrainStore {
            base,
            tensors: MemoryStore::default(),
        }
    }

    pub fn set(&mut self, name: &str, ty: TensorType, data: Vec<f32>) {
        self.tensors.insert(name, ty, data);
    }

    /// The source's name for `name`: a teacher weight reads the original.
    fn source_name(name: &str) -> &str {
        name.strip_prefix(TEACHER).unwrap_or(name)
    }
}

impl WeightStore for TrainStore {
    fn names(&self) -> Vec<String> {
        let mut names = self.base.names();
        names.extend(
            self.tensors
                .names()
                .into_iter()
                .filter(|k| self.base.tensor_type(k).is_none()),
        );
        names
    }

    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        self.tensors
            .tensor_type(name)
            .or_else(|| self.base.tensor_type(TrainStore::source_name(name)))
    }

    fn encoding(&self, name: &str) -> Option<String> {
        self.tensors
            .encoding(name)
            .or_else(|| self.base.encoding(TrainStore::source_name(name)))
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        match self.tensors.get(name) {
            Some((_, d)) => Ok(d.as_ref().clone()),
            None => self.base.read_f32(TrainStore::source_name(name)),
        }
    }

    fn read_codes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        self.base.read_codes(TrainStore::source_name(name))
    }
}

/// The learning-rate (and weight-decay) schedule.
#[derive(Clone, Copy, Debug)]
pub enum Schedule {
    /// Linear warm-up, a stable phase, and an optional cosine decay to
    /// `min_ratio · peak` over `decay_steps` from `decay_start` (WSD,
    /// Fairy2i section 4.3). Weight decay stays constant.
    Wsd {
        peak: f32,
        warmup: usize,
        decay_start: Option<usize>,
        decay_steps: usize,
        min_ratio: f32,
    },
    /// iFairy's recipe over `total` steps: `t/warmup` during the warm-up,
    /// then `1 − (t − warmup)/total` until `total/2`, then
    /// `0.6666 · (1 − t/total)` (a drop to a third of the peak, then a
    /// linear decay to 0); weight decay only in the first half.
    TwoPhase {
        peak: f32,
        warmup: usize,
        total: usize,
    },
}

impl Schedule {
    /// The learning rate of step `t` (1-based).
    pub fn lr(&self, t: usize) -> f32 {
        match *self {
            Schedule::Wsd {
                peak,
                warmup,
                decay_start,
                decay_steps,
                min_ratio,
            } => {
                if t <= warmup {
                    return peak * t as f32 / warmup.max(1) as f32;
                }
                match decay_start {
                    Some(s) if t > s => {
                        let p = ((t - s) as f32 / decay_steps.max(1) as f32).min(1.0);
                        let cos = 0.5 * (1.0 + (std::f32::consts::PI * p).cos());
                        peak * (min_ratio + (1.0 - min_ratio) * cos)
                    }
                    _ => peak,
                }
            }
            Schedule::TwoPhase {
                peak,
                warmup,
                total,
            } => {
                let (t, total) = (t as f32, total.max(1) as f32);
                let factor = if t >= total / 2.0 {
                    0.6666 * (1.0 - t / total)
                } else if t < warmup as f32 {
                    t / warmup as f32
                } else {
                    1.0 - (t - warmup as f32) / total
                };
                peak * factor.max(0.0)
            }
        }
    }

    /// The weight decay of step `t` for the configured decay `base`.
    pub fn weight_decay(&self, t: usize, base: f32) -> f32 {
        match *self {
            Schedule::TwoPhase { total, .. } if 2 * t >= total => 0.0,
            _ => base,
        }
    }
}

/// What the model learns to match.
#[derive(Clone, Debug)]
pub enum Objective {
    /// The next token (cross-entropy).
    NextToken,
    /// The logits of this graph, the model before quantization, with its
    /// source weights frozen (KL divergence from the teacher).
    Distill(Graph),
}

/// How to train: the optimizer, the straight-through estimator, the
/// objective, whether to offer Gauss's product for the training graph's
/// complex products, the tokens a window feeds (`rows`: every training
/// window has `rows + 1` tokens, attention is segmented by `rows`, and the
/// cost model weighs them), and where the step runs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub adam: AdamW,
    pub grad: GradOptions,
    pub objective: Objective,
    pub gauss: bool,
    pub rows: usize,
    pub device: TrainDevice,
    /// Data-parallel replicas: each step's windows are dealt out to them
    /// (window `k` to replica `k mod ranks`), each runs the step on its
    /// windows (on the cuda device, on GPU `r`) with its own copy of the
    /// masters and moments, their loss and gradients summed over the ranks
    /// (`all_reduce`: NCCL on GPUs) before the identical update. On the
    /// CPU the replicas are threads sharing its cores (what tests the path
    /// without GPUs).
    pub ranks: usize,
    /// With several ranks: what each rank holds of the optimizer's state.
    pub sharding: Sharding,
}

/// What the data-parallel ranks divide among themselves, by tensors: each
/// parameter has one owner ([`parameter_owners`]: the largest first, each
/// to the rank owning the fewest elements so far).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharding {
    /// Every rank holds every master and moment and makes the same update.
    #[default]
    Replicated,
    /// ZeRO stage 1: a parameter's AdamW moments live on its owner, which
    /// alone updates it and broadcasts the new value: the moments' memory
    /// is divided among the ranks.
    Optimizer,
    /// ZeRO stage 3: the master lives on its owner too, which sends the
    /// others what their steps read of it before each forward pass, a
    /// quantized weight as its 2-bit codes and scales: the masters' and
    /// the moments' memory is divided among the ranks.
    Masters,
}

/// Where the training step runs: the masters, the moments and AdamW stay
/// on the device (on each data-parallel rank's), as the step graph's
/// state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainDevice {
    /// The reference backend, on the CPU's cores.
    #[default]
    Cpu,
    /// The cuda backend, on the first CUDA device (and the next ones for
    /// data-parallel ranks), its dense products in this arithmetic, its
    /// attention so.
    Cuda(GpuMatmul, GpuAttention),
}

/// How a data-parallel rank that failed releases the group's other ranks
/// from waiting on it in their collectives.
type Abort = Box<dyn Fn(&str) + Send + Sync>;

/// One data-parallel rank's backend, and its [`Abort`].
struct Replica {
    backend: Box<dyn Backend>,
    abort: Abort,
}

impl TrainDevice {
    pub(crate) fn backend(self) -> Box<dyn Backend> {
        match self {
            TrainDevice::Cpu => Box::new(Reference::default()),
            TrainDevice::Cuda(matmul, attention) => Box::new(Cuda {
                matmul,
                attention,
                ..Cuda::default()
            }),
        }
    }

    /// The backend that measures (held-out evaluation) and generates the
    /// teacher's text: f32 products on cuda, so that neither depends on
    /// the training arithmetic.
    pub(crate) fn exact_backend(self) -> Box<dyn Backend> {
        match self {
            TrainDevice::Cuda(..) => {
                TrainDevice::Cuda(GpuMatmul::F32, GpuAttention::Products).backend()
            }
            TrainDevice::Cpu => self.backend(),
        }
    }

    /// The backends of `ranks` data-parallel ranks (GPU `r` for rank `r`
    /// on cuda), grouped so that their collectives run over them.
    fn replicas(self, ranks: usize) -> Result<Vec<Replica>, Error> {
        if ranks == 1 {
            let abort = Box::new(|_: &str| {});
            return Ok(vec![Replica {
                backend: self.backend(),
                abort,
            }]);
        }
        Ok(match self {
            TrainDevice::Cpu => Rank::group(ranks)
                .into_iter()
                .map(|rank| Replica {
                    backend: Box::new(Reference::rank(rank.clone())),
                    abort: Box::new(move |why| rank.abort(why)),
                })
                .collect(),
            TrainDevice::Cuda(matmul, attention) => {
                let group = Arc::new(Communicator::group(ranks)?);
                (0..ranks)
                    .map(|rank| {
                        let group = group.clone();
                        Replica {
                            backend: Box::new(Cuda {
                                device: rank,
                                matmul,
                                attention,
                                communicator: Some(group[rank].clone()),
                                ..Cuda::default()
                            }),
                            abort: Box::new(move |_| group.iter().for_each(|c| c.abort())),
                        }
                    })
                    .collect()
            }
        })
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// The mean training loss over the step's micro-batches, before it.
    pub loss: f32,
    /// The global L2 norm of the mean gradient, before clipping.
    pub grad_norm: f32,
}

/// One rank's whole step ([`adamw_step`]): the masters and moments are
/// its state, which stays on the device between steps.
struct RankStep {
    graph: Graph,
    /// The graph's state inputs ([`step_state`] order) and types.
    state: Vec<(String, TensorType)>,
}

/// A training run's state: the graphs, the master weights and moments.
pub struct Trainer {
    /// Each rank's step: one for all ranks, or one each where the
    /// optimizer is sharded ([`Trainer::rank_step`]).
    steps: Vec<RankStep>,
    /// Each rank's step compiled (at the first step), and how to abort the
    /// group when one fails.
    resident: Vec<(Box<dyn Program>, Abort)>,
    /// Each rank's state, where its program keeps it (the masters it holds
    /// are equal to the other holders'); `None` before the first step, after a load and after a
    /// failed data-parallel step (then the store is current and the next
    /// step starts from it).
    state: Option<Vec<Vec<Tensor>>>,
    /// Whether `state` is ahead of `store` (steps ran since the last
    /// [`Trainer::sync`]).
    stale: bool,
    /// The forward graph, for held-out evaluation.
    eval_graph: Graph,
    params: Vec<(String, TensorType)>,
    store: TrainStore,
    pub adam: AdamW,
    pub step: usize,
    device: TrainDevice,
    ranks: usize,
    /// The tokens a window feeds (one fewer than it holds).
    rows: usize,
}

/// `graph` with its mean cross-entropy as the only output.
fn with_loss(graph: &Graph) -> Result<(Graph, ValueId), Error> {
    with_cross_entropy(graph).map_err(|e| Error::Usage(e.to_string()))
}

/// The student `graph` and the `teacher` graph side by side over the same
/// inputs (teacher weights renamed `teacher.<name>`), with the KL
/// divergence from the teacher's logits to the student's as the output.
fn with_distillation(graph: &Graph, teacher: &Graph) -> Result<(Graph, ValueId), Error> {
    let inputs: HashMap<&str, ValueId> = graph.inputs().map(|(id, n, _)| (n, id)).collect();
    if let Some((_, name, _)) = teacher.inputs().find(|(_, n, _)| !inputs.contains_key(n)) {
        return Err(Error::Usage(format!(
            "the teacher reads input \"{name}\", which the student lacks"
        )));
    }
    let built = |e: fairyc_ir::BuildError| Error::Usage(format!("distillation graph: {e}"));
    let mut b = GraphBuilder::like(graph);
    let student = b
        .inline(graph, |_, _, _, _| Ok::<_, fairyc_ir::BuildError>(None))
        .map_err(built)?;
    let teacher_values = b
        .inline(teacher, |b, _, node, _| {
            Ok::<_, fairyc_ir::BuildError>(match &node.op {
                Op::Input { name } => Some(student[inputs[name.as_str()].0]),
                Op::Weight { name } => Some(b.weight(format!("{TEACHER}{name}"), node.ty.clone())),
                _ => None,
            })
        })
        .map_err(built)?;
    let kl = b
        .push(
            Op::KlDiv,
            &[
                student[graph.outputs[0].0],
                teacher_values[teacher.outputs[0].0],
            ],
        )
        .map_err(built)?;
    let g = b.finish(&[kl]);
    fairyc_ir::verify(&g).map_err(|e| Error::Usage(format!("distillation graph: {e}")))?;
    Ok((g, kl))
}

/// The training graph after `simplify` with Gauss's product and a cost
/// model for `rows` rows per window, verified.
fn with_gauss(graph: &Graph, rows: usize) -> Result<Graph, Error> {
    let options = SimplifyOptions {
        identities: false,
        gauss: true,
        cost: CostModel {
            tokens: rows.max(1) as f64,
            ..CostModel::default()
        },
    };
    let (simplified, stats) = simplify(graph, options, Limits::default());
    tracing::info!(%stats, "training graph simplified");
    let simplified = eliminate_dead_code(&simplified);
    fairyc_ir::verify(&simplified)
        .map_err(|e| Error::Usage(format!("simplified training graph: {e}")))?;
    Ok(simplified)
}

/// Held-out windows evaluated in one run (segments of it).
const EVAL_WINDOWS: usize = 16;

/// The error for a parameter, gradient or moment that is not f32.
fn not_f32() -> Error {
    Error::Usage("master weights, gradients and moments must be f32".into())
}

impl Trainer {
    /// Prepares to train every weight of `graph` (a language-model graph,
    /// quantized or not) with AdamW towards the objective, moments at zero.
    /// With `options.gauss` the gradient graph goes through `simplify`,
    /// which uses Gauss's product where the cost model says it pays for
    /// windows of `options.rows` rows.
    pub fn new(
        graph: &Graph,
        weights: Arc<dyn WeightStore>,
        options: &TrainOptions,
    ) -> Result<Trainer, Error> {
        // Quantized layers as one real product each (the same function).
        let graph = &real_products(graph).map_err(|e| Error::Usage(e.to_string()))?;

        let params: Vec<(String, TensorType)> = graph
            .weights()
            .map(|(_, n, t)| (n.to_string(), t.clone()))
            .collect();
        let rows = options.rows.max(1);
        let (training, loss) = match &options.objective {
            Objective::NextToken => with_loss(&segmented(graph, rows))?,
            Objective::Distill(teacher) => {
                with_distillation(&segmented(graph, rows), &segmented(teacher, rows))?
            }
        };
        let ids: HashMap<&str, ValueId> = training.weights().map(|(id, n, _)| (n, id)).collect();
        let wrt: Vec<ValueId> = params.iter().map(|(n, _)| ids[n.as_str()]).collect();
        let grad_graph = gradients(&training, loss, &wrt, &options.grad)
            .and_then(|g| fold_split_gradients(&g).map_err(Into::into))
            .map_err(|e| Error::Usage(e.to_string()))?;
        let grad_graph = if options.gauss {
            with_gauss(&grad_graph, rows)?
        } else {
            grad_graph
        };
        let ranks = options.ranks.max(1);
        if options.sharding != Sharding::Replicated && ranks == 1 {
            return Err(Error::Usage(
                "a sharded optimizer or sharded masters need more than one data-parallel rank"
                    .into(),
            ));
        }
        let owners = parameter_owners(&params, ranks);
        let replicas: Vec<Replicas> = match (ranks, options.sharding) {
            (1, _) => vec![Replicas::One],
            (_, Sharding::Replicated) => vec![Replicas::DataParallel],
            (_, Sharding::Optimizer) => (0..ranks)
                .map(|rank| Replicas::ShardedOptimizer {
                    rank,
                    owners: owners.clone(),
                })
                .collect(),
            (_, Sharding::Masters) => (0..ranks)
                .map(|rank| Replicas::ShardedMasters {
                    rank,
                    owners: owners.clone(),
                })
                .collect(),
        };
        let steps = replicas
            .iter()
            .map(|replicas| {
                let mut graph = adamw_step(&grad_graph, &params, &options.adam, replicas)
                    .map_err(|e| Error::Usage(e.to_string()))?;
                let state = step_state(&params, replicas);
                let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
                graph.meta.insert(STATE_META.to_string(), names.join(","));
                Ok(RankStep { graph, state })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut store = TrainStore::new(weights);
        for (name, ty) in &params {
            let n: usize = ty.shape.concrete().map_or(0, |d| d.iter().product());
            store.set(&format!("adam.m.{name}"), ty.clone(), vec![0.0; n]);
            store.set(&format!("adam.v.{name}"), ty.clone(), vec![0.0; n]);
        }
        Ok(Trainer {
            steps,
            resident: Vec::new(),
            state: None,
            stale: false,
            eval_graph: graph.clone(),
            params,
            store,
            adam: options.adam,
            step: 0,
            device: options.device,
            ranks,
            rows,
        })
    }

    /// The step program's time per op, when it was built with
    /// `FAIRYC_PROFILE` set.
    pub fn profile(&self) -> Option<String> {
        Some(self.resident.first()?.0.profile()?.report())
    }

    /// The number of trained real parameters.
    pub fn parameter_count(&self) -> usize {
        self.params
            .iter()
            .map(|(_, t)| {
                t.shape
                    .concrete()
                    .map_or(0, |d| d.iter().product::<usize>())
            })
            .sum()
    }

    /// The inputs of a batch of windows stacked, each of this trainer's
    /// `rows + 1` tokens (its attention is segmented by `rows`).
    fn batch_inputs(&self, windows: &[&[u32]]) -> Result<HashMap<String, Tensor>, Error> {
        if let Some(w) = windows.iter().find(|w| w.len() != self.rows + 1) {
            return Err(Error::Usage(format!(
                "a training window of {} tokens; this trainer's windows hold {} (--seq {} and the next token)",
                w.len(),
                self.rows + 1,
                self.rows
            )));
        }
        Ok(window_inputs(windows, self.rows))
    }

    /// AdamW's scalars for step `t` (the step graph's gradient is already
    /// the batch's mean: its scale is 1).
    fn scalars(&self, t: usize, lr: f32, weight_decay: f32) -> [(String, Tensor); 5] {
        let t = t as i32;
        let scalar = |x: f32| Tensor::f32(vec![], vec![x]);
        [
            ("grad_scale", 1.0),
            ("lr", lr),
            ("c1", 1.0 / (1.0 - self.adam.beta1.powi(t))),
            ("c2", 1.0 / (1.0 - self.adam.beta2.powi(t))),
            ("weight_decay", weight_decay),
        ]
        .map(|(name, x)| (name.to_string(), scalar(x)))
    }

    /// One AdamW step on the mean gradient of the windows `batch` (each of
    /// `rows + 1` tokens: inputs are all but its last token, targets all
    /// but its first) with learning rate `lr` and decoupled `weight_decay`:
    /// one run of the step graph on each rank, its masters and moments
    /// staying on its device. The new masters and moments replace the old
    /// only if the loss and the gradient are finite.
    pub fn train_step(
        &mut self,
        batch: &[&[u32]],
        lr: f32,
        weight_decay: f32,
    ) -> Result<StepStats, Error> {
        if batch.is_empty() {
            return Err(Error::Usage("a step needs at least one window".into()));
        }
        let t = self.step + 1;
        // Window k goes to rank k mod ranks; a rank left without one runs
        // the first window with no share of the step.
        let ranks = self.ranks;
        let mut inputs = (0..ranks)
            .map(|rank| {
                let windows: Vec<&[u32]> =
                    batch.iter().skip(rank).step_by(ranks).copied().collect();
                let share = windows.len() as f32 / batch.len() as f32;
                let mut named = self.batch_inputs(if windows.is_empty() {
                    &batch[..1]
                } else {
                    &windows
                })?;
                named.extend(self.scalars(t, lr, weight_decay));
                if ranks > 1 {
                    named.insert(RANK_SHARE.into(), Tensor::f32(vec![], vec![share]));
                }
                Ok(named)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if self.resident.is_empty() {
            // All or none: a group missing a rank would wait for it forever.
            let mut resident = Vec::with_capacity(ranks);
            for (rank, replica) in self.device.replicas(ranks)?.into_iter().enumerate() {
                let program = fairyc_backends::compile(
                    replica.backend.as_ref(),
                    &self.rank_step(rank).graph,
                    &self.store,
                    &|_| {},
                )?;
                resident.push((program, replica.abort));
            }
            self.resident = resident;
        }
        let state = match self.state.take() {
            Some(state) => state,
            None => (0..ranks)
                .map(|rank| self.host_state(rank))
                .collect::<Result<_, _>>()?,
        };
        for (rank, (named, rank_state)) in inputs.iter_mut().zip(&state).enumerate() {
            let names = self.rank_step(rank).state.iter().map(|(n, _)| n.clone());
            named.extend(names.zip(rank_state.iter().cloned()));
        }
        let outputs = self.run_ranks(inputs);
        // The old state stays for the next try whatever happens here.
        self.state = Some(state);
        let mut outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                self.release_group();
                return Err(e);
            }
        };
        let scalar = |t: &Tensor| t.as_f32().and_then(|v| v.first().copied());
        // Every rank has the same (summed) loss and norm: rank 0's.
        let (loss, squares) = scalar(&outputs[0][0])
            .zip(scalar(&outputs[0][1]))
            .ok_or_else(not_f32)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                step: t,
                what: "loss",
                value: f64::from(loss),
            });
        }
        if !squares.is_finite() {
            return Err(Error::NonFinite {
                step: t,
                what: "gradient norm",
                value: f64::from(squares).sqrt(),
            });
        }
        self.state = Some(outputs.iter_mut().map(|o| o.split_off(2)).collect());
        self.stale = true;
        self.step = t;
        Ok(StepStats {
            loss,
            grad_norm: squares.max(0.0).sqrt(),
        })
    }

    /// After a failed data-parallel step: the group is aborted, so the
    /// state (still the step's start) comes back to the store and the next
    /// step builds a new group. Where even that fails the programs stay,
    /// and the next step fails as this one did.
    fn release_group(&mut self) {
        if self.ranks == 1 {
            return;
        }
        match self.sync() {
            Ok(()) => {
                self.resident.clear();
                self.state = None;
            }
            Err(e) => {
                tracing::warn!("the failed step's state could not come back to the host: {e}")
            }
        }
    }

    /// Each rank's program on its inputs, the ranks side by side (threads).
    /// A rank that fails (an error or a panic) aborts the group, so that
    /// the others stop waiting for it in their collectives; the error is
    /// that first rank's.
    fn run_ranks(&self, inputs: Vec<HashMap<String, Tensor>>) -> Result<Vec<Vec<Tensor>>, Error> {
        assert_eq!(self.resident.len(), inputs.len(), "a program per rank");
        if let [(program, _)] = self.resident.as_slice() {
            let inputs = inputs.into_iter().next().expect("one rank's inputs");
            // A panic is an error here too, so that the state stays.
            return match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                program.run(inputs)
            })) {
                Ok(run) => Ok(vec![run?]),
                Err(panic) => Err(Error::Usage(format!("the step {}", panicked(&*panic)))),
            };
        }
        let ranks = self.ranks;
        // The first failure, recorded before its abort releases the others.
        let first: Mutex<Option<Error>> = Mutex::new(None);
        let outputs: Vec<Option<Vec<Tensor>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .resident
                .iter()
                .zip(inputs)
                .enumerate()
                .map(|(rank, ((program, abort), inputs))| {
                    let first = &first;
                    scope.spawn(move || {
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            program.run(inputs)
                        }));
                        let why = match run {
                            Ok(Ok(outputs)) => return Some(outputs),
                            Ok(Err(e)) => e.to_string(),
                            Err(panic) => format!("it {}", panicked(&*panic)),
                        };
                        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert_with(|| {
                            Error::Usage(format!(
                                "data-parallel rank {rank} of {ranks}: {why}; the step was not applied"
                            ))
                        });
                        drop(first);
                        abort(&why);
                        None
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        });
        match first.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(outputs
                .into_iter()
                .map(|o| o.expect("every rank ran"))
                .collect()),
        }
    }

    /// Rank `rank`'s step.
    fn rank_step(&self, rank: usize) -> &RankStep {
        rank_step(&self.steps, rank)
    }

    /// The masters and moments from the store, as rank `rank`'s state.
    fn host_state(&self, rank: usize) -> Result<Vec<Tensor>, Error> {
        self.rank_step(rank)
            .state
            .iter()
            .map(|(name, ty)| {
                let data = self
                    .store
                    .read_f32(name)
                    .map_err(fairyc_backends::BackendError::from)?;
                Ok(Tensor::f32(ty.shape.concrete().unwrap_or_default(), data))
            })
            .collect()
    }

    /// Brings the masters and moments the step graph holds (on the device)
    /// back into the store, where saving, evaluation and the artifact read
    /// them.
    pub fn sync(&mut self) -> Result<(), Error> {
        let Some(states) = &self.state else {
            return Ok(());
        };
        if !self.stale {
            return Ok(());
        }
        // Each tensor from the first rank that holds it: the replicated
        // masters and moments from rank 0, sharded ones from their owners.
        let mut fetched = std::collections::HashSet::new();
        for (rank, ((program, _), state)) in self.resident.iter().zip(states).enumerate() {
            for ((name, ty), t) in rank_step(&self.steps, rank).state.iter().zip(state) {
                if fetched.insert(name.clone()) {
                    let data = program.fetch(t.clone())?.into_f32().ok_or_else(not_f32)?;
                    self.store.set(name, ty.clone(), data);
                }
            }
        }
        self.stale = false;
        Ok(())
    }

    /// The trained weights (masters and moments), brought up to date.
    pub fn store(&mut self) -> Result<&TrainStore, Error> {
        self.sync()?;
        Ok(&self.store)
    }

    /// Moves on past a step that [`Trainer::train_step`] refused as
    /// non-finite, without changing the weights.
    pub fn skip_step(&mut self) {
        self.step += 1;
    }

    /// Mean loss over `windows` (each `rows + 1` tokens) with the current
    /// weights.
    pub fn eval_loss(&mut self, windows: &[&[u32]]) -> Result<f64, Error> {
        if let Some(w) = windows.iter().find(|w| w.len() != self.rows + 1) {
            return Err(Error::Usage(format!(
                "a held-out window of {} tokens, where the trainer's windows have {}",
                w.len(),
                self.rows + 1
            )));
        }
        self.sync()?;
        let scorer = WindowLoss::compile(
            self.device.exact_backend().as_ref(),
            &self.eval_graph,
            &self.store,
            self.rows,
            EVAL_WINDOWS,
            &|_| {},
        )?;
        let total = scorer.total(windows, &mut |_, _| {})?;
        Ok(total / (windows.len() * self.rows).max(1) as f64)
    }

    /// Writes the master weights, the moments and the step, atomically.
    pub fn save(&mut self, path: &Path) -> Result<(), Error> {
        self.sync()?;
        // A MemoryStore iterates in name order.
        let entries: Vec<(String, Vec<usize>, Arc<Vec<f32>>)> = self
            .store
            .tensors
            .iter()
            .map(|(name, (ty, data))| {
                let shape = ty.shape.concrete().unwrap_or_default();
                (name.clone(), shape, data.clone())
            })
            .collect();
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
                .map_err(fairyc_backends::BackendError::from)?;
            self.store.set(&name, ty, data);
        }
        // The next step starts from the store.
        self.state = None;
        self.stale = false;
        self.step = step;
        Ok(())
    }
}

/// Rank `rank`'s step of `steps`: the one step all ranks share, or its own.
fn rank_step(steps: &[RankStep], rank: usize) -> &RankStep {
    &steps[rank.min(steps.len() - 1)]
}

/// "panicked" and the panic's message, where it has one.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .map_or("panicked".into(), |m| format!("panicked: {m}"))
}
