//! Sequence-classification reward models (HF `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification`...): a decoder body and a linear `score` head read at the
//! last token of `chat_template(conversation + response)`.
//!
//! A round's candidates are scored as one left-padded batch, so the last position of every row is
//! its last real token and the head reads one hidden state per row.

use crate::{model_err, policy_err, Candidate, RewardError, RewardModel, Score};
use candle_core::{Device, Tensor};
use policies::{Checkpoint, Interrupt, Message, Output, Policy, Role, Transformer};
use std::path::Path;

/// A classifier reward model.
pub struct ClassifierRm {
    policy: Policy,
    /// `[1, hidden]`: the score head.
    head: Tensor,
}

impl ClassifierRm {
    /// Loads an HF checkpoint folder holding a `score.weight` head with one label.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, RewardError> {
        let mut ck = Checkpoint::open(dir, device).map_err(model_err)?;
        if !ck.weights.has("score.weight") {
            return Err(RewardError::Config(format!(
                "{} has no `score.weight` tensor: not a sequence-classification reward model",
                dir.display()
            )));
        }
        let head = ck.weights.dense("score.weight").map_err(model_err)?;
        let (labels, hidden) = head.dims2().map_err(model_err)?;
        if labels != 1 || hidden != ck.config.hidden_size {
            return Err(RewardError::Config(format!(
                "score head is [{labels}, {hidden}], expected [1, {}]",
                ck.config.hidden_size
            )));
        }
        if ck.tokenizer.vocab_size() > ck.config.vocab_size {
            return Err(RewardError::Config(format!(
                "tokenizer has {} tokens but the model's vocabulary has {}: mismatched tokenizer",
                ck.tokenizer.vocab_size(),
                ck.config.vocab_size
            )));
        }
        let model = Transformer::load(ck.config, &mut ck.weights).map_err(model_err)?;
        Ok(Self {
            policy: Policy::from_parts(ck.name, model, ck.tokenizer, ck.template),
            head,
        })
    }

    /// Token ids of one candidate: the conversation plus the response as the assistant's turn.
    fn encode(&self, c: &Candidate<'_>) -> Result<Vec<u32>, RewardError> {
        let mut messages = c.messages.to_vec();
        messages.push(Message::new(Role::Assistant, c.response));
        crate::fitted(self.policy.encode_conversation(&messages))
    }

    /// Scores pre-tokenized sequences as one batch.
    pub fn score_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>, RewardError> {
        self.score_ids_interruptible(rows, &Interrupt::default())
    }

    /// [`Self::score_ids`], prefilled in chunks that check `interrupt` between them.
    pub fn score_ids_interruptible(
        &self,
        rows: &[Vec<u32>],
        interrupt: &Interrupt,
    ) -> Result<Vec<f32>, RewardError> {
        let model = self.policy.model();
        let mut cache = model.new_cache(rows.len());
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let hidden = model
            .prefill(&rows, &mut cache, Output::Hidden, interrupt)
            .map_err(policy_err)?;
        let scores = hidden
            .matmul(&self.head.t().map_err(model_err)?)
            .map_err(model_err)?;
        scores
            .flatten_all()
            .and_then(|s| s.to_vec1::<f32>())
            .map_err(model_err)
    }
}

impl RewardModel for ClassifierRm {
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = batch
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<Vec<_>, _>>()?;
        let values = self.score_ids_interruptible(&rows, interrupt)?;
        Ok(values
            .into_iter()
            .map(|value| Score {
                value,
                reasons: Vec::new(),
            })
            .collect())
    }
}
