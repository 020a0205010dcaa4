//! Byte-level BPE tokenizers from a GGUF file's `tokenizer.ggml.*` metadata,
//! matching llama.cpp's `src/llama-vocab.cpp`.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::TokenizerError;

/// Vocabulary as stored in a GGUF file's `tokenizer.*` metadata. Each field
/// names the key it comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`; `None` (key absent) means `"default"`, as in llama.cpp.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in id order, in GPT-2 byte-to-unicode spelling.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte. `None`: all normal.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`, `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`; only checked: as in llama.cpp, a
    /// byte without a token (e.g. some control bytes in SmolLM2) is dropped.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; `None` (key absent) means llama.cpp's
    /// default for `pre` (true only for the llama3 family).
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// llama.cpp `token_type` values that change how a token is matched.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// GPT-2's split regex, as in llama.cpp.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's regex with llama.cpp's case-insensitive contractions spelled out.
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex: Llama 3's with single digits.
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes for a family of `tokenizer.ggml.pre` values.
struct PreSpec {
    names: &'static [&'static str],
    /// Applied in turn, each to the pieces left by the previous one; matches
    /// and the text between them both become pieces (llama.cpp's
    /// `unicode_regex_split`).
    regexes: &'static [&'static str],
    /// A piece that is already a token is emitted whole (llama.cpp `ignore_merges`).
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the GGUF does not say.
    add_bos: bool,
}

/// The `pre` families supported, from the `switch` in llama.cpp's
/// `llm_tokenizer_bpe` and the name mapping in `llama_vocab::impl::load`.
const PRE_SPECS: &[PreSpec] = &[
    PreSpec {
        names: &["default"],
        regexes: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_RE,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreSpec {
        names: &["gpt-2", "phi-2", "mpt", "olmo"],
        regexes: &[GPT2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreSpec {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3"],
        regexes: &[LLAMA3_RE],
        ignore_merges: true,
        add_bos: true,
    },
    PreSpec {
        names: &["dbrx", "smaug-bpe"],
        regexes: &[LLAMA3_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreSpec {
        names: &["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"],
        regexes: &[QWEN2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreSpec {
        // Every digit on its own, then GPT-2's regex. Same as SmolLM2's
        // tokenizer.json: Sequence[Digits(individual), ByteLevel(use_regex)].
        names: &["smollm", "starcoder", "refact", "codeshell"],
        regexes: &[r"\p{N}", GPT2_RE],
        ignore_merges: false,
        add_bos: false,
    },
];

/// All supported `tokenizer.ggml.pre` values, for error messages.
pub(super) fn supported_pre() -> String {
    PRE_SPECS
        .iter()
        .flat_map(|s| s.names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `tokenizers::Tokenizer` with the special-token metadata of the vocab.
pub(super) struct Built {
    pub tokenizer: tokenizers::Tokenizer,
    pub specials: super::Specials,
}

/// Validates `v` and builds the tokenizer.
pub(super) fn build(v: GgufVocab) -> Result<Built, TokenizerError> {
    if v.model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(v.model));
    }
    let pre = v.pre.as_deref().unwrap_or("default");
    let spec = PRE_SPECS
        .iter()
        .find(|s| s.names.contains(&pre))
        .ok_or_else(|| TokenizerError::UnknownPre {
            pre: pre.to_owned(),
        })?;

    let n = v.tokens.len();
    if n == 0 || u32::try_from(n).is_err() {
        return Err(invalid(
            "tokenizer.ggml.tokens",
            format!("expected 1 to 2^32-1 tokens, found {n}"),
        ));
    }
    if let Some(types) = &v.token_types {
        if types.len() != n {
            return Err(invalid(
                "tokenizer.ggml.token_type",
                format!("expected one entry per token ({n}), found {}", types.len()),
            ));
        }
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", v.bos),
        ("tokenizer.ggml.eos_token_id", v.eos),
        ("tokenizer.ggml.unknown_token_id", v.unk),
        ("tokenizer.ggml.padding_token_id", v.pad),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= n) {
            return Err(invalid(key, format!("id {id} is not below the {n} tokens")));
        }
    }
    let add_bos = v.add_bos.unwrap_or(spec.add_bos);
    if add_bos && v.bos.is_none() {
        return Err(invalid(
            "tokenizer.ggml.add_bos_token",
            "BOS is to be added but tokenizer.ggml.bos_token_id is not set".into(),
        ));
    }

    let tokens: Vec<String> = v
        .tokens
        .into_iter()
        .enumerate()
        // llama.cpp renames empty tokens the same way, so ids stay aligned.
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t
            }
        })
        .collect();
    let mut vocab = Vocab::with_capacity(n);
    for (id, t) in (0u32..).zip(&tokens) {
        if let Some(first) = vocab.insert(t.clone(), id) {
            return Err(invalid(
                "tokenizer.ggml.tokens",
                format!("token {t:?} appears twice (ids {first} and {id})"),
            ));
        }
    }
    let merges = v
        .merges
        .iter()
        .enumerate()
        .map(|(i, m)| split_merge(m).ok_or(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|i| {
            invalid(
                "tokenizer.ggml.merges",
                format!("entry {i} ({:?}) is not \"left right\"", v.merges[i]),
            )
        })?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| invalid("tokenizer.ggml.merges", e.to_string()))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let mut pre_tokenizers = spec
        .regexes
        .iter()
        .map(|re| {
            Split::new(
                SplitPattern::Regex((*re).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tokenizer.ggml.pre", format!("bad regex for {pre:?}: {e}")))?;
    // The regexes above did the splitting; ByteLevel only maps bytes to symbols.
    pre_tokenizers.push(ByteLevel::new(false, false, false).into());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pre_tokenizers)));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    // llama.cpp matches control, unknown and user-defined tokens in the text
    // before BPE; control and unknown only when parsing special tokens.
    if let Some(types) = &v.token_types {
        let added = |kind: i32| {
            types
                .iter()
                .zip(&tokens)
                .filter(move |(&t, _)| t == kind)
                .map(|(_, text)| text.clone())
        };
        let special = added(TYPE_CONTROL)
            .chain(added(TYPE_UNKNOWN))
            .map(|t| AddedToken::from(t, true).normalized(false));
        let user = added(TYPE_USER_DEFINED).map(|t| AddedToken::from(t, false).normalized(false));
        tokenizer
            .add_special_tokens(special.collect::<Vec<_>>())
            .and_then(|_| tokenizer.add_tokens(user.collect::<Vec<_>>()))
            .map_err(|e| invalid("tokenizer.ggml.token_type", e.to_string()))?;
    }

    Ok(Built {
        tokenizer,
        specials: super::Specials {
            bos: v.bos,
            eos: v.eos,
            pad: v.pad,
            add_bos,
            chat_template: v.chat_template,
        },
    })
}

fn invalid(key: &'static str, msg: String) -> TokenizerError {
    TokenizerError::InvalidVocab { key, msg }
}

/// Splits a merge at its first space after the first byte, as llama.cpp
/// does, so that a left part starting with a space still works.
fn split_merge(m: &str) -> Option<(String, String)> {
    let pos = m.bytes().skip(1).position(|b| b == b' ')? + 1;
    let (left, right) = (&m[..pos], &m[pos + 1..]);
    (!right.is_empty()).then(|| (left.to_owned(), right.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn every_pre_regex_compiles() {
        for spec in PRE_SPECS {
            for re in spec.regexes {
                assert!(
                    Split::new(
                        SplitPattern::Regex((*re).to_owned()),
                        SplitDelimiterBehavior::Isolated,
                        false
                    )
                    .is_ok(),
                    "{re}"
                );
            }
        }
    }

    #[test]
    fn pre_names_are_unique() {
        let mut seen = HashMap::new();
        for (i, spec) in PRE_SPECS.iter().enumerate() {
            for name in spec.names {
                assert_eq!(seen.insert(*name, i), None, "{name}");
            }
        }
    }

    #[test]
    fn merges_split_like_llama_cpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  x"), Some((" ".into(), "x".into())));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
        assert_eq!(split_merge("é b"), Some(("é".into(), "b".into())));
    }
}
