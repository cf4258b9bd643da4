//! Policy manifests: `<dir>/<name>.toml` gives a model a name, so that a deployment refers to
//! its policy as `--model support-bot` and changes the file behind it in one place.
//!
//! ```toml
//! # policies/manifests/support-bot.toml
//! model = "/models/SmolLM2-360M-Instruct.Q8_0.gguf"   # a GGUF file, an HF folder, or a known name
//! description = "The support chat policy"
//! ```
//!
//! A relative `model` path is taken from the manifest's folder when a file is there.

use crate::error::{PolicyError, Result};
use crate::store;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where `hone` looks for policy manifests unless told otherwise.
pub const DEFAULT_DIR: &str = "policies/manifests";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyManifest {
    /// A GGUF file, an HF checkpoint folder, or a known model name (see [`store::resolve`]).
    pub model: String,
    #[serde(default)]
    pub description: Option<String>,
}

impl PolicyManifest {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|_| PolicyError::NotFound(path.into()))?;
        toml::from_str(&text).map_err(|e| PolicyError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })
    }
}

/// The manifests of `policies/manifests`, carried in the binary so that a `hone` copied alone
/// to another machine knows its models by name. Files on disk override them.
const SHIPPED: [(&str, &str); 4] = [
    ("default", include_str!("../manifests/default.toml")),
    ("gemma3-270m", include_str!("../manifests/gemma3-270m.toml")),
    (
        "qwen2.5-coder-0.5b",
        include_str!("../manifests/qwen2.5-coder-0.5b.toml"),
    ),
    (
        "qwen2.5-coder-1.5b",
        include_str!("../manifests/qwen2.5-coder-1.5b.toml"),
    ),
];

/// The model file `name` stands for: the manifest `<dir>/<name>.toml` when there is one, else
/// a shipped manifest of that name, else a known model name or a path (downloading a known
/// model on first use).
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf> {
    let file = dir.join(format!("{name}.toml"));
    if !is_plain_name(name) || !file.is_file() {
        if let Some((_, text)) = SHIPPED.iter().find(|(n, _)| *n == name) {
            let manifest: PolicyManifest =
                toml::from_str(text).map_err(|e| PolicyError::Corrupt {
                    path: PathBuf::from(format!("{DEFAULT_DIR}/{name}.toml")),
                    reason: e.to_string(),
                })?;
            return store::resolve(&manifest.model);
        }
        return store::resolve(name);
    }
    let manifest = PolicyManifest::read(&file)?;
    let local = dir.join(&manifest.model);
    if Path::new(&manifest.model).is_relative() && local.exists() {
        return Ok(local);
    }
    store::resolve(&manifest.model)
}

/// A manifest name is a file stem: no separators, so a path is never mistaken for one.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_models_and_paths_pass_through() {
        let dir = std::env::temp_dir().join(format!("hone-policies-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("weights.gguf"), b"").unwrap();
        std::fs::write(dir.join("local.toml"), "model = \"weights.gguf\"\n").unwrap();
        std::fs::write(
            dir.join("elsewhere.toml"),
            "model = \"/srv/m.gguf\"\ndescription = \"d\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("typo.toml"), "modle = \"x\"\n").unwrap();
        assert_eq!(resolve(&dir, "local").unwrap(), dir.join("weights.gguf"));
        assert_eq!(
            resolve(&dir, "elsewhere").unwrap(),
            PathBuf::from("/srv/m.gguf")
        );
        let err = resolve(&dir, "typo").unwrap_err().to_string();
        assert!(err.contains("modle"), "{err}");
        // No manifest: the name is a path.
        assert_eq!(
            resolve(&dir, "some/file.gguf").unwrap(),
            PathBuf::from("some/file.gguf")
        );
        std::fs::remove_dir_all(&dir).ok();
    }

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
            let manifest: PolicyManifest = toml::from_str(text).unwrap();
            assert!(!manifest.model.is_empty(), "{name}");
        }
    }
}
