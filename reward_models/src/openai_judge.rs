//! The LLM judge ([`crate::judge`]) with its model served by an OpenAI-compatible server:
//! vLLM, SGLang, a llama.cpp server, or another hone.
//!
//! The rating prompt is the local judge's, rendered here with the model's own tokenizer and
//! chat template (read from its files; its weights are not loaded) and sent as token ids, as a
//! remote policy sends them: the server runs exactly the tokens the local judge would. Each
//! response is one `POST {url}/v1/completions` for one token at temperature 0 with the 20
//! likeliest first tokens' log-probabilities; the score is the local judge's expected rating
//! over the digits among them, less the same length penalty. A digit the server does not list
//! counts as probability 0: it is less likely than 20 other tokens.
//!
//! A batch's responses are asked for at once, so that a server that batches requests (vLLM,
//! SGLang) runs them together.

use crate::judge::{self, Prompts, ANSWER_PREFIX};
use crate::remote::JsonEndpoint;
use crate::{Candidate, Interrupt, RewardError, RewardModel, Score};
use policies::{Endpoint, LanguageModel, Message, RemotePolicy, Role};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The most alternatives OpenAI's legacy `logprobs` may ask for.
const TOP_LOGPROBS: usize = 20;

pub struct OpenAiJudge {
    /// The judge model's tokenizer and chat template, which render the prompt.
    model: RemotePolicy,
    /// The name the server knows the model by, sent as `model` where given.
    served_model: Option<String>,
    endpoint: JsonEndpoint,
    prompts: Prompts,
    length_penalty: f32,
}

/// Where the judge is and how to ask it.
pub struct Server {
    /// `http://host:port` or `https://host`; a trailing `/v1` or `/` is dropped.
    pub url: String,
    pub served_model: Option<String>,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
}

impl OpenAiJudge {
    /// A judge on the model whose files are at `files` (a GGUF file or an HF folder), served
    /// at `server`, taking `length_penalty` rating points off per doubling of a response's
    /// words as the local judge does.
    pub fn new(
        files: &Path,
        server: Server,
        prompts: Prompts,
        length_penalty: f32,
    ) -> Result<Self, RewardError> {
        let endpoint = Endpoint {
            url: server.url,
            ..Endpoint::default()
        };
        let model = RemotePolicy::open(files, endpoint)
            .map_err(|e| RewardError::Config(format!("openai judge: {e}")))?;
        let endpoint = JsonEndpoint::new(
            format!("{}/v1/completions", model.url()),
            server.timeout,
            server.retries,
            server.api_key,
        )?;
        Ok(Self {
            model,
            served_model: server.served_model,
            endpoint,
            prompts,
            length_penalty: judge::check_length_penalty(length_penalty)?,
        })
    }

    /// One response's rating, from the server's log-probabilities of the judge's first token.
    fn rate(&self, c: &Candidate<'_>, interrupt: &Interrupt) -> Result<f32, RewardError> {
        let turn = [Message::new(Role::User, self.prompts.rating_for(c)?)];
        let prompt = crate::fitted(self.model.encode_chat_opened(&turn, ANSWER_PREFIX))?;
        let mut body = json!({
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": TOP_LOGPROBS,
        });
        if let Some(model) = &self.served_model {
            body["model"] = json!(model);
        }
        let answer: Completion = self.endpoint.post(&body, interrupt)?;
        rating(answer).map_err(|why| RewardError::Remote(format!("{}: {why}", self.endpoint.url())))
    }
}

/// What this judge reads of a `/v1/completions` answer.
#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Logprobs {
    /// OpenAI's legacy form (vLLM, SGLang, hone): a `{token: logprob}` object per token.
    Legacy {
        top_logprobs: Vec<HashMap<String, f32>>,
    },
    /// The chat form, which a llama.cpp server answers with here too.
    Content { content: Vec<Content> },
}

#[derive(Deserialize)]
struct Content {
    top_logprobs: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    token: String,
    logprob: f32,
}

/// The expected rating over the digits among the first token's alternatives, or why there is
/// none. The digits are matched as the local judge reads them: the tokens `1` to `9`.
fn rating(answer: Completion) -> Result<f32, String> {
    let first: Vec<(String, f32)> = match answer.choices.into_iter().next() {
        None => return Err("no choices in the answer".into()),
        Some(Choice { logprobs: None }) => {
            return Err(
                "no logprobs in the answer; does it take `logprobs` on /v1/completions?".into(),
            )
        }
        Some(Choice {
            logprobs: Some(Logprobs::Legacy { top_logprobs }),
        }) => top_logprobs
            .into_iter()
            .next()
            .map(|top| top.into_iter().collect())
            .unwrap_or_default(),
        Some(Choice {
            logprobs: Some(Logprobs::Content { content }),
        }) => content
            .into_iter()
            .next()
            .map(|c| {
                c.top_logprobs
                    .into_iter()
                    .map(|a| (a.token, a.logprob))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let scores: Vec<f32> = (1..=9)
        .map(|d| {
            let digit = d.to_string();
            first
                .iter()
                .find(|(token, _)| *token == digit)
                .map_or(f32::NEG_INFINITY, |(_, logprob)| *logprob)
        })
        .collect();
    judge::expected_rating(&scores).ok_or_else(|| {
        let listed: Vec<String> = first.iter().map(|(t, _)| format!("{t:?}")).collect();
        format!(
            "no rating token (1 to 9) among the top log-probabilities of the judge's first \
             token: {}",
            listed.join(", ")
        )
    })
}

impl RewardModel for OpenAiJudge {
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError> {
        std::thread::scope(|scope| {
            let asked: Vec<_> = batch
                .iter()
                .map(|c| scope.spawn(move || self.rate(c, interrupt)))
                .collect();
            asked
                .into_iter()
                .zip(batch)
                .map(|(asked, c)| {
                    let rating = asked.join().map_err(|_| {
                        RewardError::Model("a request to the judge's server panicked".into())
                    })??;
                    Ok(Score {
                        value: judge::length_controlled(rating, c.response, self.length_penalty),
                        reasons: Vec::new(),
                    })
                })
                .collect()
        })
    }

    /// A certain 9 for a one-word response, as the local judge.
    fn max_score(&self) -> Option<f32> {
        Some(9.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(answer: &str) -> Result<f32, String> {
        rating(serde_json::from_str(answer).map_err(|e| e.to_string())?)
    }

    /// Both shapes servers answer in give the same rating; an answer without a digit, or
    /// without logprobs, says so.
    #[test]
    fn ratings_from_either_shape_of_logprobs() {
        let legacy = r#"{"choices": [{"text": "7", "logprobs": {"tokens": ["7"],
            "top_logprobs": [{"7": -0.1, "8": -2.4, "x": -3.0}]}}]}"#;
        let content = r#"{"choices": [{"text": "7", "logprobs": {"content": [{"token": "7",
            "logprob": -0.1, "top_logprobs": [{"token": "7", "logprob": -0.1},
            {"token": "8", "logprob": -2.4}, {"token": "x", "logprob": -3.0}]}]}}]}"#;
        let (p7, p8) = ((-0.1f32).exp(), (-2.4f32).exp());
        let want = (7.0 * p7 + 8.0 * p8) / (p7 + p8);
        for answer in [legacy, content] {
            let got = parse(answer).unwrap();
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        let none = r#"{"choices": [{"logprobs": {"top_logprobs": [{"x": -0.1}]}}]}"#;
        let e = parse(none).unwrap_err();
        assert!(e.contains("no rating token") && e.contains("\"x\""), "{e}");
        let e = parse(r#"{"choices": [{"text": "7", "logprobs": null}]}"#).unwrap_err();
        assert!(e.contains("no logprobs"), "{e}");
    }
}
