//! `POST /v1/completions`: OpenAI's text completion. A prompt (text, or token ids of this
//! model's tokenizer) and `n` continuations of it from one prefill, as the engine's own
//! batch. This is what a remote policy speaks (policies' `remote`), so one hone can serve
//! another's loops, as vLLM or a llama.cpp server can.
//!
//! It is raw generation: no loop, no reward, no A/B arm. The server's `--max-budget` caps what
//! one request may compute (its prompt plus `n` × `max_tokens` positions), and the queue
//! admits it like any other request. `logprobs: k` (0 to 20) adds OpenAI's legacy
//! log-probabilities to each choice (see [`super::logprobs`]), which is what an
//! OpenAI-compatible judge reads.

use super::error::ApiError;
use super::logprobs::{Logprobs, MAX_LOGPROBS};
use super::openai::Finish;
use super::openapi as doc;
use super::routes::parse;
use super::{body, AppState, CancelOnDrop};
use crate::strategy::StrategyError;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use policies::{FinishReason, GenerateParams, SamplingParams};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most continuations one request may ask for.
pub const MAX_N: usize = 64;

/// The body of `POST /v1/completions`. Unknown fields are ignored, as OpenAI clients send
/// them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionBody {
    /// The served model (its id, `default`, or the name it was started with); any other is
    /// 404.
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Tokens of each continuation (default 16, as OpenAI's). The prompt plus `n` x
    /// `max_tokens` positions must fit the model's context and `--max-budget` (else 422
    /// naming `max_tokens`).
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    /// Default 1.
    pub temperature: Option<f32>,
    /// Default 1.
    pub top_p: Option<f32>,
    /// Continuations of the prompt (default 1).
    #[schema(minimum = 1, maximum = 64)]
    pub n: Option<usize>,
    /// Choice i samples with seed + i (default 0).
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    /// Who is asking: the key of the per-user rate limit.
    pub user: Option<String>,
    /// Must be absent or false: this route does not stream (422).
    pub stream: Option<bool>,
    /// How many of the likeliest tokens to list at each generated position (OpenAI's legacy
    /// form); absent: no logprobs.
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<i64>,
}

/// What to continue: text, or token ids of the served model's tokenizer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// Up to 4 non-empty strings at which a continuation stops (not included in its text).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The answer, as OpenAI's `text_completion`.
// Typed rather than built as a JSON value, which would sort each position's `top_logprobs` by
// token text instead of by probability.
#[derive(Serialize, ToSchema)]
struct TextCompletion {
    /// `cmpl-` and 128 random bits in hex.
    id: String,
    object: TextCompletionObject,
    /// Unix seconds.
    created: u64,
    /// The served model's id.
    model: String,
    /// One per continuation, in order.
    choices: Vec<TextChoice>,
    usage: TextUsage,
}

/// The `object` of a text completion.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum TextCompletionObject {
    TextCompletion,
}

/// One continuation.
#[derive(Serialize, ToSchema)]
struct TextChoice {
    index: usize,
    text: String,
    finish_reason: Finish,
    /// Null unless the request asked for logprobs.
    #[schema(required)]
    logprobs: Option<Logprobs>,
}

/// Tokens of a text completion.
#[derive(Serialize, ToSchema)]
struct TextUsage {
    prompt_tokens: usize,
    /// Tokens generated over all the continuations.
    completion_tokens: usize,
    total_tokens: usize,
}

/// OpenAI-compatible text completion: raw generation, no loop
///
/// `n` continuations of one prompt (text, or token ids of the served model's tokenizer) from
/// one prefill. What hone's `remote` policies speak, so one hone can run another's loops. The
/// prompt plus `n` x `max_tokens` positions must fit `--max-budget` (422 naming `max_tokens`);
/// `stream` is refused (422). `logprobs: k` (0 to 20; else 422 naming `logprobs`) adds
/// OpenAI's legacy log-probabilities to each choice: the log-softmax of the model's logits at
/// temperature 1, before temperature, top-k and top-p, for every generated token (and for an
/// end-of-turn token that ended the choice), with the k likeliest tokens at each position.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionBody,
    responses(
        (status = 200, description = "A `text_completion` object.", body = TextCompletion),
        doc::ModelErrors,
    )
)]
pub async fn completions(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let shared = state.clone().into_inner();
    let result = complete(req, state, payload).await;
    match &result {
        Ok((_, tokens)) => shared.metrics.completion(200, *tokens as u64),
        Err(e) => shared.metrics.completion(e.status_code().as_u16(), 0),
    }
    result.map(|(response, _)| response)
}

/// The completion, and the tokens it generated.
async fn complete(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<(HttpResponse, usize), ApiError> {
    let body: CompletionBody = parse(body::json(&req, payload, state.body_limits()).await?)?;
    state.check_rate(&req, body.user.as_deref())?;
    if let Some(model) = &body.model {
        state.check_policy("model", model)?;
    }
    if body.stream == Some(true) {
        return Err(ApiError::invalid(
            "stream",
            "/v1/completions does not stream; /v1/chat/completions does",
        ));
    }
    let policy = state.policy();
    let context = policy.config().context_length;
    let prompt = match &body.prompt {
        Prompt::Text(text) if text.trim().is_empty() => {
            return Err(ApiError::invalid("prompt", "the prompt is empty"))
        }
        Prompt::Text(text) => policy
            .tokenizer()
            .encode_prompt(text)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
        Prompt::Tokens(ids) => {
            let vocab = policy.config().vocab_size;
            if ids.is_empty() {
                return Err(ApiError::invalid("prompt", "the prompt has no tokens"));
            }
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {bad} is outside this model's vocabulary of {vocab}"),
                ));
            }
            ids.clone()
        }
    };
    if prompt.len() >= context {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "the prompt has {} tokens; the model's context is {context}",
                prompt.len()
            ),
        ));
    }
    let max_tokens = body.max_tokens.unwrap_or(16);
    let n = body.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid("n", format!("n must be 1 to {MAX_N}")));
    }
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    if prompt.len() + max_tokens > context {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) pass the model's context of \
                 {context}",
                prompt.len()
            ),
        ));
    }
    let positions = prompt.len() + n * max_tokens;
    if let Some(cap) = state.limits().max_budget {
        if positions as u64 > cap {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "the prompt ({} tokens) and n x max_tokens ({n} x {max_tokens}) are \
                     {positions} positions, above this server's cap of {cap} (--max-budget)",
                    prompt.len()
                ),
            ));
        }
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "stop takes up to 4 non-empty strings",
        ));
    }
    let logprobs = match body.logprobs {
        None => None,
        Some(k) => Some(
            usize::try_from(k)
                .ok()
                .filter(|&k| k <= MAX_LOGPROBS)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "logprobs",
                        format!("logprobs must be 0 to {MAX_LOGPROBS}, not {k}"),
                    )
                })?,
        ),
    };
    let cancel = CancelOnDrop::new();
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams {
            temperature: body.temperature.unwrap_or(1.0),
            top_p: body.top_p.unwrap_or(1.0),
            seed: body.seed.unwrap_or(0),
            ..SamplingParams::default()
        },
        stop,
        max_positions: Some(positions),
        cancel: Some(cancel.flag()),
        logprobs,
        ..GenerateParams::default()
    };
    params
        .validate()
        .map_err(|e| ApiError::from(StrategyError::Policy(e)))?;
    let ticket = state.admit_generation()?;
    let permit = ticket.slot().await?;
    let state = state.into_inner();
    let model_id = state.model_id().to_string();
    let served = state.clone();
    let generated = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        state.metrics.in_flight.inc();
        let result = state.policy().model().generate(&prompt, n, &params);
        state.metrics.in_flight.dec();
        result.map(|(g, _)| (g, prompt.len()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the model task failed: {e}")))?;
    drop(cancel);
    let (generations, prompt_tokens) =
        generated.map_err(|e| ApiError::from(StrategyError::Policy(e)))?;
    let completion_tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
    let tokenizer = served.policy().tokenizer();
    let choices = generations
        .iter()
        .enumerate()
        .map(|(i, g)| {
            Ok(TextChoice {
                index: i,
                text: g.text.clone(),
                finish_reason: match g.finish {
                    FinishReason::Stop => Finish::Stop,
                    FinishReason::Length | FinishReason::Budget => Finish::Length,
                },
                logprobs: match logprobs {
                    Some(_) => Some(Logprobs::new(tokenizer, &g.logprobs)?),
                    None => None,
                },
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let response = HttpResponse::Ok().json(TextCompletion {
        id: format!("cmpl-{:032x}", super::feedback::new_id()),
        object: TextCompletionObject::TextCompletion,
        created: super::openai::now(),
        model: model_id,
        choices,
        usage: TextUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    });
    Ok((response, completion_tokens))
}
