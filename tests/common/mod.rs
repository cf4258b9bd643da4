//! Shared helpers for the integration tests: the real models, fetched once into hone's cache.
#![allow(dead_code)]

use candle_core::Device;
use policies::store::{self, KnownModel};
use policies::Policy;
use serde::Deserialize;
use std::path::PathBuf;

pub mod scripted;

pub fn model_path(model: &KnownModel) -> PathBuf {
    // Tests of one binary run in parallel: let one of them fetch a missing model, not all.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    match store::ensure(model) {
        Ok(p) => p,
        Err(e) => panic!("cannot fetch {}: {e}", model.name),
    }
}

/// A reward the repository ships (`reward_models/manifests`), on the CPU.
pub fn shipped_reward(name: &str) -> std::sync::Arc<dyn reward_models::RewardModel> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("reward_models/manifests");
    let manifests = reward_models::manifest::Manifests::read_dir(&dir).unwrap();
    let mut cache = reward_models::manifest::PolicyCache::default();
    match manifests.build(name, &Device::Cpu, &mut cache) {
        Ok(reward) => reward,
        Err(e) => panic!("cannot build the shipped reward {name}: {e}"),
    }
}

/// The reward of one manifest, `name.toml` holding `text`, on the CPU.
pub fn reward_from_manifest(
    name: &str,
    text: &str,
) -> std::sync::Arc<dyn reward_models::RewardModel> {
    let dir = std::env::temp_dir().join(format!("hone-manifest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    let mut cache = reward_models::manifest::PolicyCache::default();
    let reward = reward_models::manifest::Manifests::read_dir(&dir)
        .unwrap()
        .build(name, &Device::Cpu, &mut cache);
    std::fs::remove_dir_all(&dir).ok();
    reward.unwrap_or_else(|e| panic!("{e}"))
}

pub fn load(model: &KnownModel) -> Policy {
    match Policy::load(&model_path(model), &Device::Cpu) {
        Ok(p) => p,
        Err(e) => panic!("cannot load {}: {e}", model.name),
    }
}

/// Reference outputs of llama.cpp on the same GGUF (see scripts/reference/).
#[derive(Deserialize)]
pub struct Fixture {
    pub tokenize: Vec<TokenizeCase>,
    pub logits: Vec<LogitsCase>,
    pub greedy: Vec<GreedyCase>,
}

#[derive(Deserialize)]
pub struct TokenizeCase {
    pub text: String,
    pub ids: Vec<u32>,
    pub decoded: String,
}

#[derive(Deserialize)]
pub struct LogitsCase {
    pub prompt_ids: Vec<u32>,
    pub positions: Vec<Position>,
}

#[derive(Deserialize)]
pub struct Position {
    pub top: Vec<(u32, f32)>,
    pub logsumexp: f32,
}

#[derive(Deserialize)]
pub struct GreedyCase {
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<u32>,
    pub margins: Vec<f32>,
}

pub fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A hone server running on its own thread, as `hone serve` runs it.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub state: std::sync::Arc<hone::server::AppState>,
}

/// The server several tests share the setup of: the default model on the CPU, a free loopback
/// port, two workers, and a cap of 20,000 compute units per request.
pub fn default_server() -> Server {
    start(hone::server::Config {
        host: "127.0.0.1".into(),
        port: 0,
        model: model_path(&policies::store::SMOLLM2)
            .to_string_lossy()
            .into_owned(),
        cpu: true,
        workers: Some(2),
        max_budget: Some(20_000),
        ..hone::server::Config::default()
    })
}

/// Loads `config` and starts a server on its own thread.
pub fn start(config: hone::server::Config) -> Server {
    let state = hone::server::AppState::load(config).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let started = hone::server::start(state).unwrap();
            tx.send((started.addr, started.state.clone())).unwrap();
            started.server.await
        })
    });
    let (addr, state) = rx.recv().unwrap();
    Server { addr, state }
}
