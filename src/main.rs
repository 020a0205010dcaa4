//! The `fairyc` command-line tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fairyc::train::{Schedule, Trainer};
use fairyc::{import, report, GenerateOptions, Imported, Model};
use fairyc_ir::atomic::write_atomically;
use fairyc_ir::{Arithmetic, Granularity};
use fairyc_passes::autodiff::{AdamW, GradOptions, Ste};
use fairyc_passes::cost::CostModel;
use fairyc_passes::egraph::Limits;
use fairyc_passes::lower::{LowerOptions, Pairing};
use fairyc_passes::pipeline::{CompileOptions, PassRecord};
use fairyc_passes::quantize::Method;
use fairyc_passes::simplify::SimplifyOptions;
use indicatif::{ProgressBar, ProgressStyle};
use npyz::WriterBuilder;

#[derive(Parser)]
#[command(
    name = "fairyc",
    version,
    about = "Compile LLM checkpoints to Fairy2i complex-valued low-bit models, and run them"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// More logging (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// How to compile a model before using it.
#[derive(Args, Clone)]
struct QuantArgs {
    /// Quantize the linear layers inside the blocks: w1, w2, w3 (Fairy2i
    /// PhaseQuant with 1-3 residual stages: T bits per real parameter),
    /// binary or ternary (the real baselines), complex (the exact
    /// widely-linear form, unquantized), native (only the quantization the
    /// model itself defines, as iFairy's), or none.
    #[arg(long, default_value = "none")]
    quant: QuantChoice,
    /// Scale granularity: tensor (the paper's), channel, or group:G.
    #[arg(long, default_value = "tensor", value_parser = parse_granularity)]
    scales: Granularity,
    /// How real channels pair into complex numbers: paper (first/second
    /// half, as the authors) or rope (q/k/v outputs pair RoPE's pairs, so
    /// RoPE and attention run in complex form).
    #[arg(long, value_enum, default_value_t = PairingArg::Paper)]
    pairing: PairingArg,
    /// Also quantize lm_head (the output projection).
    #[arg(long)]
    lm_head: bool,
    /// Rounding of the split and PhaseQuant: f32 (ours), or bf16 to
    /// reproduce the codes the authors' bf16 code deploys.
    #[arg(long, value_enum, default_value_t = ArithmeticArg::F32)]
    arithmetic: ArithmeticArg,
    /// Rows per weight read that the cost model assumes (1: decoding;
    /// hundreds: prompts and training, where Gauss's product pays).
    #[arg(long, default_value_t = 1.0)]
    cost_tokens: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantChoice {
    None,
    Native,
    Complex,
    W1,
    W2,
    W3,
    Binary,
    Ternary,
}

#[derive(Clone, Copy, ValueEnum)]
enum SteArg {
    Identity,
    ScaleAware,
}

#[derive(Clone, Copy, ValueEnum)]
enum ArithmeticArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum PairingArg {
    Paper,
    Rope,
}

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    match s {
        "tensor" => Ok(Granularity::Tensor),
        "channel" => Ok(Granularity::Channel),
        _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
            Some(Ok(g)) if g > 0 => Ok(Granularity::Group(g)),
            _ => Err(format!(
                "expected tensor, channel or group:G with G > 0, got `{s}`"
            )),
        },
    }
}

impl QuantArgs {
    /// The pass options, or `None` when the model is used as imported.
    fn options(&self) -> Option<CompileOptions> {
        let method = match self.quant {
            QuantChoice::None => return None,
            QuantChoice::Native | QuantChoice::Complex => None,
            QuantChoice::W1 => Some(Method::Fairy2i { stages: 1 }),
            QuantChoice::W2 => Some(Method::Fairy2i { stages: 2 }),
            QuantChoice::W3 => Some(Method::Fairy2i { stages: 3 }),
            QuantChoice::Binary => Some(Method::RealBinary),
            QuantChoice::Ternary => Some(Method::RealTernary),
        };
        let real_baseline = matches!(method, Some(Method::RealBinary | Method::RealTernary));
        let native = matches!(self.quant, QuantChoice::Native);
        Some(CompileOptions {
            widely_linear: !real_baseline && !native,
            method,
            granularity: self.scales,
            lower: LowerOptions {
                pairing: match self.pairing {
                    PairingArg::Paper => Pairing::Paper,
                    PairingArg::Rope => Pairing::Rope,
                },
                arithmetic: match self.arithmetic {
                    ArithmeticArg::F32 => Arithmetic::F32,
                    ArithmeticArg::Bf16 => Arithmetic::Bf16Exact,
                },
                lm_head: self.lm_head,
            },
            simplify: SimplifyOptions {
                gauss: true,
                cost: CostModel {
                    tokens: self.cost_tokens,
                    ..CostModel::default()
                },
            },
            limits: Limits::default(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Quantization-aware training on the CPU: AdamW on the full-precision
    /// master weights, the forward pass through the quantized weights
    /// (straight-through gradients); writes a .fairy artifact at the end.
    Train {
        model: PathBuf,
        #[command(flatten)]
        quant: QuantArgs,
        /// Text files to train on (tokenized without BOS, concatenated and cut
        /// into windows of --seq tokens; the last --holdout of them is held out).
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        #[arg(long)]
        steps: usize,
        /// Tokens per training sequence.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Peak learning rate (the authors' recipe: 3e-5).
        #[arg(long, default_value_t = 3e-5)]
        lr: f32,
        /// Linear warm-up steps.
        #[arg(long, default_value_t = 0)]
        warmup: usize,
        /// Step at which a cosine decay to --min-lr-ratio·lr starts (WSD); none by default.
        #[arg(long)]
        decay_start: Option<usize>,
        #[arg(long, default_value_t = 100)]
        decay_steps: usize,
        #[arg(long, default_value_t = 0.1)]
        min_lr_ratio: f32,
        #[arg(long, default_value_t = 0.0)]
        weight_decay: f32,
        /// Fraction of the windows held out for evaluation.
        #[arg(long, default_value_t = 0.1)]
        holdout: f64,
        /// Held-out windows evaluated before and after training.
        #[arg(long, default_value_t = 8)]
        eval_windows: usize,
        /// Straight-through estimator: identity (scales detached, the
        /// authors' code) or scale-aware (gradients through the scales too).
        #[arg(long, value_enum, default_value_t = SteArg::Identity)]
        ste: SteArg,
        /// Checkpoint file (written atomically every --checkpoint-every steps
        /// and at the end; an existing one is resumed with --resume).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long, default_value_t = 50)]
        checkpoint_every: usize,
        #[arg(long)]
        resume: bool,
        /// Write the loss of every step as CSV (step,loss,lr).
        #[arg(long)]
        loss_csv: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Compile a model to a Fairy2i .fairy artifact: widely-linear lowering,
    /// quantization, simplification; prints the size breakdown.
    Compile {
        model: PathBuf,
        #[command(flatten)]
        quant: QuantArgs,
        /// Print each pass's time and e-graph size.
        #[arg(long)]
        timings: bool,
        /// Write the IR after each pass into this folder.
        #[arg(long)]
        dump_passes: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Import a model (GGUF file or Hugging Face folder) and write its IR.
    Import {
        model: PathBuf,
        /// Where to write the IR (.fir); it references the weights by path.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print a model's IR.
    Dump {
        /// A GGUF file, a Hugging Face folder, or a .fir file.
        model: PathBuf,
        #[arg(long, value_enum, default_value_t = DumpFormat::Text)]
        format: DumpFormat,
        /// Print a summary (ops, weights by encoding) instead of the graph.
        #[arg(long)]
        summary: bool,
        /// Write to a file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        quant: QuantArgs,
    },
    /// Generate text from a prompt, streaming it to standard output.
    Run {
        model: PathBuf,
        #[arg(short, long)]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(short = 'n', long, default_value_t = 64)]
        max_tokens: usize,
        /// Wrap the prompt in the model's chat template as a user turn.
        #[arg(long)]
        chat: bool,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Instead of generating, write the logits after every prompt
        /// position as float32 [tokens, vocab] .npy.
        #[arg(long)]
        logits: Option<PathBuf>,
        #[command(flatten)]
        quant: QuantArgs,
    },
    /// Perplexity of a text file.
    ///
    /// The text is tokenized without BOS and cut into non-overlapping windows
    /// of --ctx tokens (a trailing partial window is dropped). Token 0 of each
    /// window is context only; tokens 1..ctx-1 are scored, each from the
    /// tokens before it in its window.
    Ppl {
        model: PathBuf,
        #[arg(long)]
        text: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Score only the first N windows.
        #[arg(long)]
        max_windows: Option<usize>,
        #[command(flatten)]
        quant: QuantArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    Text,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Import { model, output } => {
            let imported = import(&model)?;
            let text = fairyc_ir::text::print(&imported.graph);
            write_atomically(&output, |w| w.write_all(text.as_bytes()))
                .with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!(
                "imported {} ({} nodes) -> {}",
                model.display(),
                imported.graph.nodes.len(),
                output.display()
            );
            Ok(())
        }
        Command::Compile {
            model,
            quant,
            timings,
            dump_passes,
            output,
        } => compile_command(&model, &quant, timings, dump_passes.as_deref(), &output),
        Command::Train {
            model,
            quant,
            data,
            steps,
            seq,
            lr,
            warmup,
            decay_start,
            decay_steps,
            min_lr_ratio,
            weight_decay,
            holdout,
            eval_windows,
            ste,
            checkpoint,
            checkpoint_every,
            resume,
            loss_csv,
            output,
        } => {
            let schedule = Schedule {
                peak: lr,
                warmup,
                decay_start,
                decay_steps,
                min_ratio: min_lr_ratio,
            };
            let run = TrainRun {
                data,
                steps,
                seq,
                schedule,
                weight_decay,
                holdout,
                eval_windows,
                ste: match ste {
                    SteArg::Identity => Ste::Identity,
                    SteArg::ScaleAware => Ste::ScaleAware,
                },
                checkpoint,
                checkpoint_every,
                resume,
                loss_csv,
            };
            train_command(&model, &quant, &run, &output)
        }
        Command::Dump {
            model,
            format,
            summary,
            output,
            quant,
        } => {
            let (imported, _) = load_compiled(&model, &quant, false)?;
            let text = if summary {
                report::summary(&imported.graph, imported.weights.as_ref())
            } else {
                match format {
                    DumpFormat::Text => fairyc_ir::text::print(&imported.graph),
                    DumpFormat::Dot => fairyc_ir::dot::to_dot(&imported.graph),
                }
            };
            match output {
                Some(path) => write_atomically(&path, |w| w.write_all(text.as_bytes()))
                    .with_context(|| format!("cannot write {}", path.display())),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Command::Run {
            model,
            prompt,
            max_tokens,
            chat,
            temperature,
            top_p,
            seed,
            logits,
            quant,
        } => {
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
                bail!("--top-p must be in (0, 1], got {top_p}");
            }
            if !temperature.is_finite() || temperature < 0.0 {
                bail!("--temperature must be 0 or positive, got {temperature}");
            }
            let model = load_with_progress(&model, &quant, false)?;
            let ids = model.encode_prompt(&prompt, chat)?;
            if let Some(path) = logits {
                let t = model.logits(&ids)?;
                write_npy(&path, &t)?;
                eprintln!(
                    "wrote logits [{}, {}] to {}",
                    t.shape[0],
                    t.shape[1],
                    path.display()
                );
                return Ok(());
            }
            let options = GenerateOptions {
                max_new_tokens: max_tokens,
                temperature,
                top_p,
                seed,
            };
            let start = Instant::now();
            let mut stdout = std::io::stdout();
            let generation = model.generate(&ids, &options, &mut |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })?;
            println!();
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "[{} prompt tokens, {} generated in {:.2}s, {:.1} tokens/s, stop: {:?}]",
                ids.len(),
                generation.tokens.len(),
                secs,
                generation.tokens.len() as f64 / secs,
                generation.stop
            );
            Ok(())
        }
        Command::Ppl {
            model,
            text,
            ctx,
            max_windows,
            quant,
        } => {
            let body = std::fs::read_to_string(&text)
                .with_context(|| format!("cannot read {}", text.display()))?;
            let model = load_with_progress(&model, &quant, true)?;
            let ids = model.tokenizer().encode(&body, false)?;
            let bar = ProgressBar::new(0).with_style(bar_style("windows"));
            let start = Instant::now();
            let ppl = model
                .perplexity(&ids, ctx, max_windows, &mut |done, total, p| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message(format!("ppl {:.3}", p.value()));
                })
                .with_context(|| format!("perplexity of {} with --ctx {ctx}", text.display()))?;
            bar.finish_and_clear();
            println!(
                "perplexity {:.4} over {} windows of {} tokens ({} scored of {} in the text) in {:.1}s",
                ppl.value(),
                ppl.windows,
                ctx,
                ppl.scored_tokens,
                ids.len(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn bar_style(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Imports a model and, if asked, compiles it in memory; returns the
/// passes that ran. With `report`, prints the quantized layers'
/// reconstruction error (which quantizes every layer once more).
fn load_compiled(
    path: &Path,
    quant: &QuantArgs,
    report: bool,
) -> Result<(Imported, Vec<PassRecord>)> {
    let imported = import(path)?;
    let Some(options) = quant.options() else {
        return Ok((imported, Vec::new()));
    };
    if report {
        let error = fairyc::compile::reconstruction_error(
            &imported.graph,
            imported.weights.as_ref(),
            &options,
        )?;
        if let Some(e) = error {
            eprintln!("mean relative reconstruction error of the quantized layers: {e:.4}");
        }
    }
    Ok(fairyc::compile(imported, &options)?)
}

fn load_with_progress(path: &Path, quant: &QuantArgs, report: bool) -> Result<Model> {
    let (imported, _) = load_compiled(path, quant, report)?;
    let bar = ProgressBar::new(imported.graph.weights().count() as u64)
        .with_style(bar_style("weights decoded"));
    let model = Model::from_imported(imported, &|_| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(model)
}

/// The options of `fairyc train` beyond the model and quantization.
struct TrainRun {
    data: Vec<PathBuf>,
    steps: usize,
    seq: usize,
    schedule: Schedule,
    weight_decay: f32,
    holdout: f64,
    eval_windows: usize,
    ste: Ste,
    checkpoint: Option<PathBuf>,
    checkpoint_every: usize,
    resume: bool,
    loss_csv: Option<PathBuf>,
}

fn train_command(model: &Path, quant: &QuantArgs, run: &TrainRun, output: &Path) -> Result<()> {
    if run.seq < 2 || run.steps == 0 {
        bail!("--seq must be at least 2 and --steps positive");
    }
    if !(0.0..1.0).contains(&run.holdout) {
        bail!("--holdout must be in [0, 1), got {}", run.holdout);
    }
    let (compiled, _) = load_compiled(model, quant, true)?;
    let mut tokens = Vec::new();
    for path in &run.data {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        tokens.extend(compiled.tokenizer.encode(&text, false)?);
    }
    let windows: Vec<&[u32]> = tokens.windows(run.seq + 1).step_by(run.seq).collect();
    let held = ((windows.len() as f64) * run.holdout).ceil() as usize;
    if windows.len() < held + 1 {
        bail!(
            "the data has {} tokens: too few for windows of --seq {} with a held-out split",
            tokens.len(),
            run.seq
        );
    }
    let (train, heldout) = windows.split_at(windows.len() - held);
    let heldout = &heldout[..heldout.len().min(run.eval_windows)];
    let adam = AdamW {
        weight_decay: run.weight_decay,
        ..AdamW::default()
    };
    let mut trainer = Trainer::new(
        &compiled.graph,
        compiled.weights.clone(),
        adam,
        &GradOptions { ste: run.ste },
    )?;
    if let Some(ckpt) = &run.checkpoint {
        if run.resume && ckpt.is_file() {
            trainer.load(ckpt)?;
            eprintln!("resumed {} at step {}", ckpt.display(), trainer.step);
        }
    }
    let before = (!heldout.is_empty())
        .then(|| trainer.eval_loss(heldout))
        .transpose()?;
    if let Some(l) = before {
        eprintln!(
            "held-out loss before: {l:.4} (perplexity {:.2}) over {} windows",
            l.exp(),
            heldout.len()
        );
    }
    let mut csv = String::from("step,loss,lr\n");
    let bar = ProgressBar::new(run.steps as u64).with_style(bar_style("steps"));
    bar.set_position(trainer.step.min(run.steps) as u64);
    let start = Instant::now();
    let first = trainer.step;
    while trainer.step < run.steps {
        let window = train[trainer.step % train.len()];
        let lr = run.schedule.at(trainer.step + 1);
        let loss = trainer.train_step(window, lr)?;
        csv.push_str(&format!("{},{loss},{lr}\n", trainer.step));
        let done = (trainer.step - first) * run.seq;
        bar.set_position(trainer.step as u64);
        bar.set_message(format!(
            "loss {loss:.4}, {:.0} tokens/s",
            done as f64 / start.elapsed().as_secs_f64()
        ));
        tracing::info!(step = trainer.step, loss, lr, "train");
        if let Some(ckpt) = &run.checkpoint {
            if trainer.step % run.checkpoint_every.max(1) == 0 || trainer.step == run.steps {
                trainer.save(ckpt)?;
            }
        }
    }
    bar.finish_and_clear();
    if let Some(path) = &run.loss_csv {
        write_atomically(path, |w| w.write_all(csv.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let after = (!heldout.is_empty())
        .then(|| trainer.eval_loss(heldout))
        .transpose()?;
    if let Some(l) = after {
        eprintln!("held-out loss after:  {l:.4} (perplexity {:.2})", l.exp());
    }
    let frozen = fairyc::compile::freeze(&compiled.graph, &trainer.store)?;
    fairyc_frontend::fairy::write(
        output,
        &frozen.graph,
        &compiled.graph,
        &compiled.tokenizer,
        &frozen.tensors,
    )?;
    println!(
        "trained {} steps ({} tokens) in {:.1}s; wrote {}",
        trainer.step - first,
        (trainer.step - first) * run.seq,
        start.elapsed().as_secs_f64(),
        output.display()
    );
    Ok(())
}

fn compile_command(
    model: &Path,
    quant: &QuantArgs,
    timings: bool,
    dump_passes: Option<&Path>,
    output: &Path,
) -> Result<()> {
    if quant.options().is_none() {
        bail!(
            "--quant none leaves nothing to compile: choose w1, w2, w3, binary, ternary or complex"
        );
    }
    let start = Instant::now();
    let (compiled, passes) = load_compiled(model, quant, true)?;
    if let Some(dir) = dump_passes {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, pass) in passes.iter().enumerate() {
            let path = dir.join(format!("{:02}-{}.fir", i + 1, pass.name));
            let text = fairyc_ir::text::print(&pass.graph);
            write_atomically(&path, |w| w.write_all(text.as_bytes()))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if timings {
        for pass in &passes {
            match &pass.egraph {
                Some(stats) => eprintln!("{stats}"),
                None => eprintln!(
                    "{:<12} {:>8.1} ms  (direct rewrite, {} nodes)",
                    pass.name,
                    pass.elapsed.as_secs_f64() * 1e3,
                    pass.graph.nodes.len()
                ),
            }
        }
    }
    let frozen = fairyc::compile::freeze(&compiled.graph, compiled.weights.as_ref())?;
    let sizes = fairyc::compile::SizeBreakdown::of(&frozen, &compiled.graph);
    fairyc_frontend::fairy::write(
        output,
        &frozen.graph,
        &compiled.graph,
        &compiled.tokenizer,
        &frozen.tensors,
    )?;
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    println!("{sizes}");
    println!(
        "wrote {} ({} bytes, {} tensors) in {:.1}s",
        output.display(),
        bytes,
        frozen.tensors.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes an f32 tensor as .npy, atomically.
fn write_npy(path: &Path, t: &fairyc::Tensor) -> Result<()> {
    let data = t.as_f32().context("logits must be f32")?;
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    write_atomically(path, |w| {
        let mut npy = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(w)
            .begin_nd()?;
        npy.extend(data.iter().copied())?;
        npy.finish()
    })
    .with_context(|| format!("cannot write {}", path.display()))
}
