//! Rewards added together.

use crate::{Candidate, RewardError, RewardModel, Score};
use policies::Interrupt;
use std::sync::Arc;

/// A weighted sum of other rewards: a reward manifest of kind `combined`, or a request's own
/// constraints added to the reward it names.
pub struct Combined {
    parts: Vec<(Arc<dyn RewardModel>, f32)>,
}

impl Combined {
    /// The parts and their weights; every part scores every candidate.
    pub fn new(parts: Vec<(Arc<dyn RewardModel>, f32)>) -> Self {
        Self { parts }
    }
}

impl RewardModel for Combined {
    /// Every part scores with the same interrupt, so a judge inside a combination stops too.
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError> {
        let mut total: Vec<Score> = batch
            .iter()
            .map(|_| Score {
                value: 0.0,
                reasons: Vec::new(),
            })
            .collect();
        for (model, weight) in &self.parts {
            let scores = model.score_interruptible(batch, interrupt)?;
            if scores.len() != total.len() {
                return Err(RewardError::Model(format!(
                    "a part scored {} of {} candidates",
                    scores.len(),
                    total.len()
                )));
            }
            for (acc, s) in total.iter_mut().zip(scores) {
                acc.value += weight * s.value;
                acc.reasons.extend(s.reasons);
            }
        }
        Ok(total)
    }

    /// The weighted sum of the parts' highest scores, summed in the order `score` sums, when
    /// every part has one and no weight is negative (a negative part's best is its lowest).
    fn max_score(&self) -> Option<f32> {
        let mut max = 0.0;
        for (model, weight) in &self.parts {
            if *weight < 0.0 {
                return None;
            }
            max += weight * model.max_score()?;
        }
        Some(max)
    }
}
