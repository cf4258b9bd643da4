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
    /// `usage` is boxed: it is most of the error's size, and every loop's `Result` carries it.
    NoAnswer { dropped: usize, usage: Box<Usage> },
    #[error("prompt template `{name}`: {reason}")]
    Prompt { name: String, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Policy(PolicyError),
    #[error(transparent)]
    Reward(RewardError),
}

/// A cancelled model call is the request's cancellation, whichever model it was in. A deadline
/// met inside a call is handled where the call is made (the loop answers with what it has); one
/// that gets this far had nothing to answer with.
impl From<PolicyError> for StrategyError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Cancelled => Self::Cancelled,
            PolicyError::DeadlinePassed => Self::DeadlineBeforeAnswer,
            e => Self::Policy(e),
        }
    }
}

impl From<RewardError> for StrategyError {
    fn from(e: RewardError) -> Self {
        match e {
            RewardError::Cancelled => Self::Cancelled,
            RewardError::DeadlinePassed => Self::DeadlineBeforeAnswer,
            e => Self::Reward(e),
        }
    }
}
