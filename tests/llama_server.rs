//! hone over a real llama.cpp server: `llama-server`, built from the llama.cpp that
//! llama-cpp-python 0.3.36 vendors (`scripts/llama_server.sh`, which `.ci/run` runs), serving
//! the default model on loopback. Another engine on the same GGUF: the remote policy generates
//! through it, TPO and best-of-N run over it within their budgets, and the OpenAI-compatible
//! judge scores through it as hone's own judge does, within the two engines' numerical
//! difference (tests/reference.rs measures it: mean 0.12 in log-probability on SmolLM2).

mod common;

use common::{load, model_path};
use hone::budget::Budget;
use hone::strategy::{Engine, Execution, Learned, Request, Strategy};
use policies::store::SMOLLM2;
use policies::{
    Endpoint, GenerateParams, LanguageModel, Logits, Message, RemotePolicy, Role, SamplingParams,
    Speculation,
};
use reward_models::judge::{Judge, Prompts};
use reward_models::{Candidate, RewardModel};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows a server decodes at once (`-np`): the most a call may ask for.
const SLOTS: usize = 4;

/// How far below hone's most likely token (in log-probability: the logits' differences) a token
/// of the server's greedy path may be. tests/reference.rs measures the two engines apart by at
/// most 0.86 at any of SmolLM2's top 32 tokens; on this prompt the gaps were 0.006 (the first
/// token, a near-tie), 0.20 and otherwise 0.
const GREEDY_TIE: f32 = 1.0;

/// How far the judge's expected rating through llama.cpp may be from hone's own, in rating
/// points (1-9). Both read the same tokens with the same model; llama.cpp multiplies in another
/// order and lists only the 20 likeliest first tokens.
const RATING_TOLERANCE: f32 = 0.5;

/// A llama.cpp server on a free loopback port, stopped when dropped (also when a test fails).
struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `scripts/llama_server.sh` puts the binary, or `HONE_LLAMA_SERVER`.
fn binary() -> PathBuf {
    let path = std::env::var_os("HONE_LLAMA_SERVER").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llama.cpp/build/bin/llama-server"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no llama-server at {}: run scripts/llama_server.sh first (README, \"Set up\"), \
         or point HONE_LLAMA_SERVER at one",
        path.display()
    );
    path
}

impl LlamaServer {
    fn start(name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!(
            "hone-llama-server-{name}-{}.log",
            std::process::id()
        ));
        let child = Command::new(binary())
            .arg("-m")
            .arg(model_path(&SMOLLM2))
            .args(["-np", &SLOTS.to_string(), "-c", "8192", "-t", "2"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let health = format!("{}/health", server.url);
        let start = Instant::now();
        while ureq::get(&health).call().is_err() {
            let exited = server.child.try_wait().unwrap();
            if exited.is_some() || start.elapsed() > Duration::from_secs(120) {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("llama-server did not come up ({exited:?}):\n{said}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn policy(&self) -> RemotePolicy {
        let endpoint = Endpoint {
            url: format!("{}/v1", self.url),
            max_n: Some(SLOTS),
            ..Endpoint::default()
        };
        RemotePolicy::open(&model_path(&SMOLLM2), endpoint).unwrap()
    }
}

fn params(temperature: f32, seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature,
            top_p: 0.95,
            seed,
            ..SamplingParams::default()
        },
        ..GenerateParams::default()
    }
}

#[test]
fn a_llama_cpp_server_generates_what_hone_would() {
    let server = LlamaServer::start("generate");
    let remote = server.policy();
    let local = load(&SMOLLM2);
    let messages = [Message::new(Role::User, "What is the capital of France?")];
    let prompt = local.encode_chat(&messages).unwrap();
    assert_eq!(remote.encode_chat(&messages).unwrap(), prompt);
    // Greedy: every token the server picks is hone's pick, or nearly tied with it. The
    // engines' logits differ by rounding (tests/reference.rs: mean 0.12 in log-probability,
    // up to ~1), so where two tokens are nearly tied the two greedy paths may part (on this
    // prompt the very first token is such a tie: "L'" against "The"). hone's engine reads the
    // server's whole path, and each of its tokens must lie within GREEDY_TIE of hone's most
    // likely one at that point; another model, or a shifted prompt, lies many nats away.
    let (there, stats) = LanguageModel::generate(&remote, &prompt, 1, &params(0.0, 0)).unwrap();
    assert_eq!(there.len(), 1);
    let path = &there[0].tokens;
    assert!(path.len() >= 8, "{there:?}");
    let full: Vec<u32> = prompt.iter().chain(path).copied().collect();
    let model = local.model();
    let mut cache = model.new_cache(1);
    let logits = model
        .forward(&[full.as_slice()], &mut cache, Logits::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(logits.len(), full.len());
    let mut same = 0;
    for (i, &token) in path.iter().enumerate() {
        // The logits at the position before token i predict it.
        let row = &logits[prompt.len() - 1 + i];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let gap = max - row[token as usize];
        assert!(
            gap <= GREEDY_TIE,
            "token {i} of the server's greedy path ({token}) is {gap:.2} below hone's choice: {there:?}"
        );
        same += usize::from(gap == 0.0);
    }
    // Ties are the exception: most of the path is hone's own choice (14 of 16 when written).
    assert!(
        4 * same >= 3 * path.len(),
        "{same} of {} tokens are hone's choice",
        path.len()
    );
    assert_eq!(stats.prefill_tokens, prompt.len());
    assert_eq!(stats.decode_tokens, there[0].tokens.len());
    // Sampled: six rows over two calls of at most four, every row its own.
    let (rows, stats) = LanguageModel::generate(&remote, &prompt, 6, &params(1.0, 7)).unwrap();
    assert_eq!(rows.len(), 6);
    let distinct: std::collections::HashSet<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    assert!(distinct.len() >= 3, "{rows:?}");
    assert_eq!(stats.prefill_tokens, 2 * prompt.len());
    let generated: usize = rows.iter().map(|r| r.tokens.len()).sum();
    assert_eq!(stats.decode_tokens, generated);
    for row in &rows {
        assert!(row.tokens.len() <= 16, "{row:?}");
        assert_eq!(
            local.tokenizer().decode(&row.tokens, true).unwrap(),
            row.text
        );
    }
}

fn engine<'a>(
    policy: &'a RemotePolicy,
    reward: &'a dyn RewardModel,
    learned: &'a Learned,
) -> Engine<'a> {
    Engine {
        policy,
        reward,
        reward_weight: 0.0,
        learned,
        execution: Execution::Batched,
        speculation: Speculation::OFF,
    }
}

#[test]
fn tpo_and_best_of_n_run_over_a_llama_cpp_server_within_their_budgets() {
    let server = LlamaServer::start("loops");
    let remote = server.policy();
    let reward = common::shipped_reward("concise");
    let learned = Learned::default();
    let engine = engine(&remote, reward.as_ref(), &learned);
    let request = |n, rounds, budget| Request {
        messages: vec![Message::new(
            Role::User,
            "Sorry to ask, but apologise first and then say what the sea is.",
        )],
        n,
        rounds,
        max_tokens: 32,
        budget: Budget::compute(budget),
        ..Request::default()
    };
    // TPO: a round of 4 samples, then one refine round (critique, suggestions, 4 rewrites).
    let tpo = Strategy::Tpo
        .run(&engine, &request(4, 1, 3000), None, None)
        .unwrap();
    assert!(!tpo.answer.trim().is_empty());
    assert!(tpo.usage.compute <= 3000, "{:?}", tpo.usage);
    assert_eq!(tpo.rounds[0].candidates.len(), 4, "{tpo:?}");
    // Best-of-N: 8 candidates over two calls; the answer is the best-scoring one.
    let bon = Strategy::BestOfN
        .run(&engine, &request(8, 0, 3000), None, None)
        .unwrap();
    assert!(bon.usage.compute <= 3000, "{:?}", bon.usage);
    let candidates = &bon.rounds[0].candidates;
    assert_eq!(candidates.len(), 8, "{bon:?}");
    let best = candidates
        .iter()
        .filter_map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(bon.score, Some(best), "{bon:?}");
    assert!(candidates.iter().any(|c| c.text == bon.answer), "{bon:?}");
}

#[test]
fn the_openai_judge_scores_through_a_llama_cpp_server_as_hone_does() {
    let server = LlamaServer::start("judge");
    let served = common::reward_from_manifest(
        "served",
        &format!(
            "kind = \"openai_judge\"\nurl = \"{}/v1\"\nmodel = '{}'\n",
            server.url,
            model_path(&SMOLLM2).display()
        ),
    );
    let local = Judge::new(Arc::new(load(&SMOLLM2)), Prompts::default()).unwrap();
    let pairs = [
        ("What is the capital of France?", "Paris."),
        ("What is 2 + 2?", "2 + 2 is 5, because numbers are hard."),
        ("Name a primary color.", "Red, and so are blue and yellow."),
    ];
    let conversations: Vec<[Message; 1]> = pairs
        .iter()
        .map(|(q, _)| [Message::new(Role::User, *q)])
        .collect();
    let batch: Vec<Candidate> = conversations
        .iter()
        .zip(pairs)
        .map(|(messages, (_, response))| Candidate { messages, response })
        .collect();
    let here = local.score(&batch).unwrap();
    let there = served.score(&batch).unwrap();
    assert_eq!(here.len(), pairs.len());
    assert_eq!(there.len(), pairs.len());
    for (i, (q, _)) in pairs.iter().enumerate() {
        let (a, b) = (here[i].value, there[i].value);
        assert!((1.0..=9.0).contains(&b), "{q}: {b}");
        assert!(
            (a - b).abs() < RATING_TOLERANCE,
            "{q}: hone {a} vs llama.cpp {b}"
        );
    }
}
