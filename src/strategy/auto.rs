//! `auto`: spend the budget where it has been paying off.
//!
//! 1. Length: under a compute budget, each response may run to 1.25 × the length that 95% of
//!    this policy's responses ended within (once 16 are known), rather than the request's
//!    `max_tokens`. The planner reserves compute for every response's worst case, so a tighter,
//!    realistic limit lets more responses fit.
//! 2. Width: a first round of N responses to the query, as best-of-N.
//! 3. Depth: then round after round, refine (a TPO round) or resample (N fresh responses),
//!    whichever [`Learned`](super::Learned) says beats the best answer more often per unit of
//!    compute; every round it runs adds to that estimate.
//! 4. Stop: when the best answer has the reward's highest score, when [`PATIENCE`] rounds in a
//!    row did not improve it (`Converged`), or when the next round does not fit the budget,
//!    the deadline or the round limit.

use super::best_of_n::{resample, sample_round};
use super::prompts::Prompts;
use super::response::query_text;
use super::session::Session;
use super::tallies::{Estimate, Tallies};
use super::tpo::refine;
use super::{Move, Stopped, Strategy, StrategyError, Trace};
use serde::Serialize;
use std::ops::ControlFlow;

/// Rounds after the first when the request names no limit: enough that the budget and the
/// stopping rule end the search, not the count.
pub const DEFAULT_ROUNDS: u32 = 8;

/// Rounds in a row without a better answer after which the search stops.
pub const PATIENCE: u32 = 2;

/// How `auto` decided.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AutoTrace {
    /// The most tokens each response could have.
    pub max_tokens: usize,
    /// One per round after the first that ran.
    pub decisions: Vec<Decision>,
    /// The server's tallies for the policy after this query: what later queries decide from.
    pub learned: Tallies,
}

/// The choice made before one round, and the estimates it was made from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// Index of the round this decision started.
    pub round: usize,
    /// The move tried: the one with fewer trials until each has had a few, then the one with
    /// the higher `value`; `resample` when no response could be refined.
    pub chose: Move,
    pub refine: Estimate,
    pub resample: Estimate,
}

pub(super) fn run(mut s: Session<'_>) -> Result<Trace, StrategyError> {
    let prompts = Prompts::load(s.request.prompts_dir.as_deref())?;
    s.max_tokens = max_tokens(&s);
    let mut decisions = Vec::new();
    let stopped = search(&mut s, &prompts, &mut decisions)?;
    let auto = AutoTrace {
        max_tokens: s.max_tokens,
        decisions,
        learned: s.learned.snapshot(),
    };
    let mut trace = s.finish(Strategy::Auto, stopped)?;
    trace.auto = Some(auto);
    Ok(trace)
}

/// The response length limit (step 1).
fn max_tokens(s: &Session<'_>) -> usize {
    if s.request.budget.compute.is_none() {
        return s.request.max_tokens;
    }
    match s.learned.length_quantile(0.95, 16) {
        Some(typical) => ((typical as f64 * 1.25).ceil() as usize)
            .max(16)
            .min(s.request.max_tokens),
        None => s.request.max_tokens,
    }
}

fn search(
    s: &mut Session<'_>,
    prompts: &Prompts,
    decisions: &mut Vec<Decision>,
) -> Result<Stopped, StrategyError> {
    let first = sample_round(s)?;
    if first != Stopped::Done {
        return Ok(first);
    }
    let query = query_text(&s.request.messages);
    let mut stale = 0;
    for _ in 0..s.depth() {
        if s.reached_max() {
            return Ok(Stopped::Converged);
        }
        if let Some(stopped) = s.check()? {
            return Ok(stopped);
        }
        let tallies = s.learned.snapshot();
        let n = s.request.n;
        // With nothing usable to critique, refining has no chosen response to start from.
        let chose = match s.pair() {
            Some(_) => tallies.choose(n),
            None => Move::Resample,
        };
        let round = s.rounds.len();
        let before = s.best().map(|b| b.score);
        let flow = match chose {
            Move::Refine => refine(s, prompts, &query)?,
            Move::Resample => resample(s)?,
        };
        // A round the budget did not let start is no decision worth showing.
        if s.rounds.len() > round {
            decisions.push(Decision {
                round,
                chose,
                refine: tallies.estimate(Move::Refine, n),
                resample: tallies.estimate(Move::Resample, n),
            });
        }
        if let ControlFlow::Break(stopped) = flow {
            return Ok(stopped);
        }
        if improved(before, s.best().map(|b| b.score)) {
            stale = 0;
        } else {
            stale += 1;
            if stale >= PATIENCE {
                return Ok(Stopped::Converged);
            }
        }
    }
    Ok(if s.reached_max() {
        Stopped::Converged
    } else {
        Stopped::Done
    })
}

/// Whether a round raised the best score (strictly: an equal best is no gain).
fn improved(before: Option<f32>, now: Option<f32>) -> bool {
    match (before, now) {
        (Some(b), Some(n)) => n > b,
        (None, Some(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn improvement_needs_a_strictly_better_best() {
        assert!(improved(Some(0.5), Some(0.6)));
        assert!(!improved(Some(0.5), Some(0.5)));
        assert!(improved(None, Some(0.1)));
        assert!(!improved(Some(0.5), None));
    }
}
