//! `fairyc train`: its flags, and the run with its progress bars.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use fairyc::train::{train, Event, ModelSource, ScheduleKind, Sharding, TrainConfig, TrainDevice};
use fairyc::{import, GpuAttention, GpuMatmul};
use fairyc_passes::autodiff::Ste;
use indicatif::ProgressBar;

use super::options::{
    at_least_one, seconds, ArithmeticArg, DeviceArg, GpuAttentionArg, GpuMatmulArg, QuantArgs,
    SteArg,
};
use crate::bar_style;

/// `fairyc train`'s options.
#[derive(Args)]
pub(crate) struct TrainArgs {
    /// The model to train (GGUF, Hugging Face folder, .fir or .fairy);
    /// omitted with --init random. A .fairy with quantized layers trains
    /// from the masters of the source checkpoint it was compiled from (it
    /// must be there), without --quant.
    model: Option<PathBuf>,
    /// Start from the model's weights (pretrained) or from random weights
    /// for the architecture in --config (random).
    #[arg(long, value_enum, default_value_t = InitArg::Pretrained)]
    init: InitArg,
    /// With --init random: a Hugging Face config.json (LLaMA family or
    /// iFairy) giving the architecture and sizes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --init random: a model whose tokenizer to use (GGUF file or
    /// Hugging Face folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// With --init random: the seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    quant: QuantArgs,
    /// Learn the logits of the unquantized model (KL divergence to the
    /// same model before quantization, its weights frozen) instead of the
    /// next token.
    #[arg(long)]
    distill: bool,
    /// Text files to train on (tokenized without BOS, concatenated and cut
    /// into windows of --seq tokens; the last --holdout of them is held out,
    /// unless --eval-data is given).
    #[arg(long, num_args = 1.., required_unless_present = "teacher_sequences")]
    data: Vec<PathBuf>,
    /// Text files only evaluated, never trained on: the held-out windows
    /// are theirs (cut as --data's), and all of --data trains.
    #[arg(long, num_args = 1..)]
    eval_data: Vec<PathBuf>,
    /// With --distill: train on this many sequences of --seq + 1 tokens that
    /// the teacher (the model before quantization) generates itself, each
    /// from a random first token at temperature 1 (data-free distillation,
    /// as LLM-QAT), beside --data's windows or alone (then the held-out
    /// split comes from them). Generated once into --teacher-cache.
    #[arg(long, requires = "teacher_cache")]
    teacher_sequences: Option<usize>,
    /// The token file the teacher's sequences are cached in: read when it
    /// exists (it must hold as many, as long, from the same seed), else
    /// written.
    #[arg(long)]
    teacher_cache: Option<PathBuf>,
    /// The seed of the teacher's sampling.
    #[arg(long, default_value_t = 0)]
    teacher_seed: u64,
    /// Sequences the teacher generates at once, in lockstep (the rows of
    /// one decoding step; more rows, fewer steps).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    teacher_batch: usize,
    /// Stop the teacher's generation after this many seconds (once a wave
    /// of --teacher-batch sequences is whole): the cache keeps the whole
    /// waves, nothing trains, and the same command run again goes on.
    #[arg(long, value_parser = seconds, requires = "teacher_sequences")]
    teacher_time_limit: Option<std::time::Duration>,
    /// Optimizer steps to train to (a resumed run continues up to it; 0
    /// only evaluates the held-out loss and writes the artifact).
    #[arg(long)]
    steps: usize,
    /// Stop stepping after this many seconds of training steps in this
    /// process (a training budget; loading, teacher generation and the
    /// evaluations are not counted), then checkpoint, evaluate and write
    /// the artifact as at the last step; --resume goes on.
    #[arg(long, value_parser = seconds)]
    time_limit: Option<std::time::Duration>,
    /// Tokens per training window.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Windows per step: one batch, run at once (its memory grows with
    /// it: activations, and attention's seq × seq weights per window and
    /// head), whose mean gradient drives one update.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (the Fairy2i recipe: 3e-5).
    #[arg(long, default_value_t = 3e-5)]
    lr: f32,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// wsd: warm-up, stable, optional cosine decay (Fairy2i); two-phase:
    /// iFairy's recipe (a drop to a third at half-way, linear decay to 0,
    /// weight decay only in the first half).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Wsd)]
    schedule: ScheduleArg,
    /// wsd: step at which a cosine decay to --min-lr-ratio·lr starts.
    #[arg(long)]
    decay_start: Option<usize>,
    /// wsd: length of the cosine decay.
    #[arg(long, default_value_t = 100)]
    decay_steps: usize,
    /// wsd: the learning rate at the end of the decay, as a fraction of --lr.
    #[arg(long, default_value_t = 0.1)]
    min_lr_ratio: f32,
    /// Decoupled weight decay (AdamW).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Clip the gradient to this global L2 norm (0: no clipping; the
    /// Fairy2i recipe clips at 2.0, iFairy's at 1.0).
    #[arg(long, default_value_t = 2.0)]
    clip: f32,
    /// Fraction of the windows held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Held-out windows evaluated before and after training (and every
    /// --eval-every steps).
    #[arg(long, default_value_t = 8)]
    eval_windows: usize,
    /// Evaluate the held-out loss every this many steps (0: only before
    /// and after).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Straight-through estimator: identity (scales detached, the
    /// authors' code) or scale-aware (gradients through the scales too).
    #[arg(long, value_enum, default_value_t = SteArg::Identity)]
    ste: SteArg,
    /// Offer Gauss's 3-multiplication product for the complex products of
    /// the forward and backward pass (the cost model decides where; Fairy2i
    /// layers train as real products, so it concerns iFairy models). Off by
    /// default: on the reference executor it is slower (docs/RESULTS.md).
    #[arg(long)]
    gauss: bool,
    /// Where the training step runs: cpu (the reference backend) or cuda
    /// (the masters, moments and AdamW stay on the GPU between steps, on
    /// each GPU with --gpus). Same graphs, flags and checkpoints.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// With --device cuda: the arithmetic of the dense products (cuBLAS;
    /// operands rounded to bf16 or TF32 for the tensor cores, sums in f32;
    /// or f32 throughout).
    #[arg(long, value_enum, default_value_t = GpuMatmulArg::Bf16)]
    gpu_matmul: GpuMatmulArg,
    /// With --device cuda: attention by the flash kernels (bf16 tensor-core
    /// products, so only with --gpu-matmul bf16; the weights in registers:
    /// the default with bf16) or by cuBLAS products around a softmax (the
    /// weights in memory: the default otherwise).
    #[arg(long, value_enum)]
    gpu_attention: Option<GpuAttentionArg>,
    /// With --device cuda: data-parallel GPUs (each step's windows dealt
    /// out to GPUs 0..N, each holding the masters and moments, their loss
    /// and gradients summed over the GPUs through NCCL before the same
    /// update on each; new, not yet run on more than one GPU); at most
    /// --grad-accum; default: all this machine has, up to --grad-accum.
    #[arg(long)]
    gpus: Option<usize>,
    /// With --gpus N > 1: each parameter's AdamW moments on one GPU alone
    /// (ZeRO stage 1 by tensors, balanced by size), which updates the
    /// parameter and broadcasts it: the moments' memory divided by about N,
    /// for about 1.5 times the traffic.
    #[arg(long)]
    shard_optimizer: bool,
    /// With --gpus N > 1: each parameter's master, too, on one GPU alone
    /// (ZeRO stage 3 by tensors), which sends the others what their steps
    /// read of it before each forward pass, a quantized weight as its 2-bit
    /// codes and scales: the masters' and moments' memory divided by about N.
    #[arg(long, conflicts_with = "shard_optimizer")]
    shard_masters: bool,
    /// Checkpoint file (written atomically every --checkpoint-every steps
    /// and at the end; an existing one is resumed with --resume).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue from --checkpoint if it exists.
    #[arg(long)]
    resume: bool,
    /// Skip a step whose loss or gradient norm is not finite (NaN or
    /// infinite) instead of stopping; skipped steps are counted in the log.
    #[arg(long)]
    skip_nonfinite: bool,
    /// Write every step's record as CSV (step,loss,lr,grad_norm,heldout).
    #[arg(long)]
    loss_csv: Option<PathBuf>,
    /// Draw the loss curve (training and held-out) as a PNG.
    #[arg(long)]
    loss_png: Option<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InitArg {
    Pretrained,
    Random,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Wsd,
    TwoPhase,
}

/// The model `fairyc train` names: a file, or random weights.
fn model_source(args: &TrainArgs) -> Result<ModelSource> {
    Ok(
        match (args.init, &args.model, &args.config, &args.tokenizer) {
            (InitArg::Pretrained, Some(model), None, None) => ModelSource::Path(model.clone()),
            (InitArg::Pretrained, ..) => {
                bail!("train needs a MODEL (or --init random with --config and --tokenizer)")
            }
            (InitArg::Random, None, Some(config), Some(tokenizer)) => ModelSource::Random {
                config: config.clone(),
                tokenizer: tokenizer.clone(),
                seed: args.seed,
            },
            (InitArg::Random, ..) => {
                bail!("--init random takes --config and --tokenizer, and no MODEL")
            }
        },
    )
}

/// `fairyc train`'s flags as the library's configuration.
fn train_config(args: &TrainArgs) -> TrainConfig {
    TrainConfig {
        quant: args.quant.options(),
        distill: args.distill,
        data: args.data.clone(),
        eval_data: args.eval_data.clone(),
        teacher_data: args.teacher_sequences.zip(args.teacher_cache.clone()).map(
            |(sequences, cache)| fairyc::train::TeacherData {
                sequences,
                cache,
                seed: args.teacher_seed,
                slots: args.teacher_batch,
                time_limit: args.teacher_time_limit,
            },
        ),
        steps: args.steps,
        time_limit: args.time_limit,
        seq: args.seq,
        grad_accum: args.grad_accum,
        lr: args.lr,
        warmup: args.warmup,
        schedule: match args.schedule {
            ScheduleArg::Wsd => ScheduleKind::Wsd,
            ScheduleArg::TwoPhase => ScheduleKind::TwoPhase,
        },
        decay_start: args.decay_start,
        decay_steps: args.decay_steps,
        min_lr_ratio: args.min_lr_ratio,
        weight_decay: args.weight_decay,
        clip: args.clip,
        holdout: args.holdout,
        eval_windows: args.eval_windows,
        eval_every: args.eval_every,
        ste: match args.ste {
            SteArg::Identity => Ste::Identity,
            SteArg::ScaleAware => Ste::ScaleAware,
        },
        gauss: args.gauss,
        device: match args.device {
            DeviceArg::Cpu => TrainDevice::Cpu,
            DeviceArg::Cuda => TrainDevice::Cuda(
                match args.gpu_matmul {
                    GpuMatmulArg::Bf16 => GpuMatmul::Bf16,
                    GpuMatmulArg::Tf32 => GpuMatmul::Tf32,
                    GpuMatmulArg::F32 => GpuMatmul::F32,
                },
                match gpu_attention(args) {
                    GpuAttentionArg::Products => GpuAttention::Products,
                    GpuAttentionArg::Flash => GpuAttention::Flash,
                },
            ),
        },
        ranks: match args.device {
            DeviceArg::Cpu => 1,
            // By default every GPU that gets a window of each step.
            DeviceArg::Cuda => args
                .gpus
                .unwrap_or_else(|| fairyc::Cuda::device_count().min(args.grad_accum).max(1)),
        },
        sharding: if args.shard_masters {
            Sharding::Masters
        } else if args.shard_optimizer {
            Sharding::Optimizer
        } else {
            Sharding::Replicated
        },
        checkpoint: args.checkpoint.clone(),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        skip_nonfinite: args.skip_nonfinite,
        loss_csv: args.loss_csv.clone(),
        loss_png: args.loss_png.clone(),
        output: Some(args.output.clone()),
    }
}

/// Training's attention on the GPU: as asked, else flash with bf16
/// products (1.11x the products' step on an H100) and products otherwise.
fn gpu_attention(args: &TrainArgs) -> GpuAttentionArg {
    args.gpu_attention.unwrap_or(match args.gpu_matmul {
        GpuMatmulArg::Bf16 => GpuAttentionArg::Flash,
        GpuMatmulArg::Tf32 | GpuMatmulArg::F32 => GpuAttentionArg::Products,
    })
}

pub(crate) fn train_command(args: &TrainArgs) -> Result<()> {
    if let (InitArg::Pretrained, Some(model)) = (args.init, &args.model) {
        args.quant.check_own_quantizers(&import(model)?.graph)?;
    }
    if args.gpus.is_some() && matches!(args.device, DeviceArg::Cpu) {
        bail!("--gpus needs --device cuda");
    }
    if args.gpus == Some(0) {
        bail!("--gpus must be at least 1");
    }
    if let Some(gpus) = args.gpus.filter(|&g| g > args.grad_accum) {
        bail!(
            "--gpus {gpus} with --grad-accum {}: each GPU takes whole windows of a step, so some would have none (raise --grad-accum to at least {gpus})",
            args.grad_accum
        );
    }
    if matches!(args.device, DeviceArg::Cuda)
        && matches!(args.quant.arithmetic, ArithmeticArg::Bf16)
    {
        bail!(
            "--arithmetic bf16 (the authors' rounding) has no GPU quantizer: train with it on --device cpu, or in f32 (the default) on cuda"
        );
    }
    for (flag, set) in [
        ("--shard-optimizer", args.shard_optimizer),
        ("--shard-masters", args.shard_masters),
    ] {
        if set && matches!(args.device, DeviceArg::Cpu) {
            bail!("{flag} needs --device cuda (and --gpus of more than one)");
        }
    }
    if matches!(args.gpu_attention, Some(GpuAttentionArg::Flash))
        && !matches!(args.gpu_matmul, GpuMatmulArg::Bf16)
    {
        bail!("--gpu-attention flash computes in bf16: it takes --gpu-matmul bf16 (the default)");
    }
    let source = model_source(args)?;
    let config = train_config(args);
    let mut bar = ProgressBar::hidden();
    let report = train(source, &config, &mut |event| {
        match event {
        Event::Generated { done, total } => {
            // The first wave of this process (a resumed one starts past 1).
            if bar.is_hidden() {
                bar = ProgressBar::new(total as u64).with_style(bar_style("teacher sequences"));
            }
            bar.set_position(done as u64);
            if done == total {
                bar.finish_and_clear();
                eprintln!("the teacher generated {total} sequences");
            }
        }
        Event::Prepared {
            parameters,
            train_windows,
            held_out,
            seq,
        } => eprintln!(
            "training {parameters} parameters on {train_windows} windows of {seq} tokens ({held_out} held out)"
        ),
        Event::Resumed { checkpoint, step } => {
            eprintln!("resumed {} at step {step}", checkpoint.display())
        }
        Event::HeldOutBefore { loss, windows } => eprintln!(
            "held-out loss before: {loss:.4} (perplexity {:.2}) over {windows} windows",
            loss.exp()
        ),
        Event::Started { step, steps } => {
            bar = ProgressBar::new(steps as u64).with_style(bar_style("steps"));
            bar.set_position(step.min(steps) as u64);
        }
        Event::Step {
            record,
            tokens_per_second,
        } => {
            bar.set_position(record.step as u64);
            bar.set_message(format!(
                "loss {:.4}, |g| {:.3}, {tokens_per_second:.0} tokens/s",
                record.loss, record.grad_norm
            ));
        }
        Event::Skipped { error, skipped, .. } => {
            bar.suspend(|| eprintln!("skipped: {error} ({skipped} skipped so far)"))
        }
        Event::Finished { .. } => bar.finish_and_clear(),
        Event::HeldOutAfter { loss } => {
            eprintln!("held-out loss after:  {loss:.4} (perplexity {:.2})", loss.exp())
        }
        _ => {}
    }
    })?;
    if let Some((done, wanted)) = report.teacher_pending {
        bar.finish_and_clear();
        println!(
            "the teacher generated {done} of {wanted} sequences into {} before --teacher-time-limit; \
             run the same command again to go on (nothing was trained)",
            args.teacher_cache
                .as_deref()
                .unwrap_or(Path::new("--teacher-cache"))
                .display()
        );
        return Ok(());
    }
    println!(
        "trained {} steps ({} tokens) in {:.1}s; wrote {}",
        report.step - report.first_step,
        report.tokens,
        report.elapsed.as_secs_f64(),
        args.output.display()
    );
    if report.skipped > 0 {
        eprintln!(
            "skipped {} steps with a non-finite loss or gradient norm",
            report.skipped
        );
    }
    if let Some(profile) = &report.profile {
        eprintln!("time per op of the training step (FAIRYC_PROFILE):\n{profile}");
    }
    Ok(())
}
