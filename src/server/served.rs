//! The policy a server runs its loops on: the local engine, or a remote OpenAI-compatible
//! server's (`--remote`), whose tokenizer and chat template come from the model's files here.

use policies::{LanguageModel, ModelConfig, Policy, RemotePolicy, Tokenizer};
use std::sync::Arc;

pub enum Served {
    Local(Arc<Policy>),
    Remote(Box<RemotePolicy>),
}

impl Served {
    /// What the loops call.
    pub fn model(&self) -> &dyn LanguageModel {
        match self {
            Self::Local(p) => p.as_ref(),
            Self::Remote(r) => r.as_ref(),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Local(p) => p.name(),
            Self::Remote(r) => r.name(),
        }
    }

    /// The model's shape: its context, vocabulary and size (what compute is priced by).
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Local(p) => p.model().config(),
            Self::Remote(r) => r.config(),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            Self::Local(p) => p.tokenizer(),
            Self::Remote(r) => r.tokenizer(),
        }
    }

    /// The local engine, which a judge on the same model can share.
    pub fn local(&self) -> Option<&Arc<Policy>> {
        match self {
            Self::Local(p) => Some(p),
            Self::Remote(_) => None,
        }
    }
}
