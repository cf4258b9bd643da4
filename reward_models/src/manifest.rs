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
use crate::judge::{Judge, Prompts};
use crate::openai_judge::{self, OpenAiJudge};
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
        /// The rating prompt, with `{question}` and `{response}`.
        prompt: Option<String>,
        /// The pairwise prompt, with `{question}`, `{a}` and `{b}`.
        pairwise_prompt: Option<String>,
        /// Rating points off per doubling of a response's length in words (0 when absent).
        #[serde(default)]
        length_penalty: f32,
    },
    Verifier {
        constraints: Vec<Constraint>,
    },
    Remote {
        url: String,
        /// The environment variable holding a key sent as `Authorization: Bearer <key>`
        /// (a key does not belong in a manifest file).
        api_key_env: Option<String>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_retries")]
        retries: u32,
    },
    /// The judge's rating, with the model run by an OpenAI-compatible server.
    OpenaiJudge {
        /// The server's base address (`http://host:8000`; a trailing `/v1` is dropped).
        url: String,
        /// The judge model's files, as a `judge` names them: its tokenizer and chat template
        /// render the prompt here (the weights are not loaded).
        model: String,
        /// The name the server knows the model by, sent as `model` (vLLM wants one).
        served_model: Option<String>,
        /// As for `remote`: the environment variable holding the server's key.
        api_key_env: Option<String>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_retries")]
        retries: u32,
        /// The rating prompt, with `{question}` and `{response}`.
        prompt: Option<String>,
        /// Rating points off per doubling of a response's length in words (0 when absent).
        #[serde(default)]
        length_penalty: f32,
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

/// Where hone looks for reward manifests unless told otherwise.
pub const DEFAULT_DIR: &str = "reward_models/manifests";

/// The manifests of `reward_models/manifests`, carried in the binary: a `hone` copied alone to
/// another machine still serves its default reward. Files on disk override them by name.
const SHIPPED: [(&str, &str); 6] = [
    ("concise", include_str!("../manifests/concise.toml")),
    ("default", include_str!("../manifests/default.toml")),
    ("judge", include_str!("../manifests/judge.toml")),
    (
        "judge_concise",
        include_str!("../manifests/judge_concise.toml"),
    ),
    (
        "judge_qwen1.5b",
        include_str!("../manifests/judge_qwen1.5b.toml"),
    ),
    ("skywork-v2", include_str!("../manifests/skywork-v2.toml")),
];

/// The manifests of a folder, by name (file stem).
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    entries: BTreeMap<String, (Manifest, PathBuf)>,
}

impl Manifests {
    /// The shipped manifests, then every `*.toml` of `dir`, which replace shipped ones of the
    /// same name. The default folder may be missing (a deployed binary has only the shipped
    /// ones); any other folder must exist, so that a mistyped path is not silently ignored.
    pub fn read_dir(dir: &Path) -> Result<Self, RewardError> {
        let mut entries = BTreeMap::new();
        for (name, text) in SHIPPED {
            let manifest: Manifest = toml::from_str(text)
                .map_err(|e| RewardError::Config(format!("shipped reward `{name}`: {e}")))?;
            let path = Path::new(DEFAULT_DIR).join(format!("{name}.toml"));
            entries.insert(name.to_string(), (manifest, path));
        }
        if dir == Path::new(DEFAULT_DIR) && !dir.exists() {
            return Ok(Self { entries });
        }
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
            Manifest::Judge {
                model,
                prompt,
                pairwise_prompt,
                length_penalty,
            } => Arc::new(
                Judge::new(
                    policies.get(model, base, device)?,
                    Prompts::new(prompt.clone(), pairwise_prompt.clone())?,
                )?
                .with_length_penalty(*length_penalty)?,
            ),
            Manifest::Verifier { constraints } => Arc::new(Verifier::new(constraints.clone())?),
            Manifest::Remote {
                url,
                api_key_env,
                timeout_ms,
                retries,
            } => Arc::new(RemoteScorer::new(
                url.clone(),
                Duration::from_millis(*timeout_ms),
                *retries,
                api_key(name, api_key_env.as_deref())?,
            )?),
            Manifest::OpenaiJudge {
                url,
                model,
                served_model,
                api_key_env,
                timeout_ms,
                retries,
                prompt,
                length_penalty,
            } => Arc::new(OpenAiJudge::new(
                &resolve_model(model, base)?,
                openai_judge::Server {
                    url: url.clone(),
                    served_model: served_model.clone(),
                    api_key: api_key(name, api_key_env.as_deref())?,
                    timeout: Duration::from_millis(*timeout_ms),
                    retries: *retries,
                },
                Prompts::new(prompt.clone(), None)?,
                *length_penalty,
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

/// The key in the environment variable `var` that reward `name`'s manifest names, if it names
/// one (a key does not belong in a manifest file).
fn api_key(name: &str, var: Option<&str>) -> Result<Option<String>, RewardError> {
    var.map(|var| {
        std::env::var(var).map_err(|_| {
            RewardError::Config(format!(
                "reward `{name}`: its api_key_env `{var}` is not set"
            ))
        })
    })
    .transpose()
}

/// Where a judge's `model` is: `default`, a known model name (fetched on first use), or a
/// path relative to `base`, the manifest's folder.
fn resolve_model(model: &str, base: &Path) -> Result<PathBuf, RewardError> {
    let resolved = store::resolve(model).map_err(|e| RewardError::Model(e.to_string()))?;
    Ok(if resolved.is_relative() && !resolved.exists() {
        base.join(resolved)
    } else {
        resolved
    })
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
        let path = resolve_model(model, base)?;
        if let Some(p) = self.loaded.get(&path) {
            return Ok(p.clone());
        }
        let policy =
            Arc::new(Policy::load(&path, device).map_err(|e| RewardError::Model(e.to_string()))?);
        self.loaded.insert(path, policy.clone());
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the shipped folder is carried in the binary, and nothing else is.
    #[test]
    fn the_binary_carries_every_shipped_manifest() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let carried: Vec<&str> = SHIPPED.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, carried);
        for (name, text) in SHIPPED {
            let file = std::fs::read_to_string(folder.join(format!("{name}.toml"))).unwrap();
            assert_eq!(file, text, "{name}");
        }
    }

    /// Without the default folder (a binary run elsewhere) the shipped manifests are there; a
    /// folder that was asked for must exist; a folder's file replaces a shipped one.
    #[test]
    fn shipped_manifests_stand_in_for_a_missing_default_folder() {
        // Tests run in the crate's folder, where `reward_models/manifests` does not exist.
        assert!(!Path::new(DEFAULT_DIR).exists());
        let shipped = Manifests::read_dir(Path::new(DEFAULT_DIR)).unwrap();
        assert!(matches!(
            shipped.get("default"),
            Some(Manifest::Combined { .. })
        ));
        assert!(matches!(
            shipped.get("concise"),
            Some(Manifest::Verifier { .. })
        ));
        let missing = Manifests::read_dir(Path::new("no-such-folder")).unwrap_err();
        assert!(missing.to_string().contains("no-such-folder"), "{missing}");

        let dir = std::env::temp_dir().join(format!("hone-rewards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("default.toml"),
            "kind = \"judge\"\nmodel = \"m\"\n",
        )
        .unwrap();
        let overridden = Manifests::read_dir(&dir).unwrap();
        assert!(matches!(
            overridden.get("default"),
            Some(Manifest::Judge { .. })
        ));
        assert!(overridden.get("concise").is_some());
        std::fs::remove_dir_all(&dir).ok();
    }
}
