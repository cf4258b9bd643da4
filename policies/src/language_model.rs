//! What the optimization loops need of a language model: render a conversation as tokens,
//! count the tokens of a text, and generate N continuations of one prompt under a position cap.
//!
//! The loops see only this trait, so they run the same over the local engine ([`Policy`]) and
//! over any other implementation: a scripted stand-in in the loop tests, a remote server.

use crate::chat::Message;
use crate::error::Result;
use crate::generate::{GenerateParams, Generation, GenerationStats};
use crate::policy::Policy;

pub trait LanguageModel: Send + Sync {
    /// The conversation as token ids, ready for the assistant's turn, which `opener` (hone's
    /// own text, such as "<response>") begins. Message contents cannot end their turn.
    fn encode_chat_opened(&self, messages: &[Message], opener: &str) -> Result<Vec<u32>>;

    /// The conversation as token ids, ready for the assistant's turn.
    fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode_chat_opened(messages, "")
    }

    /// How many tokens `text` is, as a reward model reading it would count.
    fn count_tokens(&self, text: &str) -> Result<usize>;

    /// `n` continuations of `prompt`, row `i` sampled with seed `seed + i`; the stats count
    /// every position computed, which the budget meters.
    fn generate(
        &self,
        prompt: &[u32],
        n: usize,
        params: &GenerateParams,
    ) -> Result<(Vec<Generation>, GenerationStats)>;
}

impl LanguageModel for Policy {
    fn encode_chat_opened(&self, messages: &[Message], opener: &str) -> Result<Vec<u32>> {
        Policy::encode_chat_opened(self, messages, opener)
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer().encode(text)?.len())
    }

    fn generate(
        &self,
        prompt: &[u32],
        n: usize,
        params: &GenerateParams,
    ) -> Result<(Vec<Generation>, GenerationStats)> {
        Policy::generate(self, prompt, n, params)
    }
}
