//! An LLM judge: any chat policy rates a response on a 1-9 scale, and the score is the expected
//! rating under the judge's next-token distribution over the digits.
//!
//! Reading probabilities instead of parsing a generated number gives a continuous score (ties
//! between candidates are rare), costs one forward pass per candidate with no decoding, and
//! cannot fail to parse.

use crate::{model_err, Candidate, RewardError, RewardModel, Score};
use policies::{Logits, Message, Policy, Role};
use std::sync::Arc;

/// The judge's instructions. `{question}` and `{response}` are filled in.
pub const DEFAULT_PROMPT: &str = "Rate the response to the question on a scale from 1 (wrong, useless or off-topic) to 9 (correct, helpful and clear).\n\nQuestion: {question}\n\nResponse: {response}\n\nReply with a single digit from 1 to 9.";
/// Text that opens the judge's answer, so the next token is the rating.
const ANSWER_PREFIX: &str = "Rating: ";

pub struct Judge {
    policy: Arc<Policy>,
    prompt: String,
    /// Token id of each digit 1..=9.
    digits: Vec<u32>,
}

impl Judge {
    pub fn new(policy: Arc<Policy>, prompt: Option<String>) -> Result<Self, RewardError> {
        let prompt = prompt.unwrap_or_else(|| DEFAULT_PROMPT.to_string());
        if !prompt.contains("{question}") || !prompt.contains("{response}") {
            return Err(RewardError::Config(
                "judge prompt must contain {question} and {response}".into(),
            ));
        }
        let tok = policy.tokenizer();
        let digits = (1..=9)
            .map(
                |d| match tok.encode(&d.to_string()).map_err(model_err)?.as_slice() {
                    [id] => Ok(*id),
                    other => Err(RewardError::Config(format!(
                        "judge model spells digit {d} as {} tokens",
                        other.len()
                    ))),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            policy,
            prompt,
            digits,
        })
    }

    fn encode(&self, c: &Candidate<'_>) -> Result<Vec<u32>, RewardError> {
        let question = c
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .ok_or_else(|| {
                RewardError::Config("conversation has no user message to judge against".into())
            })?;
        let text = self
            .prompt
            .replace("{question}", question)
            .replace("{response}", c.response);
        let mut rendered = self
            .policy
            .render_chat(&[Message::new(Role::User, text)])
            .map_err(model_err)?;
        rendered.push_str(ANSWER_PREFIX);
        crate::encode_for(&self.policy, &rendered)
    }

    /// Expected rating from one row of logits: softmax restricted to the nine digit tokens.
    fn expected_rating(&self, logits: &[f32]) -> f32 {
        let picked: Vec<f32> = self.digits.iter().map(|&id| logits[id as usize]).collect();
        let max = picked.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = picked.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (i + 1) as f32 * w)
            .sum::<f32>()
            / total
    }
}

impl RewardModel for Judge {
    fn score(&self, batch: &[Candidate<'_>]) -> Result<Vec<Score>, RewardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = batch
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<Vec<_>, _>>()?;
        let model = self.policy.model();
        let mut cache = model.new_cache(rows.len());
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let logits = model
            .forward(&refs, &mut cache, Logits::Last)
            .map_err(model_err)?;
        let logits: Vec<Vec<f32>> = logits.to_vec2().map_err(model_err)?;
        Ok(logits
            .iter()
            .map(|l| Score {
                value: self.expected_rating(l),
                reasons: Vec::new(),
            })
            .collect())
    }

    /// A certain 9.
    fn max_score(&self) -> Option<f32> {
        Some(9.0)
    }
}
