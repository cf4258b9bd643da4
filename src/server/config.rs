//! The service's settings: `hone serve` flags, `HONE_*` environment variables, and a TOML
//! file (`--config hone.toml`) whose keys are the flags' names with underscores. A flag or
//! variable overrides the file; the file overrides the defaults below.
//!
//! ```toml
//! port = 8080
//! model = "default"          # a policy manifest name, a known model, or a path
//! reward = "concise"
//! max_concurrency = 1
//! max_queue = 16
//! ab_plain_fraction = 0.1
//! default_budget = 4000
//! max_budget = 20000
//! request_timeout_ms = 10000   # headers, then body, must each arrive within this
//! max_connections = 256
//! shutdown_timeout_secs = 3600
//! api_keys = ["..."]           # when set, every route but /health and /metrics needs one
//! rate_limit = 60              # model requests a minute per API key and per user
//! rate_limit_burst = 10        # at once, after a pause (default: rate_limit)
//! remote = "http://10.0.0.5:8000"   # the policy runs there (vLLM, llama.cpp server, hone)
//! remote_model = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
//! remote_max_n = 8                  # a llama.cpp server's --parallel
//! ```

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The prompt-token cap unless configured: room for long documents. A prefill that long takes
/// minutes of 2 CPU cores for the default model (attention grows with the context), which the
/// default `max_budget` refuses anyway; the cap bounds servers that raise it.
pub const DEFAULT_MAX_PROMPT_TOKENS: usize = 4096;

/// Draft tokens per step unless configured.
pub const DEFAULT_SPECULATE: usize = 0;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// A policy manifest name (in `policies`), a GGUF file, an HF checkpoint folder, or a
    /// known model name (`default`).
    pub model: String,
    /// Folder of policy manifests.
    pub policies: PathBuf,
    /// The reward of requests that name none.
    pub reward: String,
    /// Folder of reward manifests.
    pub rewards: PathBuf,
    pub max_concurrency: usize,
    pub max_queue: usize,
    /// Share of /optimize traffic answered by plain decoding, for the A/B comparison.
    pub ab_plain_fraction: f64,
    pub default_budget: Option<u64>,
    /// The most compute units one request may spend; a request asking for more gets 422.
    /// `None` is about one CPU core-minute of the served model
    /// ([`crate::budget::default_max_budget`]); [`super::AppState::load`] fills it in.
    pub max_budget: Option<u64>,
    /// Conversations longer than this many tokens get 422 before they queue.
    pub max_prompt_tokens: usize,
    pub cpu: bool,
    /// Request bodies above this many bytes get 413.
    pub max_body_bytes: usize,
    /// HTTP worker threads; actix's default (one per core) when `None`.
    pub workers: Option<usize>,
    /// The most draft tokens speculative decoding verifies per step (0 turns it off).
    pub speculate: usize,
    /// A client must send a request's headers, and then its body, each within this many
    /// milliseconds; a slow client otherwise holds a connection (and a worker's attention)
    /// for as long as it likes.
    pub request_timeout_ms: u64,
    /// Open connections in all; more wait in the listen backlog. Bounds what idle or slow
    /// clients can hold.
    pub max_connections: usize,
    /// On SIGINT/SIGTERM, how long running requests get to finish before they are dropped.
    /// The default covers the longest deadline a request may ask for.
    pub shutdown_timeout_secs: u64,
    /// Bearer keys; when any is set, every route but `/health` and `/metrics` needs one.
    pub api_keys: Vec<String>,
    /// Model requests (`/optimize`, chat completions) a minute per API key and per `user`;
    /// `None`: unlimited. See [`super::rate_limit`].
    pub rate_limit: Option<u32>,
    /// Requests a key or user may send at once after a pause; `None`: `rate_limit`.
    pub rate_limit_burst: Option<u32>,
    /// Where `auto` keeps what it learns about the policy, across restarts; `None`: memory only.
    pub learned_file: Option<PathBuf>,
    /// An OpenAI-compatible server (`http://host:port` or `https://host`: vLLM, SGLang, a llama.cpp server,
    /// another hone) that runs the policy; `model` then names the model's files, read for
    /// its tokenizer and chat template only. The key, if the server wants one, comes from
    /// `HONE_REMOTE_API_KEY`.
    pub remote: Option<String>,
    /// The name the remote server knows the model by (its `model` field), if it needs one.
    pub remote_model: Option<String>,
    /// The most continuations the remote server gives in one call (a llama.cpp server: its
    /// `--parallel` slots); more take several calls. `None`: no limit.
    pub remote_max_n: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model: "default".into(),
            policies: PathBuf::from(policies::manifest::DEFAULT_DIR),
            reward: "default".into(),
            rewards: PathBuf::from(reward_models::manifest::DEFAULT_DIR),
            max_concurrency: 1,
            max_queue: 16,
            ab_plain_fraction: 0.0,
            default_budget: None,
            max_budget: None,
            max_prompt_tokens: DEFAULT_MAX_PROMPT_TOKENS,
            cpu: false,
            max_body_bytes: 1 << 20,
            workers: None,
            speculate: DEFAULT_SPECULATE,
            request_timeout_ms: 10_000,
            max_connections: 256,
            shutdown_timeout_secs: super::api::MAX_DEADLINE_MS as u64 / 1000,
            api_keys: Vec::new(),
            rate_limit: None,
            rate_limit_burst: None,
            learned_file: None,
            remote: None,
            remote_model: None,
            remote_max_n: None,
        }
    }
}

impl Config {
    /// Reads a settings file; keys it leaves out keep their defaults, and an unknown key is an
    /// error naming it (a typo should not silently fall back to a default).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_rejects_typos() {
        let config: Config = toml::from_str("port = 9000\nreward = \"concise\"\n").unwrap();
        assert_eq!((config.port, config.reward.as_str()), (9000, "concise"));
        assert_eq!(config.max_queue, Config::default().max_queue);
        let err = toml::from_str::<Config>("max_queu = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_queu"), "{err}");
        let err = toml::from_str::<Config>("port = \"eighty\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
        let config: Config = toml::from_str("rate_limit = 60\n").unwrap();
        assert_eq!(
            (config.rate_limit, config.rate_limit_burst),
            (Some(60), None)
        );
        assert_eq!(Config::default().rate_limit, None);
    }
}
