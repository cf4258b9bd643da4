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
use crate::sampling::{argmax, Readout, Scores};
use crate::weights::{Embedding, Linear, Rows, Weights};
use candle_core::{Device, Tensor};

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only each row's last position: `[batch, vocab]`.
    Last,
    /// Every token of the chunk, packed: `[tokens, vocab]`, row after row.
    All,
}

/// `[rows, vocab]` logits as one vector per row on the host: how decoding and `hone bench`
/// read every step's logits. On CUDA through a page-locked buffer ([`crate::cuda::read_rows`]).
pub fn read_logits(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return Ok(crate::cuda::read_rows(logits)?);
    }
    Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2()?)
}

/// `[rows, vocab]` logits as what each row's sampler needs ([`Scores`], see [`Readout`]):
/// each row's argmax, or the head of its distribution, taken on the GPU where the logits are
/// there, so that a step reads back an integer or a few hundred weights a row instead of the
/// vocabulary's floats; every logit where the sampler needs them. On the CPU, where nothing is
/// copied, greedy steps take the argmax on the host (the same decoding path), and sampled
/// steps keep every logit: a head would only add work there.
pub fn read_scores(logits: &Tensor, readout: Readout) -> Result<Vec<Scores>> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        match readout {
            Readout::Logits => {}
            Readout::Greedy => {
                let tokens = crate::cuda::argmax_rows(logits)?;
                return Ok(tokens.into_iter().map(Scores::Greedy).collect());
            }
            Readout::Head(params) => {
                let heads = crate::cuda::head_rows(logits, &params)?;
                if heads.iter().all(Option::is_some) {
                    return Ok(heads.into_iter().flatten().map(Scores::Head).collect());
                }
                // A head too wide: the rows' logits, whole, in one copy.
                let rows = read_logits(logits)?;
                if rows.len() != heads.len() {
                    return Err(PolicyError::Candle(candle_core::Error::Msg(format!(
                        "{} heads for {} rows of logits",
                        heads.len(),
                        rows.len()
                    ))));
                }
                return Ok(heads
                    .into_iter()
                    .zip(rows)
                    .map(|(head, l)| head.map_or(Scores::Logits(l), Scores::Head))
                    .collect());
            }
        }
    }
    let rows = read_logits(logits)?;
    Ok(rows
        .into_iter()
        .map(|l| match readout {
            Readout::Greedy => Scores::Greedy(argmax(&l)),
            Readout::Logits | Readout::Head(_) => Scores::Logits(l),
        })
        .collect())
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
        #[cfg(feature = "cuda")]
        if xs.device().is_cuda() {
            return Ok(crate::cuda::rms_norm(xs, &self.weight, self.eps, false)?.0);
        }
        candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps)
    }

    /// The normalized rows as products' input: on CUDA the same kernel writes their 8-bit form.
    fn rows(&self, xs: &Tensor) -> candle_core::Result<Rows> {
        #[cfg(feature = "cuda")]
        if xs.device().is_cuda() && self.weight.elem_count().is_multiple_of(32) {
            let (ys, q8) = crate::cuda::rms_norm(xs, &self.weight, self.eps, true)?;
            return Ok(Rows::with_q8(ys, q8));
        }
        Ok(Rows::new(self.forward(xs)?))
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

    /// The tables' rows for a step's packed token positions, `tokens × rotary_dim / 2` each:
    /// selected once per step and shared by every layer (the CPU path; on CUDA the RoPE
    /// kernel reads the tables directly).
    fn at(&self, positions: &Tensor) -> candle_core::Result<RopeAt> {
        let rows = |t: &Tensor| {
            t.index_select(positions, 0)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        Ok(RopeAt {
            cos: rows(&self.cos)?,
            sin: rows(&self.sin)?,
        })
    }
}

/// [`Rope`]'s tables at one step's positions, in host memory (only the CPU path rotates
/// with them).
struct RopeAt {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAt {
    /// Rotates `xs` `[1, heads, tokens, head_dim]`, token t by the angle of the step's position t:
    /// candle's rotation, element for element, on the calling thread. candle's CPU kernels hand
    /// several tokens to rayon's pool: a second pool beside the one the products and attention
    /// share, whose hand-off and spinning workers cost more than the rotation (4% of a 4-row decode
    /// step on 2 cores, most of it waking and parking threads).
    fn apply(&self, xs: &Tensor, interleaved: bool) -> candle_core::Result<Tensor> {
        let (b, heads, tokens, d) = xs.dims4()?;
        let src = xs.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (cos, sin) = (&self.cos, &self.sin);
        let half = d / 2;
        if cos.len() != tokens * half
            || sin.len() != cos.len()
            || src.len() != b * heads * tokens * d
        {
            candle_core::bail!(
                "rope: tables for {} of {tokens} tokens",
                cos.len() / half.max(1)
            );
        }
        let mut dst = vec![0f32; src.len()];
        for (row, (x, y)) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)).enumerate() {
            let at = (row % tokens) * half;
            let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
            for j in 0..half {
                let (a, b) = if interleaved {
                    (2 * j, 2 * j + 1)
                } else {
                    (j, j + half)
                };
                y[a] = x[a] * c[j] - x[b] * s[j];
                y[b] = x[a] * s[j] + x[b] * c[j];
            }
        }
        Tensor::from_vec(dst, (b, heads, tokens, d), xs.device())
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
    /// Decode steps replayed as CUDA graphs (see [`crate::cuda_graph`]).
    #[cfg(feature = "cuda")]
    graphs: crate::cuda_graph::Graphs,
    /// Cache buffers handed from one request to the next, so the graphs recorded against them
    /// replay (see [`crate::kv_cache::Pool`]); used on GPUs only.
    pool: std::sync::Arc<crate::kv_cache::Pool>,
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
            #[cfg(feature = "cuda")]
            graphs: Default::default(),
            pool: Default::default(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a chunk of tokens gets, bit for bit, the logits that lone steps would: what
    /// makes speculative verification lossless. It holds when every matrix goes through one of
    /// hone's row-invariant kernels (quantized weights of the types they cover, on the CPU and
    /// on CUDA); attention and the element-wise steps always compute a row on its own.
    pub fn exact_chunks(&self) -> bool {
        let layers = self.layers.iter().all(|l| {
            [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                .iter()
                .all(|m| m.row_invariant())
        });
        layers && self.lm_head.row_invariant()
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        if self.device.is_cuda() {
            return KvCache::pooled(self.cfg.n_layers, batch, self.pool.clone());
        }
        KvCache::new(self.cfg.n_layers, batch)
    }

    /// Runs one chunk of tokens per row through the model, appending to `cache`.
    ///
    /// `rows[i]` continues row `i` of the cache. Rows may have different lengths: shorter ones
    /// take empty slots in the cache, masked out of every later step, and cost no compute.
    /// [`Logits::Last`] gives `[batch, vocab]`; [`Logits::All`] gives `[tokens, vocab]`, every
    /// row's tokens one after another.
    pub fn forward(&self, rows: &[&[u32]], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let step = self.prepare(rows, cache)?;
        #[cfg(feature = "cuda")]
        if self.device.is_cuda()
            && step.chunk <= crate::cuda_graph::MAX_CHUNK
            && self.exact_chunks()
        {
            // Only hone's kernels are recorded: candle's fallbacks may allocate or copy.
            return self.graphs.run(self, &step, cache, logits);
        }
        let hidden = self.run(&step, &self.upload(&step)?, cache, logits)?;
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
        let step = self.prepare(rows, cache)?;
        Ok(self
            .run(&step, &self.upload(&step)?, cache, logits)?
            .into_tensor())
    }

    /// The host side of a forward pass: checks the rows, packs their tokens, takes their cache
    /// slots and plans which keys each token sees. Rows are packed: the linear layers see only
    /// real tokens (`[1, tokens, hidden]`, each row's tokens one after another), so rows of
    /// different lengths cost no padding; keys and values go to the cache's slot grid.
    fn prepare(&self, rows: &[&[u32]], cache: &mut KvCache) -> Result<Step> {
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
        let mut step = Step {
            rows: b,
            chunk: t,
            ids: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            spread: Vec::with_capacity(b * t),
            token_rows: Vec::with_capacity(n),
            token_slots: Vec::with_capacity(n),
            last: Vec::with_capacity(b),
            keys: KeyPlan::default(),
        };
        let mut chunk_slots = Vec::with_capacity(b);
        let mut queries = Vec::with_capacity(b);
        // The chunk starts after every slot in use.
        let first_slot = cache.used() as u32;
        for (i, row) in rows.iter().enumerate() {
            let start = cache.next_position(i);
            if start as usize + row.len() > self.cfg.context_length {
                return Err(PolicyError::PromptTooLong {
                    tokens: start as usize + row.len(),
                    context: self.cfg.context_length,
                });
            }
            let (offset, pad) = (step.ids.len() as u32, t - row.len());
            step.ids.extend_from_slice(row);
            step.last.push(offset + row.len() as u32 - 1);
            step.token_rows
                .extend(std::iter::repeat_n(i as u32, row.len()));
            step.token_slots
                .extend((0..row.len() as u32).map(|j| first_slot + pad as u32 + j));
            let own: Vec<u32> = (0..row.len() as u32).map(|j| start + j).collect();
            step.positions.extend_from_slice(&own);
            // Padding slots point at the row's first token; they are marked empty, never read.
            step.spread.extend(
                std::iter::repeat_n(offset, pad).chain((0..row.len() as u32).map(|j| offset + j)),
            );
            let mut slots = vec![None; pad];
            slots.extend(own.iter().map(|&p| Some(p)));
            chunk_slots.push(slots);
            queries.push(own);
        }
        cache.push_slots(&chunk_slots);
        step.keys = self.plan_keys(cache, &queries);
        Ok(step)
    }

    /// The step's indices on the model's device.
    fn upload(&self, step: &Step) -> Result<Uploaded> {
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            let all = Tensor::from_vec(step.gpu_layout(0), step.gpu_len(0), &self.device)?;
            return Ok(Uploaded::Gpu(GpuPlan::views(step, &all, 0)?));
        }
        Ok(Uploaded::Cpu {
            ids: Tensor::from_vec(step.ids.clone(), (1, step.tokens()), &self.device)?,
            last: Tensor::from_vec(step.last.clone(), step.rows, &self.device)?,
        })
    }

    /// The device side of a forward pass: every layer, then the final norm, for every token
    /// ([`Logits::All`], `[tokens, hidden]`) or each row's last ([`Logits::Last`],
    /// `[batch, hidden]`).
    fn run(&self, step: &Step, up: &Uploaded, cache: &mut KvCache, logits: Logits) -> Result<Rows> {
        let n = step.tokens();
        // The CPU attention path's indices; they stay on the CPU wherever the model runs.
        let pos = Tensor::from_vec(step.positions.clone(), n, &Device::Cpu)?;
        let spread = Tensor::from_vec(step.spread.clone(), step.rows * step.chunk, &Device::Cpu)?;
        let ropes = match up {
            Uploaded::Cpu { .. } => self
                .ropes
                .iter()
                .map(|r| r.at(&pos))
                .collect::<candle_core::Result<Vec<_>>>()?,
            #[cfg(feature = "cuda")]
            Uploaded::Gpu(_) => Vec::new(),
        };
        let batch = Batch {
            ropes: &ropes,
            spread: &spread,
            rows: step.rows,
            chunk: step.chunk,
            held: &step.keys.held,
            global: &step.keys.global,
            local: &step.keys.local,
            #[cfg(feature = "cuda")]
            gpu: match up {
                Uploaded::Gpu(plan) => Some(plan),
                Uploaded::Cpu { .. } => None,
            },
        };
        let (ids, last) = match up {
            Uploaded::Cpu { ids, last } => (ids, last),
            #[cfg(feature = "cuda")]
            Uploaded::Gpu(plan) => (&plan.ids, &plan.last),
        };
        let mut xs = self.embed.forward(ids)?;
        if self.cfg.arch == Arch::Gemma3 {
            xs = (xs * (self.cfg.hidden_size as f64).sqrt())?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            xs = self.layer(i, layer, &xs, cache, &batch)?;
        }
        let xs = xs.squeeze(0)?;
        let xs = match logits {
            Logits::Last => xs.contiguous()?.index_select(last, 0)?,
            Logits::All => xs,
        };
        Ok(self.norm.rows(&xs)?)
    }

    /// [`Self::run`] and the output projection, for a replayable step (see
    /// [`crate::cuda_graph`]).
    #[cfg(feature = "cuda")]
    pub(crate) fn run_logits(
        &self,
        step: &Step,
        plan: GpuPlan,
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor> {
        let hidden = self.run(step, &Uploaded::Gpu(plan), cache, logits)?;
        Ok(self.lm_head.forward(&hidden)?)
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
        let residual = xs;
        let x = l.attn_norm.rows(xs)?;
        let [mut q, mut k, v] = Linear::forward3([&l.q, &l.k, &l.v], &x)?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = qn.forward(&q.reshape((1, n, h, d))?)?;
            k = kn.forward(&k.reshape((1, n, hkv, d))?)?;
        }
        let scale = 1.0 / (d as f32).sqrt();
        let local = l.window.is_some();
        #[cfg(feature = "cuda")]
        let attn = match batch.gpu {
            Some(plan) => {
                let (kc, vc) = cache.reserve(index, hkv, d, &self.device)?;
                let q = crate::cuda::rope_store(
                    &q.reshape((n, h * d))?,
                    &k.reshape((n, hkv * d))?,
                    &v.reshape((n, hkv * d))?,
                    &self.ropes[l.rope].cos,
                    &self.ropes[l.rope].sin,
                    &plan.placement,
                    (&kc, &vc),
                    self.cfg.rope_interleaved,
                )?;
                let keys = if local { &plan.local } else { &plan.global };
                let (out, q8) = crate::cuda::attend(&q, (&kc, &vc), keys, scale, true)?;
                Rows::with_q8(out.reshape((1, n, h * d))?, q8)
            }
            None => {
                Rows::new(self.attend_cpu(index, (q, k, v), l.rope, cache, batch, local, scale)?)
            }
        };
        #[cfg(not(feature = "cuda"))]
        let attn =
            Rows::new(self.attend_cpu(index, (q, k, v), l.rope, cache, batch, local, scale)?);
        let xs = match &l.post_attn_norm {
            Some(norm) => (residual + norm.forward(&l.o.forward(&attn)?)?)?,
            None => l.o.forward_add(&attn, residual)?,
        };

        let x = l.ffn_norm.rows(&xs)?;
        let act = Rows::new(self.glu(l, &x)?);
        Ok(match &l.post_ffn_norm {
            Some(norm) => (&xs + norm.forward(&l.down.forward(&act)?)?)?,
            None => l.down.forward_add(&act, &xs)?,
        })
    }

    /// The gated MLP's first half, `act(x gateᵀ) * (x upᵀ)`: one kernel on CUDA.
    fn glu(&self, l: &Layer, x: &Rows) -> Result<Tensor> {
        let gemma = self.cfg.arch == Arch::Gemma3;
        #[cfg(feature = "cuda")]
        if let (Some(gate), Some(up)) = (l.gate.gpu(), l.up.gpu()) {
            if gate.pairs_with(up) {
                let act = if gemma {
                    crate::cuda::Activation::Gelu
                } else {
                    crate::cuda::Activation::Silu
                };
                return Ok(x.shaped(crate::cuda::glu(gate, up, x.q8()?, act)?)?);
            }
        }
        let [gate, up] = Linear::forward_each([&l.gate, &l.up], x)?;
        if gemma {
            Ok((gate.gelu()? * up)?)
        } else if gate.device().is_cpu() {
            Ok(crate::cpu::silu_mul(&gate, &up)?)
        } else {
            Ok((candle_nn::ops::silu(&gate)? * up)?)
        }
    }

    /// RoPE, the cache write and attention with hone's CPU kernel ([`attention::attend`]);
    /// q, k, v are the packed projections `[1, tokens, heads × d]`.
    #[allow(clippy::too_many_arguments)]
    fn attend_cpu(
        &self,
        index: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
        rope: usize,
        cache: &mut KvCache,
        batch: &Batch<'_>,
        local: bool,
        scale: f32,
    ) -> Result<Tensor> {
        let (_, n, _) = v.dims3()?;
        let (h, hkv, d) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let (b, t) = (batch.rows, batch.chunk);
        let q = q.reshape((1, n, h, d))?.transpose(1, 2)?;
        let k = k.reshape((1, n, hkv, d))?.transpose(1, 2)?;
        let v = v.reshape((1, n, hkv, d))?;
        let rope = &batch.ropes[rope];
        let q = rope.apply(&q, self.cfg.rope_interleaved)?;
        let k = rope.apply(&k, self.cfg.rope_interleaved)?;
        // Packed `[1, kv_heads, tokens, d]` into the grid's `[batch, kv_heads, chunk, d]`. One
        // row has no padding: its packed tokens are its grid already.
        let to_grid = |x: &Tensor| -> candle_core::Result<Tensor> {
            if b == 1 {
                return x.contiguous();
            }
            x.squeeze(0)?
                .contiguous()?
                .index_select(batch.spread, 1)?
                .reshape((hkv, b, t, d))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (k, v) = cache.append(index, &to_grid(&k)?, &to_grid(&v.transpose(1, 2)?)?)?;
        let queries = if local { &batch.local } else { &batch.global };
        Ok(attention::attend(&q, &k, &v, batch.held, queries, scale)?)
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
}

/// What every layer of one forward pass shares.
struct Batch<'a> {
    /// Each of the model's RoPE tables at the packed tokens' positions (CPU path only).
    ropes: &'a [RopeAt],
    /// For each slot of the cache's new chunk (row-major), the packed token it holds.
    spread: &'a Tensor,
    rows: usize,
    /// The chunk length: the longest row.
    pub(crate) chunk: usize,
    /// Each row's held cache slots, in order.
    held: &'a [Vec<usize>],
    /// The keys each packed token sees, in global and in sliding-window layers.
    global: &'a [QueryKeys],
    local: &'a [QueryKeys],
    /// The same, on the GPU, when the model runs there.
    #[cfg(feature = "cuda")]
    gpu: Option<&'a GpuPlan>,
}

/// [`Batch`]'s key plan, before it is borrowed.
#[derive(Default)]
struct KeyPlan {
    held: Vec<Vec<usize>>,
    global: Vec<QueryKeys>,
    local: Vec<QueryKeys>,
}

/// One forward pass's host-side plan ([`Transformer::prepare`]).
pub(crate) struct Step {
    pub(crate) rows: usize,
    /// The chunk length: the longest row.
    pub(crate) chunk: usize,
    /// The packed tokens, row after row, and their positions.
    ids: Vec<u32>,
    positions: Vec<u32>,
    /// For each (row, chunk slot), the packed token stored there.
    spread: Vec<u32>,
    /// Each packed token's cache row and slot.
    token_rows: Vec<u32>,
    token_slots: Vec<u32>,
    /// Per row: the packed index of its last token.
    last: Vec<u32>,
    keys: KeyPlan,
}

impl Step {
    pub(crate) fn tokens(&self) -> usize {
        self.ids.len()
    }
}

/// A step's indices on the device.
enum Uploaded {
    Cpu {
        ids: Tensor,
        last: Tensor,
    },
    #[cfg(feature = "cuda")]
    Gpu(GpuPlan),
}

/// A forward pass's token ids, placement and key lists on the GPU, shared by every layer:
/// one u32 vector (each upload is a synchronous copy), read through views.
#[cfg(feature = "cuda")]
pub(crate) struct GpuPlan {
    ids: Tensor,
    last: Tensor,
    placement: crate::cuda::Placement,
    global: crate::cuda::QueryKeys,
    local: crate::cuda::QueryKeys,
}

#[cfg(feature = "cuda")]
impl Step {
    /// The lengths of the parts of [`Self::gpu_layout`]; the key list takes `keys_room`
    /// entries when that is more than it needs (a replayed step's layout must not move).
    fn gpu_parts(&self, keys_room: usize) -> [usize; 8] {
        let (n, b) = (self.tokens(), self.rows);
        let keys: usize = self.keys.held.iter().map(Vec::len).sum();
        [n, n, n, n, b, keys.max(keys_room), 3 * n, 3 * n]
    }

    pub(crate) fn gpu_len(&self, keys_room: usize) -> usize {
        self.gpu_parts(keys_room).iter().sum()
    }

    /// Ids, positions, cache rows, cache slots, last tokens, every row's held slots one
    /// after another (a query's keys are a run of its row's), then each query's
    /// (row, key offset, key count) in global and in sliding-window layers.
    pub(crate) fn gpu_layout(&self, keys_room: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.gpu_len(keys_room));
        out.extend_from_slice(&self.ids);
        out.extend_from_slice(&self.positions);
        out.extend_from_slice(&self.token_rows);
        out.extend_from_slice(&self.token_slots);
        out.extend_from_slice(&self.last);
        let mut starts = Vec::with_capacity(self.keys.held.len());
        let keys_at = out.len();
        for held in &self.keys.held {
            starts.push((out.len() - keys_at) as u32);
            out.extend(held.iter().map(|&s| s as u32));
        }
        out.resize(keys_at + self.gpu_parts(keys_room)[5], 0);
        for queries in [&self.keys.global, &self.keys.local] {
            out.extend(queries.iter().flat_map(|q| {
                [
                    q.row as u32,
                    starts[q.row] + q.lo as u32,
                    (q.hi - q.lo) as u32,
                ]
            }));
        }
        out
    }
}

#[cfg(feature = "cuda")]
impl GpuPlan {
    /// Views of `all`, which holds `step.gpu_layout(keys_room)` (or will when the views are
    /// read: a replayed step refills it).
    pub(crate) fn views(step: &Step, all: &Tensor, keys_room: usize) -> Result<Self> {
        let mut start = 0;
        let mut parts = step.gpu_parts(keys_room).into_iter().map(|len| {
            let view = all.narrow(0, start, len);
            start += len;
            view
        });
        let mut next = || -> Result<Tensor> {
            match parts.next() {
                Some(view) => Ok(view?),
                None => Err(PolicyError::Candle(candle_core::Error::Msg(
                    "gpu plan layout".into(),
                ))),
            }
        };
        let ids = next()?.unsqueeze(0)?;
        let placement = crate::cuda::Placement {
            pos: next()?,
            row: next()?,
            slot: next()?,
        };
        let last = next()?;
        let keys = next()?;
        Ok(Self {
            ids,
            last,
            placement,
            global: crate::cuda::QueryKeys {
                keys: keys.clone(),
                meta: next()?,
            },
            local: crate::cuda::QueryKeys {
                keys,
                meta: next()?,
            },
        })
    }
}
