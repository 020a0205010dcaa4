//! `fairyc serve`: an OpenAI-compatible HTTP server for a loaded model
//! (axum on tokio). The HTTP side only parses, checks and streams; the
//! model runs on one generation thread ([`scheduler`]) that interleaves
//! up to `parallel` requests step by step.

mod error;
mod request;
mod response;
mod routes;
mod scheduler;
mod stop;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use fairyc_backends::state::{slots, state_names};
use fairyc_ir::{DType, Graph};

use crate::{Error, Model};
use routes::App;
use scheduler::Scheduler;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The address to listen on; loopback unless asked otherwise.
    pub host: String,
    /// 0 picks a free port (the address is printed).
    pub port: u16,
    /// Requests generating at once, each with its own KV cache.
    pub parallel: usize,
    /// Requests waiting for a slot; past that a request gets 503.
    pub queue: usize,
    /// Rows a round feeds at most: each generating request's token, and
    /// prompt chunks in what is left (at least one prompt token a round).
    pub prefill_chunk: usize,
    /// Bytes the server may plan for (weights, values, every slot's KV
    /// cache at `ctx`).
    pub memory: Option<usize>,
    /// Whether values and KV caches live in host memory (the CPU backends):
    /// without `memory`, what the system reports available bounds them.
    pub host_memory: bool,
    /// Tokens per request (prompt and completion); the model's context
    /// length by default, and at most that.
    pub ctx: Option<usize>,
    /// The model's name in the API.
    pub name: String,
}

/// Serves `model` until interrupted (Ctrl-C).
pub fn serve(model: Model, options: &ServeOptions) -> Result<(), Error> {
    let ctx = context(model.graph(), options.ctx)?;
    if options.parallel == 0 {
        return Err(Error::Usage("--parallel must be at least 1".into()));
    }
    if options.prefill_chunk == 0 {
        return Err(Error::Usage("--prefill-chunk must be at least 1".into()));
    }
    let held = slots(model.graph());
    if held < options.parallel {
        return Err(Error::Usage(format!(
            "the model was compiled for {held} sequence(s) at once, fewer than --parallel {}: \
             load it with Model::from_imported_slots(.., {}, ..)",
            options.parallel, options.parallel
        )));
    }
    let plan = MemoryNeed::of(&model, options, ctx);
    match options.memory {
        Some(budget) => plan.check(budget, options.parallel, true)?,
        // The weights are loaded already: what is left must hold the rest.
        None if options.host_memory => {
            if let Some(available) = available_memory() {
                plan.check(available, options.parallel, false)?;
            }
        }
        None => {}
    }
    // The executor only moves bytes; the model's compute has its own thread
    // and rayon's pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run(model, options, ctx, plan.total(options.parallel)))
}

async fn run(
    model: Model,
    options: &ServeOptions,
    ctx: usize,
    planned: usize,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|e| {
            Error::Usage(format!(
                "cannot listen on {}:{}: {e}",
                options.host, options.port
            ))
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let kv = kv_bytes(model.graph(), ctx) as f64 / (1 << 20) as f64;
    let model = Arc::new(model);
    let app = Arc::new(App {
        scheduler: Scheduler::start(
            model.clone(),
            options.parallel,
            options.queue,
            options.prefill_chunk,
        ),
        model,
        name: options.name.clone(),
        ctx,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        requests: AtomicU64::new(0),
    });
    eprintln!(
        "serving {} on http://{address} ({} slots of {ctx} tokens, KV cache up to {kv:.1} MiB each, {:.1} MiB planned in all; {} may wait)",
        options.name,
        options.parallel,
        planned as f64 / (1 << 20) as f64,
        options.queue
    );
    axum::serve(listener, routes::router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::Usage(format!("the server failed: {e}")))
}

/// Tokens per request: `--ctx`, bounded by the model's context length.
fn context(graph: &Graph, asked: Option<usize>) -> Result<usize, Error> {
    let model = graph.context_length();
    match (asked, model) {
        (Some(0), _) => Err(Error::Usage("--ctx must be at least 1".into())),
        (Some(c), Some(m)) if c > m => Err(Error::Usage(format!(
            "--ctx {c} is past the model's context length {m}"
        ))),
        (Some(c), _) => Ok(c),
        (None, Some(m)) => Ok(m),
        (None, None) => Err(Error::Usage(
            "the model states no context length: pass --ctx".into(),
        )),
    }
}

/// What serving plans to hold in memory: the model's resident weights,
/// the values of one run (all requests step in one run; twice the memory
/// plan's bytes, since each of its buffers is kept per element type) at the
/// most rows a run feeds, and each request slot's KV cache at
/// `ctx` tokens (grown 256 rows at a time).
struct MemoryNeed {
    weights: usize,
    values: usize,
    kv_per_slot: usize,
}

impl MemoryNeed {
    fn of(model: &Model, options: &ServeOptions, ctx: usize) -> MemoryNeed {
        let program = model.program();
        MemoryNeed {
            weights: program.resident_weight_bytes(),
            values: 2 * program.plan().transient_bytes(
                program.graph(),
                options.prefill_chunk.min(ctx) + options.parallel,
            ),
            kv_per_slot: kv_bytes(program.graph(), ctx.next_multiple_of(256)),
        }
    }

    fn total(&self, slots: usize) -> usize {
        self.weights + self.values + slots * self.kv_per_slot
    }

    /// An error naming the numbers when `slots` do not fit `budget` (with
    /// the weights in it, or loaded beside it).
    fn check(&self, budget: usize, slots: usize, with_weights: bool) -> Result<(), Error> {
        let weights = if with_weights { self.weights } else { 0 };
        let need = weights + self.values + slots * self.kv_per_slot;
        if need <= budget {
            return Ok(());
        }
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let fits = budget.saturating_sub(weights + self.values) / self.kv_per_slot.max(1);
        let (what, weights) = if with_weights {
            ("--memory", format!("weights {:.1}, ", mib(self.weights)))
        } else {
            (
                "the system's available memory, the weights loaded",
                String::new(),
            )
        };
        Err(Error::Usage(format!(
            "--parallel {slots} needs {:.1} MiB ({weights}values {:.1}, KV caches {slots} x {:.1}), \
             more than the {:.1} MiB available ({what}); {fits} slots fit: lower --parallel or --ctx",
            mib(need),
            mib(self.values),
            mib(self.kv_per_slot),
            mib(budget),
        )))
    }
}

/// The memory the system reports available (Linux's `MemAvailable`).
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The KV cache of one request at `ctx` tokens: every state input's row
/// width times `ctx`, over the graph's slots.
fn kv_bytes(graph: &Graph, ctx: usize) -> usize {
    let names = state_names(graph);
    let all: usize = graph
        .inputs()
        .filter(|(_, name, _)| names.iter().any(|n| n == name))
        .filter_map(|(_, _, ty)| {
            let width = ty.shape.dims().last()?.clone().fixed()?;
            let element = if ty.dtype == DType::C64 { 8 } else { 4 };
            Some(width * element * ctx)
        })
        .sum();
    all / slots(graph)
}
