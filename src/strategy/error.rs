//! What can stop a loop from answering at all.

use crate::budget::Usage;
use policies::PolicyError;
use reward_models::RewardError;

/// A loop that answers late or short still answers (see [`super::Stopped`]); these errors are
/// for the cases where there is nothing to answer with.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(
        "the compute budget of {budget} units is too small for even one prefill of the prompt: \
         one scored response needs at least {minimum} units ({prompt_tokens} prompt tokens, one \
         generated token, and scoring it)"
    )]
    BudgetTooSmall {
        budget: u64,
        minimum: u64,
        prompt_tokens: usize,
    },
    #[error("the deadline passed before any response was scored")]
    DeadlineBeforeAnswer,
    #[error(
        "the policy produced no usable response ({dropped} dropped as empty or restating the \
         task) within the budget"
    )]
    NoAnswer { dropped: usize, usage: Usage },
    #[error("prompt template `{name}`: {reason}")]
    Prompt { name: String, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Policy(PolicyError),
    #[error(transparent)]
    Reward(#[from] RewardError),
}

impl From<PolicyError> for StrategyError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Cancelled => Self::Cancelled,
            e => Self::Policy(e),
        }
    }
}
