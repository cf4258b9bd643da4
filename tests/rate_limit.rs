//! Rate limits end to end: a server with two API keys and a limit of 2 model requests a minute
//! per key and per user. The refill itself is tested with an injected clock in
//! `src/server/rate_limit.rs`; here, who is refused, how, and what is not counted. Requests are
//! plain decoding of 2 tokens.

mod common;

use hone::server::Config;
use policies::store::SMOLLM2;
use serde_json::{json, Value};
use std::time::Duration;

const K1: &str = "rate-key-1";
const K2: &str = "rate-key-2";

/// A response: status, `Retry-After` if sent, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

fn call(addr: std::net::SocketAddr, path: &str, key: Option<&str>, body: &Value) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build();
    let mut req = agent
        .post(&format!("http://{addr}{path}"))
        .set("Content-Type", "application/json");
    if let Some(key) = key {
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    let response = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(|v| v.parse().unwrap());
    let text = response.into_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    Answer {
        status,
        retry_after,
        body,
    }
}

fn plain(user: &str) -> Value {
    json!({"prompt": "Say hi.", "strategy": "plain", "max_tokens": 2, "user": user})
}

fn assert_limited(a: &Answer, param: Option<&str>) {
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["type"], "rate_limited", "{}", a.body);
    assert_eq!(a.body["error"]["param"].as_str(), param, "{}", a.body);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("2 requests a minute"), "{message}");
    // A token every 30 s: the wait is at most that, and at least a second.
    let retry = a.retry_after.expect("no Retry-After");
    assert!((1..=30).contains(&retry), "Retry-After: {retry}");
}

#[test]
fn keys_and_users_are_limited_apart() {
    let server = common::start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        model: common::model_path(&SMOLLM2).to_string_lossy().into_owned(),
        reward: "concise".into(),
        rewards: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("reward_models/manifests"),
        cpu: true,
        workers: Some(2),
        api_keys: vec![K1.into(), K2.into()],
        rate_limit: Some(2),
        ..Config::default()
    });
    let post = |path: &str, key: &str, body: &Value| call(server.addr, path, Some(key), body);
    let first = post("/optimize", K1, &plain("u1"));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(post("/optimize", K2, &plain("u1")).status, 200);
    // u1 has spent its two; K1 has one left, which the refusal does not take.
    assert_limited(&post("/optimize", K1, &plain("u1")), Some("user"));
    // Another user still gets through, on K1's last token.
    let other = post("/optimize", K1, &plain("u2"));
    assert_eq!(other.status, 200, "{}", other.body);
    // Now K1 is out, whoever asks; K2 is not.
    assert_limited(&post("/optimize", K1, &plain("u3")), None);
    let chat = json!({
        "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "user": "u3",
    });
    // The chat endpoint counts its `user` too: u1 is out there as well, while K2 has a token.
    let mut chat_u1 = chat.clone();
    chat_u1["user"] = json!("u1");
    assert_limited(&post("/v1/chat/completions", K2, &chat_u1), Some("user"));
    let a = post("/v1/chat/completions", K2, &chat);
    assert_eq!(a.status, 200, "{}", a.body);
    // Feedback runs no model: not limited, but it needs a key like any other POST.
    let id = first.body["id"].as_str().unwrap();
    let feedback = json!({"id": id, "thumbs": "up"});
    let a = post("/feedback", K1, &feedback);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(server.addr, "/feedback", None, &feedback);
    assert_eq!(a.status, 401, "{}", a.body);
    let metrics = ureq::get(&format!("http://{}/metrics", server.addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for line in [
        "hone_rate_limited_total{by=\"user\"} 2",
        "hone_rate_limited_total{by=\"key\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
}
