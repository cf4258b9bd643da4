//! A key/value cache for a batch of sequences that can be forked, shrunk and rolled back.
//!
//! The cache is a grid of *slots*: every row (sequence) of the batch has the same number of
//! slots, and each slot holds either a token at some position of that row or nothing (padding of
//! a shorter prompt, or a speculated token that was rejected). Attention reads the grid through a
//! mask built from the slots' positions, so rows of different lengths decode together as one
//! batch, and rolling one row back is a matter of emptying its slots, with no tensor copied.

use candle_core::{Device, Tensor};

/// Per-layer keys and values, `[batch, kv_heads, capacity, head_dim]`, plus the slot map.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `slots[row][slot]`: the position of the token stored there, if any.
    slots: Vec<Vec<Option<u32>>>,
}

impl KvCache {
    /// An empty cache for `batch` rows.
    pub fn new(n_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            slots: vec![Vec::new(); batch],
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
        let chunk = k.dim(2)?;
        let start = used - chunk;
        let held = match &self.layers[layer] {
            Some((ck, _)) => ck.dim(2)?,
            None => 0,
        };
        if held < used {
            // Grow geometrically so appends stay amortized O(1) per token.
            let (b, h, _, d) = k.dims4()?;
            let cap = used.max(2 * held).max(64);
            let grow = |old: Option<&Tensor>| -> candle_core::Result<Tensor> {
                let t = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    t.slice_set(&old.narrow(2, 0, start)?.contiguous()?, 2, 0)?;
                }
                Ok(t)
            };
            let old = self.layers[layer].take();
            let grown = (
                grow(old.as_ref().map(|(k, _)| k))?,
                grow(old.as_ref().map(|(_, v)| v))?,
            );
            self.layers[layer] = Some(grown);
        }
        let (ck, cv) = self.layers[layer]
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("kv cache layer missing".into()))?;
        ck.slice_set(&k.contiguous()?, 2, start)?;
        cv.slice_set(&v.contiguous()?, 2, start)?;
        Ok((ck.narrow(2, 0, used)?, cv.narrow(2, 0, used)?))
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
        })
    }
}
