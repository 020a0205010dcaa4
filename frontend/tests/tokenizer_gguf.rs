//! Tokenizers built from hand-made GGUF vocabularies (`tokenizer.ggml.*`).

use fairyc_frontend::tokenizer::{ChatMessage, GgufVocab, Tokenizer, TokenizerError};

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
/// the others map to U+0100, U+0101, ... in byte order.
fn byte_symbols() -> Vec<char> {
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            if printable {
                char::from_u32(b).unwrap()
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap()
            }
        })
        .collect()
}

const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Tokens: the 256 byte symbols (id = byte), one token per merge result,
/// `extra`, then `<|endoftext|>` (EOS), `<|im_start|>` (BOS), `<|im_end|>`
/// (control) and `<tool>` (user-defined).
fn vocab(pre: &str, merges: &[&str], extra: &[&str]) -> GgufVocab {
    let mut tokens: Vec<String> = byte_symbols().iter().map(char::to_string).collect();
    for m in merges {
        let merged = m.replacen(' ', "", 1);
        if !tokens.contains(&merged) {
            tokens.push(merged);
        }
    }
    tokens.extend(extra.iter().map(|t| t.to_string()));
    let mut types = vec![1; tokens.len()];
    for (text, ty) in [
        ("<|endoftext|>", CONTROL),
        ("<|im_start|>", CONTROL),
        ("<|im_end|>", CONTROL),
        ("<tool>", USER_DEFINED),
    ] {
        tokens.push(text.into());
        types.push(ty);
    }
    let n = tokens.len() as u32;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: merges.iter().map(|m| m.to_string()).collect(),
        bos: Some(n - 3),
        eos: Some(n - 4),
        unk: None,
        pad: Some(n - 4),
        add_bos: None,
        chat_template: None,
    }
}

fn build(v: GgufVocab) -> Tokenizer {
    Tokenizer::from_gguf_vocab(v).expect("valid vocab")
}

fn id(tok: &Tokenizer, text: &str) -> u32 {
    tok.token_to_id(text)
        .unwrap_or_else(|| panic!("{text:?} not in vocab"))
}

fn ids(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts.iter().map(|t| id(tok, t)).collect()
}

const HELLO_MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d",
];

#[test]
fn encode_applies_merges_and_round_trips() {
    let tok = build(vocab("gpt-2", HELLO_MERGES, &[]));
    let got = tok.encode("hello world", false).unwrap();
    assert_eq!(got, ids(&tok, &["hello", "Ġworld"]));
    assert_eq!(tok.decode(&got).unwrap(), "hello world");
    // Bytes with no merge fall back to one token per byte, multi-byte UTF-8 included.
    for text in ["", "hello, wörld! 日本 🎉\n\t  x  ", "\u{0}\u{7f}\u{ff}"] {
        let got = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&got).unwrap(), text);
    }
    assert_eq!(tok.encode("é", false).unwrap(), vec![0xC3, 0xA9]);
}

#[test]
fn merges_apply_in_rank_order() {
    // "abc": with "b c" ranked first the result is a|bc, otherwise ab|c.
    let tok = build(vocab("gpt-2", &["b c", "a b"], &[]));
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["a", "bc"]));
    let tok = build(vocab("gpt-2", &["a b", "b c"], &[]));
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["ab", "c"]));
}

#[test]
fn digits_follow_the_pre_tokenizer() {
    let merges = &["1 2", "12 3", "123 4", "Ġ 1"];
    // smollm: every digit alone, as llama.cpp and SmolLM2's tokenizer.json do.
    let tok = build(vocab("smollm", merges, &[]));
    assert_eq!(
        tok.encode("1234", false).unwrap(),
        ids(&tok, &["1", "2", "3", "4"])
    );
    assert_eq!(
        tok.encode(" 12", false).unwrap(),
        ids(&tok, &["Ġ", "1", "2"])
    );
    // gpt-2: a run of digits is one piece.
    let tok = build(vocab("gpt-2", merges, &[]));
    assert_eq!(tok.encode("1234", false).unwrap(), ids(&tok, &["1234"]));
    assert_eq!(tok.encode(" 12", false).unwrap(), ids(&tok, &["Ġ", "12"]));
    // llama3: at most three digits per piece.
    let tok = build(vocab("llama-bpe", merges, &[]));
    assert_eq!(tok.encode("1234", false).unwrap(), ids(&tok, &["123", "4"]));
    // qwen2: single digits.
    let tok = build(vocab("qwen2", merges, &[]));
    assert_eq!(
        tok.encode("1234", false).unwrap(),
        ids(&tok, &["1", "2", "3", "4"])
    );
}

#[test]
fn llama3_emits_whole_words_that_are_tokens() {
    // llama.cpp's ignore_merges: "xyz" is a token but no merge builds it.
    let tok = build(vocab("llama-bpe", &[], &["xyz"]));
    assert_eq!(tok.encode("xyz", false).unwrap(), ids(&tok, &["xyz"]));
    let tok = build(vocab("gpt-2", &[], &["xyz"]));
    assert_eq!(
        tok.encode("xyz", false).unwrap(),
        ids(&tok, &["x", "y", "z"])
    );
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let tok = build(vocab("smollm", HELLO_MERGES, &[]));
    let im_start = id(&tok, "<|im_start|>");
    let im_end = id(&tok, "<|im_end|>");
    let text = "<|im_start|>hello<|im_end|>";

    let parsed = tok.encode(text, true).unwrap();
    assert_eq!(parsed, vec![im_start, id(&tok, "hello"), im_end]);
    assert!(tok.is_special(im_start) && tok.is_special(im_end));
    assert_eq!(tok.decode(&parsed).unwrap(), text);

    let plain = tok.encode(text, false).unwrap();
    assert!(plain.iter().all(|&i| !tok.is_special(i)), "{plain:?}");
    assert_eq!(&plain[..2], &[b'<' as u32, b'|' as u32]);
    assert_eq!(tok.decode(&plain).unwrap(), text);

    // User-defined tokens are always matched (llama.cpp does the same) and are not special.
    let tool = id(&tok, "<tool>");
    assert_eq!(tok.encode("<tool>", false).unwrap(), vec![tool]);
    assert!(!tok.is_special(tool));
}

#[test]
fn special_ids_and_end_of_generation() {
    let tok = build(vocab("smollm", &[], &[]));
    let (eot, start, end) = (
        id(&tok, "<|endoftext|>"),
        id(&tok, "<|im_start|>"),
        id(&tok, "<|im_end|>"),
    );
    assert_eq!(tok.vocab_size(), 260);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(start), Some(eot), Some(eot))
    );
    assert!(tok.is_eog(eot) && tok.is_eog(end));
    assert!(!tok.is_eog(start) && !tok.is_eog(b'a' as u32));
    assert_eq!(tok.eog_ids().collect::<Vec<_>>(), vec![eot, end]);
}

#[test]
fn add_bos_follows_llama_cpp_defaults() {
    assert!(!build(vocab("smollm", &[], &[])).add_bos());
    assert!(build(vocab("llama-bpe", &[], &[])).add_bos());
    let mut v = vocab("llama-bpe", &[], &[]);
    v.add_bos = Some(false);
    assert!(!build(v).add_bos());
}

#[test]
fn decode_stream_waits_for_whole_characters() {
    let tok = build(vocab("gpt-2", HELLO_MERGES, &[]));
    let mut stream = tok.decode_stream();
    // "é" is C3 A9: two byte tokens.
    assert_eq!(stream.push(0xC3).unwrap(), None);
    assert_eq!(stream.push(0xA9).unwrap().as_deref(), Some("é"));
    assert_eq!(
        stream.push(id(&tok, "Ġworld")).unwrap().as_deref(),
        Some(" world")
    );
    // A four-byte character over four tokens.
    for b in [0xF0, 0x9F, 0x8E] {
        assert_eq!(stream.push(b).unwrap(), None);
    }
    assert_eq!(stream.push(0x89).unwrap().as_deref(), Some("🎉"));
    assert_eq!(
        stream.push(id(&tok, "<|im_end|>")).unwrap().as_deref(),
        Some("<|im_end|>")
    );
    assert_eq!(stream.finish().unwrap(), "");

    // Generation ending inside a character: the rest comes out lossily.
    let mut stream = tok.decode_stream();
    assert_eq!(stream.push(0xE6).unwrap(), None);
    assert_eq!(stream.finish().unwrap(), "\u{FFFD}");

    // Chunks of a longer text add up to the text.
    let text = "hello wörld 日本語 🎉!";
    let mut stream = tok.decode_stream();
    let mut out = String::new();
    for i in tok.encode(text, false).unwrap() {
        out.extend(stream.push(i).unwrap());
    }
    out.push_str(&stream.finish().unwrap());
    assert_eq!(out, text);
}

#[test]
fn decode_rejects_unknown_ids() {
    let tok = build(vocab("gpt-2", &[], &[]));
    let err = tok.decode(&[1, 100_000]).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::IdOutOfRange {
                id: 100_000,
                vocab_size: 260
            }
        ),
        "{err}"
    );
    let mut stream = tok.decode_stream();
    assert_eq!(stream.push(0xC3).unwrap(), None);
    assert!(stream.push(100_000).is_err());
    assert_eq!(stream.push(0xA9).unwrap().as_deref(), Some("é"));
}

/// SmolLM2-135M-Instruct's `tokenizer.chat_template`, verbatim.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn smollm2_chat_template() {
    let mut v = vocab("smollm", &[], &[]);
    v.chat_template = Some(SMOLLM2_TEMPLATE.into());
    let tok = build(v);
    assert_eq!(tok.chat_template(), Some(SMOLLM2_TEMPLATE));

    let user = ChatMessage::new("user", "What is 2+2?");
    let prompt = tok
        .apply_chat_template(std::slice::from_ref(&user), true)
        .unwrap();
    // Byte for byte the prompt of shared/reference/chat.prompt.txt.
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );

    let messages = [
        ChatMessage::new("system", "Be brief."),
        user,
        ChatMessage::new("assistant", "4"),
    ];
    assert_eq!(
        tok.apply_chat_template(&messages, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n"
    );

    let ids = tok.encode(&prompt, true).unwrap();
    assert_eq!(ids[0], id(&tok, "<|im_start|>"));
    assert_eq!(tok.decode(&ids).unwrap(), prompt);
}

fn err_of(v: GgufVocab) -> String {
    Tokenizer::from_gguf_vocab(v).unwrap_err().to_string()
}

#[test]
fn unsupported_model_and_pre_are_named() {
    let mut v = vocab("smollm", &[], &[]);
    v.model = "llama".into();
    let err = err_of(v);
    assert!(
        err.contains("`llama`") && err.contains("tokenizer.ggml.model"),
        "{err}"
    );

    let err = err_of(vocab("no-such-pre", &[], &[]));
    assert!(
        err.contains("`no-such-pre`") && err.contains("tokenizer.ggml.pre"),
        "{err}"
    );
    assert!(err.contains("smollm") && err.contains("qwen2"), "{err}");

    // No `pre` at all means llama.cpp's "default".
    let mut v = vocab("smollm", HELLO_MERGES, &[]);
    v.pre = None;
    let tok = build(v);
    assert_eq!(tok.encode("hello", false).unwrap(), ids(&tok, &["hello"]));
}

/// Spoils one field of a valid vocabulary.
type Spoiler = fn(&mut GgufVocab);

#[test]
fn malformed_vocabularies_name_the_key() {
    let cases: [(&str, Spoiler); 10] = [
        ("tokenizer.ggml.tokens", |v| v.tokens.clear()),
        ("tokenizer.ggml.tokens", |v| {
            v.tokens[1] = v.tokens[0].clone()
        }),
        ("tokenizer.ggml.token_type", |v| {
            v.token_types = Some(vec![1])
        }),
        ("tokenizer.ggml.bos_token_id", |v| v.bos = Some(9999)),
        ("tokenizer.ggml.eos_token_id", |v| v.eos = Some(9999)),
        ("tokenizer.ggml.unknown_token_id", |v| v.unk = Some(9999)),
        ("tokenizer.ggml.padding_token_id", |v| v.pad = Some(9999)),
        ("tokenizer.ggml.merges", |v| v.merges.push("nospace".into())),
        ("tokenizer.ggml.merges", |v| v.merges.push("q zz".into())),
        ("tokenizer.ggml.add_bos_token", |v| {
            v.add_bos = Some(true);
            v.bos = None;
        }),
    ];
    for (key, spoil) in cases {
        let mut v = vocab("gpt-2", &["a b"], &[]);
        spoil(&mut v);
        let err = err_of(v);
        assert!(err.contains(key), "expected {key} in: {err}");
    }
}

#[test]
fn decode_stream_does_not_stall_on_stray_bytes() {
    const MAX_HELD: usize = fairyc_frontend::tokenizer::DecodeStream::MAX_HELD;
    let tok = build(vocab("gpt-2", HELLO_MERGES, &[]));
    let mut stream = tok.decode_stream();
    // Lead bytes that no continuation byte follows: every prefix ends in
    // U+FFFD, so waiting for whole characters would wait forever.
    let out: Vec<Option<String>> = (0..20).map(|_| stream.push(0xE6).unwrap()).collect();
    let emitted: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_some()).collect();
    // Held back for at most MAX_HELD ids at a time.
    assert_eq!(emitted.first(), Some(&(MAX_HELD - 1)), "{out:?}");
    for w in emitted.windows(2) {
        assert_eq!(w[1] - w[0], MAX_HELD, "{out:?}");
    }
    let text: String = out.into_iter().flatten().collect::<String>() + &stream.finish().unwrap();
    assert_eq!(text, "\u{FFFD}".repeat(20));
    // The stream goes on normally afterwards.
    let mut stream = tok.decode_stream();
    for _ in 0..MAX_HELD {
        stream.push(0xE6).unwrap();
    }
    assert_eq!(
        stream.push(id(&tok, "Ġworld")).unwrap().as_deref(),
        Some(" world")
    );
}
