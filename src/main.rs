//! The `fairyc` command-line tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fairyc::compile::Precision;
use fairyc::{import, report, GenerateOptions, Imported, Model, Program};
use fairyc_ir::atomic::write_atomically;
use fairyc_passes::pipeline::PassRecord;
use indicatif::{ProgressBar, ProgressStyle};
use npyz::WriterBuilder;

mod cli;

use cli::options::{at_least_one, BackendArg, BackendArgs, EmbeddingsArg, QuantArgs};
use cli::plot::{plot_command, PlotColumn};
use cli::train::{train_command, TrainArgs};

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

#[derive(Subcommand)]
enum Command {
    /// Train on the CPU or on GPUs (--device): quantization-aware training
    /// of a model (AdamW on full-precision master weights, the forward pass
    /// through the quantized weights, straight-through gradients),
    /// optionally distilled from its unquantized self, or a model from
    /// scratch (--init random); writes a .fairy artifact at the end.
    Train(Box<TrainArgs>),
    /// Plot loss curves from `fairyc train --loss-csv` files into one PNG.
    Plot {
        /// CSV files; each becomes a curve named after the file.
        #[arg(required = true)]
        csv: Vec<PathBuf>,
        /// The column to plot: loss (training, per step) or heldout.
        #[arg(long, value_enum, default_value_t = PlotColumn::Loss)]
        column: PlotColumn,
        /// Average the training loss over this many steps.
        #[arg(long, default_value_t = 1)]
        smooth: usize,
        #[arg(long, default_value = "loss")]
        title: String,
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
        /// How to store the matrices left unquantized (the embeddings, an
        /// unquantized output matrix): source (the source's precision:
        /// f32, f16 or bf16 as they are, a GGUF Q8_0 matrix as q8, other
        /// GGUF block types as f16), f32, f16, bf16, or q8 (8 bits with a
        /// scale per 32 values, GGUF's Q8_0 layout).
        #[arg(long, value_enum, default_value_t = EmbeddingsArg::Source)]
        embeddings: EmbeddingsArg,
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
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Serve the model over HTTP with OpenAI's API (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health).
    Serve {
        model: PathBuf,
        /// The address to listen on (loopback by default).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The port; 0 picks a free one (the address is printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Requests generating at once, each with its own KV cache.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Requests that may wait for a slot; past that, 503.
        #[arg(long, default_value_t = 16)]
        queue: usize,
        /// Rows a round feeds at most: a token for each generating request,
        /// and prompt chunks in what is left, at least one prompt token a
        /// round (chunked prefill): a long prompt arriving delays the
        /// others' next token by one chunk, not by its whole prefill.
        #[arg(long, default_value_t = 256)]
        prefill_chunk: usize,
        /// MiB the server may plan for: weights, values and every slot's
        /// KV cache at --ctx (default: the memory the system has available).
        #[arg(long)]
        memory: Option<usize>,
        /// Tokens per request, prompt and completion (default: the
        /// model's context length).
        #[arg(long)]
        ctx: Option<usize>,
        #[command(flatten)]
        quant: QuantArgs,
        #[command(flatten)]
        backend: BackendArgs,
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
        /// Windows of --ctx stacked as segments of one run, up to this many
        /// tokens (at least one window). Default: 2048 on the GPU; one
        /// window on the CPU backends, whose own attention kernel takes one
        /// sequence (segments run on the reference's, slowly).
        #[arg(long, value_parser = at_least_one)]
        batch: Option<usize>,
        #[command(flatten)]
        quant: QuantArgs,
        #[command(flatten)]
        backend: BackendArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    Text,
    Dot,
}

fn main() -> ExitCode {
    // A closed pipe (`fairyc dump m.fairy | head`) ends the process quietly,
    // as it does other Unix tools, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal before any thread
    // starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Data-parallel GPUs add through NCCL with NVLink multicast off unless
    // asked otherwise: the GPU machines this was built on require it, and
    // one host's all-reduce does not need it. Set before any thread starts.
    // NCCL connects the ranks when the communicators are made, not lazily
    // inside the first collective's call (where a rank waiting on a failed
    // peer could not be aborted).
    for (var, value) in [("NCCL_NVLS_ENABLE", "0"), ("NCCL_RUNTIME_CONNECT", "0")] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            embeddings,
            output,
        } => compile_command(
            &model,
            &quant,
            timings,
            dump_passes.as_deref(),
            embeddings.precision(),
            &output,
        ),
        Command::Train(args) => train_command(&args),
        Command::Plot {
            csv,
            column,
            smooth,
            title,
            output,
        } => plot_command(&csv, column, smooth, &title, &output),
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
            backend,
        } => {
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
                bail!("--top-p must be in (0, 1], got {top_p}");
            }
            if !temperature.is_finite() || temperature < 0.0 {
                bail!("--temperature must be 0 or positive, got {temperature}");
            }
            let model = load_with_progress(&model, &quant, false, backend, 1)?;
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
            let mut stdout = std::io::stdout();
            let generation = model.generate(&ids, &options, &mut |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })?;
            println!();
            // The first token comes from the prompt's logits; each later
            // one is a decode step.
            let (prompt_s, decode_s) = (
                generation.prompt_time.as_secs_f64(),
                generation.decode_time.as_secs_f64(),
            );
            let steps = generation.tokens.len().saturating_sub(1);
            eprintln!(
                "[{} prompt tokens in {prompt_s:.2}s ({:.1} tokens/s), {} generated, {steps} decode steps in {decode_s:.2}s ({:.1} tokens/s), stop: {:?}]",
                ids.len(),
                ids.len() as f64 / prompt_s.max(1e-9),
                generation.tokens.len(),
                steps as f64 / decode_s.max(1e-9),
                generation.stop
            );
            print_profile(model.program());
            Ok(())
        }
        Command::Serve {
            model,
            host,
            port,
            parallel,
            queue,
            prefill_chunk,
            memory,
            ctx,
            quant,
            backend,
        } => {
            let name = model
                .file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
            let host_memory = !matches!(backend.chosen(), BackendArg::Cuda);
            let loaded = load_with_progress(&model, &quant, false, backend, parallel.max(1))?;
            let options = fairyc::serve::ServeOptions {
                host,
                port,
                parallel,
                queue,
                prefill_chunk,
                memory: memory.map(|m| m << 20),
                host_memory,
                ctx,
                name,
            };
            Ok(fairyc::serve::serve(loaded, &options)?)
        }
        Command::Ppl {
            model,
            text,
            ctx,
            max_windows,
            batch,
            quant,
            backend,
        } => {
            let body = std::fs::read_to_string(&text)
                .with_context(|| format!("cannot read {}", text.display()))?;
            let batch = batch.unwrap_or(match backend.chosen() {
                BackendArg::Cuda => PPL_GPU_BATCH,
                _ => ctx,
            });
            let windows_per_run = (batch / ctx.max(1)).max(1);
            let (imported, _) = load_compiled(&model, &quant, true)?;
            let bar = weights_bar(&imported);
            let scorer = fairyc::Scorer::from_imported(
                imported,
                backend.backend().as_ref(),
                ctx,
                windows_per_run,
                &|_| bar.inc(1),
            )?;
            bar.finish_and_clear();
            let ids = scorer.tokenizer().encode(&body, false)?;
            let bar = ProgressBar::new(0).with_style(bar_style("windows"));
            let start = Instant::now();
            let ppl = scorer
                .perplexity(&ids, max_windows, &mut |done, total, p| {
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
            print_profile(scorer.program());
            Ok(())
        }
    }
}

/// Tokens `fairyc ppl` scores a run on the GPU by default: four windows of
/// 512, enough rows for the tensor-core products, 400 MB of logits at
/// SmolLM2's vocabulary.
const PPL_GPU_BATCH: usize = 2048;

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
    quant.check_own_quantizers(&imported.graph)?;
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

fn load_with_progress(
    path: &Path,
    quant: &QuantArgs,
    report: bool,
    backend: BackendArgs,
    slots: usize,
) -> Result<Model> {
    let (imported, _) = load_compiled(path, quant, report)?;
    let bar = weights_bar(&imported);
    let model =
        Model::from_imported_slots(imported, backend.backend().as_ref(), slots, &|_| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(model)
}

/// A progress bar over the model's weights as they are decoded.
fn weights_bar(imported: &Imported) -> ProgressBar {
    ProgressBar::new(imported.graph.weights().count() as u64)
        .with_style(bar_style("weights decoded"))
}

/// The time per op, when `FAIRYC_PROFILE` asked for it.
fn print_profile(program: &dyn Program) {
    if let Some(profile) = program.profile() {
        eprint!("{}", profile.report());
    }
}

fn compile_command(
    model: &Path,
    quant: &QuantArgs,
    timings: bool,
    dump_passes: Option<&Path>,
    precision: Precision,
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
    let frozen = fairyc::compile::write_artifact(
        output,
        &compiled.graph,
        compiled.weights.as_ref(),
        precision,
        &compiled.tokenizer,
    )?;
    let sizes = fairyc::compile::SizeBreakdown::of(&frozen, &compiled.graph);
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
