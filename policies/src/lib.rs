//! Language models and decoding for hone.
//!
//! - [`Policy`]: a loaded model with its tokenizer and chat template; generates batches.
//! - [`Transformer`]: the decoder body (Llama, Qwen2, Qwen3, Gemma 3), GGUF or safetensors.
//! - [`KvCache`]: a batch cache that can be forked, truncated and rolled back.
//! - [`Tokenizer`], [`ChatTemplate`], [`Sampler`]: text in, tokens out, and back.
//! - [`Speculation`]: lossless speculative decoding with a prompt-lookup drafter.

mod attention;
pub mod chat;
pub mod config;
pub mod cpu;
mod cpu_matmul;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod manifest;
pub mod model;
pub mod policy;
pub mod sampling;
pub mod speculative;
pub mod store;
pub mod tokenizer;
pub mod weights;

pub use chat::{ChatTemplate, Message, Piece, Role};
pub use config::{Arch, ModelConfig};
pub use error::{PolicyError, Result};
pub use generate::{FinishReason, GenerateParams, Generation, GenerationStats};
pub use kv_cache::KvCache;
pub use model::{Logits, Transformer};
pub use policy::{Checkpoint, Policy};
pub use sampling::{Sampler, SamplingParams};
pub use speculative::Speculation;
pub use tokenizer::Tokenizer;
