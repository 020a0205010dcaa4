//! The JSON OpenAI's clients read back: whole completions, stream chunks
//! and the model list.

use serde_json::{json, Value};

use super::request::Endpoint;
use super::scheduler::Finish;

/// What every answer to one request shares.
pub struct Answer {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// A whole (not streamed) completion.
    pub fn complete(&self, text: &str, finish: &Finish) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.reason,
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.reason,
            }),
        };
        let mut body = self.envelope(false, json!([choice]));
        body["usage"] = usage(finish);
        body
    }

    /// A chat stream's first chunk: the role, before any text.
    pub fn role_chunk(&self) -> Value {
        let delta = json!({"role": "assistant", "content": ""});
        self.envelope(
            true,
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
        )
    }

    /// A stream chunk: text, or (with `finish`) the finish reason.
    pub fn chunk(&self, text: &str, finish: Option<&Finish>) -> Value {
        let reason = finish.map(|f| f.reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match finish {
                    Some(_) => json!({}),
                    None => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason})
            }
            Endpoint::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason})
            }
        };
        self.envelope(true, json!([choice]))
    }

    /// The chunk after the last one when `stream_options.include_usage`
    /// asks for it: no choices, the token counts.
    pub fn usage_chunk(&self, finish: &Finish) -> Value {
        let mut body = self.envelope(true, json!([]));
        body["usage"] = usage(finish);
        body
    }
}

fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    })
}

pub fn models(name: &str, created: u64) -> Value {
    json!({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "fairyc"}],
    })
}
