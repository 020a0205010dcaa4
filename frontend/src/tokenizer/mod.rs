//! Tokenizers and chat templates.
//!
//! A [`Tokenizer`] is built either from the vocabulary stored in a GGUF file
//! ([`GgufVocab`], plain data filled in by the GGUF reader) or from a Hugging
//! Face `tokenizer.json` (+ optional `tokenizer_config.json`). The BPE work is
//! done by the `tokenizers` crate; chat templates are rendered with
//! `minijinja`, which only interprets the template language and cannot run
//! code from the model file.

mod chat;
mod gguf_vocab;
mod stream;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

pub use chat::{ChatMessage, DEFAULT_CHAT_TEMPLATE};
pub use gguf_vocab::GgufVocab;
pub use stream::DecodeStream;

/// Everything that can go wrong while building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer kind this crate cannot build.
    #[error(
        "unsupported tokenizer model `{0}` in GGUF key tokenizer.ggml.model: \
         only \"gpt2\" (byte-level BPE) is supported"
    )]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    #[error(
        "unknown pre-tokenizer `{pre}` in GGUF key tokenizer.ggml.pre; supported: {}",
        gguf_vocab::supported_pre()
    )]
    UnknownPre {
        /// The value found in the file.
        pre: String,
    },
    /// A GGUF `tokenizer.*` value is inconsistent or malformed.
    #[error("invalid GGUF vocabulary, key {key}: {msg}")]
    InvalidVocab {
        /// The GGUF metadata key at fault.
        key: &'static str,
        /// What was expected.
        msg: String,
    },
    /// A tokenizer file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tokenizer file was read but its content is not what was expected.
    #[error("invalid {}: {msg}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What was expected.
        msg: String,
    },
    /// A token id does not exist in the vocabulary.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// Number of ids in the vocabulary.
        vocab_size: usize,
    },
    /// The `tokenizers` crate failed while encoding or decoding.
    #[error("{op} failed: {msg}")]
    Backend {
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The backend's message.
        msg: String,
    },
    /// The chat template failed to parse or render (including `raise_exception`).
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// Token texts that llama.cpp treats as end-of-generation (`llama-vocab.cpp`,
/// `special_eog_ids`), besides the EOS id itself.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// A text tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    /// Matches special tokens written in the text (`parse_special = true`).
    with_special: tokenizers::Tokenizer,
    /// Same tokenizer, but special tokens in the text are tokenized as plain
    /// text. `tokenizers` keeps this as mutable state, so a second copy keeps
    /// `encode` usable through `&self`.
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    special: BTreeSet<u32>,
    eog: BTreeSet<u32>,
    chat_template: Option<String>,
    /// Ids, special tokens included: `tokenizers` counts them by building
    /// the whole vocabulary map, which every `decode` (and so every
    /// streamed token) would pay for.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Special-token metadata that accompanies a `tokenizers::Tokenizer`.
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Builds a tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.
    ///
    /// Only byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) are
    /// supported; the pre-tokenizer follows llama.cpp's choice for
    /// `tokenizer.ggml.pre` (`smollm`, `default`, `gpt-2`, `llama-bpe`,
    /// `qwen2` and their aliases; an unknown value is an error that lists them).
    pub fn from_gguf_vocab(vocab: GgufVocab) -> Result<Self, TokenizerError> {
        let built = gguf_vocab::build(vocab)?;
        Ok(Self::assemble(built.tokenizer, built.specials))
    }

    /// Builds a tokenizer from a Hugging Face `tokenizer.json`.
    ///
    /// When `tokenizer_config_json` is given, its `chat_template`,
    /// `bos_token`, `eos_token`, `pad_token` and `add_bos_token` are used. Without
    /// `add_bos_token`, BOS is considered added when the `tokenizer.json`
    /// post-processor adds it.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config_json: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let config = match tokenizer_config_json {
            Some(path) => Some((read(path)?, path)),
            None => None,
        };
        Self::from_hf_bytes(
            &read(tokenizer_json)?,
            tokenizer_json,
            config
                .as_ref()
                .map(|(bytes, path)| (bytes.as_slice(), *path)),
        )
    }

    /// Like [`Tokenizer::from_hf_files`], from the files' contents; `origin`
    /// and the config's path name them in errors.
    pub fn from_hf_bytes(
        tokenizer_json: &[u8],
        origin: &Path,
        tokenizer_config_json: Option<(&[u8], &Path)>,
    ) -> Result<Self, TokenizerError> {
        let invalid = |msg: String| TokenizerError::InvalidFile {
            path: origin.to_path_buf(),
            msg,
        };
        // tokenizers 0.23 panics (`expect("Helper")` and the like) on some
        // malformed sections, e.g. a `decoder` object with a syntax error,
        // instead of returning an error.
        let tokenizer = quietly(|| tokenizers::Tokenizer::from_bytes(tokenizer_json))
            .ok_or_else(|| {
                invalid(
                    "malformed JSON or an invalid component (the tokenizers library rejected it)"
                        .into(),
                )
            })?
            .map_err(|e| invalid(e.to_string()))?;
        let specials = match tokenizer_config_json {
            Some((bytes, path)) => read_tokenizer_config(bytes, path, &tokenizer)?,
            None => Specials {
                bos: None,
                eos: None,
                pad: None,
                add_bos: false,
                chat_template: None,
            },
        };
        Ok(Self::assemble(tokenizer, specials))
    }

    /// This tokenizer as the contents of a Hugging Face `tokenizer.json` and
    /// `tokenizer_config.json`, which [`Tokenizer::from_hf_bytes`] reads
    /// back to the same tokenizer (how compiled artifacts carry it).
    pub fn to_hf_json(&self) -> Result<(String, String), TokenizerError> {
        let json = self
            .with_special
            .to_string(false)
            .map_err(|e| TokenizerError::Backend {
                op: "serialize",
                msg: e.to_string(),
            })?;
        let text = |id: Option<u32>| id.and_then(|i| self.with_special.id_to_token(i));
        let config = serde_json::json!({
            "bos_token": text(self.bos),
            "eos_token": text(self.eos),
            "pad_token": text(self.pad),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        });
        Ok((json, config.to_string()))
    }

    fn assemble(mut with_special: tokenizers::Tokenizer, specials: Specials) -> Self {
        // Any padding/truncation from a tokenizer.json would silently change ids.
        with_special.with_padding(None);
        // Infallible: `with_truncation(None)` only validates a given config.
        let _ = with_special.with_truncation(None);
        with_special.set_encode_special_tokens(false);
        let mut plain = with_special.clone();
        plain.set_encode_special_tokens(true);

        let added = with_special.get_added_tokens_decoder();
        let special: BTreeSet<u32> = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let eog = EOG_TEXTS
            .iter()
            .filter_map(|t| with_special.token_to_id(t))
            .chain(specials.eos)
            .collect();
        let vocab_size = with_special.get_vocab_size(true);
        Self {
            vocab_size,
            with_special,
            plain,
            bos: specials.bos,
            eos: specials.eos,
            pad: specials.pad,
            add_bos: specials.add_bos,
            special,
            eog,
            chat_template: specials.chat_template,
        }
    }

    /// Tokenizes `text`. With `parse_special`, special tokens written in the
    /// text (e.g. `<|im_start|>`) become their ids; without it they are
    /// tokenized as ordinary text. BOS is never added: see [`Self::add_bos`].
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tok = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tok
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Backend {
                op: "encode",
                msg: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Turns ids back into text; special tokens are rendered as their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TokenizerError::IdOutOfRange { id, vocab_size });
        }
        self.with_special
            .decode(ids, false)
            .map_err(|e| TokenizerError::Backend {
                op: "decode",
                msg: e.to_string(),
            })
    }

    /// Starts an incremental decoder for generated ids; see [`DecodeStream`].
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream::new(self)
    }

    /// Renders `messages` with the model's chat template, or with
    /// [`DEFAULT_CHAT_TEMPLATE`] (ChatML) when the model has none.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let bos = self.bos.and_then(|id| self.with_special.id_to_token(id));
        let eos = self.eos.and_then(|id| self.with_special.id_to_token(id));
        chat::render(
            self.chat_template
                .as_deref()
                .unwrap_or(DEFAULT_CHAT_TEMPLATE),
            messages,
            add_generation_prompt,
            bos.as_deref(),
            eos.as_deref(),
        )
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Padding id.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the model expects BOS in front of a prompt (the caller adds it).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Id of a token given its text (in the vocabulary's own spelling, e.g.
    /// `Ġthe` for byte-level BPE).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.with_special.token_to_id(token)
    }

    /// Whether `id` is a special (control) token such as `<|im_start|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Whether generating `id` ends the turn: EOS and the end-of-turn tokens
    /// llama.cpp recognises by text (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }
}

/// Reads `chat_template`, `bos_token`, `eos_token`, `pad_token` and `add_bos_token` from a
/// `tokenizer_config.json`.
fn read_tokenizer_config(
    bytes: &[u8],
    path: &Path,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<Specials, TokenizerError> {
    let invalid = |msg: String| TokenizerError::InvalidFile {
        path: path.to_path_buf(),
        msg,
    };
    let config: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let config = config
        .as_object()
        .ok_or_else(|| invalid("expected a JSON object at the top level".into()))?;

    let special_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
        // Either "<s>" or {"content": "<s>", ...} (a serialized AddedToken).
        let text = match config.get(key) {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(v) => v.get("content").and_then(|c| c.as_str()).ok_or_else(|| {
                invalid(format!("`{key}` must be a string or {{\"content\": ...}}"))
            })?,
        };
        tokenizer.token_to_id(text).map(Some).ok_or_else(|| {
            invalid(format!(
                "`{key}` is {text:?}, which is not in the vocabulary"
            ))
        })
    };
    let bos = special_id("bos_token")?;
    let eos = special_id("eos_token")?;
    let pad = special_id("pad_token")?;

    let add_bos = match config.get("add_bos_token") {
        None | Some(serde_json::Value::Null) => {
            // No explicit setting: BOS is expected when the post-processor adds it.
            let probe = tokenizer
                .encode_fast("", true)
                .map_err(|e| TokenizerError::Backend {
                    op: "encode",
                    msg: e.to_string(),
                })?;
            bos.is_some() && probe.get_ids().first().copied() == bos
        }
        Some(serde_json::Value::Bool(true)) if bos.is_none() => {
            return Err(invalid(
                "`add_bos_token` is true but `bos_token` is not set".into(),
            ))
        }
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("`add_bos_token` must be a boolean".into()))?,
    };

    let chat_template = match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        // Newer files may hold several named templates; "default" is the chat one.
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_owned),
        Some(_) => {
            return Err(invalid(
                "`chat_template` must be a string or a list of {\"name\", \"template\"}".into(),
            ))
        }
    };

    Ok(Specials {
        bos,
        eos,
        pad,
        add_bos,
        chat_template,
    })
}

/// Runs `f`, returning `None` if it panics, without printing the panic:
/// for libraries that panic on malformed input they were asked to parse.
/// Panics elsewhere, on any thread, still reach the previous panic hook.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.ok()
}
