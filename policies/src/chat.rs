//! Conversations and chat templates.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

use crate::error::{PolicyError, Result};

/// Marks where a message's content goes in a rendered template: private-use characters, which
/// only the placeholders put there (contents themselves are never rendered).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Part of a rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'m> {
    /// The template's own text: role markers, separators.
    Markup(String),
    /// A message's content, exactly as sent.
    Content(&'m str),
}

/// A model's chat template (HF Jinja), rendered with minijinja.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles the template once to report syntax errors at load time.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let template = Self {
            source,
            bos_token,
            eos_token,
        };
        template.environment()?;
        Ok(template)
    }

    fn environment(&self) -> Result<minijinja::Environment<'_>> {
        let mut env = minijinja::Environment::new();
        // HF templates call Python string methods (`.strip()`, `.startswith()`...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| PolicyError::Template(e.to_string()))?;
        Ok(env)
    }

    /// Renders a conversation, ending with the assistant's turn opener when
    /// `add_generation_prompt` is set.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt)
    }

    /// Renders a conversation as the template's own markup and the messages' contents apart, so
    /// that each can be tokenized its own way. The template sees a placeholder for each
    /// content; a template that transforms message text (trims it, say) then leaves that text
    /// as it was sent.
    pub fn render_pieces<'m>(
        &self,
        messages: &'m [Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<Piece<'m>>> {
        let placeholders: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(m.role, format!("{OPEN}{i}{CLOSE}")))
            .collect();
        let rendered = self.render_with(&placeholders, add_generation_prompt)?;
        let mut pieces = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find(OPEN) {
            let after = &rest[start + OPEN.len_utf8()..];
            let end = after.find(CLOSE).ok_or_else(|| {
                PolicyError::Template("the chat template cut a message apart".into())
            })?;
            let message = after[..end]
                .parse::<usize>()
                .ok()
                .and_then(|i| messages.get(i))
                .ok_or_else(|| {
                    PolicyError::Template("the chat template rewrote a message".into())
                })?;
            if start > 0 {
                pieces.push(Piece::Markup(rest[..start].to_string()));
            }
            pieces.push(Piece::Content(&message.content));
            rest = &after[end + CLOSE.len_utf8()..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Markup(rest.to_string()));
        }
        Ok(pieces)
    }

    fn render_with(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| PolicyError::Template(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| PolicyError::Template(e.to_string()))
    }
}
