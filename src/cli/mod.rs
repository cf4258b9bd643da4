//! Subcommands of the `hone` binary.

pub mod bench;
pub mod generate;
pub mod optimize;
pub mod score;
pub mod serve;

use anyhow::{Context, Result};
use policies::{store, Policy};
use std::path::PathBuf;

/// `--model PATH|default`, shared by the subcommands that load a policy.
pub fn load_policy(model: &str, cpu: bool) -> Result<Policy> {
    let path: PathBuf = store::resolve(model)?;
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
