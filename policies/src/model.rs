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

    /// Like [`Self::forward`] with [`Logits::All`] (`[tokens, vocab]`, rows one after another),
    /// but every position is computed exactly as
    /// a one-token decoding step would compute it: each query attends over precisely the keys
    /// at or before its position, with the shapes of a lone step, so the logits are
    /// bit-identical to feeding the tokens one at a time. Speculative decoding verifies drafts
    /// with it, which keeps greedy output identical to plain decoding.
    pub fn verify(&self, rows: &[&[u32]], cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.hidden(rows, cache, Logits::All, Attention::PerQuery)?;
        Ok(self.lm_head.forward(&hidden)?)
    }

    /// Like [`Self::forward`], but returns the final normalized hidden states instead of
    /// logits (`[batch, hidden]` or `[tokens, hidden]`): the input of a reward head.
    pub fn forward_hidden(
        &self,
        rows: &[&[u32]],
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor> {
        self.hidden(rows, cache, logits, Attention::Chunk)
    }

    /// The forward pass. Rows are packed: the linear layers see only real tokens
    /// (`[1, tokens, hidden]`, each row's tokens one after another), so rows of different
    /// lengths cost no padding; keys and values are spread into the cache's slot grid, and
    /// attention runs row by row. Returns `[batch, hidden]` for [`Logits::Last`], else the
    /// packed `[tokens, hidden]`.
    fn hidden(
        &self,
        rows: &[&[u32]],
        cache: &mut KvCache,
        logits: Logits,
        attention: Attention,
    ) -> Result<Tensor> {
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
            queries.push(own.into_iter().map(Some).collect::<Vec<_>>());
        }
        let ids = Tensor::from_vec(ids, (1, n), &self.device)?;
        let pos = Tensor::from_vec(positions, n, &self.device)?;
        let spread = Tensor::from_vec(spread, b * t, &self.device)?;
        cache.push_slots(&chunk_slots);
        let views = self.row_views(cache, &queries)?;
        let batch = Batch {
            pos: &pos,
            spread: &spread,
            views: &views,
            chunk: t,
            attention,
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
        let (b, t) = (batch.views.len(), batch.chunk);
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

        // Attention runs row by row over each row's own keys, compacted: a row then computes
        // exactly what it would alone (same shapes, same summation order), which keeps batched
        // generation bit-identical to batch-1 generation. Grouped-query attention without copying
        // K/V: the `g` query heads that share one KV head are stacked along the sequence axis.
        let g = h / hkv;
        let scale = 1.0 / (d as f64).sqrt();
        let mut rows = Vec::with_capacity(b);
        let mut offset = 0;
        for (r, view) in batch.views.iter().enumerate() {
            let len = view.seen.len();
            let (k, v) = (
                view.keys(&k.narrow(0, r, 1)?)?,
                view.keys(&v.narrow(0, r, 1)?)?,
            );
            let mask = if l.window.is_some() {
                &view.local
            } else {
                &view.global
            };
            let q = q.narrow(2, offset, len)?;
            offset += len;
            let out = match batch.attention {
                Attention::Chunk => attend(
                    &q.contiguous()?.reshape((1, hkv, g * len, d))?,
                    &k,
                    &v,
                    mask,
                    scale,
                )?,
                Attention::PerQuery => {
                    // Query j alone over the keys up to its position: a decoding step's shapes.
                    let mut outs = Vec::with_capacity(len);
                    for (j, &seen) in view.seen.iter().enumerate() {
                        let qj = q.narrow(2, j, 1)?.contiguous()?.reshape((1, hkv, g, d))?;
                        let mask = mask.narrow(3, j, 1)?.narrow(4, 0, seen)?;
                        let (kj, vj) = (k.narrow(2, 0, seen)?, v.narrow(2, 0, seen)?);
                        outs.push(attend(&qj, &kj, &vj, &mask, scale)?.reshape((1, hkv, g, 1, d))?);
                    }
                    Tensor::cat(&outs, 3)?.reshape((1, hkv, g * len, d))?
                }
            };
            // `[1, heads, len, d]` to the packed `[1, len, heads × d]`.
            rows.push(
                out.reshape((1, h, len, d))?
                    .transpose(1, 2)?
                    .reshape((1, len, h * d))?,
            );
        }
        let attn = Tensor::cat(&rows, 1)?;
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

    /// For every row: which cache slots it reads, and its additive attention masks
    /// `[1, 1, 1, chunk, keys]` (global and sliding-window).
    ///
    /// A query may see a key holding a token at a position no later than its own (and, for local
    /// layers, within the window). A padding query sees every key of its row, which keeps its
    /// softmax finite; its output is never read.
    fn row_views(&self, cache: &KvCache, queries: &[Vec<Option<u32>>]) -> Result<Vec<RowView>> {
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let mut views = Vec::with_capacity(queries.len());
        for (keys, qs) in cache.slots().iter().zip(queries) {
            let held: Vec<(usize, u32)> = keys
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|p| (i, p)))
                .collect();
            let (t, s) = (qs.len(), held.len());
            let mut global = vec![f32::NEG_INFINITY; t * s];
            let mut local = global.clone();
            for (qi, q) in qs.iter().enumerate() {
                for (ki, &(_, kp)) in held.iter().enumerate() {
                    let visible = q.map_or(Some(usize::MAX), |qp| {
                        (kp <= qp).then(|| (qp - kp) as usize)
                    });
                    if let Some(distance) = visible {
                        global[qi * s + ki] = 0.0;
                        if distance < window || q.is_none() {
                            local[qi * s + ki] = 0.0;
                        }
                    }
                }
            }
            let first = held.first().map_or(0, |h| h.0);
            let contiguous = held.iter().enumerate().all(|(j, h)| h.0 == first + j);
            let slots = if contiguous {
                Slots::Range(first, s)
            } else {
                let idx: Vec<u32> = held.iter().map(|h| h.0 as u32).collect();
                Slots::Indices(Tensor::from_vec(idx, s, &self.device)?)
            };
            let seen = qs
                .iter()
                .map(|q| match q {
                    Some(qp) => held.iter().filter(|h| h.1 <= *qp).count(),
                    None => 1.min(s),
                })
                .collect();
            let shape = (1, 1, 1, t, s);
            views.push(RowView {
                seen,
                slots,
                global: Tensor::from_vec(global, shape, &self.device)?,
                local: Tensor::from_vec(local, shape, &self.device)?,
            });
        }
        Ok(views)
    }
}

/// What every layer of one forward pass shares.
struct Batch<'a> {
    /// The position of each packed token.
    pos: &'a Tensor,
    /// For each slot of the cache's new chunk (row-major), the packed token it holds.
    spread: &'a Tensor,
    views: &'a [RowView],
    /// The chunk length: the longest row.
    chunk: usize,
    attention: Attention,
}

/// How the queries of a chunk attend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attention {
    /// The whole chunk at once, causal through the mask (prefill).
    Chunk,
    /// Each query on its own over exactly the keys it may see ([`Transformer::verify`]).
    PerQuery,
}

/// Scaled dot-product attention of `q` `[1, kv_heads, g × t, d]` over one row's `k`, `v`
/// `[1, kv_heads, s, d]`, with an additive `mask` `[1, 1, 1, t, s]`; grouped-query heads are
/// stacked along the query axis, so K/V are never copied per head.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, hkv, gt, _) = q.dims4()?;
    let (t, s) = (mask.dim(3)?, k.dim(2)?);
    let scores = (q * scale)?
        .matmul(&k.t()?)?
        .reshape((1, hkv, gt / t, t, s))?
        .broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.reshape((1, hkv, gt, s))?)?;
    Ok(probs.matmul(v)?)
}

/// The cache slots one row of a forward pass reads.
enum Slots {
    /// `len` slots from `start` (the usual case: padding only before the row's tokens).
    Range(usize, usize),
    /// Scattered slots (after a rollback left holes).
    Indices(Tensor),
}

/// One row's view of the cache during a forward pass.
struct RowView {
    slots: Slots,
    global: Tensor,
    local: Tensor,
    /// For each query of the chunk, how many of the row's keys (in slot order) it may see:
    /// those at or before its position, which come first since positions grow with slots.
    /// (A padding query is given one key; its output is never read.)
    seen: Vec<usize>,
}

impl RowView {
    /// This row's keys (or values) out of `[1, kv_heads, slots, head_dim]`.
    fn keys(&self, all: &Tensor) -> candle_core::Result<Tensor> {
        match &self.slots {
            Slots::Range(start, len) => all.narrow(2, *start, *len),
            Slots::Indices(idx) => all.contiguous()?.index_select(idx, 2),
        }
    }
}
