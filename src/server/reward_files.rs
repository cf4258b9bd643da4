//! The start-up check of the reward manifests: which ones refer to files that are not there.
//!
//! Rewards are built on first use (a classifier or judge loads a model, too slow to do for
//! every manifest at start-up), so a manifest whose model folder is missing would only fail
//! when a request names it. Checking that the files exist costs nothing: the broken ones are
//! logged once at start-up (with their paths) and requests that name them get a 503 that names
//! the reward, never a path.

use policies::store;
use reward_models::manifest::{Manifest, Manifests};
use std::collections::BTreeMap;
use std::path::Path;

/// The rewards that cannot be built, each with why (for the log: it may name paths).
pub fn missing(manifests: &Manifests, dir: &Path) -> BTreeMap<String, String> {
    manifests
        .names()
        .filter_map(|name| problem(manifests, dir, name, 0).map(|why| (name.to_string(), why)))
        .collect()
}

fn problem(manifests: &Manifests, dir: &Path, name: &str, depth: usize) -> Option<String> {
    if depth > 8 {
        return Some("combined rewards nest too deeply (a cycle?)".into());
    }
    let Some(manifest) = manifests.get(name) else {
        return Some(format!("it names reward `{name}`, which has no manifest"));
    };
    match manifest {
        Manifest::Verifier { .. } | Manifest::Remote { .. } => None,
        Manifest::Classifier { path } => {
            let config = dir.join(path).join("config.json");
            (!config.is_file()).then(|| format!("{} does not exist", config.display()))
        }
        Manifest::Judge { model, .. } | Manifest::OpenaiJudge { model, .. } => {
            // A model hone knows by name is fetched on first use.
            let known =
                model == "default" || store::KNOWN_MODELS.iter().any(|m| m.name == model.as_str());
            let path = Path::new(model);
            let exists = path.exists() || (path.is_relative() && dir.join(path).exists());
            (!known && !exists).then(|| format!("judge model {model} does not exist"))
        }
        Manifest::Combined { parts } => {
            if parts.is_empty() {
                return Some("a combined reward without parts".into());
            }
            parts.iter().find_map(|p| {
                problem(manifests, dir, &p.reward, depth + 1)
                    .map(|why| format!("part `{}`: {why}", p.reward))
            })
        }
    }
}
