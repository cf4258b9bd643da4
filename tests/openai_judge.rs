//! OpenAI-compatible log-probabilities over real HTTP: a hone server on loopback serves
//! SmolLM2's `POST /v1/completions` with `logprobs`, which must be the engine's own
//! distribution, and an `openai_judge` reward pointed at that server must score as the local
//! judge on the same model does.

mod common;

use common::{load, model_path, Server};
use policies::store::SMOLLM2;
use policies::{GenerateParams, Logits, Message, Role, SamplingParams};
use reward_models::judge::{Judge, Prompts};
use reward_models::{Candidate, RewardModel};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// How far a reported log-probability may be from one recomputed by a fresh forward pass over
/// the prompt and the tokens before it: the server's comes from its decoding steps, which
/// multiply in another order than a pass over the whole sequence.
const LOGPROB_TOLERANCE: f64 = 1e-3;

/// How far the served judge's score may be from the local judge's, in rating points. The same
/// model reads the same tokens; what differs is that the server lists only the 20 likeliest
/// first tokens (a digit outside them counts 0) and that the local judge pads its batch.
const SCORE_TOLERANCE: f32 = 0.01;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(common::default_server)
}

fn complete(body: Value) -> (u16, String) {
    let url = format!("http://{}/v1/completions", server().addr);
    match ureq::post(&url).send_json(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// The part of an answer these tests read, each position's alternatives in the order written.
#[derive(Deserialize)]
struct Answer {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    logprobs: Logprobs,
}

#[derive(Deserialize)]
struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f64>,
    top_logprobs: Vec<Ordered>,
    text_offset: Vec<usize>,
}

/// A JSON object's entries as written (serde_json's own map sorts them by key).
struct Ordered(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of log-probabilities")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// `ln softmax(logits)[token]`, in f64.
fn log_softmax(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[token as usize] as f64 - max - sum.ln()
}

#[test]
fn completion_logprobs_are_the_engines_distribution() {
    let policy = load(&SMOLLM2);
    let prompt = policy
        .encode_chat(&[Message::new(Role::User, "Name a color.")])
        .unwrap();
    let k = 5;
    let (status, text) = complete(json!({
        "prompt": prompt, "max_tokens": 8, "n": 2, "temperature": 0.9, "seed": 3, "logprobs": k,
    }));
    assert_eq!(status, 200, "{text}");
    let answer: Answer = serde_json::from_str(&text).unwrap();
    assert_eq!(answer.choices.len(), 2);
    // The same engine on the same tokens samples the same: the ids of what the server wrote.
    let params = GenerateParams {
        max_tokens: 8,
        sampling: SamplingParams {
            temperature: 0.9,
            seed: 3,
            ..SamplingParams::default()
        },
        logprobs: Some(k),
        ..GenerateParams::default()
    };
    let (here, _) = policy.generate(&prompt, 2, &params).unwrap();
    let tokenizer = policy.tokenizer();
    for (choice, generation) in answer.choices.iter().zip(&here) {
        let lp = &choice.logprobs;
        let ids: Vec<u32> = generation.logprobs.iter().map(|t| t.token).collect();
        assert!(!ids.is_empty());
        let spelled: Vec<String> = ids
            .iter()
            .map(|&id| tokenizer.decode(&[id], false).unwrap())
            .collect();
        assert_eq!(lp.tokens, spelled);
        // The whole sequence in one pass: position p's logits predict token p + 1.
        let mut sequence = prompt.clone();
        sequence.extend(&ids[..ids.len() - 1]);
        let model = policy.model();
        let mut cache = model.new_cache(1);
        let logits = model
            .forward(&[sequence.as_slice()], &mut cache, Logits::All)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut offset = 0;
        for (i, &id) in ids.iter().enumerate() {
            let want = log_softmax(&logits[prompt.len() - 1 + i], id);
            let got = lp.token_logprobs[i];
            assert!(
                (got - want).abs() < LOGPROB_TOLERANCE,
                "token {i}: {got} vs {want}"
            );
            let top = &lp.top_logprobs[i].0;
            assert!(!top.is_empty() && top.len() <= k, "{text}");
            assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "unsorted: {text}");
            assert!(top.iter().all(|(_, l)| *l <= 0.0), "{text}");
            let mass: f64 = top.iter().map(|(_, l)| l.exp()).sum();
            assert!(mass <= 1.0 + 1e-4, "{mass}");
            // The likeliest is at least as likely as the token drawn, and the engine's own.
            assert!(top[0].1 >= got - LOGPROB_TOLERANCE, "{text}");
            let best = policies::sampling::argmax(&logits[prompt.len() - 1 + i]);
            assert_eq!(top[0].0, tokenizer.decode(&[best], false).unwrap());
            assert_eq!(lp.text_offset[i], offset);
            offset += lp.tokens[i].chars().count();
        }
    }
    // OpenAI's limit is 20 alternatives.
    for bad in [21, -1] {
        let (status, text) = complete(json!({"prompt": "Hi", "logprobs": bad}));
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 422, "{text}");
        assert_eq!(body["error"]["param"], "logprobs", "{text}");
    }
    // Without `logprobs` there are none, as before.
    let (status, text) = complete(json!({"prompt": "Hi", "max_tokens": 2}));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(body["choices"][0]["logprobs"].is_null(), "{text}");
}

fn build(name: &str, text: &str) -> Arc<dyn RewardModel> {
    common::reward_from_manifest(name, text)
}

fn smollm2_files() -> String {
    model_path(&SMOLLM2).to_string_lossy().into_owned()
}

const PAIRS: [(&str, &str); 3] = [
    ("What is the capital of France?", "Paris."),
    (
        "What is 2 + 2?",
        "2 + 2 is 5, because numbers are hard and I am not sure at all.",
    ),
    (
        "Name a primary color.",
        "Red is a primary color, and so are blue and yellow.",
    ),
];

#[test]
fn the_openai_judge_scores_as_the_local_judge() {
    let served = build(
        "served",
        &format!(
            "kind = \"openai_judge\"\nurl = \"http://{}/v1\"\nmodel = '{}'\nlength_penalty = 0.5\n",
            server().addr,
            smollm2_files()
        ),
    );
    let local = Judge::new(Arc::new(load(&SMOLLM2)), Prompts::default())
        .unwrap()
        .with_length_penalty(0.5)
        .unwrap();
    let conversations: Vec<[Message; 1]> = PAIRS
        .iter()
        .map(|(q, _)| [Message::new(Role::User, *q)])
        .collect();
    let batch: Vec<Candidate> = conversations
        .iter()
        .zip(PAIRS)
        .map(|(messages, (_, response))| Candidate { messages, response })
        .collect();
    let here = local.score(&batch).unwrap();
    let there = served.score(&batch).unwrap();
    for ((a, b), (q, _)) in here.iter().zip(&there).zip(PAIRS) {
        assert!(
            (a.value - b.value).abs() < SCORE_TOLERANCE,
            "{q}: local {} vs served {}",
            a.value,
            b.value
        );
    }
    assert_eq!(served.max_score(), Some(9.0));
}

#[test]
fn a_judge_server_that_fails_is_named() {
    let messages = [Message::new(Role::User, PAIRS[0].0)];
    let batch = [Candidate {
        messages: &messages,
        response: PAIRS[0].1,
    }];
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = build(
        "down",
        &format!(
            "kind = \"openai_judge\"\nurl = \"http://127.0.0.1:{port}\"\nmodel = '{}'\nretries = 0\n",
            smollm2_files()
        ),
    );
    let e = down.score(&batch).unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    // A server that refuses: its status and its own words.
    let refused = build(
        "refused",
        &format!(
            "kind = \"openai_judge\"\nurl = \"http://{}\"\nmodel = '{}'\nserved_model = \"gpt-4\"\n",
            server().addr,
            smollm2_files()
        ),
    );
    let e = refused.score(&batch).unwrap_err().to_string();
    assert!(
        e.contains("404") && e.contains("unknown model `gpt-4`"),
        "{e}"
    );
}
