//! Errors of the policy engine.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a policy model.
///
/// Each variant names the problem in words a user can act on; the CLI and the service show the
/// message as is.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("model file not found: {0}")]
    NotFound(PathBuf),
    #[error("cannot read model {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("unsupported model architecture `{0}` (supported: llama, qwen2, qwen3, gemma3)")]
    UnsupportedArchitecture(String),
    #[error("model metadata is missing `{0}`")]
    MissingMetadata(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {tokens} tokens but the model's context is {context} tokens")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("invalid generation parameter `{param}`: {reason}")]
    InvalidParameter { param: &'static str, reason: String },
    #[error("the prompt needs {needed} token positions but the compute limit is {limit}")]
    OverBudget { needed: usize, limit: usize },
    #[error("generation cancelled")]
    Cancelled,
    #[error("the deadline passed before the model finished")]
    DeadlinePassed,
    #[error("remote policy: {0}")]
    Remote(String),
    #[error("model download failed: {0}")]
    Download(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
