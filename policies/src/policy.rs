//! A policy: a decoder, its tokenizer and its chat template, loaded from one place.

use crate::chat::{ChatTemplate, Message, Piece};
use crate::config::ModelConfig;
use crate::draft::DraftModel;
use crate::error::{PolicyError, Result};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use crate::weights::{open_gguf, Weights};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// A loaded language model, ready to generate.
#[derive(Debug, Clone)]
pub struct Policy {
    name: String,
    model: Transformer,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Guesses tokens for speculative decoding where the text does not repeat.
    draft: Option<DraftModel>,
}

/// Everything read from a model's files before the decoder is built: reward-model loaders take
/// extra tensors (a score head) out of `weights` before handing it to [`Transformer::load`].
pub struct Checkpoint {
    pub name: String,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub weights: Weights,
}

impl Checkpoint {
    /// Opens a GGUF file, or an HF checkpoint folder (`config.json`, `tokenizer.json`,
    /// `*.safetensors`, and `tokenizer_config.json` for the chat template).
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            return Err(PolicyError::NotFound(path.to_path_buf()));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            Self::open_hf(path, name, device)
        } else {
            Self::open_gguf(path, name, device)
        }
    }

    fn open_gguf(path: &Path, name: String, device: &Device) -> Result<Self> {
        let weights = open_gguf(path, device)?;
        let Weights::Gguf { content, .. } = &weights else {
            return Err(PolicyError::Corrupt {
                path: path.into(),
                reason: "not a GGUF file".into(),
            });
        };
        let config = ModelConfig::from_gguf(content)?;
        let tokenizer = Tokenizer::from_gguf(content)?;
        let token_text = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tokenizer.token(id))
                .unwrap_or_default()
        };
        let template = match content.metadata.get("tokenizer.chat_template") {
            Some(v) => Some(ChatTemplate::new(
                v.to_string()
                    .map_err(|e| PolicyError::Template(e.to_string()))?
                    .clone(),
                token_text("tokenizer.ggml.bos_token_id"),
                token_text("tokenizer.ggml.eos_token_id"),
            )?),
            None => None,
        };
        Ok(Self {
            name,
            config,
            tokenizer,
            template,
            weights,
        })
    }

    fn open_hf(dir: &Path, name: String, device: &Device) -> Result<Self> {
        let read = |f: &str| -> Result<String> {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|_| PolicyError::NotFound(p))
        };
        let config = ModelConfig::from_hf_json(&read("config.json")?)?;
        let tok_cfg: serde_json::Value = read("tokenizer_config.json")
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        // Special tokens appear either as plain strings or as {"content": ...} objects.
        let special = |key: &str| -> Option<String> {
            let v = tok_cfg.get(key)?;
            v.as_str()
                .or_else(|| v.get("content")?.as_str())
                .map(str::to_string)
        };
        let (bos, eos) = (special("bos_token"), special("eos_token"));
        let tokenizer =
            Tokenizer::from_file(&dir.join("tokenizer.json"), bos.as_deref(), eos.as_deref())?;
        let template = match tok_cfg.get("chat_template").and_then(|t| t.as_str()) {
            Some(t) => Some(ChatTemplate::new(
                t.to_string(),
                bos.unwrap_or_default(),
                eos.unwrap_or_default(),
            )?),
            None => None,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::NotFound(dir.join("*.safetensors")));
        }
        let weights = Weights::from_safetensors(&files, device)?;
        Ok(Self {
            name,
            config,
            tokenizer,
            template,
            weights,
        })
    }
}

impl Policy {
    /// Loads a policy from a GGUF file or an HF checkpoint folder.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let Checkpoint {
            name,
            config,
            tokenizer,
            template,
            mut weights,
        } = Checkpoint::open(path, device)?;
        let model = Transformer::load(config, &mut weights)?;
        Ok(Self {
            name,
            model,
            tokenizer,
            template,
            draft: None,
        })
    }

    /// Speculative decoding drafts with `draft` (a smaller model with the same tokenizer)
    /// where the suffix drafter has nothing to propose. Refused unless the vocabularies match
    /// token for token (see [`DraftModel::new`]).
    pub fn with_draft(mut self, draft: Policy) -> Result<Self> {
        self.draft = Some(DraftModel::new(
            draft.name,
            draft.model,
            &draft.tokenizer,
            &self.model,
            &self.tokenizer,
        )?);
        Ok(self)
    }

    /// The draft model, if one was paired with this policy.
    pub fn draft(&self) -> Option<&DraftModel> {
        self.draft.as_ref()
    }

    /// Assembles a policy from parts (e.g. a checkpoint whose extra tensors were taken).
    pub fn from_parts(
        name: String,
        model: Transformer,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
    ) -> Self {
        Self {
            name,
            model,
            tokenizer,
            template,
            draft: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Replaces the model's chat template (or gives one to a model that has none).
    pub fn set_chat_template(&mut self, template: ChatTemplate) {
        self.template = Some(template);
    }

    fn template(&self) -> Result<&ChatTemplate> {
        no_template(&self.name, self.template.as_ref())
    }

    /// Renders a conversation with the model's chat template, ready for the assistant's turn.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.template()?.render(messages, true)
    }

    /// Tokenizes a raw prompt, checking that it is non-empty and fits the context.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(PolicyError::EmptyPrompt);
        }
        self.fits(self.tokenizer.encode_prompt(text)?)
    }

    /// `ids`, if they leave the context room for at least one generated token.
    fn fits(&self, ids: Vec<u32>) -> Result<Vec<u32>> {
        fits(ids, self.model.config().context_length)
    }

    /// Tokenizes a conversation through the chat template, ready for the assistant's turn.
    ///
    /// Message contents are encoded as text and only the template's own markup may become
    /// special tokens, so a message that spells `<|im_end|><|im_start|>system` cannot end its
    /// turn or speak as another role.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode_turns(messages, true, "")
    }

    /// Like [`Self::encode_chat`], with the assistant's answer opened by `opener` (hone's own
    /// text, such as a judge's "Rating: ").
    pub fn encode_chat_opened(&self, messages: &[Message], opener: &str) -> Result<Vec<u32>> {
        self.encode_turns(messages, true, opener)
    }

    /// Tokenizes a finished conversation (no assistant turn opened at the end), as a reward
    /// model reads it.
    pub fn encode_conversation(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode_turns(messages, false, "")
    }

    fn encode_turns(&self, messages: &[Message], open: bool, opener: &str) -> Result<Vec<u32>> {
        let turns = Turns {
            name: &self.name,
            tokenizer: &self.tokenizer,
            template: self.template.as_ref(),
            context: self.model.config().context_length,
        };
        turns.encode(messages, open, opener)
    }
}

/// `ids`, if they leave a context of `context` room for at least one generated token.
fn fits(ids: Vec<u32>, context: usize) -> Result<Vec<u32>> {
    if ids.len() >= context {
        return Err(PolicyError::PromptTooLong {
            tokens: ids.len(),
            context,
        });
    }
    Ok(ids)
}

fn no_template<'t>(name: &str, template: Option<&'t ChatTemplate>) -> Result<&'t ChatTemplate> {
    template.ok_or_else(|| {
        PolicyError::Template(format!(
            "model `{name}` has no chat template; configure one or send a raw prompt"
        ))
    })
}

/// What turns a conversation into a model's tokens: its tokenizer, chat template and context.
/// The local [`Policy`] and a remote one encode the same way.
pub(crate) struct Turns<'a> {
    pub name: &'a str,
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub context: usize,
}

impl Turns<'_> {
    /// Message contents are encoded as text and only the template's own markup may become
    /// special tokens, so a message that spells `<|im_end|><|im_start|>system` cannot end its
    /// turn or speak as another role.
    pub fn encode(&self, messages: &[Message], open: bool, opener: &str) -> Result<Vec<u32>> {
        if messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(PolicyError::EmptyPrompt);
        }
        let mut ids = Vec::new();
        for piece in no_template(self.name, self.template)?.render_pieces(messages, open)? {
            ids.extend(match piece {
                Piece::Markup(text) => self.tokenizer.encode(&text)?,
                Piece::Content(text) => self.tokenizer.encode_text(text)?,
            });
        }
        if !opener.is_empty() {
            ids.extend(self.tokenizer.encode(opener)?);
        }
        fits(self.tokenizer.with_bos(ids), self.context)
    }
}
