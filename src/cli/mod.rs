//! Subcommands of the `hone` binary.

pub mod bench;
pub mod check;
pub mod eval;
pub mod generate;
pub mod optimize;
pub mod score;
pub mod serve;

use anyhow::{Context, Result};
use policies::{manifest, Policy};
use reward_models::manifest::{Manifests, PolicyCache};
use reward_models::RewardModel;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `--model NAME|PATH`, shared by the subcommands that load a policy: a manifest in the
/// `$HONE_POLICIES` folder (default `policies/manifests`), a known model, or a path.
/// `--speculate K` and `--unpaced` as the engine takes them: up to K drafts a step, paced
/// unless every draft is to be verified.
pub fn speculation(max_draft: usize, unpaced: bool) -> policies::Speculation {
    let s = policies::Speculation::drafts(max_draft);
    if unpaced {
        s.unpaced()
    } else {
        s
    }
}

pub fn load_policy(model: &str, cpu: bool) -> Result<Policy> {
    let path = resolve_model(&policies_dir(), model)?;
    let device = device(cpu)?;
    Policy::load(&path, &device).with_context(|| format!("loading model {}", path.display()))
}

/// `--draft NAME|PATH`: the policy paired with a draft model for speculative decoding, which
/// must share its tokenizer (see [`Policy::with_draft`]).
pub fn with_draft(policy: Policy, draft: Option<&str>) -> Result<Policy> {
    let Some(draft) = draft else {
        return Ok(policy);
    };
    let path = resolve_model(&policies_dir(), draft)?;
    let device = policy.model().device().clone();
    let draft = Policy::load(&path, &device)
        .with_context(|| format!("loading draft model {}", path.display()))?;
    Ok(policy.with_draft(draft)?)
}

/// The GPU when hone was built with CUDA and one is present, else the CPU.
pub fn device(cpu: bool) -> Result<candle_core::Device> {
    Ok(policies::device(cpu)?)
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

/// A policy and a reward, loaded the way the server loads them.
pub struct Models {
    pub policy: Arc<Policy>,
    pub reward: Arc<dyn RewardModel>,
    /// Compute units per position the reward reads (see `hone::budget::reward_weight`).
    pub reward_weight: f64,
    pub device: candle_core::Device,
}

/// Loads `model` and the reward manifest `reward` from `rewards`; a judge on the policy's own
/// model shares the loaded copy.
pub fn load_models(
    model: &str,
    draft: Option<&str>,
    reward: &str,
    rewards: &Path,
    cpu: bool,
) -> Result<Models> {
    let path = resolve_model(&policies_dir(), model)?;
    let device = device(cpu)?;
    let policy = Policy::load(&path, &device)
        .with_context(|| format!("loading model {}", path.display()))?;
    let policy = Arc::new(with_draft(policy, draft)?);
    let manifests = Manifests::read_dir(rewards)?;
    let mut loaded = PolicyCache::default();
    loaded.insert(path.clone(), policy.clone());
    let built = manifests.build(reward, &device, &mut loaded)?;
    let reward_weight =
        hone::budget::reward_weight(&manifests, rewards, reward, &path, policy.model().config())?;
    Ok(Models {
        policy,
        reward: built,
        reward_weight,
        device,
    })
}
