//! Where the evaluation's requests go: a hone server started in this process, or one already
//! running (`--server URL`).
//!
//! Both are spoken to the same way, `POST /optimize` over HTTP, so that one code path runs
//! every measurement: the request checks, the constraints joined to the reward and the loops
//! are the service's own, and figures taken in-process and against a deployed server compare.
//! The in-process server listens on a free port of 127.0.0.1 only.

use crate::server::{self, AppState, Config};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A running hone service and a client for it.
pub struct Service {
    base: String,
    agent: ureq::Agent,
    /// The served model's id and the service's default reward, from `GET /health`.
    pub model: String,
    pub reward: String,
}

/// What `/optimize` answered.
pub enum Reply {
    /// The loop's trace (200), and the time the request took as the client saw it.
    Answered(Value, Duration),
    /// The request was refused as it stood (422: a budget too small for the prompt, say);
    /// the evaluation records it and goes on.
    Refused(String),
}

#[derive(Deserialize)]
struct Health {
    model: String,
    reward: String,
}

/// No loop the evaluation asks for runs this long; a server that takes longer has hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);

impl Service {
    /// Starts a server on this process's own thread, as `hone serve` runs one.
    pub fn start(config: Config) -> Result<Self> {
        let state = AppState::load(config)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match server::start(state) {
                    Ok(started) => {
                        let _ = tx.send(Ok(started.addr));
                        let _ = started.server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
        });
        let addr = rx
            .recv()
            .context("the in-process server stopped before it started")?
            .context("starting the in-process server")?;
        Self::connect(&format!("http://{addr}"))
    }

    /// A client for the server at `url` (`http://host:port`); checks that it answers.
    pub fn connect(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server must be an http:// or https:// URL, got `{url}`");
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .build();
        let health: Health = agent
            .get(&format!("{base}/health"))
            .call()
            .with_context(|| format!("GET {base}/health"))?
            .into_json()
            .with_context(|| format!("reading {base}/health"))?;
        Ok(Self {
            base,
            agent,
            model: health.model,
            reward: health.reward,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `POST /optimize` with `body`. Errors other than a refusal stop the evaluation: they
    /// mean the server or the settings are wrong, and every later request would fail alike.
    pub fn optimize(&self, body: &Value) -> Result<Reply> {
        let url = format!("{}/optimize", self.base);
        let start = Instant::now();
        match self.agent.post(&url).send_json(body.clone()) {
            Ok(response) => {
                let value: Value = response
                    .into_json()
                    .with_context(|| format!("reading the answer of POST {url}"))?;
                Ok(Reply::Answered(value, start.elapsed()))
            }
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or(text);
                if status == 422 {
                    Ok(Reply::Refused(message))
                } else {
                    bail!("POST {url}: {status}: {message}")
                }
            }
            Err(e) => Err(e).with_context(|| format!("POST {url}")),
        }
    }
}
