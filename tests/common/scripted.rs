//! A scripted language model for the loop tests: its words are its tokens, and what it writes
//! is a function of the prompt's text and the row's seed. It computes nothing, so a test of
//! the loops' logic and their budget runs in milliseconds; what needs real weights is tested
//! on the real models.

use policies::{
    FinishReason, GenerateParams, Generation, GenerationStats, LanguageModel, Message, PolicyError,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

type Script = dyn Fn(&str, u64) -> String + Send + Sync;

pub struct Scripted {
    script: Box<Script>,
    /// Word to id and back: ids are handed out as words are first seen.
    vocab: Mutex<(HashMap<String, u32>, Vec<String>)>,
    /// Every position computed, over all calls: what the budget should have metered.
    pub positions: AtomicU64,
    pub calls: AtomicU64,
}

impl Scripted {
    /// `script(prompt, seed)` is what row `seed` writes after `prompt` (the rendered
    /// conversation); the model stops at its end.
    pub fn new(script: impl Fn(&str, u64) -> String + Send + Sync + 'static) -> Self {
        Self {
            script: Box::new(script),
            vocab: Mutex::default(),
            positions: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    fn ids(&self, text: &str) -> Vec<u32> {
        let mut vocab = self.vocab.lock().unwrap();
        let (index, words) = &mut *vocab;
        text.split_whitespace()
            .map(|w| {
                *index.entry(w.to_string()).or_insert_with(|| {
                    words.push(w.to_string());
                    words.len() as u32 - 1
                })
            })
            .collect()
    }

    fn text(&self, ids: &[u32]) -> String {
        let vocab = self.vocab.lock().unwrap();
        ids.iter()
            .map(|&id| vocab.1[id as usize].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl LanguageModel for Scripted {
    fn encode_chat_opened(
        &self,
        messages: &[Message],
        opener: &str,
    ) -> policies::error::Result<Vec<u32>> {
        if messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(PolicyError::EmptyPrompt);
        }
        let mut text = String::new();
        for m in messages {
            text.push_str(&format!("{:?}: {}\n", m.role, m.content));
        }
        text.push_str(&format!("Assistant: {opener}"));
        Ok(self.ids(&text))
    }

    fn count_tokens(&self, text: &str) -> policies::error::Result<usize> {
        Ok(text.split_whitespace().count())
    }

    /// Rows decode in lockstep, one position per live row per step, as the engine's do: when
    /// a step would pass `max_positions`, the rows left end with `Budget`.
    fn generate(
        &self,
        prompt: &[u32],
        n: usize,
        params: &GenerateParams,
    ) -> policies::error::Result<(Vec<Generation>, GenerationStats)> {
        params.validate()?;
        let limit = params.max_positions.unwrap_or(usize::MAX);
        if prompt.len() > limit {
            return Err(PolicyError::OverBudget {
                needed: prompt.len(),
                limit,
            });
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let prompt_text = self.text(prompt);
        // Each row's words up to its first stop string.
        let scripted: Vec<Vec<String>> = (0..n)
            .map(|i| {
                let mut text = (self.script)(&prompt_text, params.sampling.seed + i as u64);
                if let Some(cut) = params
                    .stop
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    text.truncate(cut);
                }
                text.split_whitespace().map(str::to_string).collect()
            })
            .collect();
        let mut taken = vec![0usize; n];
        let mut finish: Vec<Option<FinishReason>> = vec![None; n];
        let mut positions = prompt.len();
        loop {
            let live: Vec<usize> = (0..n).filter(|&i| finish[i].is_none()).collect();
            if live.is_empty() {
                break;
            }
            for i in live {
                if taken[i] == scripted[i].len() {
                    finish[i] = Some(FinishReason::Stop);
                } else if taken[i] == params.max_tokens {
                    finish[i] = Some(FinishReason::Length);
                } else if positions + 1 > limit {
                    finish[i] = Some(FinishReason::Budget);
                } else {
                    taken[i] += 1;
                    positions += 1;
                }
            }
        }
        self.positions
            .fetch_add(positions as u64, Ordering::Relaxed);
        let generations = (0..n)
            .map(|i| {
                let text = scripted[i][..taken[i]].join(" ");
                Generation {
                    tokens: self.ids(&text),
                    text,
                    finish: finish[i].unwrap_or(FinishReason::Stop),
                    logprobs: Vec::new(),
                }
            })
            .collect();
        let stats = GenerationStats {
            prefill_tokens: prompt.len(),
            decode_tokens: positions - prompt.len(),
            ..Default::default()
        };
        Ok((generations, stats))
    }
}
