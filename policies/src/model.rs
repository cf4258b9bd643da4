//! One transformer decoder body for every supported family (see [`Arch`]).
//!
//! Unlike candle's stock quantized models, this one returns logits for every position of a
//! multi-token forward (speculative verification needs them), keeps its KV cache outside
//! ([`KvCache`]) so callers can fork, truncate and roll it back, and runs rows of different
//! lengths as one batch through an explicit attention mask.

use crate::attention::{self, QueryKeys};
use crate::config::{Arch, ModelConfig};
use crate::error::{PolicyError, Result};
use crate::kv_cache::KvCache;
use crate::weights::{Embedding, Linear, Weights};
use candle_core::{Device, Tensor};

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only each row's last position: `[batch, vocab]`.
    Last,
    /// Every token of the chunk, packed: `[tokens, vocab]`, row after row.
    All,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &mut Weights, name: &str, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.dense(name)?,
            eps: eps as f32,
        })
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
    fn new(
        theta: f32,
        scale: f32,
        head_dim: usize,
        context: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32) / scale)
            .collect();
        let mut angles = Vec::with_capacity(context * half);
        for p in 0..context {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (context, half), device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// Rotates `xs` `[batch, heads, chunk, head_dim]` by the positions `[batch * chunk]`.
    fn apply(
        &self,
        xs: &Tensor,
        positions: &Tensor,
        interleaved: bool,
    ) -> candle_core::Result<Tensor> {
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
            return Err(PolicyError::UnsupportedArchitecture(
                "gemma3 (safetensors)".into(),
            ));
        }
        let qk_norm = matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3);
        let bias = cfg.arch == Arch::Qwen2;
        let mut ropes: Vec<((f32, f32), Rope)> = Vec::new();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("blk.{i}");
            let opt_norm = |w: &mut Weights, on: bool, n: &str| -> Result<Option<RmsNorm>> {
                if on {
                    Ok(Some(RmsNorm::load(w, &format!("{p}.{n}.weight"), eps)?))
                } else {
                    Ok(None)
                }
            };
            let rope_key = cfg.layer_rope(i);
            let rope = match ropes.iter().position(|(k, _)| *k == rope_key) {
                Some(r) => r,
                None => {
                    let r = Rope::new(
                        rope_key.0,
                        rope_key.1,
                        cfg.head_dim,
                        cfg.context_length,
                        &device,
                    )?;
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
        let lm_head = if w.has("output.weight") {
            w.linear("output", false)?
        } else {
            embed.as_linear()?
        };
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
    /// take empty slots in the cache, masked out of every later step, and cost no compute.
    /// [`Logits::Last`] gives `[batch, vocab]`; [`Logits::All`] gives `[tokens, vocab]`, every
    /// row's tokens one after another.
    pub fn forward(&self, rows: &[&[u32]], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        Ok(self
            .lm_head
            .forward(&self.forward_hidden(rows, cache, logits)?)?)
    }

    /// Like [`Self::forward`], but returns the final normalized hidden states instead of
    /// logits (`[batch, hidden]` or `[tokens, hidden]`): the input of a reward head.
    pub fn forward_hidden(
        &self,
        rows: &[&[u32]],
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor> {
        self.hidden(rows, cache, logits)
    }

    /// The forward pass. Rows are packed: the linear layers see only real tokens
    /// (`[1, tokens, hidden]`, each row's tokens one after another), so rows of different
    /// lengths cost no padding; keys and values are spread into the cache's slot grid, and
    /// attention runs row by row. Returns `[batch, hidden]` for [`Logits::Last`], else the
    /// packed `[tokens, hidden]`.
    fn hidden(&self, rows: &[&[u32]], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let b = rows.len();
        if b != cache.batch_size() {
            return Err(PolicyError::InvalidParameter {
                param: "batch",
                reason: format!("{b} rows for a cache of {}", cache.batch_size()),
            });
        }
        if rows.iter().any(|r| r.is_empty()) {
            return Err(PolicyError::EmptyPrompt);
        }
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let n: usize = rows.iter().map(|r| r.len()).sum();
        let mut ids = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut chunk_slots = Vec::with_capacity(b);
        let mut queries = Vec::with_capacity(b);
        // For each (row, chunk slot), the packed token stored there; padding points at the
        // row's first token, and its slot is marked empty so that it is never read.
        let mut spread = Vec::with_capacity(b * t);
        for (i, row) in rows.iter().enumerate() {
            let start = cache.next_position(i);
            if start as usize + row.len() > self.cfg.context_length {
                return Err(PolicyError::PromptTooLong {
                    tokens: start as usize + row.len(),
                    context: self.cfg.context_length,
                });
            }
            let (offset, pad) = (ids.len() as u32, t - row.len());
            ids.extend_from_slice(row);
            let own: Vec<u32> = (0..row.len() as u32).map(|j| start + j).collect();
            positions.extend_from_slice(&own);
            spread.extend(
                std::iter::repeat_n(offset, pad).chain((0..row.len() as u32).map(|j| offset + j)),
            );
            let mut slots = vec![None; pad];
            slots.extend(own.iter().map(|&p| Some(p)));
            chunk_slots.push(slots);
            queries.push(own);
        }
        let ids = Tensor::from_vec(ids, (1, n), &self.device)?;
        let pos = Tensor::from_vec(positions, n, &self.device)?;
        let spread = Tensor::from_vec(spread, b * t, &self.device)?;
        cache.push_slots(&chunk_slots);
        let keys = self.plan_keys(cache, &queries);
        let rows_on_device = if self.device.is_cpu() {
            Vec::new()
        } else {
            self.device_rows(&keys)?
        };
        let batch = Batch {
            pos: &pos,
            spread: &spread,
            rows: b,
            chunk: t,
            held: &keys.held,
            global: &keys.global,
            local: &keys.local,
            device_rows: &rows_on_device,
        };

        let mut xs = self.embed.forward(&ids)?;
        if self.cfg.arch == Arch::Gemma3 {
            xs = (xs * (self.cfg.hidden_size as f64).sqrt())?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            xs = self.layer(i, layer, &xs, cache, &batch)?;
        }
        let xs = xs.squeeze(0)?;
        let xs = match logits {
            Logits::Last => {
                let mut end = 0u32;
                let last: Vec<u32> = rows
                    .iter()
                    .map(|r| {
                        end += r.len() as u32;
                        end - 1
                    })
                    .collect();
                xs.contiguous()?
                    .index_select(&Tensor::from_vec(last, b, &self.device)?, 0)?
            }
            Logits::All => xs,
        };
        Ok(self.norm.forward(&xs)?)
    }

    fn layer(
        &self,
        index: usize,
        l: &Layer,
        xs: &Tensor,
        cache: &mut KvCache,
        batch: &Batch<'_>,
    ) -> Result<Tensor> {
        let (_, n, _) = xs.dims3()?;
        let (h, hkv, d) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let (b, t) = (batch.rows, batch.chunk);
        let residual = xs;
        let x = l.attn_norm.forward(xs)?;
        let q = l.q.forward(&x)?.reshape((1, n, h, d))?;
        let k = l.k.forward(&x)?.reshape((1, n, hkv, d))?;
        let v = l.v.forward(&x)?.reshape((1, n, hkv, d))?;
        let (q, k) = match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            _ => (q, k),
        };
        let rope = &self.ropes[l.rope];
        let q = rope.apply(&q.transpose(1, 2)?, batch.pos, self.cfg.rope_interleaved)?;
        let k = rope.apply(&k.transpose(1, 2)?, batch.pos, self.cfg.rope_interleaved)?;
        // Packed `[1, kv_heads, tokens, d]` into the grid's `[batch, kv_heads, chunk, d]`.
        let to_grid = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.squeeze(0)?
                .contiguous()?
                .index_select(batch.spread, 1)?
                .reshape((hkv, b, t, d))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (k, v) = cache.append(index, &to_grid(&k)?, &to_grid(&v.transpose(1, 2)?)?)?;

        let scale = 1.0 / (d as f64).sqrt();
        let local = l.window.is_some();
        let attn = if self.device.is_cpu() {
            let queries = if local { &batch.local } else { &batch.global };
            attention::attend(&q, &k, &v, batch.held, queries, scale as f32)?
        } else {
            self.attend_rows(&q, &k, &v, batch, local, scale)?
        };
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

    /// Which keys every packed query sees: its row's held slots at or before its position, and
    /// for sliding-window layers only the last `window` positions of those.
    fn plan_keys(&self, cache: &KvCache, queries: &[Vec<u32>]) -> KeyPlan {
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let mut plan = KeyPlan::default();
        for (row, (slots, own)) in cache.slots().iter().zip(queries).enumerate() {
            let held: Vec<(usize, u32)> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|p| (i, p)))
                .collect();
            // Positions grow with slots, so a query's visible keys are a run of `held`.
            for &qp in own {
                let hi = held.partition_point(|&(_, kp)| kp <= qp);
                let lo = held[..hi].partition_point(|&(_, kp)| (qp - kp) as usize >= window);
                plan.global.push(QueryKeys { row, lo: 0, hi });
                plan.local.push(QueryKeys { row, lo, hi });
            }
            plan.held
                .push(held.into_iter().map(|(slot, _)| slot).collect());
        }
        plan
    }

    /// For attention on an accelerator: each row's slot index and additive masks
    /// `[1, 1, 1, tokens, keys]` (global and sliding-window), built once per forward pass.
    fn device_rows(&self, plan: &KeyPlan) -> Result<Vec<DeviceRow>> {
        let mut rows = Vec::with_capacity(plan.held.len());
        let mut next = 0;
        for (row, held) in plan.held.iter().enumerate() {
            let len = plan.global[next..]
                .iter()
                .take_while(|q| q.row == row)
                .count();
            let s = held.len();
            let mask = |queries: &[QueryKeys]| -> candle_core::Result<Tensor> {
                let mut m = vec![f32::NEG_INFINITY; len * s];
                for (i, q) in queries.iter().enumerate() {
                    m[i * s + q.lo..i * s + q.hi].fill(0.0);
                }
                Tensor::from_vec(m, (1, 1, 1, len, s), &self.device)
            };
            let idx: Vec<u32> = held.iter().map(|&slot| slot as u32).collect();
            rows.push(DeviceRow {
                slots: Tensor::from_vec(idx, s, &self.device)?,
                tokens: next..next + len,
                global: mask(&plan.global[next..next + len])?,
                local: mask(&plan.local[next..next + len])?,
            });
            next += len;
        }
        Ok(rows)
    }

    /// Attention with candle's tensor operations, row by row over each row's own keys, for
    /// devices without [`attention::attend`]. Grouped-query heads are stacked along the query
    /// axis so K/V are never copied per head.
    fn attend_rows(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: &Batch<'_>,
        local: bool,
        scale: f64,
    ) -> Result<Tensor> {
        let (h, hkv, d) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let g = h / hkv;
        let mut outs = Vec::with_capacity(batch.device_rows.len());
        for (r, row) in batch.device_rows.iter().enumerate() {
            let len = row.tokens.len();
            let keys = |x: &Tensor| x.narrow(0, r, 1)?.contiguous()?.index_select(&row.slots, 2);
            let (k, v) = (keys(k)?, keys(v)?);
            let mask = if local { &row.local } else { &row.global };
            let q =
                q.narrow(2, row.tokens.start, len)?
                    .contiguous()?
                    .reshape((1, hkv, g * len, d))?;
            let s = k.dim(2)?;
            let scores = (q * scale)?
                .matmul(&k.t()?)?
                .reshape((1, hkv, g, len, s))?
                .broadcast_add(mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.reshape((1, hkv, g * len, s))?)?;
            // `[1, heads, len, d]` to the packed `[1, len, heads × d]`.
            outs.push(
                probs
                    .matmul(&v)?
                    .reshape((1, h, len, d))?
                    .transpose(1, 2)?
                    .reshape((1, len, h * d))?,
            );
        }
        Ok(Tensor::cat(&outs, 1)?)
    }
}

/// What every layer of one forward pass shares.
struct Batch<'a> {
    /// The position of each packed token.
    pos: &'a Tensor,
    /// For each slot of the cache's new chunk (row-major), the packed token it holds.
    spread: &'a Tensor,
    rows: usize,
    /// The chunk length: the longest row.
    chunk: usize,
    /// Each row's held cache slots, in order.
    held: &'a [Vec<usize>],
    /// The keys each packed token sees, in global and in sliding-window layers.
    global: &'a [QueryKeys],
    local: &'a [QueryKeys],
    /// The same, as index and mask tensors, when attention runs off the CPU.
    device_rows: &'a [DeviceRow],
}

/// [`Batch`]'s key plan, before it is borrowed.
#[derive(Default)]
struct KeyPlan {
    held: Vec<Vec<usize>>,
    global: Vec<QueryKeys>,
    local: Vec<QueryKeys>,
}

/// One row's keys and masks as tensors on the model's device.
struct DeviceRow {
    slots: Tensor,
    /// The row's packed tokens.
    tokens: std::ops::Range<usize>,
    global: Tensor,
    local: Tensor,
}
