//! An LLM judge: any chat policy rates a response on a 1-9 scale, and the score is the expected
//! rating under the judge's next-token distribution over the digits.
//!
//! Reading probabilities instead of parsing a generated number gives a continuous score (ties
//! between candidates are rare), costs one forward pass per candidate with no decoding, and
//! cannot fail to parse.

use crate::{model_err, policy_err, Candidate, RewardError, RewardModel, Score};
use policies::{Interrupt, Message, Output, Policy, Role};
use std::sync::Arc;

/// The rating instructions. `{question}` and `{response}` are filled in.
pub const RATING_PROMPT: &str = "Rate the response to the question from 1 to 9.\n\n9: correct, does everything the question asks (any limit on length, format or wording included), and says no more than it needs to.\n5: partly correct, or correct but padded with filler, or misses one instruction.\n1: wrong, off-topic, garbled or useless.\n\nA longer response is not a better one: filler, repetition and restating the question lower the rating.\n\nQuestion: {question}\n\nResponse: {response}\n\nReply with a single digit from 1 to 9.";
/// Text that opens the judge's answer, so the next token is the rating.
pub(crate) const ANSWER_PREFIX: &str = "Rating: ";
/// The instructions of a pairwise comparison. `{question}`, `{a}` and `{b}` are filled in.
pub const PAIRWISE_PROMPT: &str = "Which response answers the question better? Judge correctness first, then whether it follows every instruction in the question, stays on topic, reads clearly and says no more than it needs to.\n\nQuestion: {question}\n\nResponse A: {a}\n\nResponse B: {b}\n\nReply with a single letter: A or B.";
/// Text that opens the judge's verdict, so the next token is the letter.
const VERDICT_PREFIX: &str = "Better response: ";

/// What the judge is asked: a rating of one response, or a choice between two.
#[derive(Debug, Clone)]
pub struct Prompts {
    /// Holds `{question}` and `{response}`.
    pub rating: String,
    /// Holds `{question}`, `{a}` and `{b}`.
    pub pairwise: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            rating: RATING_PROMPT.into(),
            pairwise: PAIRWISE_PROMPT.into(),
        }
    }
}

impl Prompts {
    /// The default prompts with `rating` and `pairwise` replaced where given.
    pub fn new(rating: Option<String>, pairwise: Option<String>) -> Result<Self, RewardError> {
        let d = Self::default();
        let prompts = Self {
            rating: rating.unwrap_or(d.rating),
            pairwise: pairwise.unwrap_or(d.pairwise),
        };
        for (which, text, holes) in [
            ("rating", &prompts.rating, &["{question}", "{response}"][..]),
            (
                "pairwise",
                &prompts.pairwise,
                &["{question}", "{a}", "{b}"][..],
            ),
        ] {
            if let Some(hole) = holes.iter().find(|h| !text.contains(**h)) {
                return Err(RewardError::Config(format!(
                    "judge {which} prompt must contain {hole}"
                )));
            }
        }
        Ok(prompts)
    }

    /// The rating prompt for one candidate: what the judge's user turn says.
    pub(crate) fn rating_for(&self, c: &Candidate<'_>) -> Result<String, RewardError> {
        Ok(self
            .rating
            .replace("{question}", question(c.messages)?)
            .replace("{response}", c.response))
    }
}

/// The last user message: what the response answers.
fn question(messages: &[Message]) -> Result<&str, RewardError> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .ok_or_else(|| {
            RewardError::Config("conversation has no user message to judge against".into())
        })
}

/// The expected rating from the log-scale weights of the digits 1..=9 (`scores[d - 1]` for
/// digit `d`): the softmax restricted to them. Logits and log-probabilities give the same
/// rating (they differ by one shift for all tokens), so the local judge, which reads logits,
/// and the OpenAI-compatible one, which reads a server's log-probabilities, compute it here
/// alike. A digit the server did not list is `-inf`: weight 0. `None` when no digit has any.
pub(crate) fn expected_rating(scores: &[f32]) -> Option<f32> {
    let (weights, total) = softmax_weights(scores);
    (total > 0.0).then(|| {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (i + 1) as f32 * w)
            .sum::<f32>()
            / total
    })
}

/// A length penalty as a judge takes it (see [`Judge::with_length_penalty`]).
pub(crate) fn check_length_penalty(per_doubling: f32) -> Result<f32, RewardError> {
    if !per_doubling.is_finite() || per_doubling < 0.0 {
        return Err(RewardError::Config(format!(
            "length_penalty must be a finite number >= 0, not {per_doubling}"
        )));
    }
    Ok(per_doubling)
}

/// A judge's score for `response`: its rating less `per_doubling` points per doubling of the
/// response's length in words.
pub(crate) fn length_controlled(rating: f32, response: &str, per_doubling: f32) -> f32 {
    rating - per_doubling * doublings(response)
}

/// How many times a text's length in words doubles from one word: `log2(words)`.
fn doublings(text: &str) -> f32 {
    (text.split_whitespace().count().max(1) as f32).log2()
}

pub struct Judge {
    policy: Arc<Policy>,
    prompts: Prompts,
    /// Token id of each digit 1..=9.
    digits: Vec<u32>,
    /// Token ids of the letters `A` and `B`, for pairwise comparisons.
    letters: [u32; 2],
    /// Rating points taken off per doubling of a response's length in words (see
    /// [`Judge::with_length_penalty`]).
    length_penalty: f32,
}

impl Judge {
    pub fn new(policy: Arc<Policy>, prompts: Prompts) -> Result<Self, RewardError> {
        let tok = policy.tokenizer();
        let one_token = |text: &str| -> Result<u32, RewardError> {
            match tok.encode(text).map_err(model_err)?.as_slice() {
                [id] => Ok(*id),
                other => Err(RewardError::Config(format!(
                    "judge model spells `{text}` as {} tokens",
                    other.len()
                ))),
            }
        };
        let digits = (1..=9)
            .map(|d| one_token(&d.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let letters = [one_token("A")?, one_token("B")?];
        Ok(Self {
            policy,
            prompts,
            digits,
            letters,
            length_penalty: 0.0,
        })
    }

    /// Takes `per_doubling` rating points off per doubling of a response's length in words
    /// (a rating becomes `E[rating] - per_doubling * log2(words)`), and as much log-odds off a
    /// side-by-side preference per doubling of the first response's words over the second's.
    /// Small judges prefer the longer of two responses that say the same (docs/EVAL.md): a
    /// length-controlled judge makes padding cost what it is worth to a reader.
    pub fn with_length_penalty(mut self, per_doubling: f32) -> Result<Self, RewardError> {
        self.length_penalty = check_length_penalty(per_doubling)?;
        Ok(self)
    }

    /// Renders `prompt` as the judge's user turn and opens its answer with `prefix`. The
    /// question and responses inside are encoded as text: they cannot end the judge's turn.
    fn encode(&self, prompt: &str, prefix: &str) -> Result<Vec<u32>, RewardError> {
        crate::fitted(
            self.policy
                .encode_chat_opened(&[Message::new(Role::User, prompt)], prefix),
        )
    }

    /// The last position's logits of each row, prefilled as one batch in interruptible chunks.
    fn last_logits(
        &self,
        rows: &[Vec<u32>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let model = self.policy.model();
        let mut cache = model.new_cache(rows.len());
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let logits = model
            .prefill(&refs, &mut cache, Output::Logits, interrupt)
            .map_err(policy_err)?;
        logits.to_vec2().map_err(model_err)
    }

    /// The probability that `first` answers the question better than `second`, asked with
    /// `first` shown as A and again shown as B, and averaged: a judge's preference for a
    /// position cancels out.
    pub fn prefer_first(
        &self,
        messages: &[Message],
        first: &str,
        second: &str,
    ) -> Result<f32, RewardError> {
        let question = question(messages)?;
        let ask = |a: &str, b: &str| {
            let prompt = self
                .prompts
                .pairwise
                .replace("{question}", question)
                .replace("{a}", a)
                .replace("{b}", b);
            self.encode(&prompt, VERDICT_PREFIX)
        };
        let rows = [ask(first, second)?, ask(second, first)?];
        let logits = self.last_logits(&rows, &Interrupt::default())?;
        let [shown_a, shown_b] = logits.as_slice() else {
            return Err(RewardError::Model("expected two rows of logits".into()));
        };
        let p_a = |l: &[f32]| {
            let (w, total) = restricted_softmax(l, &self.letters);
            w[0] / total
        };
        let p = (p_a(shown_a) + (1.0 - p_a(shown_b))) / 2.0;
        if self.length_penalty == 0.0 {
            return Ok(p);
        }
        // Length control in log-odds: the same penalty per doubling of words.
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        let odds =
            (p / (1.0 - p)).ln() - self.length_penalty * (doublings(first) - doublings(second));
        Ok(1.0 / (1.0 + (-odds).exp()))
    }
}

/// The logits of `ids` alone (`-inf` for an id past the vocabulary).
fn picked(logits: &[f32], ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .map(|&id| {
            logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)
        })
        .collect()
}

/// Unnormalized softmax weights over the logits of `ids` alone, and their sum.
fn restricted_softmax(logits: &[f32], ids: &[u32]) -> (Vec<f32>, f32) {
    softmax_weights(&picked(logits, ids))
}

/// Unnormalized softmax weights of log-scale scores, and their sum (0 when every score is
/// `-inf`).
fn softmax_weights(scores: &[f32]) -> (Vec<f32>, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return (vec![0.0; scores.len()], 0.0);
    }
    let weights: Vec<f32> = scores.iter().map(|l| (l - max).exp()).collect();
    let total = weights.iter().sum();
    (weights, total)
}

impl RewardModel for Judge {
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = batch
            .iter()
            .map(|c| self.encode(&self.prompts.rating_for(c)?, ANSWER_PREFIX))
            .collect::<Result<Vec<_>, _>>()?;
        let logits = self.last_logits(&rows, interrupt)?;
        if logits.len() != batch.len() {
            return Err(RewardError::Model(format!(
                "{} rows of logits for {} responses",
                logits.len(),
                batch.len()
            )));
        }
        logits
            .iter()
            .zip(batch)
            .map(|(l, c)| {
                let rating = expected_rating(&picked(l, &self.digits)).ok_or_else(|| {
                    RewardError::Model("the judge's logits give no digit any weight".into())
                })?;
                Ok(Score {
                    value: length_controlled(rating, c.response, self.length_penalty),
                    reasons: Vec::new(),
                })
            })
            .collect()
    }

    /// A certain 9 for a one-word response.
    fn max_score(&self) -> Option<f32> {
        Some(9.0)
    }
}
