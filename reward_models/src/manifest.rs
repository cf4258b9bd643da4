//! Reward manifests: one TOML file per configured reward model, named after the file.
//!
//! ```toml
//! # reward_models/manifests/judge.toml
//! kind = "judge"
//! model = "default"          # a GGUF path, an HF folder, or a model name hone can fetch
//! ```
//!
//! Kinds: `classifier` (`path`), `judge` (`model`, optional `prompt`), `verifier`
//! (`constraints`), `remote` (`url`, `timeout_ms`, `retries`), and `combined` (`parts`, each a
//! `reward` name and a `weight`), which sums its parts' scores with those weights.

use crate::classifier::ClassifierRm;
use crate::combined::Combined;
use crate::judge::Judge;
use crate::remote::RemoteScorer;
use crate::verifier::{Constraint, Verifier};
use crate::{RewardError, RewardModel};
use candle_core::Device;
use policies::{store, Policy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Manifest {
    Classifier {
        path: PathBuf,
    },
    Judge {
        model: String,
        prompt: Option<String>,
    },
    Verifier {
        constraints: Vec<Constraint>,
    },
    Remote {
        url: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_retries")]
        retries: u32,
    },
    Combined {
        parts: Vec<Part>,
    },
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub reward: String,
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// The manifests of a folder, by name (file stem).
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    entries: BTreeMap<String, (Manifest, PathBuf)>,
}

impl Manifests {
    /// Reads every `*.toml` of `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self, RewardError> {
        let mut entries = BTreeMap::new();
        let listing = std::fs::read_dir(dir).map_err(|e| {
            RewardError::Config(format!(
                "cannot read reward manifests in {}: {e}",
                dir.display()
            ))
        })?;
        for entry in listing.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| RewardError::Config(format!("{}: {e}", path.display())))?;
            let manifest: Manifest = toml::from_str(&text)
                .map_err(|e| RewardError::Config(format!("{}: {e}", path.display())))?;
            entries.insert(name, (manifest, path));
        }
        Ok(Self { entries })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Manifest> {
        self.entries.get(name).map(|(m, _)| m)
    }

    /// Builds the reward model `name`. `policies` caches loaded judge models by path so that a
    /// judge can share the service's policy instead of loading it twice.
    pub fn build(
        &self,
        name: &str,
        device: &Device,
        policies: &mut PolicyCache,
    ) -> Result<Arc<dyn RewardModel>, RewardError> {
        self.build_inner(name, device, policies, 0)
    }

    fn build_inner(
        &self,
        name: &str,
        device: &Device,
        policies: &mut PolicyCache,
        depth: usize,
    ) -> Result<Arc<dyn RewardModel>, RewardError> {
        if depth > 8 {
            return Err(RewardError::Config(format!(
                "reward `{name}`: combined rewards nest too deeply (a cycle?)"
            )));
        }
        let (manifest, path) = self.entries.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            RewardError::Config(format!(
                "unknown reward `{name}` (known: {})",
                known.join(", ")
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(match manifest {
            Manifest::Classifier { path } => {
                Arc::new(ClassifierRm::load(&base.join(path), device)?)
            }
            Manifest::Judge { model, prompt } => Arc::new(Judge::new(
                policies.get(model, base, device)?,
                prompt.clone(),
            )?),
            Manifest::Verifier { constraints } => Arc::new(Verifier::new(constraints.clone())?),
            Manifest::Remote {
                url,
                timeout_ms,
                retries,
            } => Arc::new(RemoteScorer::new(
                url.clone(),
                Duration::from_millis(*timeout_ms),
                *retries,
            )?),
            Manifest::Combined { parts } => {
                if parts.is_empty() {
                    return Err(RewardError::Config(format!(
                        "reward `{name}`: combined reward has no parts"
                    )));
                }
                let parts = parts
                    .iter()
                    .map(|p| {
                        Ok((
                            self.build_inner(&p.reward, device, policies, depth + 1)?,
                            p.weight,
                        ))
                    })
                    .collect::<Result<Vec<_>, RewardError>>()?;
                Arc::new(Combined::new(parts))
            }
        })
    }
}

/// Loaded policies by resolved path, shared between judges and the service.
#[derive(Default)]
pub struct PolicyCache {
    loaded: BTreeMap<PathBuf, Arc<Policy>>,
}

impl PolicyCache {
    /// Registers an already loaded policy under its path.
    pub fn insert(&mut self, path: PathBuf, policy: Arc<Policy>) {
        self.loaded.insert(path, policy);
    }

    /// `model` is `default`, a known model name, or a path relative to `base`.
    pub fn get(
        &mut self,
        model: &str,
        base: &Path,
        device: &Device,
    ) -> Result<Arc<Policy>, RewardError> {
        let resolved = store::resolve(model).map_err(|e| RewardError::Model(e.to_string()))?;
        let path = if resolved.is_relative() && !resolved.exists() {
            base.join(resolved)
        } else {
            resolved
        };
        if let Some(p) = self.loaded.get(&path) {
            return Ok(p.clone());
        }
        let policy =
            Arc::new(Policy::load(&path, device).map_err(|e| RewardError::Model(e.to_string()))?);
        self.loaded.insert(path, policy.clone());
        Ok(policy)
    }
}
