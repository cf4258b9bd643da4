//! A key/value cache for a batch of sequences that can be forked, shrunk and rolled back.
//!
//! The cache is a grid of *slots*: every row (sequence) of the batch has the same number of
//! slots, and each slot holds either a token at some position of that row or nothing (padding of
//! a shorter prompt, or a speculated token that was rejected). Attention reads the grid through a
//! mask built from the slots' positions, so rows of different lengths decode together as one
//! batch, and rolling one row back is a matter of emptying its slots, with no tensor copied.

use candle_core::{DType, Device, Tensor};

/// Per-layer keys and values, `[batch, kv_heads, capacity, head_dim]`, plus the slot map.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `slots[row][slot]`: the position of the token stored there, if any.
    slots: Vec<Vec<Option<u32>>>,
    /// Names the current set of buffers: a new one whenever any is (re)allocated, so that
    /// work recorded against them (a CUDA graph) can tell that they changed.
    buffers: u64,
}

/// A fresh [`KvCache::buffers`] name.
fn new_buffers() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl KvCache {
    /// An empty cache for `batch` rows.
    pub fn new(n_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            slots: vec![Vec::new(); batch],
            buffers: new_buffers(),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.slots.len()
    }

    /// Slots in use (the same for every row).
    pub fn used(&self) -> usize {
        self.slots.first().map_or(0, Vec::len)
    }

    /// The position the next token of `row` will take.
    pub fn next_position(&self, row: usize) -> u32 {
        self.slots[row]
            .iter()
            .rev()
            .find_map(|p| *p)
            .map_or(0, |p| p + 1)
    }

    /// Number of tokens held for `row`.
    pub fn row_len(&self, row: usize) -> usize {
        self.slots[row].iter().filter(|p| p.is_some()).count()
    }

    pub(crate) fn slots(&self) -> &[Vec<Option<u32>>] {
        &self.slots
    }

    /// Records the positions of a chunk about to be written (one entry per row, all the same
    /// length); `None` marks padding.
    pub(crate) fn push_slots(&mut self, chunk: &[Vec<Option<u32>>]) {
        for (row, new) in self.slots.iter_mut().zip(chunk) {
            row.extend_from_slice(new);
        }
    }

    /// Appends the chunk's keys and values for one layer and returns everything held for it,
    /// `[batch, kv_heads, used, head_dim]`. Call after [`Self::push_slots`] for the chunk.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let used = self.used();
        let start = used - k.dim(2)?;
        let (_, kv_heads, _, head_dim) = k.dims4()?;
        let (ck, cv) = self.reserve(layer, kv_heads, head_dim, k.device())?;
        ck.slice_set(&k.contiguous()?, 2, start)?;
        cv.slice_set(&v.contiguous()?, 2, start)?;
        Ok((ck.narrow(2, 0, used)?, cv.narrow(2, 0, used)?))
    }

    /// The layer's whole buffers, `[batch, kv_heads, capacity, head_dim]` (f32), grown to hold
    /// every slot in use; slots of the chunk just pushed are for the caller to write.
    pub(crate) fn reserve(
        &mut self,
        layer: usize,
        kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let used = self.used();
        let b = self.batch_size();
        let held = match &self.layers[layer] {
            Some((ck, _)) => ck.dim(2)?,
            None => 0,
        };
        if held < used {
            // Grow geometrically so appends stay amortized O(1) per token.
            let cap = used.max(2 * held).max(64);
            let grow = |old: Option<&Tensor>| -> candle_core::Result<Tensor> {
                let t = Tensor::zeros((b, kv_heads, cap, head_dim), DType::F32, device)?;
                if let Some(old) = old {
                    t.slice_set(old, 2, 0)?;
                }
                Ok(t)
            };
            let old = self.layers[layer].take();
            let grown = (
                grow(old.as_ref().map(|(k, _)| k))?,
                grow(old.as_ref().map(|(_, v)| v))?,
            );
            self.layers[layer] = Some(grown);
            self.buffers = new_buffers();
        }
        self.layers[layer]
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("kv cache layer missing".into()))
    }

    /// Grows every layer's buffers to hold the slots in use, and names them (see
    /// [`Self::buffers`]) with their capacity.
    #[cfg(feature = "cuda")]
    pub(crate) fn reserve_all(
        &mut self,
        kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> candle_core::Result<(u64, usize)> {
        let mut capacity = 0;
        for layer in 0..self.layers.len() {
            capacity = self.reserve(layer, kv_heads, head_dim, device)?.0.dim(2)?;
        }
        Ok((self.buffers, capacity))
    }

    /// Keeps only the first `len` slots of every row.
    pub fn truncate(&mut self, len: usize) {
        for row in &mut self.slots {
            row.truncate(len);
        }
    }

    /// Forgets the last `n` tokens of `row` (e.g. rejected speculation) without moving data.
    pub fn rollback_row(&mut self, row: usize, n: usize) {
        let mut left = n;
        for slot in self.slots[row].iter_mut().rev() {
            if left == 0 {
                break;
            }
            if slot.take().is_some() {
                left -= 1;
            }
        }
    }

    /// A new cache whose rows are copies of the given rows of this one (fork a shared prefix
    /// into N candidates with `select_rows(&[0; N])`, or drop finished rows).
    pub fn select_rows(&self, rows: &[usize]) -> candle_core::Result<Self> {
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.device().clone())
            .unwrap_or(Device::Cpu);
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &device,
        )?;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|(k, v)| -> candle_core::Result<(Tensor, Tensor)> {
                        Ok((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))
                    })
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            slots: rows.iter().map(|&r| self.slots[r].clone()).collect(),
            buffers: new_buffers(),
        })
    }
}
