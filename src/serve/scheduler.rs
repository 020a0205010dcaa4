//! The generation worker: one thread owns the model's compute (synchronous
//! and CPU-bound, so it never runs on the async executor). Up to
//! `parallel` requests are active at once, each in its own slot of the
//! model's [`Batch`] (its own KV cache). A round is one program run that
//! advances every active request: a decode token each, and prompt chunks
//! within the rest of the round's budget of rows (chunked prefill: a long
//! prompt does not stall the others' tokens for its whole prefill).
//! Requests join and leave between rounds (continuous batching). Text goes
//! back to the HTTP handlers through channels; a closed channel means the
//! client left, and its slot is freed at the next round.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use axum::http::StatusCode;
use fairyc_frontend::tokenizer::DecodeStream;
use fairyc_runtime::{Batch, Feed, Rows, Sampler, Tensor};
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
    /// The most requests one program run has stepped so far.
    pub largest_batch: AtomicUsize,
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
            largest_batch: AtomicUsize::new(0),
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
    let mut batch = Batch::new(model.program());
    // `serve` checked that the model holds `parallel` slots.
    let mut free: Vec<usize> = (0..load.parallel).rev().collect();
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        // Join between rounds, as many as there are free slots; block only
        // when there is nothing to step.
        while let Some(&slot) = free.last() {
            let job = if active.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            match Active::start(model, job, slot) {
                Some(a) => {
                    free.pop();
                    active.push(a);
                }
                None => {
                    load.admitted.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        load.active.store(active.len(), Ordering::Release);
        let stepped = round(&mut batch, &mut active, chunk);
        load.largest_batch.fetch_max(stepped, Ordering::AcqRel);
        active.retain(|a| {
            if !a.over {
                return true;
            }
            batch.reset(a.slot);
            free.push(a.slot);
            load.admitted.fetch_sub(1, Ordering::AcqRel);
            false
        });
        load.active.store(active.len(), Ordering::Release);
    }
}

/// One round: every request's next feed in one run. Decode steps go
/// first; prompt chunks share what is left of `chunk` rows (at least one,
/// so a prompt always moves), in order of arrival. Returns how many
/// requests the run stepped.
fn round(batch: &mut Batch, active: &mut [Active], chunk: usize) -> usize {
    let decoding = active.iter().filter(|a| a.pending.is_empty()).count();
    let mut budget = chunk.saturating_sub(decoding).max(1);
    let mut feeds: Vec<(usize, Vec<u32>, Rows)> = Vec::new();
    for (i, a) in active.iter_mut().enumerate() {
        if let Some((tokens, rows)) = a.next(&mut budget) {
            feeds.push((i, tokens, rows));
        }
    }
    if feeds.is_empty() {
        return 0;
    }
    let step: Vec<Feed> = feeds
        .iter()
        .map(|(i, tokens, logits)| Feed {
            slot: active[*i].slot,
            tokens,
            logits: *logits,
        })
        .collect();
    match batch.step(&step) {
        Ok(logits) => {
            let wanted = feeds.iter().filter(|(_, _, rows)| *rows == Rows::Last);
            for (row, (i, _, _)) in wanted.enumerate() {
                active[*i].logits = logits_row(&logits, row);
            }
        }
        // A failed run took every slot's state with it (the batch reset
        // them all); feeds it refused before running cannot happen here:
        // admission bounds every request by the context, one feed a slot.
        Err(e) => {
            for a in active.iter_mut().filter(|a| !a.over) {
                a.fail(e.to_string());
            }
        }
    }
    feeds.len()
}

/// One request being generated.
struct Active<'m> {
    model: &'m Model,
    /// Its slot of the batch (its KV cache).
    slot: usize,
    /// The prompt's tokens not fed yet.
    pending: Vec<u32>,
    sampler: Sampler,
    decode: DecodeStream<'m>,
    stop: StopText,
    /// The logits of the last position fed.
    logits: Vec<f32>,
    prompt_tokens: usize,
    generated: usize,
    max_tokens: usize,
    events: UnboundedSender<Event>,
    /// Finished, failed or left: its slot is freed after the round.
    over: bool,
}

impl<'m> Active<'m> {
    /// The request in `slot`; `None` if it is already over (its client
    /// left while it waited).
    fn start(model: &'m Model, job: Job, slot: usize) -> Option<Active<'m>> {
        if job.events.is_closed() {
            return None;
        }
        Some(Active {
            model,
            slot,
            prompt_tokens: job.prompt.len(),
            pending: job.prompt,
            sampler: Sampler::new(job.temperature, job.top_p, job.seed),
            decode: model.tokenizer().decode_stream(),
            stop: StopText::new(job.stop),
            logits: Vec::new(),
            generated: 0,
            max_tokens: job.max_tokens,
            events: job.events,
            over: false,
        })
    }

    /// What the request feeds this round, with the logits it needs: the
    /// next chunk of its prompt (taken from `budget`), or the token it
    /// samples now. `None` when it feeds nothing (the budget is spent, or
    /// it is over).
    fn next(&mut self, budget: &mut usize) -> Option<(Vec<u32>, Rows)> {
        if self.events.is_closed() {
            self.over = true;
            return None;
        }
        if self.pending.is_empty() {
            return self.decode_step().map(|next| (vec![next], Rows::Last));
        }
        let take = (*budget).min(self.pending.len());
        if take == 0 {
            return None;
        }
        *budget -= take;
        let chunk: Vec<u32> = self.pending.drain(..take).collect();
        let rows = if self.pending.is_empty() {
            Rows::Last
        } else {
            Rows::None
        };
        Some((chunk, rows))
    }

    /// Samples a token and sends its text; returns it if it is to be fed
    /// (the request goes on).
    fn decode_step(&mut self) -> Option<u32> {
        let next = self.sampler.sample(&self.logits);
        if self.model.tokenizer().is_eog(next) {
            self.finish("stop");
            return None;
        }
        self.generated += 1;
        let piece = match self.decode.push(next) {
            Ok(piece) => piece.unwrap_or_default(),
            Err(e) => {
                self.fail(e.to_string());
                return None;
            }
        };
        let (text, stopped) = self.stop.push(&piece);
        if !self.send(text) {
            self.over = true;
            return None;
        }
        if stopped {
            self.done("stop");
            return None;
        }
        if self.generated == self.max_tokens {
            self.finish("length");
            return None;
        }
        Some(next)
    }

    /// Ends with the text still held back by the decoder and the stop
    /// sequences.
    fn finish(&mut self, reason: &'static str) {
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

    fn done(&mut self, reason: &'static str) {
        let _ = self.events.send(Event::Done(Finish {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
        }));
        self.over = true;
    }

    fn fail(&mut self, message: String) {
        let _ = self.events.send(Event::Failed(message));
        self.over = true;
    }

    /// Sends text if there is any; `false` if the client has left.
    fn send(&self, text: String) -> bool {
        text.is_empty() || self.events.send(Event::Text(text)).is_ok()
    }
}

/// Row `row` of a step's logits.
fn logits_row(logits: &Tensor, row: usize) -> Vec<f32> {
    let vocab = logits.cols();
    let rows = logits.as_f32().expect("a batch step returns f32 logits");
    rows[row * vocab..][..vocab].to_vec()
}
