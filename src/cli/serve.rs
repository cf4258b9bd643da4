//! `hone serve`: the HTTP service. Settings come from flags, else `HONE_*` environment
//! variables, else the `--config` file, else the defaults (see `hone::server::Config`).

use anyhow::{Context, Result};
use clap::Args;
use hone::server::{self, AppState, Config};
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML file of settings, keyed by these flags' names with underscores.
    #[arg(long, env = "HONE_CONFIG")]
    config: Option<PathBuf>,
    /// [default: 127.0.0.1]
    #[arg(long, env = "HONE_HOST")]
    host: Option<String>,
    /// [default: 8080]
    #[arg(long, env = "HONE_PORT")]
    port: Option<u16>,
    /// A policy manifest name (in --policies), a GGUF file, an HF checkpoint folder, or
    /// `default` (SmolLM2-135M-Instruct). [default: default]
    #[arg(long, env = "HONE_MODEL")]
    model: Option<String>,
    /// Folder of policy manifests. [default: policies/manifests]
    #[arg(long, env = "HONE_POLICIES")]
    policies: Option<PathBuf>,
    /// The reward of requests that name none (a manifest in --rewards). [default: default]
    #[arg(long, env = "HONE_REWARD")]
    reward: Option<String>,
    /// Folder of reward manifests. [default: reward_models/manifests]
    #[arg(long, env = "HONE_REWARDS")]
    rewards: Option<PathBuf>,
    /// Requests running on the model at once. [default: 1]
    #[arg(long, env = "HONE_MAX_CONCURRENCY")]
    max_concurrency: Option<usize>,
    /// Requests that may wait for the model; more get 429. [default: 16]
    #[arg(long, env = "HONE_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Share of /optimize traffic answered by plain decoding, for A/B comparison (0 to 1).
    /// [default: 0]
    #[arg(long, env = "HONE_AB_PLAIN_FRACTION")]
    ab_plain_fraction: Option<f64>,
    /// Compute budget of requests that name none. [default: unlimited]
    #[arg(long, env = "HONE_DEFAULT_BUDGET")]
    default_budget: Option<u64>,
    /// The most compute units any request may spend; a request asking for more gets 422.
    /// [default: about one CPU core-minute of the served model: 1800 for the default model]
    #[arg(long, env = "HONE_MAX_BUDGET")]
    max_budget: Option<u64>,
    /// Conversations longer than this many tokens get 422 before they queue. [default: 4096]
    #[arg(long, env = "HONE_MAX_PROMPT_TOKENS")]
    max_prompt_tokens: Option<usize>,
    /// Request bodies above this many bytes get 413. [default: 1048576]
    #[arg(long, env = "HONE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// HTTP worker threads. [default: one per core]
    #[arg(long, env = "HONE_WORKERS")]
    workers: Option<usize>,
    /// The most draft tokens speculative decoding verifies per step; 0 turns it off.
    /// [default: 0]
    #[arg(long, env = "HONE_SPECULATE")]
    speculate: Option<usize>,
    /// Run on the CPU even when a GPU is available.
    #[arg(long, env = "HONE_CPU")]
    cpu: bool,
    /// Milliseconds a client gets to send a request's headers, and then its body; slower ones
    /// get 408. [default: 10000]
    #[arg(long, env = "HONE_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Open connections in all; more wait to be accepted. [default: 256]
    #[arg(long, env = "HONE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds running requests get to finish after SIGINT/SIGTERM. [default: 3600, the longest
    /// deadline a request may ask for]
    #[arg(long, env = "HONE_SHUTDOWN_TIMEOUT_SECS")]
    shutdown_timeout_secs: Option<u64>,
    /// A key clients must send as `Authorization: Bearer <key>` (repeatable; HONE_API_KEYS is
    /// comma-separated). Without any, the server is open. /health and /metrics are always open.
    #[arg(
        long = "api-key",
        env = "HONE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Model requests (/optimize, chat completions) a minute per API key and per `user`; more
    /// get 429 with Retry-After. [default: unlimited]
    #[arg(long, env = "HONE_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Requests a key or user may send at once after a pause. [default: --rate-limit]
    #[arg(long, env = "HONE_RATE_LIMIT_BURST")]
    rate_limit_burst: Option<u32>,
    /// A JSON file where `auto` keeps what it has learned about the policy (which kind of round
    /// pays), read at start and rewritten after every round it learns from. [default: memory
    /// only]
    #[arg(long, env = "HONE_LEARNED_FILE")]
    learned_file: Option<PathBuf>,
    /// Run the policy on an OpenAI-compatible server (http://host:port or https://host: vLLM, SGLang, a
    /// llama.cpp server, another hone) through its /v1/completions; --model then names the
    /// model's files, read for the tokenizer and chat template only. A key for it goes in
    /// HONE_REMOTE_API_KEY.
    #[arg(long, env = "HONE_REMOTE")]
    remote: Option<String>,
    /// The model name the remote server expects in its requests.
    #[arg(long, env = "HONE_REMOTE_MODEL", requires = "remote")]
    remote_model: Option<String>,
    /// The most continuations the remote server gives in one call (a llama.cpp server: its
    /// --parallel slots); more take several calls. [default: no limit]
    #[arg(long, env = "HONE_REMOTE_MAX_N", requires = "remote")]
    remote_max_n: Option<usize>,
}

impl ServeArgs {
    /// The settings: the file's (or the defaults), with every flag given laid over them.
    fn config(self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        set(&mut c.host, self.host);
        set(&mut c.port, self.port);
        set(&mut c.model, self.model);
        set(&mut c.policies, self.policies);
        set(&mut c.reward, self.reward);
        set(&mut c.rewards, self.rewards);
        set(&mut c.max_concurrency, self.max_concurrency);
        set(&mut c.max_queue, self.max_queue);
        set(&mut c.ab_plain_fraction, self.ab_plain_fraction);
        set(&mut c.max_body_bytes, self.max_body_bytes);
        set(&mut c.max_prompt_tokens, self.max_prompt_tokens);
        set(&mut c.speculate, self.speculate);
        set(&mut c.request_timeout_ms, self.request_timeout_ms);
        set(&mut c.max_connections, self.max_connections);
        set(&mut c.shutdown_timeout_secs, self.shutdown_timeout_secs);
        // `HONE_API_KEYS=a,,b` or a trailing comma leaves empty items; they are no keys.
        let keys: Vec<String> = self
            .api_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        if !keys.is_empty() {
            c.api_keys = keys;
        }
        if self.default_budget.is_some() {
            c.default_budget = self.default_budget;
        }
        if self.max_budget.is_some() {
            c.max_budget = self.max_budget;
        }
        if self.workers.is_some() {
            c.workers = self.workers;
        }
        if self.rate_limit.is_some() {
            c.rate_limit = self.rate_limit;
        }
        if self.rate_limit_burst.is_some() {
            c.rate_limit_burst = self.rate_limit_burst;
        }
        if self.learned_file.is_some() {
            c.learned_file = self.learned_file;
        }
        if self.remote.is_some() {
            c.remote = self.remote;
        }
        if self.remote_model.is_some() {
            c.remote_model = self.remote_model;
        }
        if self.remote_max_n.is_some() {
            c.remote_max_n = self.remote_max_n;
        }
        c.cpu |= self.cpu;
        Ok(c)
    }
}

fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    // Logs go to stderr; RUST_LOG overrides the default (warnings, and hone's request log).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hone=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let state = AppState::load(a.config()?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = std::env::temp_dir().join(format!("hone-serve-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "port = 9000\nreward = \"concise\"\nmax_budget = 500\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let config = Cli::parse_from(["hone", "--config", path, "--port", "9100"])
            .serve
            .config()
            .unwrap();
        assert_eq!(config.port, 9100);
        assert_eq!(config.reward, "concise");
        assert_eq!(config.max_budget, Some(500));
        assert_eq!(config.max_queue, Config::default().max_queue);
        let config = Cli::parse_from(["hone"]).serve.config().unwrap();
        assert_eq!(config.port, Config::default().port);
        let config = Cli::parse_from(["hone", "--api-key", "k1", "--api-key", "k2,k3"])
            .serve
            .config()
            .unwrap();
        assert_eq!(config.api_keys, ["k1", "k2", "k3"]);
        let config = Cli::parse_from(["hone", "--config", path, "--rate-limit", "30"])
            .serve
            .config()
            .unwrap();
        assert_eq!(
            (config.rate_limit, config.rate_limit_burst),
            (Some(30), None)
        );
        std::fs::remove_file(&file).ok();
    }
}
