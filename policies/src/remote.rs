//! A policy served by an OpenAI-compatible server: vLLM, SGLang, a llama.cpp server, or
//! another hone (`POST /v1/completions`).
//!
//! Conversations are rendered and counted here, with the model's own tokenizer and chat
//! template read from its files (its weights are not loaded), and sent as token ids, which
//! every one of those servers takes: the server sees exactly the tokens the local engine would
//! have run. The budget meters what the server reports in `usage`, or the choices' own token
//! counts where those are larger (llama.cpp's server reports one choice's tokens for all `n`);
//! a server that reports more positions than the call allowed is an error, never a budget
//! passed in silence.
//!
//! What hone cannot control there: batching across requests and speculative decoding are the
//! server's (a call asking for speculation is refused), and text is not streamed token by
//! token.

use crate::chat::{ChatTemplate, Message};
use crate::config::ModelConfig;
use crate::error::{PolicyError, Result};
use crate::generate::{FinishReason, GenerateParams, Generation, GenerationStats};
use crate::language_model::LanguageModel;
use crate::policy::{Checkpoint, Turns};
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use serde::Deserialize;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest a call may take when nothing else bounds it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

pub struct RemotePolicy {
    name: String,
    /// The server's base address, without `/v1/...`.
    url: String,
    /// The model name the server knows the model by, sent as `model`.
    served: Option<String>,
    /// Sent as `Authorization: Bearer <key>`.
    key: Option<String>,
    /// The most continuations one call asks for.
    max_n: Option<usize>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    config: ModelConfig,
}

/// Where a remote policy's server is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// `http://host:port` or `https://host` (a trailing `/v1` or `/` is dropped); https
    /// certificates are checked against the Mozilla roots.
    pub url: String,
    pub served_model: Option<String>,
    pub api_key: Option<String>,
    /// The most continuations the server gives in one call (a llama.cpp server: its
    /// `--parallel` slots); more are asked for in several calls, each prefilling the prompt
    /// again. `None`: no limit.
    pub max_n: Option<usize>,
}

impl RemotePolicy {
    /// The model's tokenizer, chat template and configuration from `files` (a GGUF file or an
    /// HF folder, as [`crate::Policy::load`] takes), served at `endpoint`.
    pub fn open(files: &Path, endpoint: Endpoint) -> Result<Self> {
        let checkpoint = Checkpoint::open(files, &Device::Cpu)?;
        let url = endpoint.url.trim_end_matches('/');
        let url = url.strip_suffix("/v1").unwrap_or(url).to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PolicyError::InvalidParameter {
                param: "url",
                reason: format!("`{url}` is not an http:// or https:// address"),
            });
        }
        Ok(Self {
            name: checkpoint.name,
            url,
            served: endpoint.served_model,
            key: endpoint.api_key,
            max_n: endpoint.max_n,
            tokenizer: checkpoint.tokenizer,
            template: checkpoint.template,
            config: checkpoint.config,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn turns(&self) -> Turns<'_> {
        Turns {
            name: &self.name,
            tokenizer: &self.tokenizer,
            template: self.template.as_ref(),
            context: self.config.context_length,
        }
    }
}

#[derive(Deserialize)]
struct Reply {
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Deserialize)]
struct Choice {
    index: usize,
    text: String,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

fn remote_err(what: impl std::fmt::Display) -> PolicyError {
    PolicyError::Remote(what.to_string())
}

impl LanguageModel for RemotePolicy {
    fn encode_chat_opened(&self, messages: &[Message], opener: &str) -> Result<Vec<u32>> {
        self.turns().encode(messages, true, opener)
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text)?.len())
    }

    /// `n` continuations in calls of at most `max_n` each ([`Endpoint::max_n`]); row `i` is
    /// sampled with seed `seed + i` whichever call it is in.
    fn generate(
        &self,
        prompt: &[u32],
        n: usize,
        params: &GenerateParams,
    ) -> Result<(Vec<Generation>, GenerationStats)> {
        params.validate()?;
        if params.speculation.is_on() {
            return Err(PolicyError::InvalidParameter {
                param: "speculation",
                reason: "a remote policy decodes on its server; speculation is the server's".into(),
            });
        }
        if params.logprobs.is_some() {
            return Err(PolicyError::InvalidParameter {
                param: "logprobs",
                reason: "a remote policy returns text, not its server's log-probabilities; ask \
                         that server for them"
                    .into(),
            });
        }
        if prompt.is_empty() {
            return Err(PolicyError::EmptyPrompt);
        }
        if n == 0 {
            return Ok((Vec::new(), GenerationStats::default()));
        }
        // Each call prefills the prompt and decodes every row to its end: ask for no more
        // than the limit allows.
        let per_call = self.max_n.unwrap_or(n).clamp(1, n);
        let calls = n.div_ceil(per_call);
        let limit = params.max_positions.unwrap_or(usize::MAX);
        let room = limit.saturating_sub(calls * prompt.len()) / n;
        if room == 0 {
            return Err(PolicyError::OverBudget {
                needed: calls * prompt.len() + n,
                limit,
            });
        }
        let max_tokens = params.max_tokens.min(room);
        let mut generations = Vec::with_capacity(n);
        let mut stats = GenerationStats::default();
        for first in (0..n).step_by(per_call) {
            let rows = per_call.min(n - first);
            let (got, call) = self.complete(prompt, rows, first, max_tokens, params)?;
            generations.extend(got);
            stats.prefill_tokens += call.prefill_tokens;
            stats.decode_tokens += call.decode_tokens;
            stats.decode_secs += call.decode_secs;
        }
        Ok((generations, stats))
    }
}

impl RemotePolicy {
    /// One `/v1/completions` call: rows `first..first + rows` of a generation.
    fn complete(
        &self,
        prompt: &[u32],
        rows: usize,
        first: usize,
        max_tokens: usize,
        params: &GenerateParams,
    ) -> Result<(Vec<Generation>, GenerationStats)> {
        if params.cancelled() {
            return Err(PolicyError::Cancelled);
        }
        let timeout = match params.deadline {
            Some(d) => d
                .checked_duration_since(Instant::now())
                .filter(|t| !t.is_zero())
                .ok_or(PolicyError::DeadlinePassed)?,
            None => DEFAULT_TIMEOUT,
        };
        let s = &params.sampling;
        let mut body = json!({
            "prompt": prompt,
            "n": rows,
            "max_tokens": max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed.wrapping_add(first as u64),
        });
        if let Some(model) = &self.served {
            body["model"] = json!(model);
        }
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        let start = Instant::now();
        let mut request = ureq::post(&format!("{}/v1/completions", self.url)).timeout(timeout);
        if let Some(key) = &self.key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let reply: Reply = match request.send_json(body) {
            Ok(r) => r.into_json().map_err(remote_err)?,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(remote_err(format!(
                    "{}: {code} {}",
                    self.url,
                    text.chars().take(300).collect::<String>()
                )));
            }
            Err(e) if params.deadline.is_some_and(|d| Instant::now() >= d) => {
                tracing::warn!("remote policy at {}: {e}", self.url);
                return Err(PolicyError::DeadlinePassed);
            }
            Err(e) => return Err(remote_err(format!("{}: {e}", self.url))),
        };
        let secs = start.elapsed().as_secs_f64();
        let allowed = prompt.len() + rows * max_tokens;
        let reported = reply.usage.prompt_tokens + reply.usage.completion_tokens;
        if reported > allowed {
            return Err(remote_err(format!(
                "{} reports {reported} positions for a call allowed {allowed}",
                self.url
            )));
        }
        let mut choices = reply.choices;
        choices.sort_by_key(|c| c.index);
        if choices.len() != rows || choices.iter().enumerate().any(|(i, c)| c.index != i) {
            return Err(remote_err(format!(
                "{} answered {} choices for n = {rows}",
                self.url,
                choices.len()
            )));
        }
        let generations = choices
            .into_iter()
            .map(|c| {
                Ok(Generation {
                    tokens: self.tokenizer.encode(&c.text)?,
                    finish: match c.finish_reason.as_deref() {
                        // Cut by the positions left rather than the caller's own limit.
                        Some("length") if max_tokens < params.max_tokens => FinishReason::Budget,
                        Some("length") => FinishReason::Length,
                        _ => FinishReason::Stop,
                    },
                    text: c.text,
                    logprobs: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Some servers count one choice's tokens for all `n` (llama.cpp's): meter the larger
        // of their count and the choices' own lengths (within what the call could compute).
        let counted: usize = generations.iter().map(|g| g.tokens.len()).sum();
        let stats = GenerationStats {
            prefill_tokens: reply.usage.prompt_tokens.max(prompt.len()),
            decode_tokens: reply
                .usage
                .completion_tokens
                .max(counted.min(rows * max_tokens)),
            decode_secs: secs,
            ..GenerationStats::default()
        };
        Ok((generations, stats))
    }
}
