//! The HTTP handlers: they check and tokenize a request, hand it to the
//! scheduler, and turn its events into a JSON answer or a server-sent
//! event stream.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::request::{self, Endpoint, Prompt};
use super::response::{self, Answer};
use super::scheduler::{Event, Job, Scheduler};
use crate::Model;

/// The largest request body read; a larger one gets 413.
pub const BODY_LIMIT: usize = 1 << 20;

/// What the handlers share.
pub struct App {
    pub model: Arc<Model>,
    pub scheduler: Scheduler,
    /// The model's name in `/v1/models` and in answers.
    pub name: String,
    /// The most tokens one request may hold: prompt and completion.
    pub ctx: usize,
    pub started: u64,
    pub requests: AtomicU64,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_large_bodies))
        .with_state(app)
}

/// Refuses a body whose declared length is past the limit before reading
/// any of it (a body without a length is cut at the limit as it is read).
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(n) if n > BODY_LIMIT as u64 => too_large().into_response(),
        _ => next.run(request).await,
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {BODY_LIMIT} bytes"),
    )
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, body, Endpoint::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, body, Endpoint::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn models(State(app): State<Arc<App>>) -> Response {
    Json(response::models(&app.name, app.started)).into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let load = &app.scheduler.load;
    let active = load.active.load(Ordering::Acquire);
    let admitted = load.admitted.load(Ordering::Acquire);
    Json(json!({
        "status": "ok",
        "model": app.name,
        "slots": load.parallel,
        "active": active,
        "waiting": admitted.saturating_sub(active),
        "largest_batch": load.largest_batch.load(Ordering::Acquire),
    }))
    .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint at {}", uri.path()),
    )
}

async fn not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

async fn generate(
    app: Arc<App>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        status => ApiError::new(status, format!("cannot read the body: {}", e.body_text())),
    })?;
    let request = request::parse(&body, endpoint)?;
    let prompt = tokenize(&app, request.prompt).await?;
    let max_tokens = budget(app.ctx, prompt.len(), request.max_tokens, endpoint)?;
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    let (events, receiver) = unbounded_channel();
    app.scheduler.submit(Job {
        prompt,
        max_tokens,
        stop: request.stop,
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed.unwrap_or_else(|| fresh_seed(n)),
        events,
    })?;
    let answer = Answer {
        endpoint,
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-{}-{n}", app.started),
            Endpoint::Completion => format!("cmpl-{}-{n}", app.started),
        },
        created: now(),
        model: app.name.clone(),
    };
    if request.stream {
        Ok(stream(answer, request.include_usage, receiver))
    } else {
        whole(answer, receiver).await
    }
}

/// The prompt's token ids. Off the async threads: a chat template may
/// take a while to render.
async fn tokenize(app: &App, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
    let model = app.model.clone();
    let (param, result) = tokio::task::spawn_blocking(move || match prompt {
        Prompt::Chat(messages) => (Endpoint::Chat, model.encode_chat(&messages)),
        Prompt::Text(text) => (Endpoint::Completion, model.encode_prompt(&text, false)),
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    result.map_err(|e| ApiError::invalid(param.prompt_field(), e.to_string()))
}

/// How many tokens a request may generate: `max_tokens`, or the rest of
/// the context; the prompt and the completion must fit in the context.
fn budget(
    ctx: usize,
    prompt: usize,
    max_tokens: Option<usize>,
    endpoint: Endpoint,
) -> Result<usize, ApiError> {
    if prompt >= ctx {
        return Err(ApiError::invalid(
            endpoint.prompt_field(),
            format!(
                "the prompt has {prompt} tokens; the context holds {ctx}, leaving none to generate"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    match max_tokens {
        None => Ok(ctx - prompt),
        Some(n) if prompt + n <= ctx => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "max_tokens",
            format!(
                "max_tokens {n} and the prompt's {prompt} tokens exceed the context of {ctx} tokens (at most {} can be generated)",
                ctx - prompt
            ),
        )
        .with_code("context_length_exceeded")),
    }
}

/// Waits for the whole completion. If the client leaves, this future is
/// dropped with the receiver, and the scheduler frees the slot.
async fn whole(answer: Answer, mut events: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done(finish) => return Ok(Json(answer.complete(&text, &finish)).into_response()),
            Event::Failed(message) => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message))
            }
        }
    }
    Err(worker_gone())
}

/// The completion as server-sent events in OpenAI's chunk format, ending
/// with `data: [DONE]`. A client that leaves drops the stream and with it
/// the receiver, which the scheduler sees as a closed channel.
fn stream(answer: Answer, include_usage: bool, events: UnboundedReceiver<Event>) -> Response {
    struct Sending {
        answer: Answer,
        events: UnboundedReceiver<Event>,
        started: bool,
        over: bool,
    }
    let start = Sending {
        answer,
        events,
        started: false,
        over: false,
    };
    let chunks = stream::unfold(start, move |mut s| async move {
        if s.over {
            return None;
        }
        if !s.started {
            s.started = true;
            if s.answer.endpoint == Endpoint::Chat {
                let role = data(&s.answer.role_chunk());
                return Some((vec![role], s));
            }
        }
        let (mut out, over) = match s.events.recv().await {
            Some(Event::Text(piece)) => (vec![data(&s.answer.chunk(&piece, None))], false),
            Some(Event::Done(finish)) => {
                let mut out = vec![data(&s.answer.chunk("", Some(&finish)))];
                if include_usage {
                    out.push(data(&s.answer.usage_chunk(&finish)));
                }
                (out, true)
            }
            Some(Event::Failed(message)) => {
                let error = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message);
                (vec![data(&error.body())], true)
            }
            None => (vec![data(&worker_gone().body())], true),
        };
        if over {
            s.over = true;
            out.push(sse::Event::default().data("[DONE]"));
        }
        Some((out, s))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(chunks).into_response()
}

fn data(value: &serde_json::Value) -> sse::Event {
    sse::Event::default().data(value.to_string())
}

fn worker_gone() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the generation worker stopped",
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A seed for a request that names none: different for every request.
fn fresh_seed(request: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (request << 32) ^ nanos
}
