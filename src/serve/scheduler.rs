//! The generation worker: one thread owns the model's compute (synchronous
//! and CPU-bound, so it never runs on the async executor). Up to
//! `parallel` requests are active at once, each with its own `Session` (its
//! own KV cache); every round advances each active request by one step (a
//! decode step, or a chunk of its prompt: a long prompt does not stall the
//! others' tokens for its whole prefill), and requests join (one a round)
//! and leave between rounds (continuous batching, one sequence per program
//! run). Text goes back to the HTTP handlers
//! through channels; a closed channel means the client left, and its slot
//! is freed at the next step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use axum::http::StatusCode;
use fairyc_frontend::tokenizer::DecodeStream;
use fairyc_runtime::{Sampler, Session};
use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::stop::StopText;
use crate::Model;

/// A checked request, tokenized, ready to run.
pub struct Job {
    pub prompt: Vec<u32>,
    /// At most the context left after the prompt (checked on admission).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Unbounded, so the worker never waits on a slow client; what one
    /// request can queue is bounded by its `max_tokens`.
    pub events: UnboundedSender<Event>,
}

/// What a request's handler receives, in order: text, then one `Done` or
/// `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Finish),
    Failed(String),
}

#[derive(Clone, Copy, Debug)]
pub struct Finish {
    /// OpenAI's finish reason: "stop" (end token or stop sequence) or
    /// "length".
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// How busy the worker is, for admission and `/health`.
pub struct Load {
    pub parallel: usize,
    pub queue: usize,
    /// Requests admitted and not finished: active or waiting.
    pub admitted: AtomicUsize,
    pub active: AtomicUsize,
}

/// The handlers' side of the worker.
pub struct Scheduler {
    jobs: Sender<Job>,
    pub load: Arc<Load>,
}

impl Scheduler {
    /// Starts the worker thread; it ends when the scheduler is dropped and
    /// the last request is done.
    pub fn start(model: Arc<Model>, parallel: usize, queue: usize, chunk: usize) -> Scheduler {
        let load = Arc::new(Load {
            parallel,
            queue,
            admitted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        });
        let (jobs, receiver) = mpsc::channel();
        let worker_load = load.clone();
        std::thread::Builder::new()
            .name("fairyc-generate".into())
            .spawn(move || work(&model, &receiver, &worker_load, chunk.max(1)))
            .expect("the generation thread starts");
        Scheduler { jobs, load }
    }

    /// Admits a job if fewer than `parallel + queue` are admitted;
    /// otherwise it is refused with 503, never queued without bound.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let capacity = self.load.parallel + self.load.queue;
        let admitted = self
            .load
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is busy: {} requests generating and {} waiting (--parallel {}, --queue {}); retry later",
                    self.load.parallel, self.load.queue, self.load.parallel, self.load.queue
                ),
            )
            .with_code("server_busy"));
        }
        self.jobs.send(job).map_err(|_| {
            self.load.admitted.fetch_sub(1, Ordering::AcqRel);
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the generation worker has stopped",
            )
        })
    }
}

fn work(model: &Model, jobs: &Receiver<Job>, load: &Load, chunk: usize) {
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        // Join between rounds, one request a round: its prefill, a chunk
        // a round, stalls the others' next token, so a burst of arrivals
        // costs them a chunk per token, not whole prompts at once, and the
        // first to arrive gets its first token soonest. Block only when
        // there is nothing to step.
        if active.len() < load.parallel {
            let job = if active.is_empty() {
                match jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                }
            } else {
                jobs.try_recv().ok()
            };
            if let Some(job) = job {
                match Active::start(model, job, chunk) {
                    Some(a) => active.push(a),
                    None => {
                        load.admitted.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
        load.active.store(active.len(), Ordering::Release);
        active.retain_mut(|a| {
            let going = a.step();
            if !going {
                load.admitted.fetch_sub(1, Ordering::AcqRel);
            }
            going
        });
        load.active.store(active.len(), Ordering::Release);
    }
}

/// One request being generated.
struct Active<'m> {
    model: &'m Model,
    session: Session<'m>,
    /// The prompt's tokens not fed yet, and how many a round feeds.
    pending: Vec<u32>,
    chunk: usize,
    sampler: Sampler,
    decode: DecodeStream<'m>,
    stop: StopText,
    /// The logits of the last position fed.
    logits: Vec<f32>,
    prompt_tokens: usize,
    generated: usize,
    max_tokens: usize,
    events: UnboundedSender<Event>,
}

impl<'m> Active<'m> {
    /// The request, its prompt to be fed `chunk` tokens a round; `None` if
    /// it is already over (its client left while it waited).
    fn start(model: &'m Model, job: Job, chunk: usize) -> Option<Active<'m>> {
        if job.events.is_closed() {
            return None;
        }
        Some(Active {
            model,
            session: Session::new(model.program()),
            prompt_tokens: job.prompt.len(),
            pending: job.prompt,
            chunk,
            sampler: Sampler::new(job.temperature, job.top_p, job.seed),
            decode: model.tokenizer().decode_stream(),
            stop: StopText::new(job.stop),
            logits: Vec::new(),
            generated: 0,
            max_tokens: job.max_tokens,
            events: job.events,
        })
    }

    /// The request's step of a round: the next chunk of its prompt, or a
    /// decode step. Returns whether the request goes on.
    fn step(&mut self) -> bool {
        if self.pending.is_empty() {
            return self.decode_step();
        }
        if self.events.is_closed() {
            return false;
        }
        let take = self.chunk.min(self.pending.len());
        let chunk: Vec<u32> = self.pending.drain(..take).collect();
        if !self.pending.is_empty() {
            return match self.session.prefill(&chunk) {
                Ok(()) => true,
                Err(e) => self.fail(e.to_string()),
            };
        }
        match self.session.feed_last(&chunk) {
            Ok(logits) => {
                self.logits = last_row(&logits);
                true
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// One decode step: sample a token, send its text, feed it. Returns
    /// whether the request goes on.
    fn decode_step(&mut self) -> bool {
        if self.events.is_closed() {
            return false;
        }
        let next = self.sampler.sample(&self.logits);
        if self.model.tokenizer().is_eog(next) {
            return self.finish("stop");
        }
        self.generated += 1;
        let piece = match self.decode.push(next) {
            Ok(piece) => piece.unwrap_or_default(),
            Err(e) => return self.fail(e.to_string()),
        };
        let (text, stopped) = self.stop.push(&piece);
        if !self.send(text) {
            return false;
        }
        if stopped {
            return self.done("stop");
        }
        if self.generated == self.max_tokens {
            return self.finish("length");
        }
        match self.session.feed_last(&[next]) {
            Ok(logits) => {
                self.logits = last_row(&logits);
                true
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Ends with the text still held back by the decoder and the stop
    /// sequences.
    fn finish(&mut self, reason: &'static str) -> bool {
        let decode = std::mem::replace(&mut self.decode, self.model.tokenizer().decode_stream());
        let rest = match decode.finish() {
            Ok(rest) => rest,
            Err(e) => return self.fail(e.to_string()),
        };
        let (mut text, stopped) = self.stop.push(&rest);
        if !stopped {
            let stop = std::mem::replace(&mut self.stop, StopText::new(Vec::new()));
            text.push_str(&stop.finish());
        }
        self.send(text);
        self.done(if stopped { "stop" } else { reason })
    }

    fn done(&mut self, reason: &'static str) -> bool {
        let _ = self.events.send(Event::Done(Finish {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
        }));
        false
    }

    fn fail(&mut self, message: String) -> bool {
        let _ = self.events.send(Event::Failed(message));
        false
    }

    /// Sends text if there is any; `false` if the client has left.
    fn send(&self, text: String) -> bool {
        text.is_empty() || self.events.send(Event::Text(text)).is_ok()
    }
}

fn last_row(logits: &fairyc_runtime::Tensor) -> Vec<f32> {
    let vocab = logits.cols();
    let rows = logits.as_f32().expect("Session::feed returns f32 logits");
    rows[rows.len() - vocab..].to_vec()
}
