//! How many drafted tokens a row verifies: as many as pay for themselves.
//!
//! Verifying a drafted token costs a position of compute whether it is accepted or not; it
//! saves a decoding step only when it is. Draft `i` of a step is accepted with probability
//! about `p^i`, where `p` is the row's acceptance rate so far, so it pays when `p^i` exceeds
//! what one more verified position costs in decoding steps. That cost is a property of the
//! device and the batch: small where a step is bound by reading the weights (a GPU at small
//! batches: a verification call of 5 positions costs ~1.7 steps on an H200), large where it is
//! bound by arithmetic (a CPU: ~3.5 steps; any device at large batches). Rows whose drafts do
//! not pay stop drafting, and try one token every [`Pacing::PROBE_EVERY`] steps to notice
//! when the text starts repeating.
//!
//! Every decision depends on the tokens alone (acceptance counts, batch size, device), never
//! on timings, so a seeded run stays reproducible; and speculation is exact whatever the draft
//! length, so pacing changes speed only.

use candle_core::Device;

/// One row's acceptance record.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// Accepted and evaluated draft tokens, older steps discounted by [`Self::MEMORY`].
    accepted: f64,
    evaluated: f64,
    /// Steps since the row last drafted, while drafting does not pay.
    idle: usize,
}

impl Default for Pacing {
    /// A prior of 70% acceptance, worth two tokens of evidence: about what the drafter gets on
    /// text that is being rewritten (65-67% in TPO, docs/PERFORMANCE.md).
    fn default() -> Self {
        Self {
            accepted: 1.4,
            evaluated: 2.0,
            idle: 0,
        }
    }
}

impl Pacing {
    /// The weight of the previous steps' counts at each new step.
    const MEMORY: f64 = 0.8;
    /// A row that does not draft tries one token this often.
    pub const PROBE_EVERY: usize = 8;

    /// The share of evaluated draft tokens that were accepted (discounted).
    pub fn acceptance(&self) -> f64 {
        self.accepted / self.evaluated
    }

    /// How many of up to `max` drafted tokens to verify this step, when one more verified
    /// position costs `cost` decoding steps.
    pub fn draft_len(&mut self, max: usize, cost: f64) -> usize {
        if max == 0 {
            return 0;
        }
        let p = self.acceptance();
        let (mut len, mut reach) = (0, 1.0);
        while len < max {
            reach *= p;
            if reach < cost {
                break;
            }
            len += 1;
        }
        if len > 0 {
            self.idle = 0;
            return len;
        }
        self.idle += 1;
        if self.idle >= Self::PROBE_EVERY {
            self.idle = 0;
            return 1;
        }
        0
    }

    /// Records a step that verified `drafted` tokens and accepted the first `accepted`: those
    /// were accepted, the next one (if any) rejected, and the rest never evaluated.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        let rejected = usize::from(accepted < drafted);
        self.accepted = Self::MEMORY * self.accepted + accepted as f64;
        self.evaluated = Self::MEMORY * self.evaluated + (accepted + rejected) as f64;
    }
}

/// What one more verified position per row costs, in decoding steps, on `device` with `rows`
/// rows in the step: the larger figure of the models measured, so that drafting stops where
/// it might not pay. Measured with `hone bench engine` (the `verify 5 / step` column, minus
/// one, over five): on an H200 (2026-12-01, SmolLM2 and the Qwen2.5-1.5B shape), 0.22-0.35 at 1
/// to 4 rows, 0.4 (SmolLM2) and 1.4 (1.5B) at 16, 0.75-2.4 at 64: a decode step replayed as a
/// CUDA graph is cheap enough that verifying is dear beside it; on a 2-core CPU, 0.3-0.5 at 1
/// row and 0.8 at 4.
pub fn verify_cost(device: &Device, rows: usize) -> f64 {
    match (device.is_cuda(), rows) {
        (true, 0..=4) => 0.35,
        (true, 5..=16) => 1.5,
        (true, _) => 2.4,
        (false, 0..=1) => 0.5,
        (false, _) => 0.8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_verification_drafts_the_most_a_high_acceptance_pays_for() {
        let mut row = Pacing::default();
        for _ in 0..10 {
            row.record(4, 4);
        }
        assert!(row.acceptance() > 0.9, "{}", row.acceptance());
        assert_eq!(row.draft_len(6, 0.15), 6);
        // 0.7^1 = 0.7 >= 0.5 but 0.7^2 = 0.49 < 0.5: one token pays, two do not.
        assert_eq!(Pacing::default().draft_len(6, 0.5), 1);
        assert_eq!(Pacing::default().draft_len(6, 0.15), 5);
    }

    #[test]
    fn rows_whose_drafts_are_rejected_stop_drafting_and_probe() {
        let mut row = Pacing::default();
        for _ in 0..10 {
            row.record(2, 0);
        }
        assert!(row.acceptance() < 0.1, "{}", row.acceptance());
        let lens: Vec<usize> = (0..2 * Pacing::PROBE_EVERY)
            .map(|_| row.draft_len(4, 0.5))
            .collect();
        let probes: Vec<usize> = lens
            .iter()
            .enumerate()
            .filter(|(_, &l)| l > 0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            probes,
            [Pacing::PROBE_EVERY - 1, 2 * Pacing::PROBE_EVERY - 1],
            "{lens:?}"
        );
        assert!(lens.iter().all(|&l| l <= 1), "{lens:?}");
    }

    #[test]
    fn a_rejection_counts_once_and_unevaluated_drafts_not_at_all() {
        let mut row = Pacing {
            accepted: 0.0,
            evaluated: 0.0,
            idle: 0,
        };
        row.record(5, 2);
        assert_eq!(row.acceptance(), 2.0 / 3.0);
        row.record(0, 0);
        assert_eq!(row.acceptance(), 2.0 / 3.0);
    }
}
