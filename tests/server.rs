//! The HTTP service end to end: a real server on 127.0.0.1 (port 0) in this process, the default
//! model, and a verifier reward from a temporary manifests folder, so that scoring is instant
//! and the runtime is the policy's decoding (kept short: n = 2, max_tokens 16).

mod common;

use common::{start, Server};

use hone::server::ab::{self, Arm};
use hone::server::Config;
use hone::strategy::tallies::PRIOR_TRIALS;
use hone::strategy::Move;
use policies::store::SMOLLM2;
use policies::{Message, Role};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

/// A folder of reward manifests: `check`, a verifier, and `broken`, a classifier whose model
/// folder does not exist.
fn manifests() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("check.toml"),
        "kind = \"verifier\"\n\n[[constraints]]\nkind = \"word_count\"\nmin = 3\nmax = 40\n\n\
         [[constraints]]\nkind = \"required_keywords\"\nkeywords = [\"Paris\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        "kind = \"classifier\"\npath = \"no-such-model\"\n",
    )
    .unwrap();
    dir
}

fn config() -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        model: common::model_path(&SMOLLM2).to_string_lossy().into_owned(),
        reward: "check".into(),
        rewards: manifests(),
        max_concurrency: 1,
        max_queue: 64,
        ab_plain_fraction: 0.5,
        cpu: true,
        workers: Some(2),
        speculate: 4,
        // Room for the budgets these tests ask for (the default cap is 1800 for this model).
        max_budget: Some(20_000),
        ..Config::default()
    }
}

/// One server for most tests, with half of /optimize traffic in the plain arm.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start(config()))
}

const KEY: &str = "test-key-1";

/// A server with an API key, a short request timeout, and room for one running request and
/// one waiting.
fn guarded() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(Config {
            api_keys: vec!["other-key".into(), KEY.into()],
            request_timeout_ms: 2000,
            max_queue: 1,
            ab_plain_fraction: 0.0,
            ..config()
        })
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build()
}

/// Status and body of a request to the shared server, whatever the status.
fn send(method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    send_to(server().addr, method, path, body)
}

/// Status and body of a request to the server at `addr`, whatever the status.
fn send_to(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let req = agent()
        .request(method, &format!("http://{addr}{path}"))
        .set("Content-Type", "application/json");
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn post(path: &str, body: &Value) -> (u16, Value) {
    post_to(server().addr, path, body)
}

fn post_to(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = send_to(addr, "POST", path, Some(&body.to_string()));
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

/// The value of `series` in a scrape: a metric's name with its labels as the exposition writes
/// them (sorted by name), e.g. `hone_feedback_total{arm="plain"}`. Panics when it is absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

fn get_json(path: &str) -> Value {
    let (status, text) = send("GET", path, None);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// A `user` that the A/B split puts in `arm`.
fn user_in(arm: Arm, salt: &str) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|u| ab::assign(u, 0.5) == arm)
        .unwrap()
}

fn prompt_tokens() -> u64 {
    let messages = [Message::new(Role::User, QUESTION)];
    server()
        .state
        .policy()
        .model()
        .encode_chat(&messages)
        .unwrap()
        .len() as u64
}

fn assert_error(status: u16, body: &Value, expected: u16, param: Option<&str>) {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert!(error["type"].is_string(), "{body}");
    assert!(error["message"].is_string(), "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
}

fn assert_healthy() {
    assert_eq!(get_json("/health")["status"], "ok");
}

#[test]
fn tpo_answers_within_budget() {
    let budget = 6000;
    let (status, body) = post(
        "/optimize",
        &json!({
            "prompt": QUESTION, "strategy": "tpo", "n": 2, "rounds": 1, "max_tokens": 16,
            "budget": {"compute": budget}, "user": user_in(Arm::Optimized, "tpo"),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["arm"], "optimized");
    assert_eq!(body["strategy"], "tpo");
    assert!(
        !body["answer"].as_str().unwrap().trim().is_empty(),
        "{body}"
    );
    assert!(!body["rounds"].as_array().unwrap().is_empty(), "{body}");
    let compute = body["usage"]["compute"].as_u64().unwrap();
    assert!(compute > 0 && compute <= budget, "{body}");
    assert!(body.get("plain").is_none());
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("ans-") && id.len() == 4 + 32, "{id}");
}

#[test]
fn auto_explains_its_rounds_and_metrics_show_what_it_learned() {
    let budget = 3000;
    // A keyword no answer names: no first round is perfect, so auto decides further rounds.
    let (status, body) = post(
        "/optimize",
        &json!({
            "prompt": QUESTION, "strategy": "auto", "n": 2, "max_tokens": 16,
            "budget": {"compute": budget}, "user": user_in(Arm::Optimized, "auto"),
            "constraints": [{"kind": "required_keywords", "keywords": ["Zanzibar"]}],
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["strategy"], "auto");
    assert!(
        body["usage"]["compute"].as_u64().unwrap() <= budget,
        "{body}"
    );
    let rounds = body["rounds"].as_array().unwrap();
    assert_eq!(rounds[0]["kind"], "sample", "{body}");
    // Every round after the first was decided, in order: one decision each.
    let decisions = body["auto"]["decisions"].as_array().unwrap();
    assert!(!decisions.is_empty(), "auto decided no round: {body}");
    assert_eq!(decisions.len(), rounds.len() - 1, "{body}");
    for (i, d) in decisions.iter().enumerate() {
        assert_eq!(d["round"].as_u64(), Some(i as u64 + 1), "{body}");
        assert_eq!(rounds[i + 1]["kind"], d["chose"], "{body}");
        assert!(d["refine"]["win_rate"].is_number(), "{body}");
        assert!(d["resample"]["win_rate"].is_number(), "{body}");
    }
    // The rounds this request ran are among the trials auto learned, and the metrics, scraped
    // after the answer, show at least what the answer reported (other tests may add more).
    let learned = &body["auto"]["learned"];
    let count = |tally: &Value, field: &str| tally[field].as_u64().unwrap() as f64;
    let mut scrape = String::new();
    // Concurrent scrapes of the shared server may interleave their updates of the gauges:
    // read until one scrape is consistent.
    for _ in 0..5 {
        scrape = send("GET", "/metrics", None).1;
        let consistent = Move::ALL.iter().all(|&mv| {
            let label = format!("{{move=\"{}\"}}", mv.name());
            let trials = metric(&scrape, &format!("hone_auto_trials{label}"));
            let wins = metric(&scrape, &format!("hone_auto_wins{label}"));
            let rate = metric(&scrape, &format!("hone_auto_win_rate{label}"));
            (rate - with_prior(mv, wins, trials)).abs() < 1e-9
        });
        if consistent {
            break;
        }
    }
    for m in Move::ALL {
        let mv = m.name();
        let ran: usize = rounds
            .iter()
            .filter(|r| r["kind"] == mv)
            .map(|r| r["candidates"].as_array().unwrap().len())
            .sum();
        assert!(count(&learned[mv], "trials") >= ran as f64, "{mv}: {body}");
        let trials = metric(&scrape, &format!("hone_auto_trials{{move=\"{mv}\"}}"));
        let wins = metric(&scrape, &format!("hone_auto_wins{{move=\"{mv}\"}}"));
        assert!(
            trials >= count(&learned[mv], "trials"),
            "{mv}: {body}\n{scrape}"
        );
        assert!(
            wins >= count(&learned[mv], "wins"),
            "{mv}: {body}\n{scrape}"
        );
        // The win rate shown is the tallies', with the move's measured prior.
        let rate = metric(&scrape, &format!("hone_auto_win_rate{{move=\"{mv}\"}}"));
        assert!(
            (rate - with_prior(m, wins, trials)).abs() < 1e-9,
            "{mv}: {rate} from {wins} wins of {trials}\n{scrape}"
        );
        metric(&scrape, &format!("hone_auto_round_cost{{move=\"{mv}\"}}"));
    }
}

/// A move's win rate from its tallies: `PRIOR_TRIALS` trials at its prior rate added.
fn with_prior(m: Move, wins: f64, trials: f64) -> f64 {
    (wins + PRIOR_TRIALS * m.prior_win_rate()) / (trials + PRIOR_TRIALS)
}

#[test]
fn tiny_budget_stops_on_budget_and_still_answers() {
    // One prefill and 16 tokens: one of the two candidates fits.
    let budget = prompt_tokens() + 16;
    let (status, body) = post(
        "/optimize",
        &json!({
            "prompt": QUESTION, "strategy": "best_of_n", "n": 2, "max_tokens": 16,
            "budget": {"compute": budget}, "user": user_in(Arm::Optimized, "tiny"),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stopped"], "budget", "{body}");
    assert!(!body["answer"].as_str().unwrap().is_empty(), "{body}");
    assert!(body["usage"]["compute"].as_u64().unwrap() <= budget);
}

#[test]
fn compare_plain_returns_both() {
    let (status, body) = post(
        "/optimize",
        &json!({
            "messages": [{"role": "user", "content": QUESTION}],
            "strategy": "best_of_n", "n": 2, "max_tokens": 16, "seed": 3,
            "compare_plain": true, "user": user_in(Arm::Optimized, "compare"),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["strategy"], "best_of_n");
    assert_eq!(body["plain"]["strategy"], "plain", "{body}");
    assert!(body["plain"]["answer"].is_string());
    assert!(body["plain"]["usage"]["compute"].as_u64().unwrap() > 0);
}

#[test]
fn optimize_streams_progress_then_the_result() {
    let body = json!({
        "prompt": QUESTION, "strategy": "best_of_n", "n": 2, "max_tokens": 16,
        "stream": true, "user": user_in(Arm::Optimized, "stream"),
    });
    let (status, text) = send("POST", "/optimize", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    // Events as (name, data); keep-alive comments (": ...") may come between them.
    let mut events = Vec::new();
    let mut name = "";
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n;
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            events.push((name, data));
        }
    }
    let candidates = events.iter().filter(|(n, _)| *n == "candidate").count();
    assert!(candidates >= 2, "{text}");
    let (last, result) = events.last().unwrap();
    assert_eq!(*last, "result", "{text}");
    assert_eq!(events.iter().filter(|(n, _)| *n == "result").count(), 1);
    assert!(result["answer"].is_string(), "{result}");
    assert!(result["usage"]["compute"].as_u64().unwrap() > 0, "{result}");
    assert_eq!(result["arm"], "optimized");
    // The final event carries the answer's id, which feedback can name.
    let id = result["id"].as_str().unwrap();
    assert!(id.starts_with("ans-"), "{result}");
    let (status, body) = post("/feedback", &json!({"id": id, "thumbs": "up"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["arm"], "optimized", "{body}");
}

/// The routes `routes::configure` registers, as (path, method): each is registered as
/// `only(path, method, handler)`, read here from the source.
fn registered_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/server/routes.rs");
    let configure = &source[source.find("pub fn configure").expect("no `configure`")..];
    let configure = &configure[..configure.find(".default_service(").expect("no default")];
    let routes: BTreeSet<(String, String)> = configure
        .split("only(")
        .skip(1)
        .map(|call| {
            let quoted: Vec<&str> = call.split('"').skip(1).step_by(2).take(2).collect();
            match quoted[..] {
                [path, method] => (path.to_string(), method.to_string()),
                _ => panic!("a route not registered as only(path, method, ..): only({call}"),
            }
        })
        .collect();
    assert!(
        routes.contains(&("/optimize".into(), "POST".into())),
        "routes.rs read wrong: {routes:?}"
    );
    routes
}

#[test]
fn openapi_documents_exactly_the_routes_served() {
    let doc = get_json("/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| methods.contains(&k.as_str()))
                .map(move |m| (path.clone(), m.to_uppercase()))
        })
        .collect();
    assert_eq!(
        documented,
        registered_routes(),
        "/openapi.json's operations against routes.rs's"
    );
    // The server answers every documented operation (with an empty object for a body: an
    // error of the route's own, never the 404 of an unknown route or a 405), and refuses any
    // other method on its path naming the documented ones.
    let mut allowed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (path, method) in &documented {
        allowed.entry(path).or_default().push(method);
    }
    let json = "Content-Type: application/json\r\n";
    for (path, method) in &documented {
        let body = if method == "GET" { "" } else { "{}" };
        let raw = exchange(server().addr, &request(method, path, json, body)).unwrap();
        assert!(
            raw.status != 404 && raw.status != 405,
            "{method} {path}: {}\n{}",
            raw.head,
            raw.body
        );
    }
    for (path, methods) in allowed {
        let raw = exchange(server().addr, &request("PATCH", path, "", "")).unwrap();
        assert_error(raw.status, &raw.body, 405, None);
        assert_eq!(
            raw.header("allow"),
            Some(methods.join(", ").as_str()),
            "{path}"
        );
    }
}

/// The metrics test's own server, so that its counters count that test's requests alone.
fn metered() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start(config()))
}

#[test]
fn metrics_count_each_request_by_arm() {
    let addr = metered().addr;
    let ask = |strategy: &str, user: String| {
        json!({
            "prompt": QUESTION, "strategy": strategy, "n": 2, "max_tokens": 8,
            "budget": {"compute": 3000}, "user": user,
        })
    };
    let requests = [
        // Plain asked for: the plain arm, whatever the split says of the user.
        (
            ask("plain", user_in(Arm::Optimized, "metered-a")),
            Arm::Plain,
        ),
        // Best-of-N asked for: the arm the split puts the user in answers.
        (
            ask("best_of_n", user_in(Arm::Plain, "metered-b")),
            Arm::Plain,
        ),
        (
            ask("best_of_n", user_in(Arm::Optimized, "metered-c")),
            Arm::Optimized,
        ),
    ];
    let mut answers = Vec::new();
    for (request, arm) in &requests {
        let (status, body) = post_to(addr, "/optimize", request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["arm"], arm.name(), "{body}");
        answers.push(body);
    }
    // Refused once counted: a stream whose budget is below one prefill.
    let refused = json!({
        "prompt": QUESTION, "strategy": "plain", "stream": true, "budget": {"compute": 3},
    });
    let (status, body) = post_to(addr, "/optimize", &refused);
    assert_error(status, &body, 422, Some("budget.compute"));
    // Feedback on the optimized answer.
    let id = answers[2]["id"].as_str().unwrap();
    let (status, body) = post_to(addr, "/feedback", &json!({"id": id, "thumbs": "up"}));
    assert_eq!(status, 200, "{body}");

    let (status, text) = send_to(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let m = |series: &str| metric(&text, series);
    for family in [
        "hone_requests_total{",
        "hone_request_duration_seconds_bucket{",
        "hone_time_to_first_event_seconds_bucket{",
        "hone_rounds_per_request_bucket{arm=",
        "hone_candidates_per_request_bucket{arm=",
        "hone_reward_bucket{",
        "hone_compute_used_total{",
        "hone_compute_budget_ratio_bucket{arm=",
        "hone_tokens_generated_total{",
        "hone_queue_depth",
        "hone_in_flight",
        "hone_model_info{",
        "hone_spec_decode_num_drafts_total{",
        "hone_spec_decode_num_draft_tokens_total{",
        "hone_spec_decode_num_accepted_tokens_total{",
        "hone_feedback_total{arm=",
        "hone_rate_limited_total{by=",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    // Each request counted once, under the strategy that ran, the arm that answered and the
    // status sent; nothing else.
    let requests_total = |labels: &str| m(&format!("hone_requests_total{{{labels}}}"));
    assert_eq!(
        requests_total(r#"arm="plain",status="200",strategy="plain""#),
        2.0
    );
    assert_eq!(
        requests_total(r#"arm="optimized",status="200",strategy="best_of_n""#),
        1.0
    );
    assert_eq!(
        requests_total(r#"arm="plain",status="422",strategy="plain""#),
        1.0
    );
    let all: f64 = text
        .lines()
        .filter(|l| l.starts_with("hone_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(all, 4.0, "{text}");
    let duration = |labels: &str| m(&format!("hone_request_duration_seconds_count{{{labels}}}"));
    assert_eq!(duration(r#"arm="plain",strategy="plain""#), 3.0);
    assert_eq!(duration(r#"arm="optimized",strategy="best_of_n""#), 1.0);
    assert_eq!(
        m(r#"hone_time_to_first_event_seconds_count{arm="optimized",strategy="best_of_n"}"#),
        1.0
    );
    // What the answers spent, summed by the arm that answered.
    for arm in [Arm::Plain, Arm::Optimized] {
        let a = arm.name();
        let mine: Vec<&Value> = answers.iter().filter(|b| b["arm"] == a).collect();
        let usage = |field: &str| -> f64 {
            mine.iter()
                .map(|b| b["usage"][field].as_u64().unwrap())
                .sum::<u64>() as f64
        };
        let of_arm = |name: &str| m(&format!("{name}{{arm=\"{a}\"}}"));
        assert!(usage("compute") > 0.0, "{a}");
        assert_eq!(of_arm("hone_compute_used_total"), usage("compute"), "{a}");
        assert_eq!(
            of_arm("hone_tokens_generated_total"),
            usage("tokens_generated"),
            "{a}"
        );
        for (family, field) in [
            ("hone_spec_decode_num_drafts_total", "spec_drafts"),
            (
                "hone_spec_decode_num_draft_tokens_total",
                "spec_draft_tokens",
            ),
            (
                "hone_spec_decode_num_accepted_tokens_total",
                "spec_accepted_tokens",
            ),
            (
                "hone_spec_decode_num_withheld_tokens_total",
                "spec_withheld_tokens",
            ),
            (
                "hone_spec_decode_num_sibling_drafts_total",
                "spec_sibling_drafts",
            ),
            (
                "hone_spec_decode_num_sibling_draft_tokens_total",
                "spec_sibling_draft_tokens",
            ),
            (
                "hone_spec_decode_num_sibling_accepted_tokens_total",
                "spec_sibling_accepted_tokens",
            ),
            (
                "hone_spec_decode_num_model_drafts_total",
                "spec_model_drafts",
            ),
            (
                "hone_spec_decode_num_model_draft_tokens_total",
                "spec_model_draft_tokens",
            ),
            (
                "hone_spec_decode_num_model_accepted_tokens_total",
                "spec_model_accepted_tokens",
            ),
        ] {
            assert_eq!(of_arm(family), usage(field), "{a}: {family}");
        }
        let answered = mine.len() as f64;
        let rounds: usize = mine
            .iter()
            .map(|b| b["rounds"].as_array().unwrap().len())
            .sum();
        let candidates: usize = mine
            .iter()
            .flat_map(|b| b["rounds"].as_array().unwrap())
            .map(|r| r["candidates"].as_array().unwrap().len())
            .sum();
        let scored = mine.iter().filter(|b| b["score"].is_number()).count() as f64;
        assert_eq!(of_arm("hone_rounds_per_request_count"), answered, "{a}");
        assert_eq!(of_arm("hone_rounds_per_request_sum"), rounds as f64, "{a}");
        assert_eq!(of_arm("hone_candidates_per_request_count"), answered, "{a}");
        assert_eq!(
            of_arm("hone_candidates_per_request_sum"),
            candidates as f64,
            "{a}"
        );
        assert_eq!(of_arm("hone_compute_budget_ratio_count"), answered, "{a}");
        assert_eq!(of_arm("hone_reward_count"), scored, "{a}");
        let feedback = if arm == Arm::Optimized { 1.0 } else { 0.0 };
        assert_eq!(of_arm("hone_feedback_total"), feedback, "{a}");
    }
    // Nothing is left running or waiting, and the model shown is the one served.
    assert_eq!(m("hone_queue_depth"), 0.0);
    assert_eq!(m("hone_in_flight"), 0.0);
    let (_, health) = send_to(addr, "GET", "/health", None);
    let health: Value = serde_json::from_str(&health).unwrap();
    let model = health["model"].as_str().unwrap();
    assert_eq!(
        m(&format!(
            "hone_model_info{{policy=\"{model}\",reward=\"check\"}}"
        )),
        1.0
    );
}

#[test]
fn ab_reports_both_arms() {
    // The strategy asked for is best_of_n; the split decides which arm answers.
    let mut arms = Vec::new();
    for (arm, salt) in [
        (Arm::Optimized, "ab-a"),
        (Arm::Optimized, "ab-b"),
        (Arm::Plain, "ab-c"),
        (Arm::Plain, "ab-d"),
    ] {
        let (status, body) = post(
            "/optimize",
            &json!({
                "prompt": QUESTION, "strategy": "best_of_n", "n": 2, "max_tokens": 12,
                "user": user_in(arm, salt),
            }),
        );
        assert_eq!(status, 200, "{body}");
        arms.push(body["arm"].clone());
        if arm == Arm::Plain {
            assert_eq!(body["strategy"], "plain", "{body}");
        }
    }
    assert_eq!(arms, ["optimized", "optimized", "plain", "plain"]);
    let summary = get_json("/ab");
    assert_eq!(summary["plain_fraction"], 0.5);
    // Compared per reward scale: constraints the prompt states join the `check` reward.
    let stated = reward_models::verifier::extract::from_prompt(QUESTION);
    let scale = if stated.is_empty() {
        "check"
    } else {
        "check+constraints"
    };
    let summary = &summary["rewards"][scale];
    for arm in ["optimized", "plain"] {
        let s = &summary[arm];
        assert!(s["requests"].as_u64().unwrap() >= 2, "{summary}");
        assert!(s["mean_compute"].as_f64().unwrap() > 0.0, "{summary}");
        assert!(s["latency_ms_p95"].as_f64().unwrap() >= s["latency_ms_p50"].as_f64().unwrap());
    }
    let uplift = &summary["uplift"];
    assert!(uplift["mean"].is_number(), "{summary}");
    assert!(uplift["ci95_low"].as_f64().unwrap() <= uplift["ci95_high"].as_f64().unwrap());
}

#[test]
fn chat_completions_plain_and_stream() {
    let request = json!({
        "model": "default",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        "max_tokens": 16, "temperature": 0.7, "seed": 3, "stop": ["\n\n"], "user": "someone",
    });
    let (status, body) = post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let id = body["id"].as_str().unwrap();
    // 128 random bits: ids of different answers do not collide.
    assert!(id.starts_with("chatcmpl-") && id.len() == 9 + 32, "{id}");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"]["content"].is_string());
    assert!(body["choices"][0]["finish_reason"].is_string());
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(body["hone"]["strategy"], "plain");

    let mut stream = request.clone();
    stream["stream"] = json!(true);
    let (status, text) = send("POST", "/v1/chat/completions", Some(&stream.to_string()));
    assert_eq!(status, 200, "{text}");
    // Keep-alive comments (": ...") may come first, while the answer is computed.
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("data: ") || l.starts_with(':')),
        "{text}"
    );
    let events: Vec<&str> = lines
        .into_iter()
        .filter(|l| l.starts_with("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e["data: ".len()..]).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // Plain decoding streams token by token: the pieces, joined, are the answer the same
    // request (same seed) gets whole, and the last chunk carries the finish and the usage.
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        pieces.len() > 1 || answer.chars().count() <= 1,
        "one piece for {answer:?}"
    );
    assert_eq!(pieces.concat(), answer);
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        body["choices"][0]["finish_reason"]
    );
    assert_eq!(last["usage"], body["usage"]);
    let (_, metrics) = send("GET", "/metrics", None);
    let first_tokens = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hone_time_to_first_token_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(first_tokens >= Some(1), "{metrics}");

    // A strategy prefix opts into test-time compute.
    let mut bon = request.clone();
    bon["model"] = json!("best_of_n/default");
    bon["hone"] = json!({"n": 2});
    let (status, body) = post("/v1/chat/completions", &bon);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hone"]["strategy"], "best_of_n");
    assert_eq!(body["model"], "best_of_n/default");

    let models = get_json("/v1/models");
    assert_eq!(models["object"], "list");
    assert!(models["data"].as_array().unwrap().len() >= 2);
}

#[test]
fn text_completions_answer_n_choices_and_refuse_what_they_cannot_serve() {
    let (status, body) = post(
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 6, "n": 2,
                "temperature": 0.8, "seed": 1, "user": "completions"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    }
    let usage = &body["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12, "{body}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    // Each refusal names its field.
    let vocab = server().state.policy().config().vocab_size;
    for (bad, field) in [
        (json!({"prompt": [1, vocab]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": "  "}), "prompt"),
        (json!({"prompt": "Hi", "n": 0}), "n"),
        (json!({"prompt": "Hi", "n": 65}), "n"),
        (json!({"prompt": "Hi", "max_tokens": 0}), "max_tokens"),
        (
            json!({"prompt": "Hi", "max_tokens": 3000, "n": 8}),
            "max_tokens",
        ),
        (json!({"prompt": "Hi", "stream": true}), "stream"),
        (
            json!({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (json!({"prompt": "Hi", "temperature": -1.0}), "temperature"),
        (json!({"prompt": "Hi", "model": "gpt-4"}), "model"),
    ] {
        let (status, body) = post("/v1/completions", &bad);
        assert!(matches!(status, 404 | 422), "{bad}: {status} {body}");
        assert_eq!(body["error"]["param"], field, "{bad}: {body}");
    }
    // Counted by status, and the answered one's tokens (other tests may add more).
    let (_, scrape) = send("GET", "/metrics", None);
    let counted = |status: u16| {
        let line = format!("hone_completions_total{{status=\"{status}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(counted(200) >= 1, "{scrape}");
    assert!(counted(422) + counted(404) >= 11, "{scrape}");
    let tokens = scrape
        .lines()
        .find_map(|l| l.strip_prefix("hone_completion_tokens_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(tokens >= usage["completion_tokens"].as_u64(), "{scrape}");
}

#[test]
fn a_request_states_its_own_constraints_or_the_prompt_does() {
    // Given in the request and scored alone: the score is the fraction met.
    let (status, body) = post(
        "/optimize",
        &json!({
            "prompt": "Name a fruit.", "strategy": "best_of_n", "n": 2, "max_tokens": 12,
            "constraints": [{"kind": "letter_case", "case": "uppercase"}],
            "constraints_only": true, "user": user_in(Arm::Optimized, "own"),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["constraints"]["source"], "request", "{body}");
    assert_eq!(body["constraints"]["constraints"][0]["case"], "uppercase");
    let answer = body["answer"].as_str().unwrap();
    let met = !answer.chars().any(char::is_lowercase);
    assert_eq!(
        body["score"].as_f64().unwrap(),
        if met { 1.0 } else { 0.0 },
        "{body}"
    );
    // Read from the prompt's words and added to the server's reward (here a 0-1 verifier):
    // a score above 1 can only come from both.
    let (status, body) = post(
        "/optimize",
        &json!({
            "prompt": "Name a fruit. Write your answer in all lowercase letters.",
            "strategy": "best_of_n", "n": 2, "max_tokens": 12,
            "user": user_in(Arm::Optimized, "prompt"),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["constraints"]["source"], "prompt", "{body}");
    assert_eq!(body["constraints"]["constraints"][0]["kind"], "letter_case");
    let answer = body["answer"].as_str().unwrap();
    let lower = !answer.chars().any(char::is_uppercase);
    let score = body["score"].as_f64().unwrap();
    assert_eq!(score >= 10.0, lower, "{body}");
    // `[]` turns the prompt's constraints off.
    let (status, body) = post(
        "/optimize",
        &json!({
            "prompt": "Name a fruit. Write your answer in all lowercase letters.",
            "strategy": "best_of_n", "n": 2, "max_tokens": 12, "constraints": [],
            "user": user_in(Arm::Optimized, "none"),
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.get("constraints").is_none(), "{body}");
    assert!(body["score"].as_f64().unwrap() <= 1.0, "{body}");
}

#[test]
fn bad_input_gets_documented_errors() {
    let ok = json!({"prompt": QUESTION, "n": 2, "max_tokens": 8});
    let with = |key: &str, value: Value| {
        let mut b = ok.clone();
        b[key] = value;
        b
    };
    // Malformed JSON.
    let (status, text) = send("POST", "/optimize", Some("{\"prompt\": "));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_error(status, &body, 400, None);
    // A wrong type names the field.
    let (status, body) = post("/optimize", &with("n", json!("two")));
    assert_error(status, &body, 400, Some("n"));
    let (status, body) = post("/optimize", &with("budget", json!({"compute": "lots"})));
    assert_error(status, &body, 400, Some("budget.compute"));
    // Unknown fields.
    let (status, body) = post("/optimize", &with("budgett", json!(5)));
    assert_error(status, &body, 400, None);
    // Semantically bad values.
    let (status, body) = post("/optimize", &with("budget", json!({"compute": -5})));
    assert_error(status, &body, 422, Some("budget.compute"));
    let (status, body) = post("/optimize", &json!({"messages": [], "n": 2}));
    assert_error(status, &body, 422, Some("messages"));
    let (status, body) = post("/optimize", &with("strategy", json!("beam_search")));
    assert_error(status, &body, 422, Some("strategy"));
    // Below one prefill of the prompt.
    let (status, body) = post("/optimize", &with("budget", json!({"compute": 3})));
    assert_error(status, &body, 422, Some("budget.compute"));
    // Bad constraints name the one at fault.
    let (status, body) = post("/optimize", &with("constraints", json!([{"kind": "nope"}])));
    assert_error(status, &body, 422, Some("constraints[0]"));
    let bounds =
        json!([{"kind": "word_count", "max": 3}, {"kind": "word_count", "min": 9, "max": 2}]);
    let (status, body) = post("/optimize", &with("constraints", bounds));
    assert_error(status, &body, 422, Some("constraints"));
    let (status, body) = post(
        "/optimize",
        &json!({"prompt": "hi", "constraints_only": true}),
    );
    assert_error(status, &body, 422, Some("constraints_only"));
    // Unknown reward and model.
    let (status, body) = post("/optimize", &with("reward", json!("nope")));
    assert_error(status, &body, 404, Some("reward"));
    let chat = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = post("/v1/chat/completions", &chat);
    assert_error(status, &body, 404, Some("model"));
    let (status, body) = post("/optimize", &json!({"prompt": "hi", "policy": "gpt-9"}));
    assert_error(status, &body, 404, Some("policy"));
    // Oversize body: refused from its Content-Length, before it is read.
    let (status, body) = oversize_post("/optimize", 2 << 20);
    assert_error(status, &body, 413, None);
    assert_healthy();
}

#[test]
fn a_stream_whose_client_leaves_is_cancelled() {
    let body = json!({
        "model": "tpo/default",
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 128, "stream": true, "hone": {"n": 2, "rounds": 1},
    })
    .to_string();
    let mut stream = TcpStream::connect(server().addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The head comes with the first keep-alive; then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("keep-alive") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!("no keep-alive: {}", String::from_utf8_lossy(&seen)),
            Ok(k) => seen.extend_from_slice(&buf[..k]),
        }
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(stream);
    // The next keep-alive write fails, the body is dropped, and the loop stops: counted as 499.
    let cancelled = "hone_requests_total{arm=\"optimized\",status=\"499\",strategy=\"tpo\"} 1";
    for _ in 0..240 {
        if send("GET", "/metrics", None).1.contains(cancelled) {
            assert_healthy();
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the abandoned stream was not cancelled");
}

#[test]
fn a_plain_request_whose_client_leaves_is_cancelled() {
    // Long enough to run for about half a minute if nobody stopped it.
    let body = json!({
        "prompt": "Write a long story about a dragon.", "strategy": "best_of_n", "n": 4,
        "max_tokens": 512, "user": user_in(Arm::Optimized, "leaves"),
    })
    .to_string();
    let mut stream = TcpStream::connect(server().addr).unwrap();
    write!(
        stream,
        "POST /optimize HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait until it runs (or waits for the model), then hang up without reading anything.
    let started = "hone_in_flight 1";
    for _ in 0..240 {
        let text = send("GET", "/metrics", None).1;
        if text.contains(started) || text.contains("hone_queue_depth 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stream);
    let cancelled =
        "hone_requests_total{arm=\"optimized\",status=\"499\",strategy=\"best_of_n\"} 1";
    for _ in 0..240 {
        let metrics = send("GET", "/metrics", None).1;
        if metrics.contains(cancelled) {
            // The two counters are separate atomics: give the second a moment to show.
            let route = "hone_requests_cancelled_total{route=\"/optimize\"}";
            let counted = (0..20).any(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                metric(&send("GET", "/metrics", None).1, route) >= 1.0
            });
            assert!(counted, "499 counted but not as cancelled: {metrics}");
            assert_healthy();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the abandoned request was not cancelled");
}

/// Announces a body of `len` bytes and sends none of it; returns the status and JSON body.
fn oversize_post(path: &str, len: usize) -> (u16, Value) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{{"
    );
    let raw = exchange(server().addr, &request)
        .unwrap_or_else(|| panic!("no answer to an oversized POST {path}"));
    (raw.status, raw.body)
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    /// The status line and headers, as sent.
    head: String,
    body: Value,
}

impl Raw {
    /// The value of header `name` (case-insensitive), if sent.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` as is and reads the answer until the server closes or a whole JSON body has
/// arrived; `None` when the server closed without answering.
fn exchange(addr: SocketAddr, request: &str) -> Option<Raw> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => response.extend_from_slice(&buf[..k]),
        }
        let text = String::from_utf8_lossy(&response);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if serde_json::from_str::<Value>(body).is_ok() {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some(Raw {
        status,
        head: head.to_string(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    })
}

/// A request with the given method, path, extra header lines and body.
fn request(method: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn bodies_must_be_declared_json() {
    let body = json!({"prompt": "hi", "strategy": "plain", "max_tokens": 1}).to_string();
    for headers in [
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "",
    ] {
        for path in ["/optimize", "/v1/chat/completions"] {
            let raw = exchange(server().addr, &request("POST", path, headers, &body)).unwrap();
            assert_error(raw.status, &raw.body, 415, None);
            assert_eq!(raw.body["error"]["type"], "unsupported_media_type");
        }
    }
}

#[test]
fn wrong_methods_and_unknown_routes_get_json_errors() {
    for (method, path, allow) in [
        ("GET", "/optimize", "POST"),
        ("PUT", "/v1/chat/completions", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/metrics", "GET"),
    ] {
        let raw = exchange(server().addr, &request(method, path, "", "")).unwrap();
        assert_error(raw.status, &raw.body, 405, None);
        assert_eq!(raw.header("allow"), Some(allow), "{}", raw.head);
    }
    let raw = exchange(server().addr, &request("GET", "/nowhere", "", "")).unwrap();
    assert_error(raw.status, &raw.body, 404, None);
}

#[test]
fn errors_speak_plain_words() {
    let (status, body) = post("/optimize", &json!({"prompt": "hi", "n": "two"}));
    assert_error(status, &body, 400, Some("n"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("a non-negative integer"), "{message}");
    assert!(!message.contains("usize"), "{message}");
    let (status, body) = post(
        "/optimize",
        &json!({"prompt": "hi", "budget": {"compute": 1.5}}),
    );
    assert_error(status, &body, 400, Some("budget.compute"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("an integer"), "{message}");
    assert!(!message.contains("i64"), "{message}");
}

#[test]
fn a_vanishing_temperature_is_refused() {
    let (status, body) = post("/optimize", &json!({"prompt": "hi", "temperature": 1e-39}));
    assert_error(status, &body, 422, Some("temperature"));
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-39});
    let (status, body) = post("/v1/chat/completions", &chat);
    assert_error(status, &body, 422, Some("temperature"));
}

#[test]
fn a_stream_below_one_prefill_is_refused_before_it_starts() {
    let chat = json!({
        "messages": [{"role": "user", "content": QUESTION}], "stream": true,
        "hone": {"budget": {"compute": 3}},
    });
    let (status, body) = post("/v1/chat/completions", &chat);
    assert_error(status, &body, 422, Some("budget.compute"));
    let optimize = json!({"prompt": QUESTION, "stream": true, "budget": {"compute": 3}});
    let (status, body) = post("/optimize", &optimize);
    assert_error(status, &body, 422, Some("budget.compute"));
}

#[test]
fn rewards_are_listed_and_errors_name_no_paths() {
    // An unknown reward: a short message that says where the list is.
    let (status, body) = post("/optimize", &json!({"prompt": "hi", "reward": "nope"}));
    assert_error(status, &body, 404, Some("reward"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("GET /rewards"), "{message}");
    assert!(!message.contains("check"), "{message}");
    let list = get_json("/rewards");
    assert_eq!(list["default"], "check");
    let rewards = list["rewards"].as_array().unwrap();
    let find = |name: &str| rewards.iter().find(|r| r["name"] == name).cloned();
    assert_eq!(find("check").unwrap()["available"], true, "{list}");
    assert_eq!(find("broken").unwrap()["available"], false, "{list}");
    // A reward whose files are missing: 503 naming the reward, never a path.
    let (status, text) = send(
        "POST",
        "/optimize",
        Some(&json!({"prompt": "hi", "reward": "broken"}).to_string()),
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_error(status, &body, 503, Some("reward"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`broken`"), "{message}");
    assert!(
        !message.contains('/') && !message.contains("no-such-model"),
        "{message}"
    );
}

#[test]
fn an_api_key_is_required_when_configured() {
    let addr = guarded().addr;
    let models =
        |headers: &str| exchange(addr, &request("GET", "/v1/models", headers, "")).unwrap();
    let raw = models("");
    assert_error(raw.status, &raw.body, 401, None);
    assert_eq!(raw.body["error"]["type"], "authentication_error");
    assert_eq!(raw.header("www-authenticate"), Some("Bearer"));
    let raw = models("Authorization: Bearer test-key-2\r\n");
    assert_error(raw.status, &raw.body, 401, None);
    let raw = models(&format!("Authorization: Bearer {KEY}\r\n"));
    assert_eq!(raw.status, 200, "{}", raw.head);
    assert_eq!(raw.body["object"], "list");
    // Probes and scrapers need no key.
    for path in ["/health", "/metrics"] {
        let raw = exchange(addr, &request("GET", path, "", "")).unwrap();
        assert_eq!(raw.status, 200, "{path}: {}", raw.head);
    }
}

#[test]
fn a_slow_body_is_cut_off() {
    // Declares 100 bytes, sends 10, and waits: the server's request timeout is 2 s.
    let mut stream = TcpStream::connect(guarded().addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    write!(
        stream,
        "POST /optimize HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"prompt\":"
    )
    .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => response.extend_from_slice(&buf[..k]),
            Err(e) => panic!("no answer after {:?}: {e}", started.elapsed()),
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(6), "held for {elapsed:?}");
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    if let Some((_, body)) = text.split_once("\r\n\r\n") {
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["type"], "request_timeout", "{body}");
    }
}

/// Waits until the guarded server's metrics contain `line`.
fn wait_for_metric(line: &str) {
    let addr = guarded().addr;
    let mut last = String::new();
    for _ in 0..600 {
        // The server's request timeout is short and the model keeps both cores busy: a scrape
        // may time out (408); try again.
        match ureq::get(&format!("http://{addr}/metrics")).call() {
            Ok(r) => {
                let metrics = r.into_string().unwrap();
                if metrics.lines().any(|l| l == line) {
                    return;
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("`{line}` never appeared in /metrics (last error: {last})");
}

#[test]
fn a_queued_request_whose_client_leaves_gives_its_place_up() {
    let addr = guarded().addr;
    // Long enough to keep the one model slot busy for about half a minute.
    let long = json!({
        "prompt": "Write a long story about a dragon.", "strategy": "best_of_n", "n": 4,
        "max_tokens": 512,
    })
    .to_string();
    let auth = format!("Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n");
    let open = || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(request("POST", "/optimize", &auth, &long).as_bytes())
            .unwrap();
        stream
    };
    let running = open();
    wait_for_metric("hone_in_flight 1");
    let waiting = open();
    wait_for_metric("hone_queue_depth 1");
    // The queue (one place) is full: 429, with a Retry-After.
    let raw = exchange(addr, &request("POST", "/optimize", &auth, &long)).unwrap();
    assert_error(raw.status, &raw.body, 429, None);
    let retry: u64 = raw.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0);
    // The waiting client leaves: its place is free at once, and it counts as cancelled.
    drop(waiting);
    wait_for_metric("hone_queue_depth 0");
    wait_for_metric("hone_requests_cancelled_total{route=\"/optimize\"} 1");
    let next = open();
    wait_for_metric("hone_queue_depth 1");
    drop(next);
    drop(running);
    wait_for_metric("hone_in_flight 0");
    wait_for_metric("hone_queue_depth 0");
}
