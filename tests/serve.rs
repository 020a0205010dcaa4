//! `fairyc serve` on synthetic tiny models, driven over loopback HTTP by a
//! real client (ureq) and by the official `openai` Python package: whole
//! and streamed completions equal `fairyc run`'s greedy text, bad requests
//! get JSON errors with the right status, concurrent streams all complete,
//! a full server answers 503, and a client that leaves frees its slot.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::assets::{assets_required, REQUIRE_ASSETS};
use common::TempDir;
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};
use serde_json::{json, Value};

/// A running `fairyc serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the server on a free loopback port (`--port 0`; the address
    /// is read from its first line) and waits for `/health`.
    fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fairyc"))
            .arg("serve")
            .arg(model)
            .args(["--port", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("fairyc serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("fairyc serve exited before listening:\n{seen}");
            };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(at) = line.find("http://127.0.0.1:") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let server = Server { child, base };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&server.url("/health")).0 != 200 {
            assert!(Instant::now() < deadline, "/health never answered 200");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body`; returns the status and the JSON answer.
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut response = agent()
            .post(self.url(path))
            .header("content-type", "application/json")
            .send(body)
            .expect("the server answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON ({e}): {text}"));
        (status, value)
    }

    /// A streamed request: the `data:` payloads in order, `[DONE]` included.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        sse_events(self.open_stream(path, body))
    }

    fn open_stream(&self, path: &str, body: &Value) -> impl BufRead {
        let response = agent()
            .post(self.url(path))
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("the server answers");
        assert_eq!(response.status().as_u16(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        BufReader::new(response.into_body().into_reader())
    }

    fn health(&self) -> Value {
        let (status, body) = get(&self.url("/health"));
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn get(url: &str) -> (u16, Value) {
    match agent().get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

/// The `data:` payloads of an event stream, up to `[DONE]`.
fn sse_events(reader: impl BufRead) -> Vec<String> {
    let mut events = Vec::new();
    for line in reader.lines() {
        let line = line.expect("the stream reads to its end");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_string());
            if data == "[DONE]" {
                break;
            }
        }
    }
    events
}

/// The text of a streamed chat or completion, checking the chunk format on
/// the way: a chat's first chunk names the role, one chunk has the finish
/// reason, and `[DONE]` ends the stream.
fn streamed_text(events: &[String]) -> (String, String) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let mut text = String::new();
    let mut finish = None;
    for (i, event) in events[..events.len() - 1].iter().enumerate() {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if chunk["object"] == "chat.completion.chunk" {
            if i == 0 {
                assert_eq!(choice["delta"]["role"], "assistant", "{chunk}");
            }
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        } else {
            assert_eq!(chunk["object"], "text_completion");
            text.push_str(choice["text"].as_str().unwrap());
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
    }
    (text, finish.expect("a chunk gives the finish reason"))
}

/// `fairyc run`'s greedy text for a prompt (as a chat turn with `chat`).
fn run_greedy(model: &Path, prompt: &str, n: usize, chat: bool) -> String {
    let n = n.to_string();
    let mut args = vec!["run", model.to_str().unwrap(), "-p", prompt, "-n", &n];
    if chat {
        args.push("--chat");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

fn tiny_model(dir: &TempDir) -> PathBuf {
    let model = dir.path("model.gguf");
    write_gguf(&model, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    model
}

fn chat_body(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": "model",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

fn completion_body(prompt: &str, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "temperature": 0, "max_tokens": max_tokens})
}

#[test]
fn chat_completions_and_models_match_fairyc_run() {
    let dir = TempDir::new("serve-api");
    let model = tiny_model(&dir);
    let server = Server::start(&model, &[]);

    let (status, models) = get(&server.url("/v1/models"));
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "model", "{models}");
    assert_eq!(server.health()["status"], "ok");

    // A whole chat completion: fairyc run --chat's greedy text, with usage.
    let expected = run_greedy(&model, "the cat", 12, true);
    let (status, chat) = server.post(
        "/v1/chat/completions",
        &chat_body("the cat", 12).to_string(),
    );
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    let choice = &chat["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected.as_str(), "{chat}");
    let usage = &chat["usage"];
    let (prompt_tokens, completion_tokens) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(
        prompt_tokens > 2 && (1..=12).contains(&completion_tokens),
        "{usage}"
    );
    assert_eq!(usage["total_tokens"], prompt_tokens + completion_tokens);
    let reason = choice["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || completion_tokens == 12, "{chat}");
    println!("chat: {expected:?} ({usage}, finish {reason})");

    // The same request streamed: the same text, usage in a last chunk.
    let mut body = chat_body("the cat", 12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = server.stream("/v1/chat/completions", &body);
    let (text, finish) = streamed_text(&events);
    assert_eq!(
        (text.as_str(), finish.as_str()),
        (expected.as_str(), reason)
    );
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(&last["usage"], usage, "{last}");
    println!("streamed chat: {} events", events.len());

    // Completions, whole and streamed: fairyc run's plain greedy text.
    let expected = run_greedy(&model, "the cat", 10, false);
    let (status, done) = server.post(
        "/v1/completions",
        &completion_body("the cat", 10).to_string(),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["object"], "text_completion");
    assert_eq!(done["choices"][0]["text"], expected.as_str(), "{done}");
    let mut body = completion_body("the cat", 10);
    body["stream"] = json!(true);
    let (text, _) = streamed_text(&server.stream("/v1/completions", &body));
    assert_eq!(text, expected);
    println!("completion: {expected:?}");

    // A stop sequence ends the text just before it, streamed or not.
    let cut = expected.char_indices().nth(3).map(|(i, _)| i).unwrap();
    let stop: String = expected[cut..].chars().take(2).collect();
    let before = &expected[..expected.find(&stop).unwrap()];
    let mut body = completion_body("the cat", 10);
    body["stop"] = json!([stop]);
    let (_, done) = server.post("/v1/completions", &body.to_string());
    assert_eq!(done["choices"][0]["text"], before, "stop {stop:?}: {done}");
    assert_eq!(done["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let (text, finish) = streamed_text(&server.stream("/v1/completions", &body));
    assert_eq!((text.as_str(), finish.as_str()), (before, "stop"));

    // Sampling with a seed repeats; top_p near 0 is greedy.
    let sample = |seed: u64, top_p: f64| {
        let body = json!({"prompt": "the cat", "temperature": 1.5, "top_p": top_p, "seed": seed, "max_tokens": 10});
        let (status, done) = server.post("/v1/completions", &body.to_string());
        assert_eq!(status, 200, "{done}");
        done["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(sample(7, 1.0), sample(7, 1.0));
    assert_eq!(sample(7, 1e-9), expected);
}

#[test]
fn bad_requests_get_json_errors_and_the_server_stays_up() {
    let dir = TempDir::new("serve-errors");
    let model = tiny_model(&dir);
    let server = Server::start(&model, &["--ctx", "64"]);
    let msg = |content: &str| json!([{"role": "user", "content": content}]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            "{\"messages\": [".into(),
            400,
            "not valid JSON",
        ),
        ("not an object", "[1, 2]".into(), 400, "JSON object"),
        (
            "no messages",
            "{\"model\": \"m\"}".into(),
            400,
            "`messages` is required",
        ),
        (
            "bad message",
            json!({"messages": [{"content": "x"}]}).to_string(),
            400,
            "messages[0].role",
        ),
        (
            "negative temperature",
            json!({"messages": msg("x"), "temperature": -1}).to_string(),
            400,
            "`temperature`",
        ),
        (
            "top_p 0",
            json!({"messages": msg("x"), "top_p": 0}).to_string(),
            400,
            "`top_p`",
        ),
        (
            "top_p past 1",
            json!({"messages": msg("x"), "top_p": 1.5}).to_string(),
            400,
            "`top_p`",
        ),
        (
            "max_tokens a string",
            json!({"messages": msg("x"), "max_tokens": "5"}).to_string(),
            400,
            "`max_tokens`",
        ),
        (
            "max_tokens past the context",
            json!({"messages": msg("x"), "max_tokens": 1000}).to_string(),
            400,
            "exceed the context of 64",
        ),
        (
            "prompt past the context",
            json!({"messages": msg(&"the cat sat ".repeat(40))}).to_string(),
            400,
            "the context holds 64",
        ),
        (
            "n of 2",
            json!({"messages": msg("x"), "n": 2}).to_string(),
            400,
            "`n` must be 1",
        ),
        (
            "tools",
            json!({"messages": msg("x"), "tools": [{"type": "function"}]}).to_string(),
            400,
            "tool calls",
        ),
        (
            "too many stops",
            json!({"messages": msg("x"), "stop": ["a", "b", "c", "d", "e"]}).to_string(),
            400,
            "at most 4",
        ),
    ];
    for (what, body, status, says) in &cases {
        let (got, error) = server.post("/v1/chat/completions", body);
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{what}: {error}");
        assert!(message.contains(says), "{what}: {error}");
        println!("{what}: {got} {message}");
    }
    let long = json!({"prompt": "the cat sat ".repeat(40)}).to_string();
    let (status, error) = server.post("/v1/completions", &long);
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("prompt")),
        "{error}"
    );
    assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");
    let (status, error) = server.post("/v1/completions", "{\"prompt\": 5}");
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("prompt")),
        "{error}"
    );
    let (status, error) = server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 0}).to_string(),
    );
    assert_eq!(status, 400, "{error}");
    let (status, error) = get(&server.url("/v1/nowhere"));
    assert_eq!(status, 404, "{error}");
    assert!(error["error"]["message"].is_string());
    let (status, error) = get(&server.url("/v1/chat/completions"));
    assert_eq!(status, 405, "{error}");

    // A body past the 1 MiB bound is refused from its length alone.
    let mut tcp = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    write!(
        tcp,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        2 << 20
    )
    .unwrap();
    // The server answers without waiting for the body; read the answer
    // (bounded in time: the connection may stay open for the body).
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&bytes).contains("}}") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&bytes);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 1048576 bytes"), "{answer}");

    // Still serving.
    let (status, done) = server.post(
        "/v1/completions",
        &completion_body("the cat", 4).to_string(),
    );
    assert_eq!(status, 200, "{done}");
}

#[test]
fn concurrent_streams_all_complete_with_the_greedy_text() {
    let dir = TempDir::new("serve-load");
    let model = tiny_model(&dir);
    // Every round is one program run over the active requests: their
    // decode steps, and prompt chunks of two tokens a round (chunked
    // prefill) beside them. The text must not change.
    let server = Server::start(
        &model,
        &["--parallel", "4", "--queue", "8", "--prefill-chunk", "2"],
    );
    let prompts = ["the cat", "the sun is", "water", "at seven they"];
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| run_greedy(&model, p, 48, true))
        .collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let server = &server;
                let prompt = prompts[i % prompts.len()];
                scope.spawn(move || {
                    let mut body = chat_body(prompt, 48);
                    body["stream"] = json!(true);
                    streamed_text(&server.stream("/v1/chat/completions", &body)).0
                })
            })
            .collect();
        for (i, client) in clients.into_iter().enumerate() {
            let text = client.join().expect("the client finishes");
            assert_eq!(text, expected[i % prompts.len()], "client {i}");
        }
    });
    println!(
        "8 concurrent streams over 4 slots: all complete, greedy text equal, {:.2}s",
        start.elapsed().as_secs_f64()
    );
    // A slot is freed just after its stream's last chunk is written, so
    // the count may lag the clients briefly; it must reach zero.
    let settled = Instant::now();
    let health = loop {
        let health = server.health();
        let idle = (health["active"].as_u64(), health["waiting"].as_u64()) == (Some(0), Some(0));
        if idle || settled.elapsed() > Duration::from_secs(10) {
            break health;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (health["active"].as_u64(), health["waiting"].as_u64()),
        (Some(0), Some(0)),
        "{health}"
    );
    // The requests' steps ran together (one program run for several).
    let batch = health["largest_batch"].as_u64().unwrap();
    assert!((2..=4).contains(&batch), "{health}");
    println!("the most requests stepped in one run: {batch}");
}

#[test]
fn a_full_server_answers_503_and_a_client_that_leaves_frees_its_slot() {
    let dir = TempDir::new("serve-busy");
    // Wide enough and with context enough that one generation takes
    // seconds (greedy, from "a", it runs to its budget without an end token).
    let model = dir.path("long.gguf");
    let config = SynthConfig {
        context_length: 4096,
        hidden: 256,
        intermediate: 1024,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 32,
        ..SynthConfig::tiny()
    };
    write_gguf(&model, &config, GgmlType::F32).unwrap();
    let server = Server::start(&model, &["--parallel", "1", "--queue", "0"]);

    let mut body = completion_body("a", 4000);
    body["stream"] = json!(true);
    let mut long = server.open_stream("/v1/completions", &body);
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        long.read_line(&mut first).unwrap();
    }
    assert_eq!(server.health()["active"], 1);

    let (status, error) = server.post("/v1/completions", &completion_body("the", 4).to_string());
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "server_busy", "{error}");
    println!("busy: {}", error["error"]["message"]);

    // Leaving mid-stream frees the slot long before the 4000 tokens are done.
    drop(long);
    let left = Instant::now();
    while server.health()["active"] != 0 {
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "the slot was not freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "slot freed {:.0} ms after the client left",
        left.elapsed().as_secs_f64() * 1e3
    );

    // So does a client that gives up waiting for a whole completion.
    let impatient: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(500)))
        .build()
        .into();
    let body = completion_body("a", 4000).to_string();
    let gave_up = impatient.post(server.url("/v1/completions")).send(body);
    assert!(gave_up.is_err(), "4000 tokens came back within 500 ms");
    let left = Instant::now();
    while server.health()["active"] != 0 {
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "the slot was not freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, done) = server.post("/v1/completions", &completion_body("the", 4).to_string());
    assert_eq!(status, 200, "{done}");
}

/// The official `openai` package (installed by `make setup`) chats with the
/// server, whole and streamed (tests/serve_openai.py).
#[test]
fn the_openai_package_chats_with_the_server() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let probe = Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let message = "the_openai_package_chats_with_the_server: needs python3 with the `openai` package (`make setup` installs it)";
        if assets_required() {
            panic!("{message}; {REQUIRE_ASSETS} is set, so a missing asset is an error");
        }
        let _ = writeln!(std::io::stderr().lock(), "SKIPPED {message}");
        return;
    }
    let dir = TempDir::new("serve-openai");
    let model = tiny_model(&dir);
    let server = Server::start(&model, &[]);
    let expected = run_greedy(&model, "the cat", 12, true);
    let out = Command::new("python3")
        .arg(&script)
        .arg(&server.base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["chat"], expected.as_str(), "{report}");
    assert_eq!(report["streamed"], expected.as_str(), "{report}");
    println!("openai package: {report}");
}

#[test]
fn a_server_that_would_not_fit_its_memory_refuses_to_start() {
    let dir = TempDir::new("serve-memory");
    let model = tiny_model(&dir);
    let run = Command::new(env!("CARGO_BIN_EXE_fairyc"))
        .arg("serve")
        .arg(&model)
        .args(["--port", "0", "--parallel", "64", "--memory", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--parallel 64 needs")
            && stderr.contains("more than the 1.0 MiB available"),
        "{stderr}"
    );
}

/// Through the Rust API, a model compiled for fewer sequences than
/// `parallel` is refused with the way to load it, before anything listens.
#[test]
fn a_model_with_fewer_slots_than_parallel_is_refused() {
    let dir = TempDir::new("serve-slots");
    let model = fairyc::Model::load(&tiny_model(&dir)).unwrap();
    let options = fairyc::serve::ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        parallel: 4,
        queue: 0,
        prefill_chunk: 8,
        memory: None,
        host_memory: true,
        ctx: Some(64),
        name: "tiny".into(),
    };
    let err = fairyc::serve::serve(model, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compiled for 1 sequence(s) at once, fewer than --parallel 4")
            && err.contains("from_imported_slots"),
        "{err}"
    );
}
