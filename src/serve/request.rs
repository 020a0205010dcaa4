//! The JSON bodies of `/v1/chat/completions` and `/v1/completions`, read
//! field by field so that an error names the field at fault.

use fairyc_frontend::tokenizer::ChatMessage;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Which endpoint a request came to: it decides the prompt field and the
/// shape of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    /// The request field that holds the prompt.
    pub fn prompt_field(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completion => "prompt",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
}

/// A generation request, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    /// `None`: until the context is full or the model ends.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
}

/// OpenAI accepts at most four stop sequences.
const MAX_STOPS: usize = 4;

/// Options OpenAI defines that this server does not implement; a request
/// that asks for them is refused rather than answered as if it had not.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("tools", "tool calls are not supported"),
    ("functions", "function calls are not supported"),
    ("logprobs", "log probabilities are not supported"),
    ("echo", "echo is not supported"),
    ("suffix", "suffix (insertion) is not supported"),
];

pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
        .with_code("invalid_json")
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    for &(name, why) in UNSUPPORTED {
        if present(&fields, name) {
            return Err(ApiError::invalid(name, format!("`{name}`: {why}")));
        }
    }
    if let Some(n) = opt_u64(&fields, "n")? {
        if n != 1 {
            return Err(ApiError::invalid("n", format!("`n` must be 1, got {n}")));
        }
    }
    if let Some(format) = fields.get("response_format").filter(|v| !v.is_null()) {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                "only `response_format: {\"type\": \"text\"}` is supported",
            ));
        }
    }
    if let Some(model) = fields.get("model") {
        if !model.is_string() && !model.is_null() {
            return Err(ApiError::invalid("model", "`model` must be a string"));
        }
    }
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(&fields)?),
        Endpoint::Completion => Prompt::Text(prompt(&fields)?),
    };
    // The newer name wins, as in OpenAI's API.
    let max_tokens = match opt_u64(&fields, "max_completion_tokens")? {
        Some(n) => Some(("max_completion_tokens", n)),
        None => opt_u64(&fields, "max_tokens")?.map(|n| ("max_tokens", n)),
    };
    if let Some((name, 0)) = max_tokens {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be at least 1"),
        ));
    }
    let temperature = opt_f32(&fields, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = opt_f32(&fields, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    let seed = match fields.get("seed") {
        None | Some(Value::Null) => None,
        // Negative seeds are valid in OpenAI's API: keep their bits.
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer"))?,
        ),
    };
    let stream = opt_bool(&fields, "stream")?.unwrap_or(false);
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => opt_bool(options, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    Ok(Request {
        prompt,
        max_tokens: max_tokens.map(|(_, n)| n as usize),
        stop: stops(&fields)?,
        temperature,
        top_p,
        seed,
        stream,
        include_usage,
    })
}

/// Whether an option is set to something other than its "off" value.
fn present(fields: &Map<String, Value>, name: &str) -> bool {
    match fields.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(_) => true,
    }
}

fn messages(fields: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |msg: String| ApiError::invalid("messages", msg);
    let list = match fields.get("messages") {
        None => return Err(bad("`messages` is required".into())),
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(_) => return Err(bad("`messages` must be a non-empty array".into())),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(format!("messages[{i}].role must be a non-empty string")))?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                // Content parts: only text ones.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                        _ => Err(bad(format!(
                            "messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                        ))),
                    })
                    .collect::<Result<String, _>>()?,
                Some(_) => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or an array of text parts"
                    )))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn prompt(fields: &Map<String, Value>) -> Result<String, ApiError> {
    let bad = |msg: &str| ApiError::invalid("prompt", msg);
    match fields.get("prompt") {
        None => Err(bad("`prompt` is required")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(list)) => match list.as_slice() {
            [Value::String(s)] => Ok(s.clone()),
            _ => Err(bad("`prompt` must be a string or an array of one string")),
        },
        Some(_) => Err(bad("`prompt` must be a string")),
    }
}

fn stops(fields: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = |msg: &str| ApiError::invalid("stop", msg);
    let stops: Vec<String> = match fields.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`stop` must be a string or an array of strings"))?,
        Some(_) => return Err(bad("`stop` must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOPS {
        return Err(bad("`stop` takes at most 4 sequences"));
    }
    if stops.iter().any(String::is_empty) {
        return Err(bad("a stop sequence must not be empty"));
    }
    Ok(stops)
}

fn opt_f32(fields: &Map<String, Value>, name: &'static str) -> Result<Option<f32>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a number"))),
    }
}

fn opt_u64(fields: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(name, format!("`{name}` must be a non-negative integer"))
        }),
    }
}

fn opt_bool(fields: &Map<String, Value>, name: &'static str) -> Result<Option<bool>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("`{name}` must be true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Request, ApiError> {
        parse(body.as_bytes(), Endpoint::Chat)
    }

    #[test]
    fn reads_a_chat_request_with_defaults() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"\n"}"#)
            .unwrap();
        assert_eq!(r.prompt, Prompt::Chat(vec![ChatMessage::new("user", "hi")]));
        assert_eq!((r.temperature, r.top_p, r.max_tokens), (1.0, 1.0, None));
        assert_eq!(r.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn names_the_field_at_fault() {
        let param = |body: &str| chat(body).unwrap_err().param;
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(param("{}"), Some("messages"));
        assert_eq!(
            param(&format!("{{{msgs},\"temperature\":-1}}")),
            Some("temperature")
        );
        assert_eq!(param(&format!("{{{msgs},\"top_p\":0}}")), Some("top_p"));
        assert_eq!(
            param(&format!("{{{msgs},\"max_tokens\":\"9\"}}")),
            Some("max_tokens")
        );
        assert_eq!(param(&format!("{{{msgs},\"n\":2}}")), Some("n"));
        assert_eq!(param(&format!("{{{msgs},\"stop\":[\"\"]}}")), Some("stop"));
        assert_eq!(
            param(&format!("{{{msgs},\"tools\":[{{}}]}}")),
            Some("tools")
        );
        assert!(chat("{\"messages\":")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }
}
