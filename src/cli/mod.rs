//! Subcommands of the `hone` binary.

pub mod bench;
pub mod generate;
pub mod optimize;
pub mod score;
pub mod serve;

use anyhow::{Context, Result};
use policies::{manifest, Policy};
use std::path::{Path, PathBuf};

/// `--model NAME|PATH`, shared by the subcommands that load a policy: a manifest in the
/// `$HONE_POLICIES` folder (default `policies/manifests`), a known model, or a path.
pub fn load_policy(model: &str, cpu: bool) -> Result<Policy> {
    let path = resolve_model(&policies_dir(), model)?;
    let device = device(cpu)?;
    Policy::load(&path, &device).with_context(|| format!("loading model {}", path.display()))
}

/// The GPU when hone was built with CUDA and one is present, else the CPU.
pub fn device(cpu: bool) -> Result<candle_core::Device> {
    if cpu {
        return Ok(candle_core::Device::Cpu);
    }
    Ok(candle_core::Device::cuda_if_available(0)?)
}

/// The folder of policy manifests: `$HONE_POLICIES`, else `policies/manifests`.
pub fn policies_dir() -> PathBuf {
    std::env::var_os("HONE_POLICIES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(manifest::DEFAULT_DIR))
}

/// The model file `model` names (see [`manifest::resolve`]).
pub fn resolve_model(policies: &Path, model: &str) -> Result<PathBuf> {
    manifest::resolve(policies, model).with_context(|| format!("resolving model `{model}`"))
}
