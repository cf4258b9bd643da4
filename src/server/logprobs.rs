//! OpenAI's legacy `logprobs` object, as `POST /v1/completions` returns it for each choice:
//! the generated tokens' text, their log-probabilities, the `k` likeliest tokens at each
//! position, and where each token's text starts.
//!
//! The figures are the engine's own ([`policies::TokenLogprobs`]): the log-softmax of the
//! logits each token was sampled from, at temperature 1 and before top-k and top-p, so they
//! describe the model whatever the request's sampling was.

use super::error::ApiError;
use policies::{TokenLogprobs, Tokenizer};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The most alternatives a request may ask for per token (OpenAI's legacy limit).
pub const MAX_LOGPROBS: usize = 20;

/// A choice's log-probabilities: one entry per generated token, then one for an end-of-turn
/// token that ended the choice (its text is not in the choice's `text`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Logprobs {
    /// Each token's text, special tokens spelled out (an end of turn that ended the choice is
    /// listed last, though its text is not in the choice's).
    tokens: Vec<String>,
    /// ln p(token) under the model's distribution at temperature 1, before top-k and top-p.
    token_logprobs: Vec<f32>,
    /// At each position, the k likeliest tokens' text and log-probability, most likely first
    /// (of two tokens with the same text, the likelier).
    #[schema(value_type = Vec<std::collections::HashMap<String, f32>>)]
    top_logprobs: Vec<Top>,
    /// Where each token's text starts, in characters from the start of the completion: the
    /// lengths of the `tokens` before it added up.
    text_offset: Vec<usize>,
}

/// One position's alternatives, most likely first. Written as a JSON object in that order:
/// a JSON map of serde_json's would sort them by their text.
#[derive(Debug)]
struct Top(Vec<(String, f32)>);

impl Serialize for Top {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

impl Logprobs {
    /// The object for one choice's recorded tokens. Two alternatives that spell the same text
    /// (pieces of one character, say) are one key of a JSON object: the likelier one stays.
    pub fn new(tokenizer: &Tokenizer, recorded: &[TokenLogprobs]) -> Result<Self, ApiError> {
        let text = |id: u32| {
            tokenizer
                .decode(&[id], false)
                .map_err(|e| ApiError::internal(format!("decoding token {id}: {e}")))
        };
        let mut out = Self {
            tokens: Vec::with_capacity(recorded.len()),
            token_logprobs: Vec::with_capacity(recorded.len()),
            top_logprobs: Vec::with_capacity(recorded.len()),
            text_offset: Vec::with_capacity(recorded.len()),
        };
        let mut offset = 0;
        for r in recorded {
            let token = text(r.token)?;
            out.text_offset.push(offset);
            offset += token.chars().count();
            out.tokens.push(token);
            out.token_logprobs.push(r.logprob);
            let mut top: Vec<(String, f32)> = Vec::with_capacity(r.top.len());
            for &(id, logprob) in &r.top {
                let alternative = text(id)?;
                if !top.iter().any(|(t, _)| *t == alternative) {
                    top.push((alternative, logprob));
                }
            }
            out.top_logprobs.push(Top(top));
        }
        Ok(out)
    }
}
