//! What `auto` learns about its policy from the queries it answers: a tally of each move.
//!
//! After the first round, a search loop can spend its next round two ways: **refine** (TPO: the
//! policy critiques the chosen response and writes N new ones from the critique) or
//! **resample** (N more fresh responses to the query). Which is worth more depends on the
//! policy: the TPO paper finds that weak instruction followers gain nothing from critiques, and
//! the default 135M policy is one. So every round is an experiment. A **trial** is one response
//! the round produced, dropped ones included (they cost the same); it **wins** when it scores
//! above the best response before the round. A round's **cost** is counted relative to the
//! query's first round (same prompt, same N), so that queries of different lengths pool.

use serde::{Deserialize, Serialize};

/// How a round after the first spends its compute: `refine` (TPO's textual loss, gradient and
/// update) or `resample` (fresh responses to the query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Move {
    Refine,
    Resample,
}

impl Move {
    pub const ALL: [Move; 2] = [Move::Refine, Move::Resample];

    pub fn name(self) -> &'static str {
        match self {
            Self::Refine => "refine",
            Self::Resample => "resample",
        }
    }

    /// The cost of a round relative to the first, before any is measured: a refine round
    /// prefills three prompts holding the chosen response and writes two critiques besides
    /// its N responses, about 2.5 first rounds at the default lengths.
    fn prior_cost(self) -> f64 {
        match self {
            Self::Refine => 2.5,
            Self::Resample => 1.0,
        }
    }

    /// The chance that one response of a round beats the best so far, before any is measured.
    /// From Qwen2.5-Coder-1.5B under its own judge on the built-in prompts (docs/EVAL.md): 19%
    /// of refine rounds and 25% of resample rounds of 4 responses raised the best, that is
    /// 1 - (1 - r)^(1/4) per response.
    pub fn prior_win_rate(self) -> f64 {
        match self {
            Self::Refine => 0.051,
            Self::Resample => 0.068,
        }
    }
}

/// The weight of [`Move::prior_win_rate`], in trials.
pub const PRIOR_TRIALS: f64 = 2.0;

/// Every move gets this many trials before the estimates decide, so both are always measured.
pub const EXPLORE_TRIALS: u64 = 8;

/// The record of one move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tally {
    /// Responses written by rounds of this move.
    pub trials: u64,
    /// Of those, the ones that beat the best answer before their round.
    pub wins: u64,
    /// Whole rounds whose cost was measured.
    pub rounds: u64,
    /// Sum over measured rounds of their cost relative to their query's first round.
    pub(super) relative_cost: f64,
}

impl Tally {
    /// The share of trials that won, with [`PRIOR_TRIALS`] trials at the move's measured
    /// prior rate added, so that a move with few trials is neither hopeless nor certain.
    pub fn win_rate(&self, m: Move) -> f64 {
        (self.wins as f64 + PRIOR_TRIALS * m.prior_win_rate()) / (self.trials as f64 + PRIOR_TRIALS)
    }

    /// Mean cost of a round relative to its query's first round.
    pub fn cost(&self, m: Move) -> f64 {
        if self.rounds == 0 {
            m.prior_cost()
        } else {
            self.relative_cost / self.rounds as f64
        }
    }
}

/// The estimate of one move as a decision saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    pub trials: u64,
    pub wins: u64,
    /// (wins + 2 x the move's prior rate) / (trials + 2): a move with few trials is neither
    /// hopeless nor certain. The priors are measured (docs/EVAL.md).
    pub win_rate: f64,
    /// Expected cost of a round, relative to the query's first round.
    pub cost: f64,
    /// Chance that a round of `n` trials beats the best so far, per unit of relative cost.
    pub value: f64,
}

/// Both tallies, as one consistent snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tallies {
    pub refine: Tally,
    pub resample: Tally,
}

impl Tallies {
    pub fn get(&self, m: Move) -> &Tally {
        match m {
            Move::Refine => &self.refine,
            Move::Resample => &self.resample,
        }
    }

    pub(super) fn get_mut(&mut self, m: Move) -> &mut Tally {
        match m {
            Move::Refine => &mut self.refine,
            Move::Resample => &mut self.resample,
        }
    }

    pub fn estimate(&self, m: Move, n: usize) -> Estimate {
        let t = self.get(m);
        let p = t.win_rate(m);
        let cost = t.cost(m).max(0.01);
        let round_wins = 1.0 - (1.0 - p).powi(n.max(1) as i32);
        Estimate {
            trials: t.trials,
            wins: t.wins,
            win_rate: p,
            cost,
            value: round_wins / cost,
        }
    }

    /// The next move for rounds of `n` responses: first whichever is not yet measured
    /// ([`EXPLORE_TRIALS`]; refine first on a tie, being the method the service is for), then
    /// the one more likely to beat the best per unit of compute.
    pub fn choose(&self, n: usize) -> Move {
        let (r, f) = (self.refine.trials, self.resample.trials);
        if r < EXPLORE_TRIALS || f < EXPLORE_TRIALS {
            return if r <= f { Move::Refine } else { Move::Resample };
        }
        let (refine, resample) = (
            self.estimate(Move::Refine, n),
            self.estimate(Move::Resample, n),
        );
        if refine.value > resample.value {
            Move::Refine
        } else {
            Move::Resample
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Learned;
    use super::*;

    #[test]
    fn both_moves_are_tried_before_the_estimates_decide() {
        let learned = Learned::default();
        assert_eq!(learned.snapshot().choose(4), Move::Refine);
        learned.record(Move::Refine, 4, 0, Some(2.0));
        assert_eq!(learned.snapshot().choose(4), Move::Resample);
        learned.record(Move::Resample, 4, 1, Some(1.0));
        learned.record(Move::Refine, 4, 0, Some(2.0));
        learned.record(Move::Resample, 4, 1, Some(1.0));
        // Both measured: 0/8 refine wins at twice the cost against 2/8 resample wins.
        assert_eq!(learned.snapshot().choose(4), Move::Resample);
    }

    #[test]
    fn refine_wins_when_it_beats_the_best_more_often_per_unit_of_compute() {
        let learned = Learned::default();
        learned.record(Move::Refine, 8, 6, Some(2.0));
        learned.record(Move::Resample, 8, 0, Some(1.0));
        let t = learned.snapshot();
        assert_eq!(t.choose(4), Move::Refine);
        let e = t.estimate(Move::Refine, 4);
        assert_eq!((e.trials, e.wins), (8, 6));
        // 6 wins of 8, plus 2 trials at the prior 0.051.
        let p = (6.0 + 2.0 * 0.051) / 10.0;
        assert!((e.win_rate - p).abs() < 1e-12);
        assert!((e.cost - 2.0).abs() < 1e-12);
        assert!((e.value - (1.0 - (1.0 - p).powi(4)) / 2.0).abs() < 1e-12);
    }
}
