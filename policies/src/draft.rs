//! A draft model: a smaller model with the policy's vocabulary that guesses the policy's next
//! tokens where the text does not repeat (where the suffix drafter has nothing to propose).
//!
//! It proposes one token with certainty per position, so the policy's verification stays the
//! one in [`crate::speculative`] and is as exact with it as with any drafter: the draft only
//! decides how fast the policy's own tokens come. Its guess is the token the row's own sampler
//! would draw from the draft's distribution with the uniform numbers it will draw the policy's
//! next tokens with (the argmax when greedy): verification keeps a draft when the policy's
//! draw with the same number is the same token, and where the two distributions are close,
//! draws with one number mostly agree, where a greedy guess is accepted only with the
//! probability of the draft's argmax. Which numbers come next is known (a row's generator is
//! seeded), and reading them ahead changes nothing that is drawn.
//!
//! The draft keeps a cache of its own, a row for each of the policy's rows, that trails the
//! policy's by the tokens it has not read yet (`owed`). Drafting `k` tokens feeds the owed
//! tokens and then its own guesses one step at a time; after verification its cache is rolled
//! back to the tokens the policy kept.

use crate::error::{PolicyError, Result};
use crate::kv_cache::KvCache;
use crate::model::{read_logits, Logits, Transformer};
use crate::prefill::{Interrupt, Output};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use candle_core::Device;

/// A draft model checked against the policy it drafts for.
#[derive(Debug, Clone)]
pub struct DraftModel {
    name: String,
    model: Transformer,
    /// One drafting step's cost in the policy's decoding steps (see [`Self::step_cost`]).
    step_cost: f64,
}

impl DraftModel {
    /// Pairs `model` (named `name`, with `tokenizer`) with a policy. Refused unless both
    /// tokenizers map every id to the same token (a draft token id must mean what the policy
    /// reads it as) and the draft's context is as long as the policy's.
    pub fn new(
        name: String,
        model: Transformer,
        tokenizer: &Tokenizer,
        policy: &Transformer,
        policy_tokenizer: &Tokenizer,
    ) -> Result<Self> {
        let mismatch = |reason: String| {
            Err(PolicyError::InvalidParameter {
                param: "draft",
                reason,
            })
        };
        let size = tokenizer.vocab_size();
        if size != policy_tokenizer.vocab_size() {
            return mismatch(format!(
                "the draft model `{name}` has a vocabulary of {size} tokens and the policy one \
                 of {}; a draft model must share the policy's tokenizer",
                policy_tokenizer.vocab_size()
            ));
        }
        if let Some(id) =
            (0..size as u32).find(|&id| tokenizer.token(id) != policy_tokenizer.token(id))
        {
            return mismatch(format!(
                "the draft model `{name}` reads token {id} as {:?} and the policy as {:?}; a \
                 draft model must share the policy's tokenizer",
                tokenizer.token(id),
                policy_tokenizer.token(id)
            ));
        }
        let (draft, target) = (model.config(), policy.config());
        if draft.context_length < target.context_length {
            return mismatch(format!(
                "the draft model `{name}` has a context of {} tokens, shorter than the \
                 policy's {}",
                draft.context_length, target.context_length
            ));
        }
        let step_cost = Self::step_cost(model.device(), draft, target);
        Ok(Self {
            name,
            model,
            step_cost,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// What one drafting step costs in the policy's decoding steps, from the two shapes alone
    /// (pacing depends on tokens, never on timings). On a CPU a step reads every weight and
    /// does a multiply-add with each: its cost follows the layers' size, `hidden² × layers`.
    /// On a GPU at the few rows drafting runs at, a step is a fixed chain of kernels per layer,
    /// each too small to fill the device: its cost follows the number of layers.
    fn step_cost(device: &Device, draft: &crate::ModelConfig, target: &crate::ModelConfig) -> f64 {
        let layers = draft.n_layers as f64 / target.n_layers as f64;
        if device.is_cuda() {
            return layers;
        }
        let width = draft.hidden_size as f64 / target.hidden_size as f64;
        layers * width * width
    }

    /// The cost of one drafted token, in the policy's decoding steps.
    pub fn cost(&self) -> f64 {
        self.step_cost
    }
}

/// A draft model's state over one generate call: its cache, row for row with the policy's.
pub(crate) struct ModelDrafter<'d> {
    draft: &'d DraftModel,
    cache: KvCache,
    /// Per cache row: tokens the policy kept that the draft's cache has not read.
    owed: Vec<Vec<u32>>,
    /// Per cache row: the guesses of the last proposal that the cache has read (all but the
    /// last, whatever length the row asked for).
    read: Vec<Vec<u32>>,
    /// Positions the draft model computed: prefill and drafting.
    pub positions: usize,
}

impl<'d> ModelDrafter<'d> {
    /// Prefills the draft's cache with `prompts`, one row each (one prompt forked into `rows`
    /// rows, as [`crate::Policy::generate`] forks it, when there is one prompt).
    pub fn prefill(
        draft: &'d DraftModel,
        prompts: &[&[u32]],
        rows: usize,
        interrupt: &Interrupt,
    ) -> Result<Self> {
        let mut cache = draft.model.new_cache(prompts.len());
        draft
            .model
            .prefill(prompts, &mut cache, Output::Logits, interrupt)?;
        if prompts.len() != rows {
            cache = cache.select_rows(&vec![0; rows])?;
        }
        Ok(Self {
            draft,
            cache,
            owed: vec![Vec::new(); rows],
            read: vec![Vec::new(); rows],
            positions: prompts.iter().map(|p| p.len()).sum(),
        })
    }

    /// The cost of one drafted token, in the policy's decoding steps.
    pub fn cost(&self) -> f64 {
        self.draft.cost()
    }

    /// Keeps only the cache rows `keep`, in that order (as the policy's cache does).
    pub fn select_rows(&mut self, keep: &[usize]) -> Result<()> {
        self.cache = self.cache.select_rows(keep)?;
        self.owed = keep
            .iter()
            .map(|&j| std::mem::take(&mut self.owed[j]))
            .collect();
        self.read = keep
            .iter()
            .map(|&j| std::mem::take(&mut self.read[j]))
            .collect();
        Ok(())
    }

    /// Up to `lens[j]` draft tokens for each cache row `j`, which feeds `next[j]` to the
    /// policy this step and draws its tokens with `samplers[j]` (a copy: the row's own is not
    /// advanced). Every row drafts as many steps as the longest asks for (one batch per step),
    /// and its guesses are cut to its length.
    pub fn propose(
        &mut self,
        next: &[u32],
        lens: &[usize],
        mut samplers: Vec<Sampler>,
    ) -> Result<Vec<Vec<u32>>> {
        let rows = self.owed.len();
        if next.len() != rows || lens.len() != rows || samplers.len() != rows {
            return Err(inconsistent(format!(
                "draft model: {rows} rows in its cache, {} tokens, {} lengths and {} samplers \
                 given",
                next.len(),
                lens.len(),
                samplers.len()
            )));
        }
        for (owed, &t) in self.owed.iter_mut().zip(next) {
            owed.push(t);
        }
        let steps = lens.iter().copied().max().unwrap_or(0);
        let mut guesses = vec![Vec::with_capacity(steps); rows];
        self.read = vec![Vec::new(); rows];
        if steps == 0 {
            return Ok(guesses);
        }
        let mut feed = std::mem::replace(&mut self.owed, vec![Vec::new(); rows]);
        for step in 0..steps {
            let chunks: Vec<&[u32]> = feed.iter().map(Vec::as_slice).collect();
            let out = self
                .draft
                .model
                .forward(&chunks, &mut self.cache, Logits::Last)?;
            self.positions += feed.iter().map(Vec::len).sum::<usize>();
            let logits = read_logits(&out)?;
            if logits.len() != rows {
                return Err(inconsistent(format!(
                    "draft model: {} rows of logits for {rows} rows",
                    logits.len()
                )));
            }
            for ((g, l), sampler) in guesses.iter_mut().zip(&logits).zip(&mut samplers) {
                g.push(sampler.sample(l));
            }
            if step + 1 < steps {
                feed = guesses.iter().map(|g| vec![g[step]]).collect();
            }
        }
        for (j, g) in guesses.iter_mut().enumerate() {
            self.read[j] = g[..steps - 1].to_vec();
            g.truncate(lens[j]);
        }
        Ok(guesses)
    }

    /// Row `j` of the last [`Self::propose`] had its drafts (this drafter's or another's)
    /// accepted up to `accepted`: the cache keeps the guesses it read that agree with them
    /// and owes the rest. The policy's token after them comes with the next `propose`.
    pub fn settle(&mut self, j: usize, accepted: &[u32]) {
        let read = std::mem::take(&mut self.read[j]);
        let agree = read
            .iter()
            .zip(accepted)
            .take_while(|(g, a)| g == a)
            .count();
        self.cache.rollback_row(j, read.len() - agree);
        self.owed[j].extend_from_slice(&accepted[agree..]);
    }
}

/// The draft's cache and the policy's disagree on their rows: a fault of the caller.
fn inconsistent(message: String) -> PolicyError {
    candle_core::Error::Msg(message).into()
}
