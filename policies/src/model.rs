//! One transformer decoder body for every supported family (see [`Arch`]).
//!
//! Unlike candle's stock quantized models, this one returns logits for every position of a
//! multi-token forward (speculative verification needs them), keeps its KV cache outside
//! ([`KvCache`]) so callers can fork, truncate and roll it back, and runs rows of different
//! lengths as one batch through an explicit attention mask.

use crate::config::{Arch, ModelConfig};
use crate::error::{PolicyError, Result};
use crate::kv_cache::KvCache;
use crate::weights::{Embedding, Linear, Weights};
use candle_core::{DType, Device, Tensor, D};

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only each row's last position: `[batch, vocab]`.
    Last,
    /// Every position of the chunk: `[batch, chunk, vocab]`.
    All,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &mut Weights, name: &str, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.dense(name)?, eps: eps as f32 })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps)
    }
}

/// RoPE cos/sin tables for one (base, scale) pair, `[context, rotary_dim / 2]`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(theta: f32, scale: f32, head_dim: usize, context: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> =
            (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32) / scale).collect();
        let mut angles = Vec::with_capacity(context * half);
        for p in 0..context {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (context, half), device)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()? })
    }

    /// Rotates `xs` `[batch, heads, chunk, head_dim]` by the positions `[batch * chunk]`.
    fn apply(&self, xs: &Tensor, positions: &Tensor, interleaved: bool) -> candle_core::Result<Tensor> {
        let (b, _, t, _) = xs.dims4()?;
        let cos = self.cos.index_select(positions, 0)?.reshape((b, t, ()))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((b, t, ()))?;
        if interleaved {
            candle_nn::rotary_emb::rope_i(&xs.contiguous()?, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Gemma 3 normalizes the attention and MLP outputs before the residual add.
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    post_ffn_norm: Option<RmsNorm>,
    gate: Linear,
    up: Linear,
    down: Linear,
    window: Option<usize>,
    rope: usize,
}

/// A loaded decoder.
#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    ropes: Vec<Rope>,
    device: Device,
}

impl Transformer {
    pub fn load(cfg: ModelConfig, w: &mut Weights) -> Result<Self> {
        let device = w.device().clone();
        let eps = cfg.rms_eps;
        let gemma = cfg.arch == Arch::Gemma3;
        if gemma && matches!(w, Weights::Safetensors { .. }) {
            // HF Gemma stores norm weights as offsets from 1; only GGUF files are supported.
            return Err(PolicyError::UnsupportedArchitecture("gemma3 (safetensors)".into()));
        }
        let qk_norm = matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3);
        let bias = cfg.arch == Arch::Qwen2;
        let mut ropes: Vec<((f32, f32), Rope)> = Vec::new();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("blk.{i}");
            let opt_norm = |w: &mut Weights, on: bool, n: &str| -> Result<Option<RmsNorm>> {
                if on { Ok(Some(RmsNorm::load(w, &format!("{p}.{n}.weight"), eps)?)) } else { Ok(None) }
            };
            let rope_key = cfg.layer_rope(i);
            let rope = match ropes.iter().position(|(k, _)| *k == rope_key) {
                Some(r) => r,
                None => {
                    let r = Rope::new(rope_key.0, rope_key.1, cfg.head_dim, cfg.context_length, &device)?;
                    ropes.push((rope_key, r));
                    ropes.len() - 1
                }
            };
            layers.push(Layer {
                attn_norm: RmsNorm::load(w, &format!("{p}.attn_norm.weight"), eps)?,
                q: w.linear(&format!("{p}.attn_q"), bias)?,
                k: w.linear(&format!("{p}.attn_k"), bias)?,
                v: w.linear(&format!("{p}.attn_v"), bias)?,
                o: w.linear(&format!("{p}.attn_output"), false)?,
                q_norm: opt_norm(w, qk_norm, "attn_q_norm")?,
                k_norm: opt_norm(w, qk_norm, "attn_k_norm")?,
                post_attn_norm: opt_norm(w, gemma, "post_attention_norm")?,
                ffn_norm: RmsNorm::load(w, &format!("{p}.ffn_norm.weight"), eps)?,
                post_ffn_norm: opt_norm(w, gemma, "post_ffw_norm")?,
                gate: w.linear(&format!("{p}.ffn_gate"), false)?,
                up: w.linear(&format!("{p}.ffn_up"), false)?,
                down: w.linear(&format!("{p}.ffn_down"), false)?,
                window: cfg.layer_window(i),
                rope,
            });
        }
        let embed = w.embedding("token_embd.weight")?;
        let lm_head = if w.has("output.weight") { w.linear("output", false)? } else { embed.as_linear()? };
        Ok(Self {
            norm: RmsNorm::load(w, "output_norm.weight", eps)?,
            embed,
            lm_head,
            layers,
            ropes: ropes.into_iter().map(|(_, r)| r).collect(),
            cfg,
            device,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.cfg.n_layers, batch)
    }

    /// Runs one chunk of tokens per row through the model, appending to `cache`.
    ///
    /// `rows[i]` continues row `i` of the cache. Rows may have different lengths: shorter ones
    /// are left-padded, and the padding is masked out of every later step. With
    /// [`Logits::All`], position `j` of the output for row `i` belongs to the token at
    /// `chunk - len(rows[i]) + j` (rows are right-aligned).
    pub fn forward(&self, rows: &[&[u32]], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        Ok(self.lm_head.forward(&self.forward_hidden(rows, cache, logits)?)?)
    }

    /// Like [`Self::forward`], but returns the final normalized hidden states instead of
    /// logits (`[batch, hidden]` or `[batch, chunk, hidden]`): the input of a reward head.
    pub fn forward_hidden(&self, rows: &[&[u32]], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let b = rows.len();
        if b != cache.batch_size() {
            return Err(PolicyError::InvalidParameter {
                param: "batch",
                reason: format!("{b} rows for a cache of {}", cache.batch_size()),
            });
        }
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if t == 0 {
            return Err(PolicyError::EmptyPrompt);
        }
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b * t);
        let mut chunk_slots = Vec::with_capacity(b);
        for (i, row) in rows.iter().enumerate() {
            let start = cache.next_position(i);
            let pad = t - row.len();
            if start as usize + row.len() > self.cfg.context_length {
                return Err(PolicyError::PromptTooLong {
                    tokens: start as usize + row.len(),
                    context: self.cfg.context_length,
                });
            }
            ids.extend(std::iter::repeat_n(0u32, pad).chain(row.iter().copied()));
            // Padding gets position 0 for RoPE; its slot is marked empty.
            positions.extend(std::iter::repeat_n(0u32, pad).chain((0..row.len() as u32).map(|j| start + j)));
            let mut slots = vec![None; pad];
            slots.extend((0..row.len() as u32).map(|j| Some(start + j)));
            chunk_slots.push(slots);
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let pos = Tensor::from_vec(positions, b * t, &self.device)?;
        let queries = chunk_slots.clone();
        cache.push_slots(&chunk_slots);
        let masks = self.masks(cache, &queries)?;

        let mut xs = self.embed.forward(&ids)?;
        if self.cfg.arch == Arch::Gemma3 {
            xs = (xs * (self.cfg.hidden_size as f64).sqrt())?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let mask = if layer.window.is_some() { &masks.1 } else { &masks.0 };
            xs = self.layer(i, layer, &xs, &pos, cache, mask)?;
        }
        let xs = match logits {
            Logits::Last => xs.narrow(1, t - 1, 1)?.squeeze(1)?,
            Logits::All => xs,
        };
        Ok(self.norm.forward(&xs)?)
    }

    fn layer(
        &self,
        index: usize,
        l: &Layer,
        xs: &Tensor,
        pos: &Tensor,
        cache: &mut KvCache,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (h, hkv, d) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let residual = xs;
        let x = l.attn_norm.forward(xs)?;
        let q = l.q.forward(&x)?.reshape((b, t, h, d))?;
        let k = l.k.forward(&x)?.reshape((b, t, hkv, d))?;
        let v = l.v.forward(&x)?.reshape((b, t, hkv, d))?.transpose(1, 2)?;
        let (q, k) = match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            _ => (q, k),
        };
        let rope = &self.ropes[l.rope];
        let q = rope.apply(&q.transpose(1, 2)?, pos, self.cfg.rope_interleaved)?;
        let k = rope.apply(&k.transpose(1, 2)?, pos, self.cfg.rope_interleaved)?;
        let (k, v) = cache.append(index, &k, &v.contiguous()?)?;

        // Grouped-query attention without copying K/V: the `g` query heads that share one KV
        // head are stacked along the sequence axis.
        let g = h / hkv;
        let s = k.dim(2)?;
        let q = (q.reshape((b, hkv, g * t, d))? * (1.0 / (d as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, hkv, g, t, s))?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.reshape((b, hkv, g * t, s))?)?;
        let attn = probs.matmul(&v)?.reshape((b, h, t, d))?.transpose(1, 2)?.reshape((b, t, h * d))?;
        let mut attn = l.o.forward(&attn)?;
        if let Some(n) = &l.post_attn_norm {
            attn = n.forward(&attn)?;
        }
        let xs = (residual + attn)?;

        let x = l.ffn_norm.forward(&xs)?;
        let gate = l.gate.forward(&x)?;
        let gate = match self.cfg.arch {
            Arch::Gemma3 => gate.gelu()?,
            _ => candle_nn::ops::silu(&gate)?,
        };
        let mut ffn = l.down.forward(&(gate * l.up.forward(&x)?)?)?;
        if let Some(n) = &l.post_ffn_norm {
            ffn = n.forward(&ffn)?;
        }
        Ok((xs + ffn)?)
    }

    /// Additive attention masks `[batch, 1, 1, chunk, slots]` (global, sliding-window).
    ///
    /// A query may see a slot holding a token at a position no later than its own (and, for
    /// local layers, within the window). A padding query sees only itself, which keeps its
    /// softmax finite; its output is never read.
    fn masks(&self, cache: &KvCache, queries: &[Vec<Option<u32>>]) -> Result<(Tensor, Tensor)> {
        let slots = cache.slots();
        let b = slots.len();
        let s = cache.used();
        let t = queries.first().map_or(0, Vec::len);
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let mut global = vec![f32::NEG_INFINITY; b * t * s];
        let mut local = global.clone();
        for (row, (keys, qs)) in slots.iter().zip(queries).enumerate() {
            for (qi, q) in qs.iter().enumerate() {
                let base = (row * t + qi) * s;
                match q {
                    None => {
                        global[base + s - t + qi] = 0.0;
                        local[base + s - t + qi] = 0.0;
                    }
                    Some(qp) => {
                        for (si, kp) in keys.iter().enumerate() {
                            if let Some(kp) = kp.filter(|kp| kp <= qp) {
                                global[base + si] = 0.0;
                                if ((qp - kp) as usize) < window {
                                    local[base + si] = 0.0;
                                }
                            }
                        }
                    }
                }
            }
        }
        let shape = (b, 1, 1, t, s);
        Ok((
            Tensor::from_vec(global, shape, &self.device)?.to_dtype(DType::F32)?,
            Tensor::from_vec(local, shape, &self.device)?,
        ))
    }
}

/// Returns the index of the largest logit of a `[vocab]` tensor.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?)
}
