//! Reward models: classifier conformance with transformers, the default judge, remote scorers,
//! and errors. The tiny random-weight checkpoints and their reference scores come from
//! scripts/reference/make_tiny_models.py.

mod common;

use candle_core::Device;
use policies::{Checkpoint, Logits, Message, Policy, Role, Transformer};
use reward_models::classifier::ClassifierRm;
use reward_models::remote::RemoteScorer;
use reward_models::{Candidate, RewardError, RewardModel};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// f32 agreement with transformers' f32 forward pass.
const TOL: f32 = 1e-4;

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

#[derive(Deserialize)]
struct Reference {
    causal: HashMap<String, Vec<CausalCase>>,
    reward: HashMap<String, RewardCase>,
    chat: ChatCase,
}

#[derive(Deserialize)]
struct CausalCase {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct RewardCase {
    single: Vec<Single>,
    batched: Batched,
}

#[derive(Deserialize)]
struct Single {
    ids: Vec<u32>,
    score: f32,
}

#[derive(Deserialize)]
struct Batched {
    scores: Vec<f32>,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<Message>,
    response: String,
    text: String,
    ids: Vec<u32>,
    score: f32,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(tiny("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn safetensors_causal_models_match_transformers() {
    let r = reference();
    for name in ["llama", "qwen2"] {
        let policy = Policy::load(&tiny(name), &Device::Cpu).unwrap();
        let cases = &r.causal[name];
        assert!(!cases.is_empty(), "{name}: no reference cases");
        for case in cases {
            let model = policy.model();
            let mut cache = model.new_cache(1);
            let ours: Vec<Vec<f32>> = model
                .forward(&[case.ids.as_slice()], &mut cache, Logits::All)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(
                ours.len(),
                case.logits.len(),
                "{name}: positions, ours vs transformers'"
            );
            for (pos, (a, b)) in ours.iter().zip(&case.logits).enumerate() {
                assert_eq!(a.len(), b.len(), "{name} position {pos}: vocabulary sizes");
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(d < TOL, "{name} position {pos}: max |diff| {d}");
            }
        }
    }
}

#[test]
fn classifier_scores_match_transformers_single_and_batched() {
    let r = reference();
    for name in ["llama_rm", "qwen2_rm"] {
        let rm = ClassifierRm::load(&tiny(name), &Device::Cpu).unwrap();
        let case = &r.reward[name];
        assert!(!case.single.is_empty(), "{name}: no reference cases");
        let rows: Vec<Vec<u32>> = case.single.iter().map(|s| s.ids.clone()).collect();
        for s in &case.single {
            let ours = rm.score_ids(std::slice::from_ref(&s.ids)).unwrap()[0];
            assert!(
                (ours - s.score).abs() < TOL,
                "{name}: {ours} vs {}",
                s.score
            );
        }
        let batched = rm.score_ids(&rows).unwrap();
        assert_eq!(batched.len(), rows.len(), "{name}: one score per row");
        assert_eq!(
            batched.len(),
            case.batched.scores.len(),
            "{name}: batched scores, ours vs transformers'"
        );
        for (ours, theirs) in batched.iter().zip(&case.batched.scores) {
            assert!(
                (ours - theirs).abs() < TOL,
                "{name} batched: {ours} vs {theirs}"
            );
        }
    }
}

#[test]
fn classifier_scores_a_conversation_from_text() {
    let r = reference();
    let rm = ClassifierRm::load(&tiny("llama_rm"), &Device::Cpu).unwrap();
    let c = Candidate {
        messages: &r.chat.messages,
        response: &r.chat.response,
    };
    let score = rm.score(&[c, c]).unwrap();
    assert!(
        (score[0].value - r.chat.score).abs() < TOL,
        "{} vs {}",
        score[0].value,
        r.chat.score
    );
    assert_eq!(score[0], score[1]);
    // The conversation is read as transformers reads it: the same chat template text and the
    // same token ids, and those ids are what the score was computed from.
    let mut conversation = r.chat.messages.clone();
    conversation.push(Message::new(Role::Assistant, &r.chat.response));
    let mut ck = Checkpoint::open(&tiny("llama_rm"), &Device::Cpu).unwrap();
    let template = ck.template.clone().expect("llama_rm has a chat template");
    assert_eq!(template.render(&conversation, false).unwrap(), r.chat.text);
    let body = Transformer::load(ck.config, &mut ck.weights).unwrap();
    let reader = Policy::from_parts(ck.name, body, ck.tokenizer, ck.template);
    assert_eq!(
        reader.encode_conversation(&conversation).unwrap(),
        r.chat.ids
    );
    assert_eq!(
        rm.score_ids(std::slice::from_ref(&r.chat.ids)).unwrap()[0],
        score[0].value
    );
}

#[test]
fn classifier_errors_name_the_cause() {
    let err =
        |r: Result<ClassifierRm, RewardError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    // A causal LM has no score head.
    assert!(err(ClassifierRm::load(&tiny("llama"), &Device::Cpu)).contains("score.weight"));
    // A tokenizer larger than the model's vocabulary.
    let dir = std::env::temp_dir().join(format!("hone-rm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(tiny("llama_rm").join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tiny("llama_rm").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["vocab_size"] = 100.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert!(err(ClassifierRm::load(&dir, &Device::Cpu)).contains("mismatched tokenizer"));
    std::fs::remove_dir_all(&dir).ok();
    // Longer than the context (128 positions).
    let rm = ClassifierRm::load(&tiny("llama_rm"), &Device::Cpu).unwrap();
    let messages = [Message::new(Role::User, "hi")];
    let long = "word ".repeat(400);
    let e = rm
        .score(&[Candidate {
            messages: &messages,
            response: &long,
        }])
        .unwrap_err();
    assert!(matches!(e, RewardError::InputTooLong { .. }), "{e}");
}

/// A one-shot HTTP server on loopback answering every request with `status` and `body`.
fn serve(status: u16, body: &'static str, requests: usize) -> String {
    serve_seen(status, body, requests).0
}

/// [`serve`], also handing over each request's `Authorization` header ("" when absent).
fn serve_seen(
    status: u16,
    body: &'static str,
    requests: usize,
) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut len, mut auth) = (0, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("authorization:") {
                    auth = line["authorization:".len()..].trim().to_string();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut buf = vec![0; len];
            reader.read_exact(&mut buf).unwrap();
            let _ = seen.send(auth);
            let reply = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (format!("http://{addr}/score"), heard)
}

#[test]
fn remote_scorer_round_trip_and_failures() {
    let messages = [Message::new(Role::User, "q")];
    let batch = [
        Candidate {
            messages: &messages,
            response: "a",
        },
        Candidate {
            messages: &messages,
            response: "b",
        },
    ];
    let t = Duration::from_secs(5);

    let (url, heard) = serve_seen(
        200,
        r#"{"scores": [0.5, 2.0], "reasons": [["short"], []]}"#,
        2,
    );
    let ok = RemoteScorer::new(url.clone(), t, 0, None).unwrap();
    let s = ok.score(&batch).unwrap();
    assert_eq!((s[0].value, s[1].value), (0.5, 2.0));
    assert_eq!(s[0].reasons, vec!["short".to_string()]);
    assert_eq!(heard.recv().unwrap(), "", "no key, no header");
    let keyed = RemoteScorer::new(url, t, 0, Some("sk-test".into())).unwrap();
    keyed.score(&batch).unwrap();
    assert_eq!(heard.recv().unwrap(), "Bearer sk-test");

    let wrong_count = RemoteScorer::new(serve(200, r#"{"scores": [1.0]}"#, 1), t, 0, None).unwrap();
    assert!(wrong_count
        .score(&batch)
        .unwrap_err()
        .to_string()
        .contains("1 scores for 2 items"));

    let rejected =
        RemoteScorer::new(serve(422, r#"{"error": "bad items"}"#, 1), t, 2, None).unwrap();
    assert!(rejected
        .score(&batch)
        .unwrap_err()
        .to_string()
        .contains("422"));

    let flaky = RemoteScorer::new(serve(503, "{}", 2), t, 1, None).unwrap();
    assert!(flaky
        .score(&batch)
        .unwrap_err()
        .to_string()
        .contains("after 2 attempts"));

    // Nothing listens on the port of a listener that was just dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = RemoteScorer::new(format!("http://127.0.0.1:{port}/score"), t, 1, None).unwrap();
    let e = down.score(&batch).unwrap_err();
    assert!(matches!(e, RewardError::Remote(_)), "{e}");
}

/// https URLs go through TLS: a server that answers in plain text fails the handshake (the
/// error names TLS, not the address), and schemes other than http and https are refused.
#[test]
fn remote_scorers_speak_tls_on_https_urls() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(mut stream)) = listener.incoming().next() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let messages = [Message::new(Role::User, "q")];
    let batch = [Candidate {
        messages: &messages,
        response: "a",
    }];
    let plain = RemoteScorer::new(
        format!("https://{addr}/score"),
        Duration::from_secs(5),
        0,
        None,
    )
    .unwrap();
    let e = plain.score(&batch).unwrap_err().to_string();
    assert!(e.contains("tls connection init failed"), "{e}");
    let e = RemoteScorer::new(
        "ftp://example.com/score".into(),
        Duration::from_secs(1),
        0,
        None,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("http:// or https://"), "{e}");
}

/// A remote reward whose key variable is unset fails to build, naming the variable.
#[test]
fn a_remote_reward_names_its_missing_key_variable() {
    let dir = std::env::temp_dir().join(format!("hone-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosted.toml"),
        "kind = \"remote\"\nurl = \"https://scorer.example/score\"\napi_key_env = \"HONE_TEST_KEY_THAT_IS_NOT_SET\"\n",
    )
    .unwrap();
    let manifests = reward_models::manifest::Manifests::read_dir(&dir).unwrap();
    let e = manifests
        .build("hosted", &candle_core::Device::Cpu, &mut Default::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(e.contains("HONE_TEST_KEY_THAT_IS_NOT_SET"), "{e}");
}

#[test]
fn default_manifests_parse_and_build() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reward_models/manifests");
    let manifests = reward_models::manifest::Manifests::read_dir(&dir).unwrap();
    let names: Vec<&str> = manifests.names().collect();
    assert!(
        names.contains(&"default") && names.contains(&"judge_concise"),
        "{names:?}"
    );
    let mut cache = reward_models::manifest::PolicyCache::default();
    let combined = manifests
        .build("judge_concise", &Device::Cpu, &mut cache)
        .unwrap();
    let messages = [Message::new(Role::User, "Say hello.")];
    let s = combined
        .score(&[Candidate {
            messages: &messages,
            response: "Sorry, hello.",
        }])
        .unwrap();
    assert!(
        s[0].reasons.iter().any(|r| r.contains("sorry")),
        "{:?}",
        s[0].reasons
    );
    let e = manifests
        .build("nope", &Device::Cpu, &mut cache)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown reward `nope`"), "{e}");
}

#[test]
fn model_scorers_stop_when_interrupted() {
    use policies::Interrupt;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let r = reference();
    let c = Candidate {
        messages: &r.chat.messages,
        response: &r.chat.response,
    };
    let cancelled = Interrupt {
        cancel: Some(Arc::new(AtomicBool::new(true))),
        deadline: None,
    };
    let late = Interrupt {
        cancel: None,
        deadline: Some(std::time::Instant::now()),
    };
    let rm = ClassifierRm::load(&tiny("llama_rm"), &Device::Cpu).unwrap();
    let e = rm.score_interruptible(&[c, c], &cancelled).unwrap_err();
    assert!(matches!(e, RewardError::Cancelled), "{e}");
    let e = rm.score_interruptible(&[c], &late).unwrap_err();
    assert!(matches!(e, RewardError::DeadlinePassed), "{e}");
    assert_eq!(
        rm.score_interruptible(&[c], &Interrupt::default()).unwrap(),
        rm.score(&[c]).unwrap()
    );
    // A judge inside a combination stops too.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reward_models/manifests");
    let manifests = reward_models::manifest::Manifests::read_dir(&dir).unwrap();
    let mut cache = reward_models::manifest::PolicyCache::default();
    let combined = manifests
        .build("judge_concise", &Device::Cpu, &mut cache)
        .unwrap();
    let e = combined.score_interruptible(&[c], &cancelled).unwrap_err();
    assert!(matches!(e, RewardError::Cancelled), "{e}");
}

/// A judge's `length_penalty` takes that many rating points off per doubling of the response's
/// words, and nothing else changes; a negative one is refused.
#[test]
fn a_length_penalty_lowers_ratings_by_log2_words() {
    let dir = std::env::temp_dir().join(format!("hone-lc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let judge = |penalty: &str| format!("kind = \"judge\"\nmodel = \"default\"\n{penalty}");
    std::fs::write(dir.join("plain.toml"), judge("")).unwrap();
    std::fs::write(dir.join("lc.toml"), judge("length_penalty = 0.5\n")).unwrap();
    std::fs::write(dir.join("bad.toml"), judge("length_penalty = -1.0\n")).unwrap();
    let manifests = reward_models::manifest::Manifests::read_dir(&dir).unwrap();
    let mut cache = reward_models::manifest::PolicyCache::default();
    let plain = manifests.build("plain", &Device::Cpu, &mut cache).unwrap();
    let lc = manifests.build("lc", &Device::Cpu, &mut cache).unwrap();
    let bad = manifests
        .build("bad", &Device::Cpu, &mut cache)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(bad.contains("length_penalty"), "{bad}");
    let messages = [Message::new(Role::User, "What is the capital of France?")];
    let responses = [
        "Paris.",
        "The capital of France is Paris, a city on the Seine river.",
    ];
    let batch: Vec<Candidate<'_>> = responses
        .iter()
        .map(|r| Candidate {
            messages: &messages,
            response: r,
        })
        .collect();
    let (a, b) = (plain.score(&batch).unwrap(), lc.score(&batch).unwrap());
    assert_eq!((a.len(), b.len()), (2, 2));
    for ((x, y), text) in a.iter().zip(&b).zip(responses) {
        let words = text.split_whitespace().count() as f32;
        let want = x.value - 0.5 * words.log2();
        assert!(
            (y.value - want).abs() < 1e-5,
            "{} vs {want} for {text:?}",
            y.value
        );
    }
    // Side by side, the same penalty comes off the log-odds per doubling of the first
    // response's words over the second's.
    use reward_models::judge::{Judge, Prompts};
    let policy = cache
        .get("default", std::path::Path::new("."), &Device::Cpu)
        .unwrap();
    let plain = Judge::new(policy.clone(), Prompts::default()).unwrap();
    let lc = Judge::new(policy, Prompts::default())
        .unwrap()
        .with_length_penalty(0.5)
        .unwrap();
    let logit = |p: f32| (p / (1.0 - p)).ln();
    let (p, q) = (
        plain
            .prefer_first(&messages, responses[0], responses[1])
            .unwrap(),
        lc.prefer_first(&messages, responses[0], responses[1])
            .unwrap(),
    );
    let words = |t: &str| (t.split_whitespace().count() as f32).log2();
    let want = logit(p) - 0.5 * (words(responses[0]) - words(responses[1]));
    assert!((logit(q) - want).abs() < 1e-3, "{} vs {want}", logit(q));
    assert!(q > p, "the shorter response gains: {p} -> {q}");
}
