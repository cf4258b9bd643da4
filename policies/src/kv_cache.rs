//! A key/value cache for a batch of sequences that can be forked, shrunk and rolled back.
//!
//! The cache is a grid of *slots*: every row (sequence) of the batch has the same number of
//! slots, and each slot holds either a token at some position of that row or nothing (padding of
//! a shorter prompt, or a speculated token that was rejected). Attention reads the grid through a
//! mask built from the slots' positions, so rows of different lengths decode together as one
//! batch, and rolling one row back is a matter of emptying its slots, with no tensor copied.

use candle_core::{DType, Device, Tensor};
use std::sync::{Arc, Mutex};

/// Per-layer keys and values, `[batch, kv_heads, capacity, head_dim]`, plus the slot map.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `slots[row][slot]`: the position of the token stored there, if any.
    slots: Vec<Vec<Option<u32>>>,
    /// Names the current set of buffers: a new one whenever any is (re)allocated, so that
    /// work recorded against them (a CUDA graph) can tell that they changed.
    buffers: u64,
    /// Where the buffers come from and go back to, if the model keeps a pool; the lease
    /// returns them when the last cache holding them lets go.
    pool: Option<Arc<Pool>>,
    lease: Option<Arc<Lease>>,
}

/// Sets of every layer's buffers that caches of the same shape take one after another.
///
/// Why: a CUDA graph records the addresses of the buffers it writes, so a graph recorded for
/// one cache replays for another only if that one holds the very same buffers. Recording costs
/// several decoding steps, and every request (and every verification length of speculative
/// decoding) would record its own graphs; taken from the pool, a request's cache holds the
/// buffers (and their name) of an earlier one, and the graphs recorded then replay. Capacities
/// are powers of two so that caches of similar lengths share sets.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Mutex<Vec<Set>>,
}

/// One set: its name, shape and every layer's keys and values.
#[derive(Debug)]
struct Set {
    buffers: u64,
    shape: SetShape,
    layers: Vec<(Tensor, Tensor)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetShape {
    batch: usize,
    kv_heads: usize,
    capacity: usize,
    head_dim: usize,
}

impl SetShape {
    fn bytes(&self, layers: usize) -> usize {
        2 * layers * self.batch * self.kv_heads * self.capacity * self.head_dim * 4
    }
}

/// A set held by caches (shared by their clones); dropping the last returns it to the pool.
#[derive(Debug)]
struct Lease {
    set: Option<Set>,
    pool: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            self.pool.put(set);
        }
    }
}

impl Pool {
    /// The most bytes of buffers the pool keeps; a set returned beyond it is freed, the
    /// longest unused first.
    const KEPT_BYTES: usize = 1 << 30;

    /// A set of `shape` for `layers` layers: a kept one, zeroed, or a new one.
    fn take(&self, shape: SetShape, layers: usize, device: &Device) -> candle_core::Result<Set> {
        let kept = self.free.lock().ok().and_then(|mut free| {
            let at = free
                .iter()
                .rposition(|s| s.shape == shape && s.layers.len() == layers)?;
            Some(free.remove(at))
        });
        if let Some(set) = kept {
            for (k, v) in &set.layers {
                k.zero_set()?;
                v.zero_set()?;
            }
            return Ok(set);
        }
        let dims = (shape.batch, shape.kv_heads, shape.capacity, shape.head_dim);
        let layers = (0..layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(dims, DType::F32, device)?,
                    Tensor::zeros(dims, DType::F32, device)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Set {
            buffers: new_buffers(),
            shape,
            layers,
        })
    }

    fn put(&self, set: Set) {
        let Ok(mut free) = self.free.lock() else {
            return;
        };
        free.push(set);
        let mut total: usize = free.iter().map(|s| s.shape.bytes(s.layers.len())).sum();
        while total > Self::KEPT_BYTES && !free.is_empty() {
            let old = free.remove(0);
            total -= old.shape.bytes(old.layers.len());
        }
    }
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
            pool: None,
            lease: None,
        }
    }

    /// An empty cache for `batch` rows whose buffers come from `pool` (see [`Pool`]).
    pub(crate) fn pooled(n_layers: usize, batch: usize, pool: Arc<Pool>) -> Self {
        Self {
            pool: Some(pool),
            ..Self::new(n_layers, batch)
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
            if let Some(pool) = self.pool.clone() {
                let capacity = used.max(64).next_power_of_two();
                let shape = SetShape {
                    batch: b,
                    kv_heads,
                    capacity,
                    head_dim,
                };
                self.lease_set(&pool, pool.take(shape, self.layers.len(), device)?)?;
                return self.layers[layer]
                    .clone()
                    .ok_or_else(|| candle_core::Error::Msg("kv cache layer missing".into()));
            }
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

    /// Moves every layer's contents into `set`'s buffers, which the cache holds from now on
    /// (and its name with them); the buffers held before go back to the pool.
    fn lease_set(&mut self, pool: &Arc<Pool>, set: Set) -> candle_core::Result<()> {
        if set.layers.len() != self.layers.len() {
            candle_core::bail!(
                "a set of {} layers for a cache of {}",
                set.layers.len(),
                self.layers.len()
            );
        }
        for (old, new) in self.layers.iter().zip(&set.layers) {
            if let Some((k, v)) = old {
                new.0.slice_set(k, 2, 0)?;
                new.1.slice_set(v, 2, 0)?;
            }
        }
        self.layers = set.layers.iter().cloned().map(Some).collect();
        self.buffers = set.buffers;
        self.lease = Some(Arc::new(Lease {
            set: Some(set),
            pool: pool.clone(),
        }));
        Ok(())
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
        let mut out = Self {
            layers,
            slots: rows.iter().map(|&r| self.slots[r].clone()).collect(),
            buffers: new_buffers(),
            pool: self.pool.clone(),
            lease: None,
        };
        // A pooled cache's rows move into a pooled set of the same capacity.
        if let (Some(pool), Some(Some((k, _))), false) =
            (&self.pool, self.layers.first(), rows.is_empty())
        {
            let (_, kv_heads, capacity, head_dim) = k.dims4()?;
            let shape = SetShape {
                batch: rows.len(),
                kv_heads,
                capacity,
                head_dim,
            };
            out.lease_set(pool, pool.take(shape, self.layers.len(), &device)?)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADS: usize = 2;
    const DIM: usize = 4;

    /// A pooled cache of `rows` rows holding `tokens` positions per row, its first layer's
    /// keys set to `value` in every slot.
    fn filled(pool: &Arc<Pool>, rows: usize, tokens: usize, value: f32) -> KvCache {
        let mut cache = KvCache::pooled(2, rows, pool.clone());
        let slots: Vec<Option<u32>> = (0..tokens as u32).map(Some).collect();
        cache.push_slots(&vec![slots; rows]);
        let (k, _) = cache.reserve(0, HEADS, DIM, &Device::Cpu).unwrap();
        let keys = Tensor::full(value, (rows, HEADS, tokens, DIM), &Device::Cpu).unwrap();
        k.slice_set(&keys, 2, 0).unwrap();
        cache
    }

    fn keys(cache: &mut KvCache) -> Vec<f32> {
        let (k, _) = cache.reserve(0, HEADS, DIM, &Device::Cpu).unwrap();
        k.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_pooled_cache_takes_the_buffers_a_dropped_one_held_zeroed() {
        let pool = Arc::new(Pool::default());
        let first = filled(&pool, 1, 3, 1.0);
        let name = first.buffers;
        // A clone still holds the buffers: a new cache gets others.
        let clone = first.clone();
        drop(first);
        let other = filled(&pool, 1, 3, 2.0);
        assert_ne!(other.buffers, name);
        drop(other);
        drop(clone);
        // The last returned set of the shape is taken first, its old contents cleared.
        let mut again = KvCache::pooled(2, 1, pool.clone());
        again.push_slots(&[vec![Some(0)]]);
        assert_eq!(keys(&mut again), vec![0.0; HEADS * 64 * DIM]);
        assert_eq!(again.buffers, name);
        // Another batch size is another shape.
        assert_ne!(filled(&pool, 2, 3, 1.0).buffers, name);
    }

    #[test]
    fn growing_and_selecting_rows_keep_what_the_cache_holds() {
        let pool = Arc::new(Pool::default());
        let mut cache = filled(&pool, 2, 3, 1.0);
        let small = cache.buffers;
        cache.push_slots(&vec![vec![Some(3); 70]; 2]);
        let grown = keys(&mut cache);
        assert_eq!(
            grown.len(),
            2 * HEADS * 128 * DIM,
            "capacity a power of two"
        );
        assert_ne!(cache.buffers, small);
        let ones = |k: &[f32], rows: usize| -> usize {
            k.chunks(128 * DIM)
                .take(rows * HEADS)
                .map(|h| h.iter().filter(|&&x| x == 1.0).count())
                .sum()
        };
        assert_eq!(ones(&grown, 2), 2 * HEADS * 3 * DIM);
        // The small set went back to the pool for the next cache of its shape.
        assert_eq!(filled(&pool, 2, 3, 1.0).buffers, small);
        let mut one = cache.select_rows(&[1]).unwrap();
        assert!(one.lease.is_some());
        let selected = keys(&mut one);
        assert_eq!(selected.len(), HEADS * 128 * DIM);
        assert_eq!(ones(&selected, 1), HEADS * 3 * DIM);
    }
}
