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
