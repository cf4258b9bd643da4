//! Which CPU this is and which SIMD paths hone's CPU kernels take on it, so that a benchmark
//! figure or a test failure can be tied to its machine; and the worker pool hone's CPU
//! computations share, with the element-wise op hone runs on it.
//!
//! Two levels matter. candle's quantized kernels and hone's attention are compiled for one
//! instruction level (`.cargo/config.toml` asks for x86-64-v3: AVX2 and FMA). The dense matrix
//! library picks AVX2 or AVX-512 kernels at run time from what the CPU reports.

use candle_core::{Device, Storage, Tensor};

/// One line: the CPU's model name, its thread count, the level compiled for and the level the
/// CPU offers, e.g. `AMD EPYC, 2 threads; built for avx2+fma; CPU has avx2 fma`.
pub fn describe() -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{}, {threads} threads; built for {}; CPU has {}",
        model_name(),
        built_for(),
        detected()
    )
}

fn model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn built_for() -> &'static str {
    if cfg!(all(target_feature = "avx512f", target_feature = "avx2")) {
        "avx512f+avx2+fma"
    } else if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        "avx2+fma"
    } else if cfg!(target_feature = "neon") {
        "neon"
    } else {
        "baseline (no avx2)"
    }
}

#[cfg(target_arch = "x86_64")]
fn detected() -> String {
    let mut has = Vec::new();
    macro_rules! check {
        ($($f:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($f) {
                has.push($f);
            }
        )*};
    }
    check!("avx2", "fma", "avx512f", "avx512bw", "avx512vnni");
    if has.is_empty() {
        "no avx2".into()
    } else {
        has.join(" ")
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> String {
    std::env::consts::ARCH.to_string()
}

/// Runs `f(i)` for every `i` in `0..n`, spread over candle's CPU worker pool; returns the
/// first error. A single item runs on the calling thread alone: waking the workers costs more
/// than such small work.
///
/// One pool for everything hone computes on the CPU: candle's element-wise ops already run on
/// this pool (its workers spin briefly between calls, then park), and a second pool beside it
/// (rayon's) would leave more busy threads than cores, so every product would wait for threads
/// the scheduler had put aside. The calling thread works too; `RAYON_NUM_THREADS` (or
/// `CANDLE_NUM_THREADS`) sets the total. Which thread runs an item never changes its result.
///
/// Threads take items in shrinking runs (guided scheduling): a run is the remaining items
/// shared out twice over the threads, so the first grabs are long and the last are single
/// items. A pass ends when its slowest thread does; with fixed runs of an eighth of a
/// thread's share (candle's own `execute_chunked`), the other thread waited up to that long at
/// the end of every product.
pub(crate) fn for_each<F>(n: usize, f: F) -> candle_core::Result<()>
where
    F: Fn(usize) -> candle_core::Result<()> + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    thread_local! {
        /// Set while this thread runs a pass's items: a nested pass runs inline (the pool
        /// takes one pass at a time, and a worker waiting for another pass would never end).
        static IN_PASS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if n <= 1 || threads == 1 || IN_PASS.get() {
        return (0..n).try_for_each(f);
    }
    let first_error = std::sync::Mutex::new(None);
    let next = AtomicUsize::new(0);
    pool.execute(|_| {
        IN_PASS.set(true);
        loop {
            let start = next.load(Ordering::Relaxed);
            if start >= n {
                break;
            }
            let take = ((n - start) / (2 * threads)).max(1);
            if next
                .compare_exchange_weak(start, start + take, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            for i in start..start + take {
                if let Err(e) = f(i) {
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            }
        }
        IN_PASS.set(false);
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// [`for_each`] over `out` cut into chunks of `size` (the last may be shorter): `f(i, chunk)`.
pub(crate) fn for_each_chunk<T, F>(out: &mut [T], size: usize, f: F) -> candle_core::Result<()>
where
    T: Send,
    F: Fn(usize, &mut [T]) -> candle_core::Result<()> + Sync,
{
    let size = size.max(1);
    let len = out.len();
    let base = Shared::new(out);
    for_each(len.div_ceil(size), |i| {
        let lo = i * size;
        let hi = (lo + size).min(len);
        // SAFETY: `for_each` runs each index `i` exactly once, so the ranges `lo..hi` are
        // disjoint and inside `out`, which is borrowed mutably for the whole call; `for_each`
        // returns only after every item has run.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(lo), hi - lo) };
        f(i, chunk)
    })
}

/// A pointer the pool's workers write disjoint parts through (see the SAFETY notes where it
/// is used).
pub(crate) struct Shared<T>(*mut T);

// SAFETY: workers only write disjoint ranges through the pointer (see the uses).
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn new(slice: &mut [T]) -> Self {
        Self(slice.as_mut_ptr())
    }

    /// Through a method so that closures capture the `Sync` wrapper, not the bare pointer.
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// `silu(gate) · up`, element by element over the pool: the gated MLP's activation in one
/// pass, where candle's ops take two on the calling thread and allocate twice. `silu(x)` is
/// `x / (1 + e^-x)`, taken as `x · e^x / (1 + e^x)` below 0 so that the exponential is
/// always `e^-|x|` (`crate::exp`, eight values at a time; libm's `expf`, one call per value,
/// was 4% of a 5-position verification).
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!("silu_mul: gate {:?} and up {:?}", gate.shape(), up.shape());
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (g, g_layout) = gate.storage_and_layout();
    let (u, u_layout) = up.storage_and_layout();
    let (Storage::Cpu(g), Storage::Cpu(u)) = (&*g, &*u) else {
        candle_core::bail!("silu_mul: the inputs are not on the CPU");
    };
    let n = gate.elem_count();
    let g = &g.as_slice::<f32>()?[g_layout.start_offset()..][..n];
    let u = &u.as_slice::<f32>()?[u_layout.start_offset()..][..n];
    let mut out = vec![0f32; n];
    const CHUNK: usize = 4096;
    for_each_chunk(&mut out, CHUNK, |i, out| {
        let from = i * CHUNK;
        let (g, u) = (&g[from..from + out.len()], &u[from..from + out.len()]);
        // e^-|g|, at most 1: no overflow on either side of 0.
        for (y, &g) in out.iter_mut().zip(g) {
            *y = -g.abs();
        }
        crate::exp::exp_minus(out, 0.0);
        for ((y, &g), &u) in out.iter_mut().zip(g).zip(u) {
            let e = *y;
            let silu = if g >= 0.0 {
                g / (1.0 + e)
            } else {
                g * e / (1.0 + e)
            };
            *y = silu * u;
        }
        Ok(())
    })?;
    Tensor::from_vec(out, gate.shape(), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item runs exactly once, an error comes back, and a pass inside a pass runs
    /// inline instead of waiting for the pool it is already in.
    #[test]
    fn for_each_runs_every_item_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for n in [0, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each(n, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .unwrap();
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
        let err = for_each(100, |i| {
            if i == 63 {
                candle_core::bail!("item {i}")
            }
            Ok(())
        });
        assert!(err.unwrap_err().to_string().starts_with("item 63"));
        let inner = AtomicUsize::new(0);
        for_each(8, |_| {
            for_each(8, |_| {
                inner.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        })
        .unwrap();
        assert_eq!(inner.load(Ordering::Relaxed), 64);
    }

    /// The fused activation against `silu(gate) * up` in f64, within 8 units in the last
    /// place, over more values than one chunk of the pool takes (so that several threads
    /// write) and over gates far on both sides of 0, where `e^-x` alone would overflow.
    #[test]
    fn silu_mul_is_silu_times_up() {
        let n = 3 * 4096 + 77;
        let gate: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0)
            .chain([-120.0, -88.0, -0.0, 0.0, 88.0, 120.0])
            .collect();
        let n = gate.len();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 1999) as f32 / 500.0 - 2.0)
            .collect();
        let expected: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
            .collect();
        let gate = Tensor::from_vec(gate, (1, n), &Device::Cpu).unwrap();
        let up = Tensor::from_vec(up, (1, n), &Device::Cpu).unwrap();
        let ours: Vec<f32> = silu_mul(&gate, &up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours.len(), expected.len());
        for (i, (&a, &b)) in ours.iter().zip(&expected).enumerate() {
            // Below -87.3, e^x is taken as e^-87.3 (about 1e-38): far gates give a few 1e-36
            // where silu is smaller still.
            let bound = 8.0 * f32::EPSILON as f64 * b.abs() + 1e-33;
            assert!((a as f64 - b).abs() <= bound, "value {i}: {a} against {b}");
        }
        let other = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(silu_mul(&gate, &other).is_err());
    }
}
