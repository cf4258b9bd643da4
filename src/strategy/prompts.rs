//! TPO's prompt templates: the textual loss, the textual gradient and the update.
//!
//! The built-in templates are compiled in from `prompts/*.txt`; a folder given in the request
//! may replace any of them with a file of the same name, so prompts can be tuned per model
//! without a rebuild. Placeholders are `{name}`, filled in one pass so that text pasted into a
//! template (a response that happens to contain `{loss}`) is never expanded again.

use super::StrategyError;
use std::path::Path;

const LOSS: &str = include_str!("prompts/loss.txt");
const GRADIENT: &str = include_str!("prompts/gradient.txt");
const UPDATE: &str = include_str!("prompts/update.txt");

/// The placeholders each template must use, so a typo in an override fails loudly.
const REQUIRED: [(&str, &[&str]); 3] = [
    ("loss", &["{query}", "{chosen}", "{rejected}"]),
    ("gradient", &["{query}", "{chosen}", "{loss}"]),
    ("update", &["{query}", "{chosen}", "{gradient}"]),
];

/// The three TPO templates.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub loss: String,
    pub gradient: String,
    pub update: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            loss: LOSS.to_string(),
            gradient: GRADIENT.to_string(),
            update: UPDATE.to_string(),
        }
    }
}

impl Prompts {
    /// The built-in templates, with any of `dir/{loss,gradient,update}.txt` in their place.
    pub fn load(dir: Option<&Path>) -> Result<Self, StrategyError> {
        let mut prompts = Self::default();
        if let Some(dir) = dir {
            for (name, slot) in [
                ("loss", &mut prompts.loss),
                ("gradient", &mut prompts.gradient),
                ("update", &mut prompts.update),
            ] {
                let path = dir.join(format!("{name}.txt"));
                if path.exists() {
                    *slot = std::fs::read_to_string(&path).map_err(|e| StrategyError::Prompt {
                        name: name.to_string(),
                        reason: format!("{}: {e}", path.display()),
                    })?;
                }
            }
        }
        prompts.validate()?;
        Ok(prompts)
    }

    fn validate(&self) -> Result<(), StrategyError> {
        for (name, required) in REQUIRED {
            let text = match name {
                "loss" => &self.loss,
                "gradient" => &self.gradient,
                _ => &self.update,
            };
            if let Some(missing) = required.iter().find(|p| !text.contains(*p)) {
                return Err(StrategyError::Prompt {
                    name: name.to_string(),
                    reason: format!("must contain {missing}"),
                });
            }
        }
        Ok(())
    }

    /// The update template's own lines (those without a placeholder): a candidate line equal to
    /// one of them is the model echoing its instructions.
    pub fn update_instructions(&self) -> Vec<String> {
        self.update
            .lines()
            .filter(|l| !l.contains('{') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Replaces each `{name}` of `template` that `values` names, in one pass.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let key = &after[..close];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (close, *v))
        });
        match value {
            Some((close, v)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_in_one_pass() {
        let out = fill(
            "Q: {query}\nA: {chosen} {unknown} {",
            &[("query", "say {chosen}"), ("chosen", "ok")],
        );
        assert_eq!(out, "Q: say {chosen}\nA: ok {unknown} {");
    }

    #[test]
    fn built_in_templates_are_valid() {
        let p = Prompts::load(None).unwrap();
        assert!(p.update.contains("<response>"));
        assert!(p
            .update_instructions()
            .iter()
            .any(|l| l.starts_with("Write only")));
    }

    #[test]
    fn a_folder_overrides_only_what_it_has() {
        let dir = std::env::temp_dir().join(format!("hone-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("loss.txt"),
            "Compare {chosen} and {rejected} for {query}.",
        )
        .unwrap();
        let p = Prompts::load(Some(&dir)).unwrap();
        assert_eq!(p.loss, "Compare {chosen} and {rejected} for {query}.");
        assert_eq!(p.update, UPDATE);
        std::fs::write(dir.join("gradient.txt"), "no placeholders").unwrap();
        let err = Prompts::load(Some(&dir)).unwrap_err().to_string();
        assert!(err.contains("gradient") && err.contains("{query}"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
