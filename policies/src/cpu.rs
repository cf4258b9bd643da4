//! Which CPU this is and which SIMD paths hone's CPU kernels take on it, so that a benchmark
//! figure or a test failure can be tied to its machine.
//!
//! Two levels matter. candle's quantized kernels and hone's attention are compiled for one
//! instruction level (`.cargo/config.toml` asks for x86-64-v3: AVX2 and FMA). The dense matrix
//! library picks AVX2 or AVX-512 kernels at run time from what the CPU reports.

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

/// Runs `f(i, chunk)` over `out` cut into chunks of `size` (the last may be shorter), spread
/// over candle's CPU worker pool; returns the first error.
///
/// One pool for everything hone computes on the CPU: candle's element-wise ops already run on
/// this pool (its workers spin briefly between calls, then park), and a second pool beside it
/// (rayon's) would leave more busy threads than cores, so every product would wait for threads
/// the scheduler had put aside. The calling thread works too; `RAYON_NUM_THREADS` (or
/// `CANDLE_NUM_THREADS`) sets the total. Which thread computes a chunk never changes its result.
pub(crate) fn for_each_chunk<F>(out: &mut [f32], size: usize, f: F) -> candle_core::Result<()>
where
    F: Fn(usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let size = size.max(1);
    let len = out.len();
    let base = Shared(out.as_mut_ptr());
    let first_error = std::sync::Mutex::new(None);
    candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(size), |range| {
        for i in range {
            let lo = i * size;
            let hi = (lo + size).min(len);
            // SAFETY: the pool hands out each index `i` exactly once, so the ranges
            // `lo..hi` are disjoint and inside `out`, which is borrowed mutably for the whole
            // call; `execute_chunked` returns only after every worker has finished.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(lo), hi - lo) };
            if let Err(e) = f(i, chunk) {
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(e);
                }
            }
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `out`'s pointer, shared with the pool's workers (see the SAFETY note where it is used).
struct Shared(*mut f32);

// SAFETY: workers only write disjoint ranges through the pointer (see `for_each_chunk`).
unsafe impl Sync for Shared {}

impl Shared {
    /// Through a method so that closures capture the `Sync` wrapper, not the bare pointer.
    fn get(&self) -> *mut f32 {
        self.0
    }
}
