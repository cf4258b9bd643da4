//! Decode and verification steps replayed as CUDA graphs.
//!
//! A decode step of a small model is a few hundred short kernels; launched one by one from
//! the host, their launch cost is most of the step. A graph records the step once and replays
//! it with one launch. What changes from step to step (token ids, positions, cache slots, key
//! lists) lives in one device buffer at fixed offsets that the recorded kernels read, refilled
//! before each replay; the kernels' sizes (rows, tokens, cache capacity) and the cache's
//! buffers are fixed by the recording, so a step of another shape, or against other buffers,
//! records a new graph. The latest shapes are kept: speculative decoding alternates single
//! steps with verification chunks of a few lengths, and caches take their buffers from the
//! model's pool ([`crate::kv_cache::Pool`]), so a request replays the graphs an earlier one
//! recorded (recording costs several steps, and a request's answer is a few hundred).
//!
//! Recording re-runs the step's host code against the same buffers, so a replay computes
//! exactly what an eager step computes (checked by `hone check`).

use crate::error::{PolicyError, Result};
use crate::kv_cache::KvCache;
use crate::model::{GpuPlan, Logits, Step, Transformer};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
use candle_core::{Device, Tensor};
use std::sync::Mutex;

/// Steps of at most this many tokens per row are replayed (decode, and verification of up to
/// 7 drafted tokens); longer chunks (prompts) vary in shape too much to be worth recording.
pub(crate) const MAX_CHUNK: usize = 8;
/// The most graphs a model keeps, the least recently used dropped first: every step shape
/// (rows, verification length) of every pooled cache set in use.
const KEPT: usize = 32;

/// The graphs of the latest step shapes a model ran, most recent last.
#[derive(Default)]
pub(crate) struct Graphs {
    recorded: Mutex<Vec<Recorded>>,
}

impl Clone for Graphs {
    /// A copy of a model records its own graphs.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Graphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graphs")
    }
}

/// What a graph was recorded for: it is valid only for these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    rows: usize,
    tokens: usize,
    chunk: usize,
    logits: Logits,
    /// [`KvCache`]'s name for its buffers, and their capacity in slots.
    buffers: u64,
    capacity: usize,
}

struct Recorded {
    shape: Shape,
    graph: CudaGraph,
    /// The step's indices, refilled before each replay.
    plan: Tensor,
    /// Where the replay leaves the logits (`[rows, vocab]` or `[tokens, vocab]`).
    logits: Tensor,
}

// SAFETY: CUDA allows a graph to be used from any thread as long as calls on it are
// serialized; every use goes through the `Mutex` in `Graphs`.
unsafe impl Send for Recorded {}

impl Graphs {
    /// One step of at most [`MAX_CHUNK`] tokens per row: replayed when a graph of its shape
    /// exists, else run eagerly and recorded.
    pub(crate) fn run(
        &self,
        model: &Transformer,
        step: &Step,
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor> {
        let Device::Cuda(dev) = model.device() else {
            return Err(PolicyError::Candle(candle_core::Error::Msg(
                "cuda graphs need a CUDA device".into(),
            )));
        };
        let cfg = model.config();
        // The graph writes into the cache's buffers: grow them now, never while recording.
        let (buffers, capacity) =
            cache.reserve_all(cfg.n_kv_heads, cfg.head_dim, model.device())?;
        let shape = Shape {
            rows: step.rows,
            tokens: step.tokens(),
            chunk: step.chunk,
            logits,
            buffers,
            capacity,
        };
        let room = step.rows * capacity;
        let indices = Tensor::from_vec(step.gpu_layout(room), step.gpu_len(room), model.device())?;
        let mut recorded = self
            .recorded
            .lock()
            .map_err(|_| candle_core::Error::Msg("cuda graph lock poisoned".into()))?;
        if let Some(at) = recorded.iter().position(|r| r.shape == shape) {
            let r = recorded.remove(at);
            r.plan.slice_set(&indices, 0, 0)?;
            r.graph.launch().map_err(candle_core::Error::wrap)?;
            let out = r.logits.copy()?;
            recorded.push(r);
            return Ok(out);
        }
        if recorded.len() >= KEPT {
            recorded.remove(0);
        }
        let plan = indices.copy()?;
        // Small uploads candle makes inside its ops are cached from the eager run and reused
        // by the recording, which may not copy from the host.
        let _uploads = dev.enable_cuda_graph_htod_cache();
        let out_eager =
            model.run_logits(step, GpuPlan::views(step, &plan, room)?, cache, logits)?;
        let out = out_eager.copy()?;
        let stream = dev.cuda_stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(candle_core::Error::wrap)?;
        let captured = GpuPlan::views(step, &plan, room)
            .and_then(|views| model.run_logits(step, views, cache, logits))
            .and_then(|l| Ok(out.slice_set(&l, 0, 0)?));
        // End the capture whatever happened, or the stream stays unusable.
        let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        let graph = stream
            .end_capture(flags)
            .map_err(candle_core::Error::wrap)?;
        captured?;
        if let Some(graph) = graph {
            recorded.push(Recorded {
                shape,
                graph,
                plan,
                logits: out,
            });
        }
        Ok(out_eager)
    }
}
