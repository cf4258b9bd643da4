//! Scorers for hone.
//!
//! Every reward model answers one question for a batch of candidates: how good is this response
//! to this conversation? Scores only need to be comparable within one query, so each kind is free
//! to use its own scale. A round's candidates are scored in one call so that model-backed scorers
//! can batch their forward passes.

pub mod classifier;
pub mod combined;
pub mod judge;
pub mod manifest;
pub mod openai_judge;
pub mod remote;
pub mod verifier;

pub use verifier::{Constraint, Verifier};

use policies::{Interrupt, Message};

/// One (conversation, response) pair to score.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The conversation the response answers; the last message is normally the user's.
    pub messages: &'a [Message],
    /// The response being judged.
    pub response: &'a str,
}

/// The score of one candidate. Higher is better.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    pub value: f32,
    /// Why the score is what it is, in words a policy can read back (e.g. failed constraints).
    pub reasons: Vec<String>,
}

/// What went wrong while scoring.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("invalid reward configuration: {0}")]
    Config(String),
    #[error("input too long for the reward model: {tokens} tokens, limit {limit}")]
    InputTooLong { tokens: usize, limit: usize },
    #[error("remote scorer failed: {0}")]
    Remote(String),
    #[error("reward model failed: {0}")]
    Model(String),
    #[error("scoring cancelled")]
    Cancelled,
    #[error("the deadline passed while scoring")]
    DeadlinePassed,
}

/// A scorer of candidate responses.
pub trait RewardModel: Send + Sync {
    /// Scores every candidate; the result has one entry per candidate, in order.
    fn score(&self, batch: &[Candidate<'_>]) -> Result<Vec<Score>, RewardError> {
        self.score_interruptible(batch, &Interrupt::default())
    }

    /// Like [`RewardModel::score`], but model-backed scorers check `interrupt` between chunks
    /// of their prefill and give up with [`RewardError::Cancelled`] or
    /// [`RewardError::DeadlinePassed`]: a judge reading a long conversation must not hold the
    /// model for minutes after its client has gone. Scorers that do no model work ignore it.
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError>;

    /// The highest score this reward can give, when it has one. A response that reaches it
    /// cannot be beaten, so a search may stop there.
    fn max_score(&self) -> Option<f32> {
        None
    }
}

fn model_err(e: impl std::fmt::Display) -> RewardError {
    RewardError::Model(e.to_string())
}

/// A policy error met while scoring: an interruption stays one, the rest are model failures.
fn policy_err(e: policies::PolicyError) -> RewardError {
    match e {
        policies::PolicyError::Cancelled => RewardError::Cancelled,
        policies::PolicyError::DeadlinePassed => RewardError::DeadlinePassed,
        other => model_err(other),
    }
}

/// A model-backed scorer's tokenized input, or why there is none: input longer than the
/// scorer's context is refused, never silently truncated.
fn fitted(ids: policies::Result<Vec<u32>>) -> Result<Vec<u32>, RewardError> {
    ids.map_err(|e| match e {
        policies::PolicyError::PromptTooLong { tokens, context } => RewardError::InputTooLong {
            tokens,
            limit: context,
        },
        other => model_err(other),
    })
}
