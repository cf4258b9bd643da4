//! How many drafted tokens a row verifies: as many as pay for themselves.
//!
//! Verifying drafted tokens costs compute whether they are accepted or not; a token saves a
//! decoding step only when it is accepted. Draft `i` of a step is accepted with probability
//! about `p^i`, where `p` is the row's acceptance rate so far, so drafting `L` tokens gains
//! `p + p² + ... + p^L` steps on average and costs what verifying them costs ([`Cost`]): a
//! price for verifying any at all (`first`) and a price per token (`each`). Both are
//! properties of the device and the batch. On a GPU at a few rows one more position per row
//! moves the products to kernels built for several rows, which costs most of a step once
//! (an H200 runs 2 positions per row for 1.6 steps), and each position after it less. On a
//! CPU every position costs arithmetic. A draft model's tokens also cost its own steps
//! ([`crate::draft::DraftModel::cost`]).
//!
//! Rows whose drafts do not pay stop drafting, and now and then try again (a probe) to notice
//! when the text starts repeating; probes are spaced so that they cost about
//! [`Pacing::PROBE_SHARE`] of the row's steps.
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
    /// What share of a row's steps its probes may cost, while its drafts do not pay.
    pub const PROBE_SHARE: f64 = 0.06;

    /// The share of evaluated draft tokens that were accepted (discounted).
    pub fn acceptance(&self) -> f64 {
        self.accepted / self.evaluated
    }

    /// How many of up to `max` drafted tokens to verify this step at `cost`: the length
    /// with the largest expected gain, if that gain is positive; else none, or a probe.
    pub fn draft_len(&mut self, max: usize, cost: Cost) -> usize {
        if !cost.can_pay(max) {
            return 0;
        }
        // Each further token gains p^i and costs `each`: the gain grows while p^i > each.
        let p = self.acceptance();
        let (mut len, mut reach, mut gain) = (0, 1.0, -cost.first);
        while len < max && reach * p > cost.each {
            reach *= p;
            gain += reach - cost.each;
            len += 1;
        }
        if len > 0 && gain > 0.0 {
            self.idle = 0;
            return len;
        }
        self.idle += 1;
        if self.idle as f64 * Self::PROBE_SHARE >= cost.first + cost.each {
            self.idle = 0;
            return len.max(1);
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

/// What verifying drafted tokens costs a row, in decoding steps: `first` for verifying any,
/// and `each` per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub first: f64,
    pub each: f64,
}

impl Cost {
    /// The cost of verifying on `device` with `rows` rows in the step: the larger figure of
    /// the models measured, so that drafting stops where it might not pay. Measured with
    /// `hone bench engine --verify K` (the `verify K / step` column): on an H200 with
    /// Qwen2.5-Coder-1.5B (2026-12-01), a call of 2 positions per row at 1 and 4 rows costs
    /// 1.6 steps and one of 7 costs 3.2-3.4 (the products move to kernels built for 8 rows);
    /// at 16 rows 1.4 and at 64 rows 2.4 steps per position. On a 2-core CPU, 5 positions at 1
    /// row cost 2.1-2.3 steps, and 0.8 per position at 4 rows.
    pub fn verify(device: &Device, rows: usize) -> Self {
        let (first, each) = match (device.is_cuda(), rows) {
            (true, 0..=4) => (0.6, 0.3),
            (true, 5..=16) => (0.0, 1.5),
            (true, _) => (0.0, 2.4),
            (false, 0..=1) => (0.3, 0.2),
            (false, _) => (0.0, 0.8),
        };
        Self { first, each }
    }

    /// Whether drafting up to `max` tokens could pay at all: even with every token accepted,
    /// `max` tokens must gain more than they cost. Where they cannot, rows do not even probe.
    pub fn can_pay(&self, max: usize) -> bool {
        max as f64 * (1.0 - self.each) > self.first
    }

    /// The same, with `per_token` more steps for each token (a draft model's own steps).
    pub fn plus(self, per_token: f64) -> Self {
        Self {
            each: self.each + per_token,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(first: f64, each: f64) -> Cost {
        Cost { first, each }
    }

    #[test]
    fn drafts_are_as_long_as_their_tokens_pay() {
        let mut row = Pacing::default();
        for _ in 0..10 {
            row.record(4, 4);
        }
        assert!(row.acceptance() > 0.9, "{}", row.acceptance());
        assert_eq!(row.draft_len(6, cost(0.0, 0.15)), 6);
        // At the 70% prior: 0.7 > 0.5 but 0.49 < 0.5, so one token pays on a linear cost;
        // 0.7^5 = 0.17 > 0.15 but 0.7^6 = 0.12 < 0.15, so five do on a cheaper one.
        assert_eq!(Pacing::default().draft_len(6, cost(0.0, 0.5)), 1);
        assert_eq!(Pacing::default().draft_len(6, cost(0.0, 0.15)), 5);
        // A price for verifying at all: at 70% four tokens gain 0.7 + 0.49 + 0.34 + 0.24 -
        // 4 x 0.05 = 1.57 steps, which pays for 0.95, but not for 2.
        assert_eq!(Pacing::default().draft_len(4, cost(0.95, 0.05)), 4);
        let mut row = Pacing::default();
        assert_eq!(row.draft_len(4, cost(2.0, 0.05)), 0);
        // Where not even certain acceptance pays (a draft model whose steps cost about the
        // policy's), a row never drafts, not even to probe.
        assert!(!cost(0.95, 0.91).can_pay(10));
        assert!((0..100).all(|_| row.draft_len(10, cost(0.95, 0.91)) == 0));
    }

    #[test]
    fn rows_whose_drafts_are_rejected_stop_drafting_and_probe() {
        let mut row = Pacing::default();
        for _ in 0..10 {
            row.record(2, 0);
        }
        assert!(row.acceptance() < 0.1, "{}", row.acceptance());
        // A probe costs 0.5 steps: one every 0.5 / 0.06 = 8.3 steps, so at the 9th and 18th.
        let lens: Vec<usize> = (0..18).map(|_| row.draft_len(4, cost(0.3, 0.2))).collect();
        let probes: Vec<usize> = lens
            .iter()
            .enumerate()
            .filter(|(_, &l)| l > 0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(probes, [8, 17], "{lens:?}");
        assert!(lens.iter().all(|&l| l <= 1), "{lens:?}");
        // Where a probe costs a whole step, probes are half as frequent again.
        let lens: Vec<usize> = (0..34)
            .map(|_| row.draft_len(4, cost(0.95, 0.05)))
            .collect();
        assert_eq!(lens.iter().filter(|&&l| l > 0).count(), 2, "{lens:?}");
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
