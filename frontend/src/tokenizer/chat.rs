//! Chat templates: the Jinja template shipped with a model, rendered with
//! `minijinja` the way Hugging Face's `apply_chat_template` renders it.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value};

use super::TokenizerError;

/// ChatML, used when a model ships no chat template.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The most minijinja instructions one rendering may run: ample for real
/// templates on long conversations.
const TEMPLATE_FUEL: u64 = 50_000_000;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"`, ...
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders `template` with the variables Hugging Face provides: `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`.
pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, TokenizerError> {
    let err = |e: Error| TokenizerError::ChatTemplate(e.to_string());
    let mut env = Environment::new();
    // A template comes from the model file: bound the work it may do, so a
    // hostile one (`range` loops in loops) ends with an error, not a hang.
    env.set_fuel(Some(TEMPLATE_FUEL));
    // Hugging Face renders with trim_blocks and lstrip_blocks.
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(err)?,
    );
    // Python string/dict methods (`.strip()`, `.items()`, ...) used by templates.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });

    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_pairs([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    let mut ctx = vec![
        ("messages", Value::from(messages)),
        ("add_generation_prompt", Value::from(add_generation_prompt)),
    ];
    // Absent special tokens stay undefined, as with Hugging Face.
    if let Some(bos) = bos_token {
        ctx.push(("bos_token", Value::from(bos)));
    }
    if let Some(eos) = eos_token {
        ctx.push(("eos_token", Value::from(eos)));
    }
    env.render_str(template, Value::from_pairs(ctx))
        .map_err(err)
}
