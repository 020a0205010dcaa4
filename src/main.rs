//! The `fairyc` command-line tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fairyc::compile::Precision;
use fairyc::train::{
    read_records, train, Event, ModelSource, ScheduleKind, Sharding, TrainConfig, TrainDevice,
};
use fairyc::{
    import, report, Activations, Backend, Cranelift, Cuda, GenerateOptions, GpuActivations,
    GpuAttention, GpuMatmul, Imported, Int8Products, Llvm, Model, Program, Reference,
    RowQuantization,
};
use fairyc_ir::atomic::write_atomically;
use fairyc_ir::{Arithmetic, Granularity};
use fairyc_passes::autodiff::Ste;
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
    /// model itself defines, as iFairy's), float (without the model's own
    /// quantizers: iFairy in full precision), or none.
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
    /// Quantize lm_head (the output projection) too, as the authors do:
    /// the default; `--lm-head false` keeps it unquantized.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
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
    Float,
    Complex,
    W1,
    W2,
    W3,
    Binary,
    Ternary,
}

#[derive(Clone, Copy, ValueEnum)]
enum EmbeddingsArg {
    Source,
    F32,
    F16,
    Bf16,
    Q8,
}

impl EmbeddingsArg {
    fn precision(self) -> Precision {
        use fairyc_frontend::fairy::Storage;
        match self {
            EmbeddingsArg::Source => Precision::Source,
            EmbeddingsArg::F32 => Precision::Matrices(Storage::F32),
            EmbeddingsArg::F16 => Precision::Matrices(Storage::F16),
            EmbeddingsArg::Bf16 => Precision::Matrices(Storage::Bf16),
            EmbeddingsArg::Q8 => Precision::Matrices(Storage::Q8),
        }
    }
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

/// A count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got `{s}`")),
    }
}

/// A positive number of seconds that a `Duration` holds.
fn seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>().map(std::time::Duration::try_from_secs_f64) {
        Ok(Ok(d)) if !d.is_zero() => Ok(d),
        _ => Err(format!("expected a positive number of seconds, got `{s}`")),
    }
}

impl QuantArgs {
    /// `--quant native` keeps the quantizers a model defines itself and
    /// `--quant float` removes them: on a model that defines none, either
    /// would silently leave it unquantized, so it is an error.
    fn check_own_quantizers(&self, graph: &fairyc_ir::Graph) -> Result<()> {
        let flag = match self.quant {
            QuantChoice::Native => "native",
            QuantChoice::Float => "float",
            _ => return Ok(()),
        };
        let own = graph.nodes.iter().any(|n| {
            matches!(
                n.op,
                fairyc_ir::Op::Quantize { .. }
                    | fairyc_ir::Op::ActQuant { .. }
                    | fairyc_ir::Op::Dequant { .. }
                    | fairyc_ir::Op::QuantLinear { .. }
            )
        });
        if !own {
            bail!("--quant {flag}: the model defines no quantizers of its own (native ones are iFairy's); choose w1, w2, w3, binary or ternary to quantize it");
        }
        Ok(())
    }

    /// The pass options, or `None` when the model is used as imported.
    fn options(&self) -> Option<CompileOptions> {
        let method = match self.quant {
            QuantChoice::None => return None,
            QuantChoice::Native | QuantChoice::Float | QuantChoice::Complex => None,
            QuantChoice::W1 => Some(Method::Fairy2i { stages: 1 }),
            QuantChoice::W2 => Some(Method::Fairy2i { stages: 2 }),
            QuantChoice::W3 => Some(Method::Fairy2i { stages: 3 }),
            QuantChoice::Binary => Some(Method::RealBinary),
            QuantChoice::Ternary => Some(Method::RealTernary),
        };
        let real_baseline = matches!(method, Some(Method::RealBinary | Method::RealTernary));
        let native = matches!(self.quant, QuantChoice::Native | QuantChoice::Float);
        Some(CompileOptions {
            strip_quantizers: matches!(self.quant, QuantChoice::Float),
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
                identities: true,
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

/// What runs the model: the reference backend (f32 kernels, exact), the
/// CPU backends whose quantized layers run look-up-table kernels on int
/// activations generated by Cranelift (128-bit vectors) or LLVM (the host's
/// widest: AVX2, AVX-512), or the GPU backend (PTX generated through LLVM
/// and cuBLAS, on the first CUDA device).
#[derive(Args, Clone, Copy)]
struct BackendArgs {
    /// Default: llvm where the host runs it (it decodes fastest).
    #[arg(long, value_enum, default_value_t = BackendArg::fastest())]
    backend: BackendArg,
    /// Where the model runs: `cuda` is `--backend cuda`; `cpu` the
    /// fastest CPU backend (as `fairyc train --device`).
    #[arg(long, value_enum, conflicts_with = "backend")]
    device: Option<DeviceArg>,
    /// Bits of the activations the CPU backends' look-up tables take: 7
    /// (integers up to 63 per block of inputs, one pass: fastest) or 14
    /// (the rounding error again, a second pass: twice the look-ups, about
    /// a 126th of the error).
    #[arg(long, value_enum, default_value_t = ActivationBits::Seven)]
    activation_bits: ActivationBits,
    /// What the cuda backend's quantized layers take: int8 (each row with
    /// one step, products on tensor cores or by dp4a: fastest) or f32
    /// (exact).
    #[arg(long, value_enum, default_value_t = GpuActivationsArg::Int8)]
    gpu_activations: GpuActivationsArg,
    /// How the cuda backend's int8 layers multiply: tensor-cores (mma on
    /// tiles of 16 rows and up to four input rows at once, the codes
    /// re-packed at load: prompts 3-5x as fast) or dp4a (a warp an output
    /// row: a decoding step at LLaMA-7B's widths about 3% faster, at
    /// SmolLM2's 3% slower; docs/BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = Int8ProductsArg::TensorCores)]
    int8_products: Int8ProductsArg,
    /// Where the cuda backend's int8 layers quantize their input rows:
    /// by-width (once, by a kernel of their own, for prompts of 16 rows or
    /// more and for rows of 1,024 complex inputs or more; by each block of
    /// the product otherwise), once, or in-each-block.
    #[arg(long, value_enum, default_value_t = RowQuantizationArg::ByWidth)]
    row_quantization: RowQuantizationArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum Int8ProductsArg {
    Dp4a,
    TensorCores,
}

#[derive(Clone, Copy, ValueEnum)]
enum RowQuantizationArg {
    ByWidth,
    Once,
    InEachBlock,
}

#[derive(Clone, Copy, ValueEnum)]
enum GpuAttentionArg {
    Products,
    Flash,
}

#[derive(Clone, Copy, ValueEnum)]
enum GpuMatmulArg {
    Bf16,
    Tf32,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum GpuActivationsArg {
    Int8,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActivationBits {
    #[value(name = "7")]
    Seven,
    #[value(name = "14")]
    Fourteen,
}

impl BackendArgs {
    /// The backend chosen, by `--device` where given.
    fn chosen(self) -> BackendArg {
        match self.device {
            Some(DeviceArg::Cuda) => BackendArg::Cuda,
            Some(DeviceArg::Cpu) => BackendArg::fastest(),
            None => self.backend,
        }
    }

    fn backend(self) -> Box<dyn Backend> {
        let activations = match self.activation_bits {
            ActivationBits::Seven => Activations::Bits7,
            ActivationBits::Fourteen => Activations::Bits14,
        };
        match self.chosen() {
            BackendArg::Reference => Box::new(Reference::default()),
            BackendArg::Cranelift => Box::new(Cranelift { activations }),
            BackendArg::Llvm => Box::new(Llvm { activations }),
            BackendArg::Cuda => Box::new(Cuda {
                activations: match self.gpu_activations {
                    GpuActivationsArg::Int8 => GpuActivations::Int8,
                    GpuActivationsArg::F32 => GpuActivations::F32,
                },
                int8_products: match self.int8_products {
                    Int8ProductsArg::TensorCores => Int8Products::TensorCores,
                    Int8ProductsArg::Dp4a => Int8Products::Dp4a,
                },
                row_quantization: match self.row_quantization {
                    RowQuantizationArg::ByWidth => RowQuantization::ByWidth,
                    RowQuantizationArg::Once => RowQuantization::Once,
                    RowQuantizationArg::InEachBlock => RowQuantization::InEachBlock,
                },
                ..Cuda::default()
            }),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Reference,
    Cranelift,
    Llvm,
    Cuda,
}

impl BackendArg {
    fn fastest() -> BackendArg {
        if fairyc_backends::cpu::llvm::host_supported() {
            BackendArg::Llvm
        } else {
            BackendArg::Reference
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
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

/// `fairyc train`'s options.
#[derive(Args)]
struct TrainArgs {
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlotColumn {
    Loss,
    Heldout,
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

fn train_command(args: &TrainArgs) -> Result<()> {
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

fn plot_command(
    csvs: &[PathBuf],
    column: PlotColumn,
    smooth: usize,
    title: &str,
    output: &Path,
) -> Result<()> {
    let mut series = Vec::new();
    for path in csvs {
        let records = read_records(path)?;
        let raw: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| match column {
                PlotColumn::Loss => Some((r.step as f64, f64::from(r.loss))),
                PlotColumn::Heldout => Some((r.step as f64, r.heldout?)),
            })
            .collect();
        let k = smooth.max(1);
        let points = raw
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let window = &raw[i.saturating_sub(k - 1)..=i];
                (
                    x,
                    window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64,
                )
            })
            .collect();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        series.push(fairyc::plot::Series { name, points });
    }
    let y = match column {
        PlotColumn::Loss => "training loss (nats)",
        PlotColumn::Heldout => "held-out loss (nats)",
    };
    fairyc::plot::line_chart(output, title, "step", y, &series)?;
    println!("wrote {}", output.display());
    Ok(())
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
