//! `hone serve`: the HTTP service. Every flag can also come from a `HONE_*` environment
//! variable, for containers.

use anyhow::{Context, Result};
use clap::Args;
use hone::server::{self, AppState, Config};
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1", env = "HONE_HOST")]
    host: String,
    #[arg(long, default_value_t = 8080, env = "HONE_PORT")]
    port: u16,
    /// A GGUF file, an HF checkpoint folder, or `default` (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default", env = "HONE_MODEL")]
    model: String,
    /// The reward of requests that name none (a manifest in --rewards).
    #[arg(long, default_value = "default", env = "HONE_REWARD")]
    reward: String,
    /// Folder of reward manifests.
    #[arg(long, default_value = "reward_models/manifests", env = "HONE_REWARDS")]
    rewards: PathBuf,
    /// Requests running on the model at once.
    #[arg(long, default_value_t = 1, env = "HONE_MAX_CONCURRENCY")]
    max_concurrency: usize,
    /// Requests that may wait for the model; more get 429.
    #[arg(long, default_value_t = 16, env = "HONE_MAX_QUEUE")]
    max_queue: usize,
    /// Share of /optimize traffic answered by plain decoding, for A/B comparison (0 to 1).
    #[arg(long, default_value_t = 0.0, env = "HONE_AB_PLAIN_FRACTION")]
    ab_plain_fraction: f64,
    /// Compute budget of requests that name none (unlimited when left out).
    #[arg(long, env = "HONE_DEFAULT_BUDGET")]
    default_budget: Option<u64>,
    /// The most compute units any request may spend; larger budgets are lowered to it.
    #[arg(long, env = "HONE_MAX_BUDGET")]
    max_budget: Option<u64>,
    /// Run on the CPU even when a GPU is available.
    #[arg(long, env = "HONE_CPU")]
    cpu: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let config = Config {
        host: a.host,
        port: a.port,
        model: a.model,
        reward: a.reward,
        rewards: a.rewards,
        max_concurrency: a.max_concurrency,
        max_queue: a.max_queue,
        ab_plain_fraction: a.ab_plain_fraction,
        default_budget: a.default_budget,
        max_budget: a.max_budget,
        cpu: a.cpu,
        ..Config::default()
    };
    let state = AppState::load(config)?;
    actix_web::rt::System::new().block_on(async move {
        let started = server::start(state).context("binding the server")?;
        eprintln!(
            "hone: serving {} on http://{} (reward `{}`)",
            started.state.model_id(),
            started.addr,
            started.state.config.reward
        );
        actix_web::rt::spawn(server::shutdown_on_signal(started.state.clone()));
        started.server.await.context("serving")
    })
}
