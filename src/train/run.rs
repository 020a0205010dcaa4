//! A whole training run as a library call: the model (imported and
//! compiled, or freshly initialised), the data cut into windows with a
//! held-out split, the schedule, the loop with gradient accumulation,
//! held-out evaluation, checkpoints and resume, the loss log, and the
//! artifact at the end. `fairyc train` maps its flags into a
//! [`TrainConfig`] and renders the [`Event`]s; nothing here prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fairyc_ir::atomic::write_atomically;
use fairyc_ir::Graph;
use fairyc_passes::autodiff::{GradOptions, Ste};
use fairyc_passes::optimizer::AdamW;
use fairyc_passes::pipeline::CompileOptions;

use super::teacher_data::{teacher_tokens, TeacherData};
use super::{Objective, Schedule, Sharding, TrainDevice, TrainOptions, Trainer};
use crate::{import, Error, Imported};

/// The model to train.
pub enum ModelSource {
    /// A model file or folder: GGUF, Hugging Face folder, `.fir`, or a
    /// `.fairy` artifact. An artifact that holds quantized weights (2-bit
    /// codes) is trained from the full-precision masters its source
    /// checkpoint re-derives, or refused with the reason (see
    /// [`TrainConfig::quant`]).
    Path(PathBuf),
    /// Random weights for the architecture of a Hugging Face config.json
    /// (LLaMA family or iFairy) with iFairy's initialisation, the tokenizer
    /// of the model at `tokenizer`, and the seed of the weights
    /// (`--init random --config --tokenizer --seed`).
    Random {
        config: PathBuf,
        tokenizer: PathBuf,
        seed: u64,
    },
    /// A model imported already (not compiled: [`TrainConfig::quant`]
    /// compiles it).
    Imported(Box<Imported>),
}

/// Which learning-rate schedule (`--schedule`); its parameters are
/// [`TrainConfig`]'s fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Warm-up, stable, optional cosine decay (Fairy2i).
    #[default]
    Wsd,
    /// iFairy's recipe: a drop to a third at half-way, linear decay to 0,
    /// weight decay only in the first half.
    TwoPhase,
}

/// How to train: one field per `fairyc train` flag, with the CLI's
/// defaults (`--steps` has none on the command line).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// How to compile the model before training (`--quant` and the
    /// options beside it); `None` trains it as imported (`--quant none`).
    /// A `.fairy` artifact is compiled already: it takes `None`.
    pub quant: Option<CompileOptions>,
    /// Learn the logits of the unquantized model (KL divergence to the
    /// model before quantization, its weights frozen) instead of the next
    /// token (`--distill`); needs a `quant` (or a quantized artifact).
    pub distill: bool,
    /// Text files to train on, tokenized without BOS, concatenated and cut
    /// into windows of `seq` tokens; the last `holdout` of them is held
    /// out (`--data`), unless `eval_data` is given.
    pub data: Vec<PathBuf>,
    /// Text files only evaluated, never trained on (`--eval-data`): when
    /// given, the held-out windows are theirs and all of `data` trains.
    pub eval_data: Vec<PathBuf>,
    /// Sequences the teacher generates itself (data-free distillation;
    /// with `distill`), trained on beside `data`'s windows, or alone (then
    /// the held-out split comes from `eval_data`, or from them).
    pub teacher_data: Option<TeacherData>,
    /// Optimizer steps to train to; a resumed run continues up to it. 0
    /// only evaluates the held-out loss (and writes the artifact).
    pub steps: usize,
    /// Stop stepping once this process has spent this long in training
    /// steps (a training budget: loading, teacher generation and the
    /// evaluations are not counted), then checkpoint,
    /// evaluate and write the artifact as at the last step; `--resume`
    /// continues from there (`--time-limit`).
    pub time_limit: Option<Duration>,
    /// Tokens per training window (`--seq`).
    pub seq: usize,
    /// Windows per step, run as one batch, whose mean gradient drives one
    /// update (`--grad-accum`; memory grows with it).
    pub grad_accum: usize,
    /// Peak learning rate (`--lr`; the Fairy2i recipe: 3e-5).
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// The learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Wsd: the step at which a cosine decay to `min_lr_ratio · lr` starts.
    pub decay_start: Option<usize>,
    /// Wsd: the length of the cosine decay.
    pub decay_steps: usize,
    /// Wsd: the learning rate at the end of the decay, as a fraction of `lr`.
    pub min_lr_ratio: f32,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f32,
    /// Clip the gradient to this global L2 norm (0: no clipping).
    pub clip: f32,
    /// Fraction of the windows held out for evaluation, in [0, 1).
    pub holdout: f64,
    /// Held-out windows evaluated before and after training (and every
    /// `eval_every` steps).
    pub eval_windows: usize,
    /// Evaluate the held-out loss every this many steps (0: only before
    /// and after).
    pub eval_every: usize,
    /// Straight-through estimator through the quantizers.
    pub ste: Ste,
    /// Offer Gauss's 3-multiplication product for the training graph's
    /// complex products (the cost model decides where).
    pub gauss: bool,
    /// Where the training step runs.
    pub device: TrainDevice,
    /// Data-parallel ranks (`--gpus`): each step's windows dealt out to
    /// them, one GPU each with cuda, each keeping the masters and moments
    /// on its device, their gradients summed over the ranks before the same
    /// update on each; checkpoints are written once, so a run resumes on
    /// any count.
    pub ranks: usize,
    /// With several ranks, each parameter's moments on one rank alone,
    /// which updates it and broadcasts it (`--shard-optimizer`: ZeRO stage
    /// 1 by tensors), or its master too (`--shard-masters`).
    pub sharding: Sharding,
    /// Checkpoint file: masters, moments and step, written atomically every
    /// `checkpoint_every` steps and at the end.
    pub checkpoint: Option<PathBuf>,
    pub checkpoint_every: usize,
    /// Continue from `checkpoint` if it exists (and from `loss_csv`'s
    /// records up to its step).
    pub resume: bool,
    /// Skip a step whose loss or gradient norm is not finite instead of
    /// stopping with [`Error::NonFinite`]; skipped steps are reported
    /// ([`Event::Skipped`]) and counted.
    pub skip_nonfinite: bool,
    /// Write every step's record as CSV ([`CSV_HEADER`]).
    pub loss_csv: Option<PathBuf>,
    /// Draw the loss curves (training and held-out) as a PNG.
    pub loss_png: Option<PathBuf>,
    /// Where to write the trained `.fairy` artifact; `None` writes none.
    pub output: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            quant: None,
            distill: false,
            data: Vec::new(),
            eval_data: Vec::new(),
            teacher_data: None,
            steps: 100,
            time_limit: None,
            seq: 128,
            grad_accum: 1,
            lr: 3e-5,
            warmup: 0,
            schedule: ScheduleKind::Wsd,
            decay_start: None,
            decay_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            clip: 2.0,
            holdout: 0.1,
            eval_windows: 8,
            eval_every: 0,
            ste: Ste::Identity,
            gauss: false,
            device: TrainDevice::Cpu,
            ranks: 1,
            sharding: Sharding::Replicated,
            checkpoint: None,
            checkpoint_every: 50,
            resume: false,
            skip_nonfinite: false,
            loss_csv: None,
            loss_png: None,
            output: None,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule the fields describe.
    pub fn schedule(&self) -> Schedule {
        match self.schedule {
            ScheduleKind::Wsd => Schedule::Wsd {
                peak: self.lr,
                warmup: self.warmup,
                decay_start: self.decay_start,
                decay_steps: self.decay_steps,
                min_ratio: self.min_lr_ratio,
            },
            ScheduleKind::TwoPhase => Schedule::TwoPhase {
                peak: self.lr,
                warmup: self.warmup,
                total: self.steps,
            },
        }
    }
}

/// What a run reports as it goes, in this order (`Resumed`,
/// `HeldOutBefore` and `HeldOutAfter` only where they apply).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The teacher has generated `done` of its `total` sequences.
    Generated {
        done: usize,
        total: usize,
    },
    /// The model and the data are ready.
    Prepared {
        parameters: usize,
        train_windows: usize,
        /// Windows of `seq` tokens held out of training.
        held_out: usize,
        seq: usize,
    },
    /// Training continues from a checkpoint.
    Resumed {
        checkpoint: &'a Path,
        step: usize,
    },
    /// The held-out loss before training, over `windows` windows.
    HeldOutBefore {
        loss: f64,
        windows: usize,
    },
    /// The loop starts at `step` and runs to `steps`.
    Started {
        step: usize,
        steps: usize,
    },
    /// A step ended.
    Step {
        record: &'a StepRecord,
        /// Training tokens per second since the loop started.
        tokens_per_second: f64,
    },
    /// The loop ended.
    /// A step was skipped: its loss or gradient norm was not finite
    /// (`skip_nonfinite`); `skipped` counts the run's skipped steps so far.
    Skipped {
        step: usize,
        error: &'a Error,
        skipped: usize,
    },
    Finished {
        step: usize,
    },
    /// The held-out loss after training.
    HeldOutAfter {
        loss: f64,
    },
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct TrainReport {
    /// Trained real parameters.
    pub parameters: usize,
    /// The step the run started at (0, or a resumed checkpoint's).
    pub first_step: usize,
    /// The step it ended at.
    pub step: usize,
    /// Training tokens this run consumed.
    pub tokens: usize,
    /// From the start of the loop to the written artifact.
    pub elapsed: Duration,
    pub held_out_before: Option<f64>,
    pub held_out_after: Option<f64>,
    /// Every step's record (a resumed run's log included).
    pub records: Vec<StepRecord>,
    /// Steps skipped for a non-finite loss or gradient norm.
    pub skipped: usize,
    /// Where the step's time went, op by op, when `FAIRYC_PROFILE` is set.
    pub profile: Option<String>,
    /// The teacher's sequences generated and asked for, where generation
    /// stopped at its time limit: then nothing was trained or written, and
    /// the next run goes on generating.
    pub teacher_pending: Option<(usize, usize)>,
}

/// One row of the training log.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub heldout: Option<f64>,
}

/// The header of a training log.
pub const CSV_HEADER: &str = "step,loss,lr,grad_norm,heldout";

impl StepRecord {
    fn csv(&self) -> String {
        let heldout = self.heldout.map(|h| h.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{heldout}",
            self.step, self.loss, self.lr, self.grad_norm
        )
    }

    fn parse(line: &str) -> Option<StepRecord> {
        let f: Vec<&str> = line.split(',').collect();
        Some(StepRecord {
            step: f.first()?.parse().ok()?,
            loss: f.get(1)?.parse().ok()?,
            lr: f.get(2)?.parse().ok()?,
            grad_norm: f.get(3)?.parse().ok()?,
            heldout: f.get(4).and_then(|h| h.parse().ok()),
        })
    }
}

/// Reads a training log ([`TrainConfig::loss_csv`]).
pub fn read_records(path: &Path) -> Result<Vec<StepRecord>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        return Err(Error::Usage(format!(
            "{}: not a fairyc training log (expected the header `{CSV_HEADER}`)",
            path.display()
        )));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            StepRecord::parse(line).ok_or_else(|| {
                Error::Usage(format!(
                    "{}:{}: malformed record `{line}`",
                    path.display(),
                    i + 2
                ))
            })
        })
        .collect()
}

/// The model to train, compiled, and the teacher graph when distilling.
fn training_model(
    source: ModelSource,
    config: &TrainConfig,
) -> Result<(Imported, Option<Graph>), Error> {
    let imported = match source {
        ModelSource::Path(model) => {
            let imported = import(&model)?;
            if let Some(found) = super::artifact::masters(&model, &imported, config)? {
                return Ok(found);
            }
            imported
        }
        ModelSource::Random {
            config,
            tokenizer,
            seed,
        } => {
            let tokenizer = import(&tokenizer)?.tokenizer;
            fairyc_frontend::init::random_model(&config, tokenizer, seed)?
        }
        ModelSource::Imported(imported) => {
            let path = imported.source.clone();
            if let Some(found) = super::artifact::masters(&path, &imported, config)? {
                return Ok(found);
            }
            *imported
        }
    };
    let teacher = config.distill.then(|| imported.graph.clone());
    if config.teacher_data.is_some() && !config.distill {
        return Err(Error::Usage(
            "--teacher-sequences are the teacher's text for distillation: add --distill".into(),
        ));
    }
    if teacher.is_some() && config.quant.is_none() {
        return Err(Error::Usage(
            "--distill learns from the unquantized model: choose a --quant to train".into(),
        ));
    }
    let compiled = match &config.quant {
        Some(options) => crate::compile(imported, options)?.0,
        None => imported,
    };
    Ok((compiled, teacher))
}

/// `a` and `b` merged in proportion, each in its own order: the element at
/// `i` of a list of `n` goes at the fraction `(i + ½) / n`.
fn interleave<'t>(a: &[&'t [u32]], b: &[&'t [u32]]) -> Vec<&'t [u32]> {
    let at = |i: usize, n: usize| (2 * i + 1) as f64 / (2 * n) as f64;
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if j == b.len() || (i < a.len() && at(i, a.len()) <= at(j, b.len())) {
            merged.push(a[i]);
            i += 1;
        } else {
            merged.push(b[j]);
            j += 1;
        }
    }
    merged
}

/// Windows of `seq + 1` tokens, one every `seq` (each window's last token
/// is the next one's first).
fn windows_of(tokens: &[u32], seq: usize) -> Vec<&[u32]> {
    tokens.windows(seq + 1).step_by(seq).collect()
}

/// Trains the model `source` as `config` says, reporting through
/// `on_event`, and writes the artifact to `config.output` if set.
pub fn train(
    source: ModelSource,
    config: &TrainConfig,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainReport, Error> {
    if config.seq < 2 || config.grad_accum == 0 {
        return Err(Error::Usage(
            "--seq must be at least 2, and --grad-accum positive".into(),
        ));
    }
    if !(0.0..1.0).contains(&config.holdout) {
        return Err(Error::Usage(format!(
            "--holdout must be in [0, 1), got {}",
            config.holdout
        )));
    }
    if !(config.clip >= 0.0 && config.clip.is_finite()) {
        return Err(Error::Usage(format!(
            "--clip must be a non-negative number, got {}",
            config.clip
        )));
    }
    let (compiled, teacher) = training_model(source, config)?;
    let read_tokens = |paths: &[PathBuf]| -> Result<Vec<u32>, Error> {
        let mut tokens = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
            tokens.extend(compiled.tokenizer.encode(&text, false)?);
        }
        Ok(tokens)
    };
    let tokens = read_tokens(&config.data)?;
    let eval_tokens = read_tokens(&config.eval_data)?;
    let generated = match (&config.teacher_data, &teacher) {
        (Some(data), Some(graph)) => {
            let teacher = Imported {
                graph: graph.clone(),
                weights: compiled.weights.clone(),
                tokenizer: compiled.tokenizer.clone(),
                source: compiled.source.clone(),
            };
            let backend = config.device.exact_backend();
            let generated = teacher_tokens(
                teacher,
                backend.as_ref(),
                data,
                config.seq + 1,
                &mut |done, total| on_event(Event::Generated { done, total }),
            )?;
            if generated.done < generated.wanted {
                // Stopped by its time limit: nothing trains on part of it.
                return Ok(TrainReport {
                    teacher_pending: Some((generated.done, generated.wanted)),
                    ..TrainReport::default()
                });
            }
            generated.tokens
        }
        _ => Vec::new(),
    };
    let (text, eval_text) = (
        windows_of(&tokens, config.seq),
        windows_of(&eval_tokens, config.seq),
    );
    let teacher_windows: Vec<&[u32]> = generated.chunks_exact(config.seq + 1).collect();
    // Held-out windows come from the evaluation files, else from the text
    // files where there are any (the teacher's own text never measures the
    // student); the teacher's windows are spread evenly among the text's
    // training windows, so that every run of steps sees both.
    let (windows, held) = if !config.eval_data.is_empty() {
        if eval_text.is_empty() {
            return Err(Error::Usage(format!(
                "--eval-data has {} tokens: too few for one window of --seq {}",
                eval_tokens.len(),
                config.seq
            )));
        }
        let mut windows = interleave(&text, &teacher_windows);
        windows.extend_from_slice(&eval_text);
        (windows, eval_text.len())
    } else if text.is_empty() {
        let held = ((teacher_windows.len() as f64) * config.holdout).ceil() as usize;
        (teacher_windows, held)
    } else {
        let held = ((text.len() as f64) * config.holdout).ceil() as usize;
        let (train, heldout) = text.split_at(text.len() - held.min(text.len()));
        let mut windows = interleave(train, &teacher_windows);
        windows.extend_from_slice(heldout);
        (windows, held)
    };
    if windows.len() < held + 1 {
        let split = if config.eval_data.is_empty() {
            " with a held-out split"
        } else {
            ""
        };
        return Err(Error::Usage(format!(
            "the data has {} tokens: too few for windows of --seq {}{split}",
            tokens.len() + generated.len(),
            config.seq
        )));
    }
    let (train, heldout) = windows.split_at(windows.len() - held);
    let heldout = &heldout[..heldout.len().min(config.eval_windows)];
    let schedule = config.schedule();
    let adam = AdamW {
        clip: (config.clip > 0.0).then_some(config.clip),
        ..AdamW::default()
    };
    let objective = match teacher {
        Some(graph) => Objective::Distill(graph),
        None => Objective::NextToken,
    };
    let options = TrainOptions {
        adam,
        grad: GradOptions { ste: config.ste },
        objective,
        gauss: config.gauss,
        rows: config.seq,
        device: config.device,
        ranks: config.ranks,
        sharding: config.sharding,
    };
    let mut trainer = Trainer::new(&compiled.graph, compiled.weights.clone(), &options)?;
    on_event(Event::Prepared {
        parameters: trainer.parameter_count(),
        train_windows: train.len(),
        held_out: held,
        seq: config.seq,
    });
    let mut records: Vec<StepRecord> = Vec::new();
    if let Some(ckpt) = &config.checkpoint {
        if config.resume && ckpt.is_file() {
            trainer.load(ckpt)?;
            on_event(Event::Resumed {
                checkpoint: ckpt,
                step: trainer.step,
            });
            if let Some(csv) = config.loss_csv.as_ref().filter(|p| p.is_file()) {
                records = read_records(csv)?;
                records.retain(|r| r.step <= trainer.step);
            }
        }
    }
    let evaluate = |trainer: &mut Trainer| -> Result<Option<f64>, Error> {
        (!heldout.is_empty())
            .then(|| trainer.eval_loss(heldout))
            .transpose()
    };
    let before = evaluate(&mut trainer)?;
    if let Some(loss) = before {
        on_event(Event::HeldOutBefore {
            loss,
            windows: heldout.len(),
        });
    }
    on_event(Event::Started {
        step: trainer.step,
        steps: config.steps,
    });
    let start = Instant::now();
    let first = trainer.step;
    let tokens_per_step = config.grad_accum * config.seq;
    let mut skipped = 0usize;
    // The step of the last checkpoint written (or resumed).
    let mut saved = first;
    let out_of_time = || {
        config
            .time_limit
            .is_some_and(|limit| start.elapsed() >= limit)
    };
    // Each process steps at least once, so that a resumed run moves on.
    while trainer.step < config.steps && !(trainer.step > first && out_of_time()) {
        let t = trainer.step + 1;
        let batch: Vec<&[u32]> = (0..config.grad_accum)
            .map(|k| train[(trainer.step * config.grad_accum + k) % train.len()])
            .collect();
        let lr = schedule.lr(t);
        let stats =
            match trainer.train_step(&batch, lr, schedule.weight_decay(t, config.weight_decay)) {
                Err(error @ Error::NonFinite { .. }) if config.skip_nonfinite => {
                    skipped += 1;
                    trainer.skip_step();
                    tracing::warn!(step = t, skipped, "{error}");
                    on_event(Event::Skipped {
                        step: t,
                        error: &error,
                        skipped,
                    });
                    continue;
                }
                other => other?,
            };
        let heldout_loss = if config.eval_every > 0 && t % config.eval_every == 0 {
            evaluate(&mut trainer)?
        } else {
            None
        };
        records.push(StepRecord {
            step: t,
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            heldout: heldout_loss,
        });
        on_event(Event::Step {
            record: records.last().expect("just pushed"),
            tokens_per_second: ((t - first) * tokens_per_step) as f64
                / start.elapsed().as_secs_f64(),
        });
        tracing::info!(
            step = t,
            loss = stats.loss,
            grad_norm = stats.grad_norm,
            lr,
            "train"
        );
        if let Some(ckpt) = &config.checkpoint {
            if t % config.checkpoint_every.max(1) == 0 {
                trainer.save(ckpt)?;
                write_records(config, &records)?;
                saved = t;
            }
        }
    }
    // The last step, wherever the loop stopped (the end, the time limit,
    // a skipped step), is checkpointed.
    if let Some(ckpt) = config.checkpoint.as_ref().filter(|_| saved != trainer.step) {
        trainer.save(ckpt)?;
    }
    on_event(Event::Finished { step: trainer.step });
    write_records(config, &records)?;
    // No step taken (--steps 0, or a finished run resumed): the same loss.
    let after = if trainer.step == first {
        before
    } else {
        evaluate(&mut trainer)?
    };
    if let Some(loss) = after {
        on_event(Event::HeldOutAfter { loss });
    }
    if let Some(output) = &config.output {
        crate::compile::write_artifact(
            output,
            &compiled.graph,
            trainer.store()?,
            crate::compile::Precision::Source,
            &compiled.tokenizer,
        )?;
    }
    Ok(TrainReport {
        parameters: trainer.parameter_count(),
        first_step: first,
        step: trainer.step,
        tokens: (trainer.step - first) * tokens_per_step,
        elapsed: start.elapsed(),
        held_out_before: before,
        held_out_after: after,
        records,
        skipped,
        profile: trainer.profile(),
        teacher_pending: None,
    })
}

/// Writes the log as CSV and its plot as PNG, where asked.
fn write_records(config: &TrainConfig, records: &[StepRecord]) -> Result<(), Error> {
    if let Some(path) = &config.loss_csv {
        let mut csv = format!("{CSV_HEADER}\n");
        for r in records {
            csv.push_str(&r.csv());
            csv.push('\n');
        }
        write_atomically(path, |w| w.write_all(csv.as_bytes()))
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &config.loss_png {
        let train = crate::plot::Series {
            name: "training loss".into(),
            points: records
                .iter()
                .map(|r| (r.step as f64, f64::from(r.loss)))
                .collect(),
        };
        let heldout = crate::plot::Series {
            name: "held-out loss".into(),
            points: records
                .iter()
                .filter_map(|r| Some((r.step as f64, r.heldout?)))
                .collect(),
        };
        let title = match &config.output {
            Some(output) => format!("fairyc train: {}", output.display()),
            None => "fairyc train".to_string(),
        };
        crate::plot::line_chart(path, &title, "step", "loss (nats)", &[train, heldout])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::interleave;

    fn refs(v: &[Vec<u32>]) -> Vec<&[u32]> {
        v.iter().map(|w| w.as_slice()).collect()
    }

    #[test]
    fn interleave_spreads_the_shorter_list_in_proportion() {
        let a: Vec<Vec<u32>> = (0..6).map(|i| vec![i]).collect();
        let b: Vec<Vec<u32>> = (100..102).map(|i| vec![i]).collect();
        let merged: Vec<u32> = interleave(&refs(&a), &refs(&b))
            .iter()
            .map(|w| w[0])
            .collect();
        assert_eq!(merged, [0, 1, 100, 2, 3, 4, 101, 5]);
        assert_eq!(interleave(&refs(&a), &[]).len(), 6);
        assert_eq!(interleave(&[], &refs(&b)).len(), 2);
    }
}
