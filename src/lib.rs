//! fairyc: a compiler from real-valued LLM checkpoints to Fairy2i
//! complex-valued low-bit models.
//!
//! This crate is the top of the stack: the Rust API ([`Model`]) and the
//! command-line tool. The layers below are separate crates: `fairyc-ir`
//! (the IR), `fairyc-frontend` (model files and tokenizers),
//! `fairyc-passes` (the compiler's passes), `fairyc-backends` (the backend
//! interface and the backends), `fairyc-runtime` (sessions and sampling).
//!
//! ```no_run
//! use fairyc::{GenerateOptions, Model};
//! let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let prompt = model.encode_prompt("What is the capital of France?", true)?;
//! model.generate(&prompt, &GenerateOptions::default(), &mut |text| print!("{text}"))?;
//! # Ok::<(), fairyc::Error>(())
//! ```

pub mod compile;
pub mod plot;
pub mod report;
pub mod serve;
pub mod train;

use std::path::Path;

pub use fairyc_backends::{
    Activations, Backend, BackendError, Cranelift, Cuda, GpuActivations, GpuAttention, GpuMatmul,
    Int8Products, Llvm, Program, Reference, RowQuantization, Tensor,
};
pub use fairyc_frontend::import::{import, Imported};
pub use fairyc_frontend::tokenizer::{ChatMessage, Tokenizer};
use fairyc_ir::Graph;
pub use fairyc_runtime::{Sampler, Session, StopReason, WindowLoss};

/// Anything that can go wrong in the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Frontend(#[from] fairyc_frontend::FrontendError),
    #[error(transparent)]
    Tokenizer(#[from] fairyc_frontend::tokenizer::TokenizerError),
    #[error(transparent)]
    Backend(#[from] fairyc_backends::BackendError),
    #[error(transparent)]
    Pass(#[from] fairyc_passes::pipeline::PassError),
    #[error("{0}")]
    Usage(String),
    /// A training step met a non-finite loss or gradient; the step was not
    /// applied.
    #[error("step {step}: the {what} is {value} (not finite); the step was not applied")]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f64,
    },
}

/// Runs the compilation pipeline on an imported model; the result runs
/// like the original (its quantized weights are evaluated once, at load).
pub fn compile(
    imported: Imported,
    options: &fairyc_passes::pipeline::CompileOptions,
) -> Result<(Imported, Vec<fairyc_passes::pipeline::PassRecord>), Error> {
    let (graph, passes) = fairyc_passes::pipeline::compile(&imported.graph, options)?;
    Ok((Imported { graph, ..imported }, passes))
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Wall time of the prompt's processing (until its logits, which give
    /// the first token).
    pub prompt_time: std::time::Duration,
    /// Wall time of the decode steps after it (one per further token).
    pub decode_time: std::time::Duration,
}

/// Perplexity over windows of a token stream.
#[derive(Clone, Debug)]
pub struct Perplexity {
    pub windows: usize,
    pub scored_tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
}

impl Perplexity {
    pub fn value(&self) -> f64 {
        self.nll.exp()
    }
}

/// A loaded model: its graph compiled for a backend with its weights (2-bit
/// codes stay packed), and the tokenizer that goes with it.
pub struct Model {
    program: Box<dyn Program>,
    tokenizer: Tokenizer,
    /// The deployable graph (before its decoding state is exposed), how
    /// many sequences it decodes at once, and its weights, kept to re-bind
    /// the model on another backend ([`Model::backend`]).
    graph: Graph,
    slots: usize,
    weights: std::sync::Arc<dyn fairyc_ir::WeightStore>,
}

/// The graph a backend runs of an imported model: its quantized layers as
/// `quant_linear` on packed codes.
fn deployable(imported: &Imported) -> Result<Graph, Error> {
    Ok(
        fairyc_passes::legalize::pack_quantized_linears(&imported.graph)
            .map_err(BackendError::from)?,
    )
}

/// `graph` compiled for decoding `slots` sequences at once: their KV caches
/// as state, and the logits of only the rows asked for.
fn compile_decoding(
    backend: &dyn Backend,
    graph: &Graph,
    slots: usize,
    weights: &dyn fairyc_ir::WeightStore,
    on_weight: &(dyn Fn(&str) + Sync),
) -> Result<Box<dyn Program>, Error> {
    let graph =
        fairyc_backends::state::expose_kv_cache_slots(graph, slots).map_err(BackendError::from)?;
    let graph = fairyc_backends::state::select_logit_rows(&graph).map_err(BackendError::from)?;
    Ok(fairyc_backends::compile(
        backend, &graph, weights, on_weight,
    )?)
}

/// `imported` compiled on `backend` to decode `rows` sequences in lockstep
/// (`fairyc_runtime::Lockstep`: one token of each a step, all at one
/// position; `fairyc_backends::state::expose_kv_cache_lockstep`). With
/// `draw_at` (a temperature) each step draws the rows' next tokens in the
/// program itself (`fairyc_backends::state::draw_on_device`) and returns
/// them instead of the logits.
pub fn compile_lockstep(
    backend: &dyn Backend,
    imported: &Imported,
    rows: usize,
    draw_at: Option<f32>,
) -> Result<Box<dyn Program>, Error> {
    let graph = deployable(imported)?;
    let mut graph = fairyc_backends::state::expose_kv_cache_lockstep(&graph, rows)
        .map_err(BackendError::from)?;
    if let Some(temperature) = draw_at {
        graph = fairyc_backends::state::draw_on_device(&graph, temperature)
            .map_err(BackendError::from)?;
    }
    Ok(fairyc_backends::compile(
        backend,
        &graph,
        imported.weights.as_ref(),
        &|_| {},
    )?)
}

impl Model {
    /// Imports `path` (GGUF, Hugging Face folder or .fir) and decodes its
    /// weights.
    pub fn load(path: &Path) -> Result<Model, Error> {
        Model::from_imported(import(path)?, &|_| {})
    }

    /// Binds an imported model to its weights on the reference backend;
    /// `on_weight` sees each weight as it is decoded (for progress).
    pub fn from_imported(
        imported: Imported,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Model, Error> {
        Model::from_imported_on(imported, &Reference::default(), on_weight)
    }

    /// Binds an imported model to its weights on `backend`. Quantized
    /// layers of a deployed graph run as `quant_linear` on packed codes.
    pub fn from_imported_on(
        imported: Imported,
        backend: &dyn Backend,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Model, Error> {
        Model::from_imported_slots(imported, backend, 1, on_weight)
    }

    /// [`Model::from_imported_on`] with `slots` sequences decoded together
    /// ([`fairyc_runtime::Batch`]: what a server batches its requests'
    /// steps through); a [`Session`] uses the first.
    pub fn from_imported_slots(
        imported: Imported,
        backend: &dyn Backend,
        slots: usize,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Model, Error> {
        let graph = deployable(&imported)?;
        let program =
            compile_decoding(backend, &graph, slots, imported.weights.as_ref(), on_weight)?;
        Ok(Model {
            program,
            tokenizer: imported.tokenizer,
            graph,
            slots,
            weights: imported.weights,
        })
    }

    /// The model bound to `backend` instead (JIT-compiling its kernels
    /// there), e.g. `Model::load(path)?.backend(&fairyc::Llvm)?`. The
    /// weights are read again from their store (memory-mapped codes are
    /// lent, not copied).
    pub fn backend(self, backend: &dyn Backend) -> Result<Model, Error> {
        let program = compile_decoding(
            backend,
            &self.graph,
            self.slots,
            self.weights.as_ref(),
            &|_| {},
        )?;
        Ok(Model { program, ..self })
    }

    pub fn graph(&self) -> &Graph {
        self.program.graph()
    }

    /// The compiled program (its memory plan, its resident weight bytes).
    pub fn program(&self) -> &dyn Program {
        self.program.as_ref()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of a prompt: as a single user turn through the model's chat
    /// template with `chat`, otherwise the plain text (no BOS is added
    /// unless the tokenizer asks for it).
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>, Error> {
        if chat {
            return self.encode_chat(&[ChatMessage::new("user", prompt)]);
        }
        let mut ids = Vec::new();
        if self.tokenizer.add_bos() {
            ids.extend(self.tokenizer.bos_id());
        }
        ids.extend(self.tokenizer.encode(prompt, false)?);
        nonempty(ids)
    }

    /// Token ids of a conversation through the model's chat template, ready
    /// for the assistant's turn (special tokens in the rendered text count).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, Error> {
        let text = self.tokenizer.apply_chat_template(messages, true)?;
        nonempty(self.tokenizer.encode(&text, true)?)
    }

    /// Logits `[tokens, vocab]` after every position of `ids`.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor, Error> {
        Ok(Session::new(self.program.as_ref()).feed(ids)?)
    }

    /// Generates from `prompt` ids, streaming text to `on_text` as it
    /// becomes valid UTF-8.
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, Error> {
        let mut session = Session::new(self.program.as_ref());
        let mut sampler = Sampler::new(options.temperature, options.top_p, options.seed);
        let mut stream = self.tokenizer.decode_stream();
        let mut text = String::new();
        let mut stream_error = None;
        let tokenizer = &self.tokenizer;
        let start = std::time::Instant::now();
        let mut first_token = None;
        let (tokens, stop) = session.generate(
            prompt,
            options.max_new_tokens,
            &mut sampler,
            &|id| tokenizer.is_eog(id),
            &mut |id| {
                first_token.get_or_insert_with(std::time::Instant::now);
                match stream.push(id) {
                    Ok(Some(piece)) => {
                        on_text(&piece);
                        text.push_str(&piece);
                        true
                    }
                    Ok(None) => true,
                    Err(e) => {
                        stream_error = Some(e);
                        false
                    }
                }
            },
        )?;
        if let Some(e) = stream_error {
            return Err(e.into());
        }
        let rest = stream.finish()?;
        on_text(&rest);
        text.push_str(&rest);
        let end = std::time::Instant::now();
        let prompt_end = first_token.unwrap_or(end);
        Ok(Generation {
            tokens,
            text,
            stop,
            prompt_time: prompt_end - start,
            decode_time: end - prompt_end,
        })
    }

    /// This model's graph and weights compiled on `backend` to score text
    /// in windows of `ctx` tokens, `windows_per_run` of them a run
    /// ([`Scorer`]).
    pub fn scorer(
        &self,
        backend: &dyn Backend,
        ctx: usize,
        windows_per_run: usize,
    ) -> Result<Scorer, Error> {
        Scorer::compile(
            backend,
            &self.graph,
            self.weights.as_ref(),
            self.tokenizer.clone(),
            (ctx, windows_per_run),
            &|_| {},
        )
    }
}

/// A model compiled to score text: perplexity over windows of `ctx`
/// tokens, each run's loss computed where the program runs (only a number
/// comes back, not the logits).
pub struct Scorer {
    windows: WindowLoss,
    tokenizer: Tokenizer,
}

impl Scorer {
    /// Binds an imported model to `backend` to score windows of `ctx`
    /// tokens, `windows_per_run` of them a run (as segments: one keeps a
    /// backend's own attention kernel); `on_weight` sees each weight as it
    /// is decoded.
    pub fn from_imported(
        imported: Imported,
        backend: &dyn Backend,
        ctx: usize,
        windows_per_run: usize,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Scorer, Error> {
        let graph = deployable(&imported)?;
        Scorer::compile(
            backend,
            &graph,
            imported.weights.as_ref(),
            imported.tokenizer,
            (ctx, windows_per_run),
            on_weight,
        )
    }

    fn compile(
        backend: &dyn Backend,
        graph: &Graph,
        weights: &dyn fairyc_ir::WeightStore,
        tokenizer: Tokenizer,
        (ctx, windows_per_run): (usize, usize),
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Scorer, Error> {
        if ctx < 2 {
            return Err(Error::Usage(format!("--ctx must be at least 2, got {ctx}")));
        }
        let windows =
            WindowLoss::compile(backend, graph, weights, ctx - 1, windows_per_run, on_weight)?;
        Ok(Scorer { windows, tokenizer })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The compiled program (its profile, its resident weight bytes).
    pub fn program(&self) -> &dyn Program {
        self.windows.program()
    }

    /// Perplexity of `ids` over non-overlapping windows of `ctx` tokens with
    /// no BOS: token 0 of each window is context only, tokens 1..ctx-1 are
    /// scored. A trailing partial window is left out. `on_run` is called
    /// after each run with (windows done, windows in all, the result so
    /// far).
    pub fn perplexity(
        &self,
        ids: &[u32],
        max_windows: Option<usize>,
        on_run: &mut dyn FnMut(usize, usize, &Perplexity),
    ) -> Result<Perplexity, Error> {
        let ctx = self.windows.rows() + 1;
        let mut windows: Vec<&[u32]> = ids.chunks_exact(ctx).collect();
        windows.truncate(max_windows.unwrap_or(usize::MAX));
        if windows.is_empty() {
            return Err(Error::Usage(format!(
                "the text has {} tokens, fewer than one window of {ctx}",
                ids.len()
            )));
        }
        let so_far = |done: usize, total: f64| Perplexity {
            windows: done,
            scored_tokens: done * (ctx - 1),
            nll: total / (done * (ctx - 1)) as f64,
        };
        let total = self.windows.total(&windows, &mut |done, total| {
            on_run(done, windows.len(), &so_far(done, total))
        })?;
        Ok(so_far(windows.len(), total))
    }
}

fn nonempty(ids: Vec<u32>) -> Result<Vec<u32>, Error> {
    if ids.is_empty() {
        return Err(Error::Usage("the prompt encodes to no tokens".into()));
    }
    Ok(ids)
}
