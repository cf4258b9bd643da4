//! How many drafted tokens a row verifies: as many as pay for themselves.
//!
//! Verifying drafted tokens costs compute whether they are accepted or not; a token saves a
//! decoding step only when it is accepted. Draft `i` of a step is accepted with probability
//! about `p^i`, where `p` is the row's acceptance rate so far, so drafting `L` tokens gains
//! `p + p² + ... + p^L` steps on average and costs what verifying them costs ([`Cost`]): a
//! price for verifying any at all (`first`), a price per token (`each`), and at most `cap`
//! in all. They are properties of the device and the batch. On a GPU at a few rows one more
//! position per row moves the products to kernels built for several rows, which costs most
//! of a step once, and each position after it less; from 6 positions on the tensor-core
//! kernels take them all for about one price (an H200 verifies 5 positions of one row for
//! 1.75 steps on 4-row warps, 6 to 8 for 1.8-1.9 and 13 for 2.2 on tensor cores). On a CPU every position costs arithmetic. A draft model's tokens
//! also cost its own steps ([`crate::draft::DraftModel::cost`]), outside the cap.
//!
//! Rows whose drafts do not pay stop drafting, and now and then try again (a probe) to notice
//! when the text starts repeating; probes are spaced so that all rows' together cost about
//! [`Pacing::PROBE_SHARE`] of the steps (a probe delays the whole batch).
//!
//! Every decision depends on the tokens alone (acceptance counts, batch size, device), never
//! on timings, so a seeded run stays reproducible; and speculation is exact whatever the draft
//! length, so pacing changes speed only.

use crate::sampling::Readout;
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
        // Token i gains p^i; every length is priced whole, since the cap makes long drafts
        // cheaper per token than short ones.
        let p = self.acceptance();
        let (mut best, mut best_gain) = (0, 0.0);
        let (mut reach, mut gained) = (1.0, 0.0);
        for len in 1..=max {
            reach *= p;
            gained += reach;
            let gain = gained - cost.of(len);
            if gain > best_gain {
                (best, best_gain) = (len, gain);
            }
        }
        if best > 0 {
            self.idle = 0;
            return best;
        }
        self.idle += 1;
        if self.idle as f64 * Self::PROBE_SHARE >= cost.of(1) * cost.rows.max(1) as f64 {
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

/// What verifying drafted tokens costs a row, in decoding steps: `first` for verifying any
/// and `each` per token, at most `cap` in all; plus `drafting` per token, the steps of a
/// draft model that guessed them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub first: f64,
    pub each: f64,
    pub cap: f64,
    pub drafting: f64,
    /// The rows of the step: a probe that does not pay delays every one of them, so each row
    /// probes that many times less often.
    pub rows: usize,
}

impl Cost {
    /// The cost of verifying on `device` with `rows` rows in the step, reading back what
    /// `readout` says (see [`crate::model::read_scores`]): the larger figure of the models
    /// measured, so that drafting stops where it might not pay. Measured with `hone bench engine --verify K
    /// [--greedy]` (the `verify K / step` column; docs/PERFORMANCE.md) on an H200 with the
    /// Qwen2.5-Coder-1.5B shape: reading logits, a call of 2 positions per row at 1 and 4 rows
    /// costs 1.6 steps and one of 7 costs 3.2-3.4 (then in kernels built for 8 rows, since
    /// replaced by the tensor-core ones), at 16 rows 1.4 and at 64 rows 2.4 steps per position; reading greedy tokens, 2
    /// positions cost 1.2-1.5 steps, 5 cost 2.2-2.5 and 13 cost 2.2 (1 row) or 3.4 (4 rows),
    /// 5 positions at 16 rows 3.3 and at 64 rows 4.4 steps. On a 2-core CPU, 5 positions at 1
    /// row cost 2.1-2.3 steps, and 0.8 per position at 4 rows. A step reading heads of
    /// distributions is priced as one reading greedy tokens: both read back a few bytes a row.
    /// At one row on a GPU a whole call is priced at most 1.2 steps: against 1.5, refine rounds
    /// of `hone bench speculate --speculate 12` gained 1.90x / 1.87x against 1.86x / 1.79x,
    /// chat prompts 0.99x against 0.98-0.99x (once graphs outlived requests, so that long
    /// drafts stopped paying for recording their lengths' graphs).
    /// At 2-4 rows on a GPU, verifying any costs 1.3 steps: priced at 0.6, the four rows of
    /// `hone generate --batch 4 --temperature 0.7 --top-p 0.95 --speculate 7` decoded at 0.8x
    /// plain, a step in which one row verified costing the batch about 1.3 more.
    /// On a GPU from 5 rows on, speculation is off: priced per row from those figures
    /// (nothing for verifying any, 0.6 a token), the 16 rows of `hone generate --batch 16
    /// --temperature 0.7 --top-p 0.95 --speculate 7` (real Qwen2.5-Coder-1.5B) drafted or
    /// probed in nearly every step, and decoded at 0.56x plain.
    pub fn verify(device: &Device, rows: usize, readout: Readout) -> Self {
        let none = f64::INFINITY;
        let small = !matches!(readout, Readout::Logits);
        let (first, each, cap) = match (device.is_cuda(), small, rows) {
            (true, true, 0..=1) => (0.6, 0.15, 1.2),
            (true, true, 2..=4) => (1.3, 0.15, none),
            (true, false, 0..=1) => (0.6, 0.3, none),
            (true, false, 2..=4) => (1.3, 0.3, none),
            // Never: a step in which any row verifies drafts costs the whole batch about two
            // plain steps, and the batch is done only when its slowest row is.
            (true, _, _) => (none, 0.0, none),
            (false, _, 0..=1) => (0.3, 0.2, none),
            (false, _, _) => (0.0, 0.8, none),
        };
        Self {
            first,
            each,
            cap,
            drafting: 0.0,
            rows,
        }
    }

    /// What verifying `len` drafted tokens costs.
    pub fn of(&self, len: usize) -> f64 {
        if len == 0 {
            return 0.0;
        }
        (self.first + self.each * len as f64).min(self.cap) + self.drafting * len as f64
    }

    /// Whether drafting up to `max` tokens could pay at all: even with every token accepted,
    /// `max` tokens must gain more than they cost. Where they cannot, rows do not even probe.
    pub fn can_pay(&self, max: usize) -> bool {
        (1..=max).any(|len| len as f64 > self.of(len))
    }

    /// The same, with `per_token` more steps for each token (a draft model's own steps).
    pub fn plus(self, per_token: f64) -> Self {
        Self {
            drafting: self.drafting + per_token,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(first: f64, each: f64) -> Cost {
        Cost {
            first,
            each,
            cap: f64::INFINITY,
            drafting: 0.0,
            rows: 1,
        }
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

    /// Where verifying many tokens costs no more than a few (a cap), a row drafts all it may
    /// once its acceptance makes the long draft gain more: at 70%, twelve tokens gain 2.27
    /// steps for a capped 1.5, where the linear price would stop at five (0.7^6 < 0.15).
    #[test]
    fn a_capped_price_makes_long_drafts_pay() {
        let linear = cost(0.6, 0.15);
        let capped = Cost { cap: 1.5, ..linear };
        assert_eq!(Pacing::default().draft_len(12, linear), 5);
        assert_eq!(Pacing::default().draft_len(12, capped), 12);
        assert_eq!(capped.of(12), 1.5);
        assert!((capped.of(2) - 0.9).abs() < 1e-12);
        // A draft model's own steps are not capped: at 0.3 a token, twelve guesses cost 5.1.
        assert!((capped.plus(0.3).of(12) - 5.1).abs() < 1e-12);
        // At 50% acceptance nothing pays, capped or not.
        let mut row = Pacing::default();
        for _ in 0..10 {
            row.record(3, 1);
        }
        assert!(row.acceptance() < 0.55, "{}", row.acceptance());
        assert_eq!(row.clone().draft_len(12, linear), 0);
        assert_eq!(row.draft_len(12, capped), 0);
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
        // Where four rows share the step a probe delays, each probes a quarter as often.
        let shared = Cost {
            rows: 4,
            ..cost(0.3, 0.2)
        };
        let lens: Vec<usize> = (0..68).map(|_| row.draft_len(4, shared)).collect();
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
