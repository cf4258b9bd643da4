//! Long prompts against the service: a client that leaves during a long prefill frees the
//! model slot within a chunk or so, a prompt above the cap and a budget above the cap are
//! refused before any model work, and the default budget cap is about a core-minute.
//!
//! Each test starts its own server (one model slot), so that nothing else competes for it.

mod common;

use common::Server;

use hone::server::Config;
use policies::store::SMOLLM2;
use policies::{Logits, Message, Role};
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A server on its own thread with one model slot and the `concise` verifier as its reward,
/// so that scoring costs no model time.
fn start(config: Config) -> Server {
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        model: common::model_path(&SMOLLM2).to_string_lossy().into_owned(),
        reward: "concise".into(),
        rewards: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("reward_models/manifests"),
        max_concurrency: 1,
        cpu: true,
        workers: Some(2),
        ..config
    };
    common::start(config)
}

impl Server {
    /// Status and JSON body of a POST, whatever the status.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(600))
            .build();
        let result = agent
            .post(&format!("http://{}{path}", self.addr))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        let (status, text) = match result {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("POST {path}: {e}"),
        };
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, json)
    }

    fn tokens(&self, prompt: &str) -> usize {
        self.state
            .policy()
            .model()
            .encode_chat(&[Message::new(Role::User, prompt)])
            .unwrap()
            .len()
    }
}

/// A prompt of `words` made-up words (about 4 tokens each), the same text every time.
fn long_text(words: usize) -> String {
    let words: Vec<String> = (0..words)
        .map(|i| {
            format!(
                "{}{i}",
                ["alpha", "river", "stone", "cloud", "seven"][i % 5]
            )
        })
        .collect();
    format!("Summarize this list: {}", words.join(" "))
}

#[test]
fn a_client_that_leaves_during_a_long_prefill_frees_the_slot() {
    let server = start(Config {
        max_budget: Some(1_000_000),
        ..Config::default()
    });
    let prompt = long_text(750);
    let tokens = server.tokens(&prompt);
    let cap = server.state.config.max_prompt_tokens;
    assert!(tokens > 2000 && tokens < cap, "{tokens} tokens (cap {cap})");
    let short = json!({"prompt": "Say hi.", "strategy": "plain", "max_tokens": 4});

    // What the figures below are measured against, on this machine, now: one prefill chunk at
    // the start of a prompt (later chunks take fewer tokens and about as long), and the short
    // request alone on an idle server.
    let Some(policy) = server.state.policy().local() else {
        panic!("the server runs the local engine");
    };
    let model = policy.model();
    let ids = policy
        .encode_chat(&[Message::new(Role::User, prompt.as_str())])
        .unwrap();
    let chunk = policies::prefill::CPU_PREFILL_CHUNK;
    let started = Instant::now();
    let mut cache = model.new_cache(1);
    model
        .forward(&[&ids[..chunk]], &mut cache, Logits::Last)
        .unwrap();
    let one_chunk = started.elapsed();
    let started = Instant::now();
    let (status, body) = server.post("/optimize", &short);
    assert_eq!(status, 200, "{body}");
    let alone = started.elapsed();
    // The whole prefill would take as many calls as its cost in chunks.
    let cost: f64 = (0..tokens).map(policies::prefill::token_cost).sum();
    let whole_prefill = one_chunk.mul_f64(cost / chunk as f64);

    // The long request, on a raw connection: wait until it holds the slot, give it 300 ms of
    // prefill, and hang up without reading anything.
    let body = json!({"prompt": prompt, "strategy": "plain", "max_tokens": 4}).to_string();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "POST /optimize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.state.metrics.in_flight.get() == 0 {
        assert!(Instant::now() < deadline, "the long request never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let left = Instant::now();

    // The short request waits for the slot: it is served once the long prefill has stopped.
    let (status, body) = server.post("/optimize", &short);
    let served = left.elapsed();
    assert_eq!(status, 200, "{body}");
    // Noticing the hang-up, one chunk in progress, and the short request's own time, with a
    // generous margin for a busy machine; and the figure means something only if the whole
    // prefill would have taken far longer.
    let freed_within = alone + one_chunk * 3 + Duration::from_secs(1);
    eprintln!(
        "{tokens}-token prompt; one chunk {one_chunk:?}, whole prefill ~{whole_prefill:?}; \
         short request alone {alone:?}, after the hang-up {served:?}"
    );
    assert!(
        freed_within * 4 < whole_prefill,
        "the test cannot tell: the whole prefill (~{whole_prefill:?}) is too short"
    );
    assert!(
        served < freed_within,
        "the slot was freed {served:?} after the client left (expected under {freed_within:?})"
    );
}

#[test]
fn prompts_and_budgets_above_the_caps_are_refused_before_model_work() {
    let server = start(Config::default());
    // The default cap: about a core-minute of the default model.
    assert_eq!(
        server.state.config.max_budget,
        Some(hone::budget::CORE_MINUTE_UNITS)
    );
    let cap = server.state.config.max_prompt_tokens;
    assert_eq!(cap, 4096);
    let prompt = long_text(1100);
    let tokens = server.tokens(&prompt);
    assert!(tokens > cap, "{tokens}");
    let started = Instant::now();
    for (path, body, param) in [
        (
            "/optimize",
            json!({"prompt": prompt, "strategy": "plain"}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": prompt}]}),
            "messages",
        ),
    ] {
        let (status, body) = server.post(path, &body);
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&tokens.to_string()) && message.contains("cap of 4096"),
            "{message}"
        );
    }
    // A budget above the cap names the cap.
    let (status, body) = server.post(
        "/optimize",
        &json!({"prompt": "Say hi.", "budget": {"compute": 1801}}),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["param"], "budget.compute", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cap of 1800"), "{message}");
    // Refused before the queue: a prefill of the long prompt alone would take minutes here.
    eprintln!("the refusals took {:?}", started.elapsed());
    // A request at the cap runs.
    let (status, body) = server.post(
        "/optimize",
        &json!({"prompt": "Say hi.", "strategy": "plain", "max_tokens": 4,
                "budget": {"compute": 1800}}),
    );
    assert_eq!(status, 200, "{body}");
}
