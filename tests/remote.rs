//! A remote policy over real HTTP: a hone server on loopback serves SmolLM2 through
//! `POST /v1/completions`, and the remote policy (policies' `remote.rs`) sends it token ids.
//! The server runs the same engine on the same tokens, so the remote generations must be the
//! local ones exactly, and the loops must run over it under their budget.

mod common;

use common::{load, model_path, start, Server};
use hone::budget::Budget;
use hone::server::Config;
use hone::strategy::{Engine, Execution, Learned, Request, Strategy};
use policies::store::SMOLLM2;
use policies::{
    Endpoint, GenerateParams, LanguageModel, Message, PolicyError, RemotePolicy, Role,
    SamplingParams, Speculation,
};
use std::sync::OnceLock;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(common::default_server)
}

fn remote() -> RemotePolicy {
    remote_of(None)
}

/// A remote policy on the loopback server that asks for at most `max_n` rows per call.
fn remote_of(max_n: Option<usize>) -> RemotePolicy {
    let endpoint = Endpoint {
        url: format!("http://{}/v1", server().addr),
        max_n,
        ..Endpoint::default()
    };
    RemotePolicy::open(&model_path(&SMOLLM2), endpoint).unwrap()
}

fn params(temperature: f32, seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature,
            top_p: 0.95,
            seed,
            ..SamplingParams::default()
        },
        stop: vec!["\n\n".into()],
        ..GenerateParams::default()
    }
}

#[test]
fn remote_generations_are_the_local_engines_exactly() {
    let local = load(&SMOLLM2);
    let messages = [Message::new(Role::User, "Name two rivers of Europe.")];
    let prompt = local.encode_chat(&messages).unwrap();
    // The last case asks a server that gives 2 rows a call for 3: two calls, each prefilling
    // the prompt, rows still seeded seed + i.
    for (temperature, n, max_n) in [(0.0, 1, None), (0.8, 3, None), (0.8, 3, Some(2))] {
        let remote = remote_of(max_n);
        assert_eq!(remote.encode_chat(&messages).unwrap(), prompt);
        let p = params(temperature, 5);
        let (here, _) = local.generate(&prompt, n, &p).unwrap();
        let (there, stats) = LanguageModel::generate(&remote, &prompt, n, &p).unwrap();
        assert_eq!(here.len(), n);
        assert_eq!(there.len(), n);
        for (i, (a, b)) in here.iter().zip(&there).enumerate() {
            assert_eq!(a.text, b.text, "row {i} at T = {temperature}");
            assert_eq!(a.finish, b.finish, "row {i} at T = {temperature}");
        }
        // The server's usage: the prompt once a call, and every token it generated.
        let calls = n.div_ceil(max_n.unwrap_or(n));
        assert_eq!(stats.prefill_tokens, calls * prompt.len());
        let generated: usize = here.iter().map(|g| g.tokens.len()).sum();
        assert_eq!(stats.decode_tokens, generated);
    }
}

#[test]
fn tpo_runs_over_a_remote_policy_within_its_budget() {
    let remote = remote();
    let reward = common::shipped_reward("concise");
    let learned = Learned::default();
    let engine = Engine {
        policy: &remote,
        reward: reward.as_ref(),
        reward_weight: 0.0,
        learned: &learned,
        execution: Execution::Batched,
        speculation: Speculation::OFF,
    };
    let request = Request {
        messages: vec![Message::new(
            Role::User,
            "Sorry to ask, but apologise first and then say what the sea is.",
        )],
        n: 2,
        rounds: 1,
        max_tokens: 32,
        budget: Budget::compute(1200),
        ..Request::default()
    };
    let trace = Strategy::Tpo.run(&engine, &request, None, None).unwrap();
    assert!(!trace.answer.trim().is_empty());
    assert!(trace.usage.compute <= 1200, "{:?}", trace.usage);
    assert!(trace.usage.policy_positions > 0);
    assert_eq!(trace.rounds[0].candidates.len(), 2, "{trace:?}");
}

#[test]
fn a_remote_policy_refuses_what_it_cannot_do_and_names_the_server() {
    let remote = remote();
    let prompt = remote
        .encode_chat(&[Message::new(Role::User, "Hi.")])
        .unwrap();
    let tight = GenerateParams {
        max_positions: Some(prompt.len()),
        ..params(0.0, 0)
    };
    let e = LanguageModel::generate(&remote, &prompt, 1, &tight).unwrap_err();
    assert!(matches!(e, PolicyError::OverBudget { .. }), "{e}");
    let drafting = GenerateParams {
        speculation: Speculation::drafts(4),
        ..params(0.0, 0)
    };
    let e = LanguageModel::generate(&remote, &prompt, 1, &drafting).unwrap_err();
    assert!(e.to_string().contains("speculation"), "{e}");
    // Nothing listens on port 9 of loopback (discard, normally closed).
    let gone = RemotePolicy::open(
        &model_path(&SMOLLM2),
        Endpoint {
            url: "http://127.0.0.1:9".into(),
            ..Endpoint::default()
        },
    )
    .unwrap();
    let e = LanguageModel::generate(&gone, &prompt, 1, &params(0.0, 0)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Remote(m) if m.contains("127.0.0.1:9")),
        "{e}"
    );
    // An https address goes through TLS: a server answering in plain text fails the handshake.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(mut stream)) = plain.incoming().next() {
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 200 OK\r\n\r\n");
        }
    });
    let https = RemotePolicy::open(
        &model_path(&SMOLLM2),
        Endpoint {
            url: format!("https://{addr}/v1"),
            ..Endpoint::default()
        },
    )
    .unwrap();
    let e = LanguageModel::generate(&https, &prompt, 1, &params(0.0, 0)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Remote(m) if m.contains("InvalidContentType")),
        "{e}"
    );
    let e = RemotePolicy::open(
        &model_path(&SMOLLM2),
        Endpoint {
            url: "ftp://127.0.0.1:21".into(),
            ..Endpoint::default()
        },
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("not an http:// or https:// address"), "{e}");
}

/// `hone serve --remote`: a hone whose policy runs on another server answers what that server
/// would answer itself, and runs its loops over it.
#[test]
fn a_server_in_front_of_a_remote_policy_answers_as_the_one_behind_it() {
    let behind = server();
    let front = start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        model: model_path(&SMOLLM2).to_string_lossy().into_owned(),
        remote: Some(format!("http://{}", behind.addr)),
        cpu: true,
        workers: Some(2),
        max_budget: Some(20_000),
        ..Config::default()
    });
    let post = |addr: std::net::SocketAddr, body: serde_json::Value| -> serde_json::Value {
        let reply = ureq::post(&format!("http://{addr}/optimize"))
            .send_json(body)
            .unwrap_or_else(|e| panic!("{e}"));
        reply.into_json().unwrap()
    };
    let plain = serde_json::json!({
        "prompt": "Name a color.", "strategy": "plain", "max_tokens": 12,
        "temperature": 0.7, "seed": 9,
    });
    let here = post(behind.addr, plain.clone());
    let there = post(front.addr, plain);
    assert_eq!(here["answer"], there["answer"], "{here}\n{there}");
    let tpo = post(
        front.addr,
        serde_json::json!({
            "prompt": "Say what a river is.", "strategy": "tpo", "n": 2, "rounds": 1,
            "max_tokens": 24, "budget": {"compute": 1500},
        }),
    );
    assert!(tpo["usage"]["compute"].as_u64().unwrap() <= 1500, "{tpo}");
    assert!(!tpo["answer"].as_str().unwrap().trim().is_empty(), "{tpo}");
    // What the front server reports as the model is the model's files' name.
    assert_eq!(front.state.policy().name(), behind.state.policy().name());
    assert!(front.state.policy().local().is_none());
}
