//! Architecture hyper-parameters, read from GGUF metadata or an HF `config.json`.

use crate::error::{PolicyError, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

/// The decoder families hone implements. They share one transformer body
/// ([`crate::model::Transformer`]) and differ only in the switches below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// Llama with biases on the q/k/v projections.
    Qwen2,
    /// Llama with per-head RMS norms on q and k.
    Qwen3,
    /// Gemma 3: GELU MLP, scaled embeddings, four norms per layer, q/k norms, and sliding-window
    /// attention on five of every six layers.
    Gemma3,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            "gemma3" | "gemma3_text" => Ok(Self::Gemma3),
            other => Err(PolicyError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Everything the transformer body needs to know about a model's shape.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f32,
    /// Linear RoPE scaling factor of the global layers (1.0 when unscaled).
    pub rope_scale: f32,
    pub context_length: usize,
    /// Sliding window of the local layers (Gemma 3), in tokens.
    pub sliding_window: Option<usize>,
    /// True when q/k rotate adjacent pairs (llama.cpp's GGUF llama layout, whose converter
    /// permutes the q/k rows); false when they rotate the two halves of each head (HF layout).
    pub rope_interleaved: bool,
}

/// Gemma 3 local layers always use this RoPE base, whatever the global one is.
const GEMMA3_LOCAL_ROPE_THETA: f32 = 10_000.0;
/// Gemma 3: every sixth layer attends globally, the others through the sliding window.
const GEMMA3_GLOBAL_EVERY: usize = 6;

impl ModelConfig {
    /// The attention window of layer `i`, if it is a local layer.
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        match self.arch {
            Arch::Gemma3 if !(i + 1).is_multiple_of(GEMMA3_GLOBAL_EVERY) => self.sliding_window,
            _ => None,
        }
    }

    /// RoPE base and linear scale of layer `i`.
    pub fn layer_rope(&self, i: usize) -> (f32, f32) {
        if self.arch == Arch::Gemma3 && self.layer_window(i).is_some() {
            (GEMMA3_LOCAL_ROPE_THETA, 1.0)
        } else {
            (self.rope_theta, self.rope_scale)
        }
    }

    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| PolicyError::MissingMetadata("general.architecture".into()))?
            .clone();
        let arch = Arch::parse(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<usize> {
            md.get(&key(k))
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|v| v as usize)
                .ok_or_else(|| PolicyError::MissingMetadata(key(k)))
        };
        let get_f = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
        let hidden_size = get_u("embedding_length")?;
        let n_heads = get_u("attention.head_count")?;
        let n_kv_heads = get_u("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = get_u("attention.key_length").unwrap_or(hidden_size / n_heads);
        let vocab_size = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| PolicyError::MissingMetadata("token_embd.weight".into()))?;
        let rope_scale = match md
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
        {
            Some(t) if t == "linear" => get_f("rope.scaling.factor").unwrap_or(1.0),
            _ => 1.0,
        };
        Ok(Self {
            arch,
            vocab_size,
            hidden_size,
            n_layers: get_u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f64,
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_scale,
            context_length: get_u("context_length").unwrap_or(2048),
            sliding_window: get_u("attention.sliding_window").ok(),
            rope_interleaved: arch == Arch::Llama,
        })
    }

    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| PolicyError::Corrupt {
            path: "config.json".into(),
            reason: e.to_string(),
        })?;
        let arch = Arch::parse(&hf.model_type)?;
        let n_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        // transformers 5 moved `rope_theta` and `rope_scaling` into `rope_parameters`.
        let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let rope_scale = match rope {
            Some(s) if s.rope_type.as_deref() == Some("linear") => s.factor.unwrap_or(1.0),
            _ => 1.0,
        };
        let rope_theta = hf
            .rope_theta
            .or(rope.and_then(|r| r.rope_theta))
            .unwrap_or(10_000.0);
        Ok(Self {
            arch,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            n_layers: hf.num_hidden_layers,
            n_heads: hf.num_attention_heads,
            n_kv_heads,
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scale,
            context_length: hf.max_position_embeddings.unwrap_or(2048),
            sliding_window: hf.sliding_window,
            rope_interleaved: false,
        })
    }
}

/// The subset of an HF `config.json` that the supported architectures use.
#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    rope_parameters: Option<HfRopeScaling>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<usize>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    rope_type: Option<String>,
    rope_theta: Option<f32>,
    factor: Option<f32>,
}
