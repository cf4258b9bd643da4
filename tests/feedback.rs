//! `POST /feedback` end to end: answers carry ids, feedback on them lands in `/ab` under the
//! answer's arm and reward, and bad feedback is refused with the field named. The server runs
//! the default model with verifier rewards (instant scoring) and half of /optimize traffic in
//! the plain arm; answers are kept short (plain or 2 candidates, a few tokens).

mod common;

use common::{start, Server};

use hone::server::ab::{self, Arm};
use hone::server::Config;
use policies::store::SMOLLM2;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

/// Verifier rewards, one per test that reads `/ab`, so that tests running at once do not
/// share a comparison.
const REWARDS: [&str; 3] = ["check", "uplift", "chat"];

fn manifests() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-feedback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in REWARDS {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            "kind = \"verifier\"\n\n[[constraints]]\nkind = \"word_count\"\nmin = 1\nmax = 40\n",
        )
        .unwrap();
    }
    dir
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(Config {
            host: "127.0.0.1".into(),
            port: 0,
            model: common::model_path(&SMOLLM2).to_string_lossy().into_owned(),
            reward: "check".into(),
            rewards: manifests(),
            ab_plain_fraction: 0.5,
            cpu: true,
            workers: Some(2),
            ..Config::default()
        })
    })
}

/// Status and JSON body of a request, whatever the status.
fn call(method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build();
    let req = agent
        .request(method, &format!("http://{}{path}", server().addr))
        .set("Content-Type", "application/json");
    let result = match body {
        Some(b) => req.send_string(&b.to_string()),
        None => req.call(),
    };
    let (status, text) = match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

fn post(path: &str, body: Value) -> (u16, Value) {
    call("POST", path, Some(&body))
}

/// A `user` that the A/B split puts in `arm`.
fn user_in(arm: Arm, salt: &str) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|u| ab::assign(u, 0.5) == arm)
        .unwrap()
}

/// An /optimize answer scored by `reward`, from a user in `arm`; its id.
fn answer(arm: Arm, salt: &str, reward: &str) -> String {
    let (status, body) = post(
        "/optimize",
        json!({
            "prompt": "Name a colour.", "strategy": "best_of_n", "n": 2, "max_tokens": 6,
            "reward": reward, "constraints": [], "user": user_in(arm, salt),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["arm"], arm.name(), "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ans-") && id.len() == 36, "{id}");
    id
}

fn assert_error(status: u16, body: &Value, expected: u16, param: Option<&str>) {
    assert_eq!(status, expected, "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["error"]["param"].as_str(), param, "{body}");
}

#[test]
fn feedback_is_compared_by_arm_and_reward() {
    let optimized = [
        answer(Arm::Optimized, "up-a", "uplift"),
        answer(Arm::Optimized, "up-b", "uplift"),
    ];
    let plain = [
        answer(Arm::Plain, "up-c", "uplift"),
        answer(Arm::Plain, "up-d", "uplift"),
    ];
    assert_ne!(optimized[0], optimized[1]);
    // Before any feedback: counts of zero and no interval.
    let before = &call("GET", "/ab", None).1["rewards"]["uplift"];
    assert_eq!(before["optimized"]["feedback"]["answers"], 0, "{before}");
    assert!(before["feedback_uplift"].is_null(), "{before}");
    for id in &optimized {
        let (status, body) = post("/feedback", json!({"id": id, "thumbs": "up"}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["arm"], "optimized", "{body}");
        assert_eq!(body["reward"], "uplift", "{body}");
        assert_eq!(
            (&body["outcome"], &body["replaced"]),
            (&json!(1.0), &json!(false))
        );
    }
    // A second feedback replaces the first: thumbs up, then a score of 0.
    let (status, body) = post("/feedback", json!({"id": plain[0], "thumbs": "up"}));
    assert_eq!((status, &body["arm"]), (200, &json!("plain")), "{body}");
    let (status, body) = post("/feedback", json!({"id": plain[0], "score": 0}));
    assert_eq!((status, &body["replaced"]), (200, &json!(true)), "{body}");
    let (status, body) = post("/feedback", json!({"id": plain[1], "thumbs": "down"}));
    assert_eq!(status, 200, "{body}");
    let summary = call("GET", "/ab", None).1;
    let uplift = &summary["rewards"]["uplift"];
    assert_eq!(uplift["optimized"]["feedback"]["answers"], 2, "{uplift}");
    assert_eq!(uplift["plain"]["feedback"]["answers"], 2, "{uplift}");
    assert_eq!(uplift["optimized"]["feedback"]["mean"], 1.0, "{uplift}");
    assert_eq!(uplift["plain"]["feedback"]["mean"], 0.0, "{uplift}");
    // Every optimized answer 1, every plain one 0: an uplift of exactly 1, with no spread.
    assert_eq!(
        uplift["feedback_uplift"],
        json!({"mean": 1.0, "ci95_low": 1.0, "ci95_high": 1.0}),
        "{uplift}"
    );
    // The reward's own comparison is still there, beside it.
    assert!(uplift["uplift"]["mean"].is_number(), "{uplift}");
    assert_eq!(uplift["optimized"]["requests"], 2, "{uplift}");
    let text = ureq::get(&format!("http://{}/metrics", server().addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let count = |arm: &str| -> u64 {
        let prefix = format!("hone_feedback_total{{arm=\"{arm}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(count("optimized") >= 2 && count("plain") >= 3, "{text}");
}

#[test]
fn chat_answers_take_feedback_outside_the_randomized_comparison() {
    let (status, body) = post(
        "/v1/chat/completions",
        json!({
            "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4,
            "hone": {"reward": "chat", "constraints": []},
        }),
    );
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() == 9 + 32, "{id}");
    let (status, body) = post("/feedback", json!({"id": id, "score": 4.5}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["arm"], &body["reward"]),
        (&json!("plain"), &json!("chat"))
    );
    // The same bits under the /optimize prefix are no answer of this server.
    let other = format!("ans-{}", &id["chatcmpl-".len()..]);
    let (status, body) = post("/feedback", json!({"id": other, "score": 1}));
    assert_error(status, &body, 404, Some("id"));
    let summary = call("GET", "/ab", None).1;
    let chat = &summary["chat_feedback"]["chat"];
    assert_eq!(
        chat["plain"],
        json!({"answers": 1, "mean": 4.5}),
        "{summary}"
    );
    assert_eq!(chat["optimized"]["answers"], 0, "{summary}");
    assert!(summary["rewards"].get("chat").is_none(), "{summary}");
}

#[test]
fn bad_feedback_is_refused_naming_the_field() {
    let unknown = format!("ans-{}", "0".repeat(32));
    let (status, body) = post("/feedback", json!({"id": unknown, "thumbs": "up"}));
    assert_error(status, &body, 404, Some("id"));
    let (status, body) = post("/feedback", json!({"id": "not-an-id", "thumbs": "up"}));
    assert_error(status, &body, 404, Some("id"));
    let id = answer(Arm::Plain, "bad", "check");
    let cases = [
        (json!({"id": id, "thumbs": "sideways"}), 422, Some("thumbs")),
        (json!({"id": id, "thumbs": 1}), 400, Some("thumbs")),
        (json!({"id": id, "score": "high"}), 400, Some("score")),
        (json!({"id": id, "score": 1e13}), 422, Some("score")),
        (
            json!({"id": id, "score": 1, "thumbs": "up"}),
            422,
            Some("thumbs"),
        ),
        (json!({"id": id}), 422, Some("score")),
        (json!({"thumbs": "up"}), 422, Some("id")),
        (json!({"id": 5, "thumbs": "up"}), 400, Some("id")),
        (
            json!({"id": id, "thumbs": "up", "stars": 5}),
            400,
            Some("stars"),
        ),
    ];
    for (body, expected, param) in cases {
        let (status, answer) = post("/feedback", body.clone());
        assert_error(status, &answer, expected, param);
    }
    // None of them was recorded.
    let check = &call("GET", "/ab", None).1["rewards"]["check"];
    assert_eq!(check["plain"]["feedback"]["answers"], 0, "{check}");
    let (status, body) = call("GET", "/feedback", None);
    assert_error(status, &body, 405, None);
}
