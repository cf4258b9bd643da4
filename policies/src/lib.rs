//! Language models and decoding for hone.
//!
//! - [`Policy`]: a loaded model with its tokenizer and chat template; generates batches.
//! - [`Transformer`]: the decoder body (Llama, Qwen2, Qwen3, Gemma 3), GGUF or safetensors.
//! - [`KvCache`]: a batch cache that can be forked, truncated and rolled back.
//! - [`Tokenizer`], [`ChatTemplate`], [`Sampler`]: text in, tokens out, and back.
//! - [`Interrupt`]: a cancel flag and a deadline, checked between chunks of a prefill.
//! - [`Speculation`]: lossless speculative decoding, drafted from the text ([`suffix`]) or by a
//!   smaller model ([`draft`]).

mod attention;
pub mod chat;
pub mod config;
pub mod cpu;
mod cpu_matmul;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_graph;
pub mod draft;
pub mod error;
pub(crate) mod exp;
pub mod generate;
pub mod kv_cache;
mod language_model;
pub mod manifest;
pub mod model;
pub mod pacing;
pub mod policy;
pub mod prefill;
pub mod remote;
pub mod sampling;
pub mod speculative;
pub mod store;
pub mod suffix;
pub mod tokenizer;
pub mod weights;

pub use chat::{ChatTemplate, Message, Piece, Role};
pub use config::{Arch, ModelConfig};
pub use error::{PolicyError, Result};
pub use generate::{FinishReason, GenerateParams, Generation, GenerationStats, TextSink};
pub use kv_cache::KvCache;
pub use language_model::LanguageModel;
pub use model::{read_scores, Logits, Transformer};
pub use policy::{Checkpoint, Policy};
pub use prefill::{Interrupt, Output};
pub use remote::{Endpoint, RemotePolicy};
pub use sampling::{Readout, Sampler, SamplingParams, Scores, TokenLogprobs};
pub use speculative::Speculation;
pub use tokenizer::Tokenizer;

/// The machine a figure was measured on: the GPU's model when `device` is one (as the NVIDIA
/// driver names it), and the CPU always.
pub fn describe(device: &candle_core::Device) -> String {
    let cpu = cpu::describe();
    if !device.is_cuda() {
        return cpu;
    }
    let gpu = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|entry| {
            let info = std::fs::read_to_string(entry.path().join("information")).ok()?;
            let model = info.lines().find_map(|l| l.strip_prefix("Model:"))?;
            Some(model.trim().to_string())
        })
        .unwrap_or_else(|| "an NVIDIA GPU".into());
    format!("{gpu} (CUDA); host {cpu}")
}

/// The device hone runs on: the first CUDA GPU when built with the `cuda` feature and one is
/// present (unless `cpu`), else the CPU.
///
/// On CUDA, cudarc's per-allocation events are turned off: they order work between streams,
/// hone runs everything on one stream, and they cost a driver call for every kernel argument.
pub fn device(cpu: bool) -> candle_core::Result<candle_core::Device> {
    if cpu || !candle_core::utils::cuda_is_available() {
        return Ok(candle_core::Device::Cpu);
    }
    let device = candle_core::Device::new_cuda(0)?;
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = &device {
        // SAFETY: every tensor of the process lives on this device's single stream, so work
        // is ordered by the stream itself (the condition `disable_event_tracking` states).
        unsafe { d.disable_event_tracking() };
    }
    Ok(device)
}
