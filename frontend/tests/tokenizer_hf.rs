//! Tokenizers from Hugging Face `tokenizer.json` / `tokenizer_config.json`
//! files written by the tests, and chat-template rendering.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fairyc_frontend::tokenizer::{ChatMessage, Tokenizer, TokenizerError, DEFAULT_CHAT_TEMPLATE};
use serde_json::{json, Value};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        // Tests run in parallel threads: a counter keeps their directories apart.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "fairyc-tokenizer-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, file: &str, content: &Value) -> PathBuf {
        let path = self.0.join(file);
        fs::write(&path, content.to_string()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn added(id: u32, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

/// A SmolLM2-shaped byte-level BPE `tokenizer.json` with a tiny vocabulary.
fn tokenizer_json(post_processor: Value) -> Value {
    let vocab = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "h",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        "1",
        "2",
        "he",
        "ll",
        "hell",
        "hello",
        "Ġw",
        "or",
        "Ġwor",
        "Ġworl",
        "Ġworld",
        "Ċ",
    ];
    let vocab: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<|endoftext|>"), added(1, "<|im_start|>"), added(2, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab,
                  "merges": ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]}
    })
}

/// A post-processor that puts `<|im_start|>` (id 1) in front, like Llama 3's.
fn bos_post_processor() -> Value {
    json!({"type": "TemplateProcessing",
           "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
           "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}})
}

fn load(dir: &TempDir, config: Option<Value>) -> Result<Tokenizer, TokenizerError> {
    let tok = dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    let cfg = config.map(|c| dir.write("tokenizer_config.json", &c));
    Tokenizer::from_hf_files(&tok, cfg.as_deref())
}

#[test]
fn tokenizer_json_alone() {
    let dir = TempDir::new("alone");
    let tok = load(&dir, None).unwrap();
    assert_eq!(tok.vocab_size(), 23);
    assert_eq!(
        tok.encode("hello world 12", false).unwrap(),
        vec![16, 21, 7, 11, 12]
    );
    let text = "<|im_start|>hello<|im_end|>";
    assert_eq!(tok.encode(text, true).unwrap(), vec![1, 16, 2]);
    assert!(!tok.encode(text, false).unwrap().contains(&1));
    assert_eq!(
        tok.decode(&[1, 16, 21, 2]).unwrap(),
        "<|im_start|>hello world<|im_end|>"
    );
    assert!(tok.is_special(0) && tok.is_special(2) && !tok.is_special(16));
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.add_bos()),
        (None, None, false)
    );
    // End-of-generation tokens are known by name even without a config.
    assert!(tok.is_eog(0) && tok.is_eog(2) && !tok.is_eog(1));
    assert_eq!(tok.chat_template(), None);
}

#[test]
fn tokenizer_config_supplies_specials_and_template() {
    let dir = TempDir::new("config");
    let template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{{ eos_token }}";
    let tok = load(
        &dir,
        Some(json!({
            "bos_token": "<|im_start|>",
            "eos_token": {"content": "<|im_end|>", "special": true},
            "pad_token": null,
            "add_bos_token": false,
            "chat_template": template,
            "model_max_length": 8192
        })),
    )
    .unwrap();
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.add_bos()),
        (Some(1), Some(2), None, false)
    );
    assert_eq!(tok.chat_template(), Some(template));
    let out = tok
        .apply_chat_template(
            &[
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "yo"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(out, "<|im_start|>[user] hi\n[assistant] yo\n<|im_end|>");
}

#[test]
fn add_bos_is_read_from_the_post_processor() {
    let dir = TempDir::new("postproc");
    let tok_path = dir.write("tokenizer.json", &tokenizer_json(bos_post_processor()));
    let cfg = dir.write(
        "tokenizer_config.json",
        &json!({"bos_token": "<|im_start|>"}),
    );
    let tok = Tokenizer::from_hf_files(&tok_path, Some(&cfg)).unwrap();
    assert!(tok.add_bos());
    // encode never adds BOS itself.
    assert_eq!(tok.encode("hello", false).unwrap(), vec![16]);

    let cfg = dir.write(
        "tokenizer_config.json",
        &json!({"bos_token": "<|im_start|>", "add_bos_token": false}),
    );
    assert!(!Tokenizer::from_hf_files(&tok_path, Some(&cfg))
        .unwrap()
        .add_bos());
}

#[test]
fn named_chat_templates_use_the_default_one() {
    let dir = TempDir::new("named");
    let tok = load(
        &dir,
        Some(json!({"chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "chat:{{ messages[0].content }}"}
        ]})),
    )
    .unwrap();
    assert_eq!(
        tok.apply_chat_template(&[ChatMessage::new("user", "x")], false)
            .unwrap(),
        "chat:x"
    );
}

#[test]
fn missing_template_falls_back_to_chatml() {
    let dir = TempDir::new("chatml");
    let tok = load(&dir, None).unwrap();
    let messages = [
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "U"),
    ];
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tok.apply_chat_template(&messages[1..], false).unwrap(),
        "<|im_start|>user\nU<|im_end|>\n"
    );
    assert!(DEFAULT_CHAT_TEMPLATE.contains("<|im_start|>"));
}

fn render(template: &str, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
    let dir = TempDir::new("template");
    load(
        &dir,
        Some(json!({"chat_template": template, "eos_token": "<|im_end|>"})),
    )
    .unwrap()
    .apply_chat_template(messages, true)
}

#[test]
fn templates_get_python_methods_and_hf_whitespace_rules() {
    let user = [ChatMessage::new("user", "  Hi there  ")];
    // str methods from minijinja-contrib's pycompat; booleans and tojson print as in Jinja2.
    assert_eq!(
        render(
            "{{ messages[0]['content'].strip().upper() }}|{{ messages[0].role.startswith('us') }}|{{ messages[0].content.split()|tojson }}",
            &user
        )
        .unwrap(),
        "HI THERE|True|[\"Hi\", \"there\"]"
    );
    // trim_blocks + lstrip_blocks, as in transformers: block lines leave no whitespace.
    let template = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content | trim }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nA:\n{% endif %}";
    assert_eq!(render(template, &user).unwrap(), "U:Hi there\nA:\n");
    // loop controls.
    let two = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    assert_eq!(
        render(
            "{% for m in messages %}{{ m.content }}{% break %}{% endfor %}",
            &two
        )
        .unwrap(),
        "a"
    );
    // Undefined variables are empty, as with Jinja2's default; bos_token is unset here.
    assert_eq!(
        render("[{{ bos_token }}]{{ eos_token }}", &user).unwrap(),
        "[]<|im_end|>"
    );
}

#[test]
fn template_errors_are_reported() {
    let user = [ChatMessage::new("user", "x")];
    let err = render(
        "{% if messages[0].role == 'user' %}{{ raise_exception('Only system messages are allowed') }}{% endif %}",
        &user,
    )
    .unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate(_)), "{err}");
    assert!(
        err.to_string().contains("Only system messages are allowed"),
        "{err}"
    );

    let err = render("{% for m in messages %}", &user).unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate(_)), "{err}");
}

#[test]
fn a_template_that_never_ends_runs_out_of_fuel() {
    // 10^10 iterations: hours without a bound on the work a template does.
    let user = [ChatMessage::new("user", "x")];
    let start = std::time::Instant::now();
    let err = render(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        &user,
    )
    .unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate(_)), "{err}");
    assert!(err.to_string().contains("fuel"), "{err}");
    assert!(start.elapsed().as_secs() < 60);
}

/// Found by the `hf_json` fuzzer: tokenizers 0.23 panics
/// (`expect("Helper")`) on a `decoder` object with a syntax error.
#[test]
fn a_broken_decoder_is_an_error_not_a_panic() {
    let bytes = br#"{"decoder": {"type": "ByteLevel", {"#;
    let err = match Tokenizer::from_hf_bytes(bytes, Path::new("tokenizer.json"), None) {
        Ok(_) => panic!("a broken decoder parsed"),
        Err(e) => e,
    };
    assert!(matches!(err, TokenizerError::InvalidFile { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("tokenizer.json"), "{message}");
    assert!(
        message.contains("tokenizers library rejected it"),
        "{message}"
    );
}

fn file_err(
    dir: &TempDir,
    tokenizer: Option<&str>,
    config: Option<&str>,
) -> (TokenizerError, PathBuf) {
    let default_tok = dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    let tok_path = match tokenizer {
        Some(content) => {
            let p = dir.0.join("bad_tokenizer.json");
            fs::write(&p, content).unwrap();
            p
        }
        None => default_tok,
    };
    let cfg_path = config.map(|content| {
        let p = dir.0.join("tokenizer_config.json");
        fs::write(&p, content).unwrap();
        p
    });
    let err = Tokenizer::from_hf_files(&tok_path, cfg_path.as_deref()).unwrap_err();
    (err, cfg_path.unwrap_or(tok_path))
}

fn assert_names(err: &TokenizerError, path: &Path, words: &[&str]) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for w in words {
        assert!(msg.contains(w), "expected {w:?} in: {msg}");
    }
}

#[test]
fn bad_files_are_named() {
    let dir = TempDir::new("bad");
    let missing = dir.0.join("nope.json");
    let err = Tokenizer::from_hf_files(&missing, None).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }));
    assert_names(&err, &missing, &[]);

    let (err, path) = file_err(&dir, Some("{not json"), None);
    assert_names(&err, &path, &[]);
    let (err, path) = file_err(&dir, None, Some("[1, 2]"));
    assert_names(&err, &path, &["object"]);
    let (err, path) = file_err(&dir, None, Some(r#"{"bos_token": "<s>"}"#));
    assert_names(&err, &path, &["bos_token", "<s>"]);
    let (err, path) = file_err(&dir, None, Some(r#"{"eos_token": 5}"#));
    assert_names(&err, &path, &["eos_token"]);
    let (err, path) = file_err(&dir, None, Some(r#"{"chat_template": 5}"#));
    assert_names(&err, &path, &["chat_template"]);
    let (err, path) = file_err(&dir, None, Some(r#"{"add_bos_token": "yes"}"#));
    assert_names(&err, &path, &["add_bos_token"]);
    let (err, path) = file_err(&dir, None, Some(r#"{"add_bos_token": true}"#));
    assert_names(&err, &path, &["add_bos_token", "bos_token"]);
}
