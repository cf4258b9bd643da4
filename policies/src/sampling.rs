//! Turning logits into tokens: greedy, temperature, top-k, top-p, seeded.

use crate::error::{PolicyError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick each next token. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = no limit).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || !(0.0..=100.0).contains(&self.temperature) {
            return Err(PolicyError::InvalidParameter {
                param: "temperature",
                reason: format!("must be between 0 and 100, got {}", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(PolicyError::InvalidParameter {
                param: "top_p",
                reason: format!("must be in (0, 1], got {}", self.top_p),
            });
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// One position's next-token scores, as much of them as its sampler needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Scores {
    /// Every logit: for log-probabilities, and for draws that can reach any token.
    Logits(Vec<f32>),
    /// The greedy token alone ([`argmax`] of the logits), taken where the logits are: on a
    /// GPU one integer is read back instead of the vocabulary's floats.
    Greedy(u32),
    /// The tokens a top-k or top-p draw can reach, taken where the logits are.
    Head(Head),
}

/// What a step reads back of each row's logits: as little as the rows' sampler needs. (The
/// rows of one call share their sampling parameters.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readout {
    /// Every logit.
    Logits,
    /// Each row's argmax.
    Greedy,
    /// Each row's [`Head`] under these parameters, or its logits where the head is too wide.
    Head(HeadParams),
}

impl Readout {
    /// What a sampler with `params` needs, and every logit when log-probabilities are
    /// reported.
    pub fn of(params: &SamplingParams, logprobs: bool) -> Self {
        if logprobs {
            Self::Logits
        } else if params.is_greedy() {
            Self::Greedy
        } else if params.top_k > 0 || params.top_p < 1.0 {
            Self::Head(HeadParams {
                inv_temperature: 1.0 / params.temperature,
                min_tokens: params.top_k,
                min_mass: if params.top_k > 0 { 0.0 } else { params.top_p },
            })
        } else {
            Self::Logits
        }
    }
}

/// Which tokens a [`Head`] must hold: at least `min_tokens` of them (top-k), weighing at least
/// `min_mass` of the whole vocabulary (top-p), with weights `exp((logit - max) ·
/// inv_temperature)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadParams {
    pub inv_temperature: f32,
    pub min_tokens: usize,
    pub min_mass: f32,
}

/// The likeliest tokens of one position, with their unnormalized weights under the sampler's
/// temperature, and the whole vocabulary's total weight: everything a top-k or top-p draw
/// (and speculative acceptance against it) needs, about a hundredth of the logits' bytes.
///
/// The head is every token whose weight reaches a cut, the largest of [`HEAD_CUTS`] that
/// keeps [`HeadParams`]' tokens and mass. Since it holds every token above the cut, it holds
/// the `k` likeliest for any `k` up to its size, and the nucleus of any top-p up to its
/// share of the total, so the draw is exactly the one the whole logits would give.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// (token, weight), in no particular order.
    pub weights: Vec<(u32, f32)>,
    pub total: f32,
}

/// The cuts a [`Head`] is taken at, as fractions of the top weight (the GPU kernel's list).
pub const HEAD_CUTS: [f32; 8] = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8];

/// The most tokens a [`Head`] holds; a wider one is read as logits instead.
pub const HEAD_CAP: usize = 512;

impl Head {
    /// The head of one position's logits, as the GPU kernel (`head_rows`) takes it; `None`
    /// where no cut keeps what `params` asks for within [`HEAD_CAP`] tokens. Decoding takes
    /// heads on the GPU only (on the CPU a head would add work); this is the kernel's
    /// reference, which the sampler's tests draw from.
    pub fn of(logits: &[f32], params: &HeadParams) -> Option<Self> {
        let max = logits
            .iter()
            .copied()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        // One pass weighs every token, sums the total and keeps the tokens that reach the
        // smallest cut (the only ones a head can hold).
        let smallest = HEAD_CUTS[HEAD_CUTS.len() - 1];
        let (mut total, mut candidates) = (0f32, Vec::new());
        for (i, &l) in logits.iter().enumerate() {
            let w = if l.is_nan() {
                0.0
            } else {
                ((l - max) * params.inv_temperature).exp()
            };
            total += w;
            if w >= smallest {
                candidates.push((i as u32, w));
            }
        }
        // Tokens and mass at or above each cut: each weight counts in the largest cut it
        // reaches, then the counts accumulate down the cuts.
        let (mut count, mut mass) = ([0usize; HEAD_CUTS.len()], [0f32; HEAD_CUTS.len()]);
        for &(_, w) in &candidates {
            if let Some(c) = HEAD_CUTS.iter().position(|&cut| w >= cut) {
                count[c] += 1;
                mass[c] += w;
            }
        }
        for c in 1..HEAD_CUTS.len() {
            count[c] += count[c - 1];
            mass[c] += mass[c - 1];
        }
        let c = (0..HEAD_CUTS.len())
            .find(|&c| count[c] >= params.min_tokens && mass[c] >= params.min_mass * total)?;
        if count[c] > HEAD_CAP {
            return None;
        }
        candidates.retain(|&(_, w)| w >= HEAD_CUTS[c]);
        Some(Self {
            weights: candidates,
            total,
        })
    }
}

/// A seeded sampler for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let dist = self.distribution(logits);
        draw(&dist, self.rng.random::<f32>())
    }

    /// Picks the next token from one position's scores. ([`Scores::Greedy`] is read only for
    /// greedy samplers: it is their pick.)
    pub fn choose(&mut self, scores: &Scores) -> u32 {
        match scores {
            Scores::Logits(logits) => self.sample(logits),
            Scores::Greedy(token) => *token,
            Scores::Head(_) => {
                let dist = self.distribution_of(scores);
                draw(&dist, self.rng.random::<f32>())
            }
        }
    }

    /// [`Self::distribution`] of one position's scores.
    pub fn distribution_of(&self, scores: &Scores) -> Vec<(u32, f32)> {
        match scores {
            Scores::Logits(logits) => self.distribution(logits),
            Scores::Greedy(token) => vec![(*token, 1.0)],
            Scores::Head(head) => self.shape(head.weights.clone(), Some(head.total)),
        }
    }

    /// The distribution this sampler draws from, as (token, probability) pairs in no
    /// particular order. Speculative verification draws from exactly this distribution too.
    ///
    /// Nothing is sorted unless top-p needs an order, and then only the tokens above a weight
    /// threshold that already holds the nucleus' mass: sorting the whole vocabulary for every
    /// sampled token would cost more than the model's decoding step at this size.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        if self.params.is_greedy() {
            return vec![(argmax(logits), 1.0)];
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .collect();
        self.shape(probs, None)
    }

    /// Top-k, then top-p, then normalization, of unnormalized weights: every token's, or a
    /// [`Head`]'s with the whole vocabulary's `total` (which top-p measures against when no
    /// top-k applies; a head always holds the top k).
    fn shape(&self, mut probs: Vec<(u32, f32)>, total: Option<f32>) -> Vec<(u32, f32)> {
        let by_prob = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = match self.params.top_k {
            0 => probs.len(),
            k => k.min(probs.len()),
        };
        if k < probs.len() {
            probs.select_nth_unstable_by(k - 1, by_prob);
            probs.truncate(k);
        }
        if self.params.top_p < 1.0 {
            let total = match total {
                Some(total) if self.params.top_k == 0 => total,
                _ => probs.iter().map(|p| p.1).sum(),
            };
            let target = self.params.top_p * total;
            // The nucleus is the most likely tokens up to `target`: if the tokens at or above
            // a threshold reach it, the nucleus lies among them, and only they need sorting.
            let mut threshold = 1e-3f32;
            let mut head: Vec<(u32, f32)> = loop {
                let head: Vec<(u32, f32)> =
                    probs.iter().copied().filter(|p| p.1 >= threshold).collect();
                let mass: f32 = head.iter().map(|p| p.1).sum();
                if mass >= target || threshold == 0.0 {
                    break head;
                }
                threshold = if threshold > 1e-30 {
                    threshold * 1e-3
                } else {
                    0.0
                };
            };
            head.sort_unstable_by(by_prob);
            let mut acc = 0.0;
            let mut keep = head.len();
            for (i, p) in head.iter().enumerate() {
                acc += p.1 / total;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            head.truncate(keep);
            probs = head;
        }
        let total: f32 = probs.iter().map(|p| p.1).sum();
        for p in &mut probs {
            p.1 /= total;
        }
        probs
    }
}

/// A token's log-probability under the model's own next-token distribution, and the `k`
/// likeliest tokens there with theirs, most likely first: what OpenAI's `logprobs` reports.
///
/// The distribution is the softmax of the logits at temperature 1, before temperature, top-k
/// and top-p shape the draw, so the figures describe the model and not the request's sampling
/// (a greedy request still reports how sure the model was). It is [`Sampler::distribution`]
/// of an unfiltered temperature-1 sampler: the engine has one way to turn logits into
/// probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    pub fn new(logits: &[f32], token: u32, k: usize) -> Self {
        let unfiltered = Sampler::new(SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        });
        let mut dist = unfiltered.distribution(logits);
        let logprob = dist
            .iter()
            .find(|(t, _)| *t == token)
            .map_or(f32::NEG_INFINITY, |(_, p)| p.ln());
        let by_prob = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = k.min(dist.len());
        if k == 0 {
            dist.clear();
        } else if k < dist.len() {
            dist.select_nth_unstable_by(k - 1, by_prob);
            dist.truncate(k);
        }
        dist.sort_unstable_by(by_prob);
        Self {
            token,
            logprob,
            top: dist.into_iter().map(|(t, p)| (t, p.ln())).collect(),
        }
    }
}

/// Draws from a normalized distribution with a uniform number `u` in [0, 1).
fn draw(dist: &[(u32, f32)], u: f32) -> u32 {
    let mut acc = 0.0;
    for &(t, p) in dist {
        acc += p;
        if u < acc {
            return t;
        }
    }
    dist.last().map_or(0, |d| d.0)
}

/// Index of the largest value (the first one on ties).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition: sort everything, keep the top k, then the smallest prefix
    /// reaching top-p, renormalize.
    fn reference(logits: &[f32], t: f32, top_k: usize, top_p: f32) -> Vec<(u32, f32)> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut p: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (((l - max) / t) as f64).exp()))
            .collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if top_k > 0 {
            p.truncate(top_k);
        }
        let total: f64 = p.iter().map(|x| x.1).sum();
        let mut acc = 0.0;
        let keep = p
            .iter()
            .position(|x| {
                acc += x.1 / total;
                top_p < 1.0 && acc >= top_p as f64
            })
            .map_or(p.len(), |i| i + 1);
        p.truncate(keep);
        let total: f64 = p.iter().map(|x| x.1).sum();
        p.iter().map(|&(i, w)| (i, (w / total) as f32)).collect()
    }

    #[test]
    fn distribution_matches_the_textbook_definition() {
        let mut rng = StdRng::seed_from_u64(3);
        for case in 0..60 {
            let spread = [1.0f32, 5.0, 20.0][case % 3];
            let logits: Vec<f32> = (0..2000).map(|_| rng.random::<f32>() * spread).collect();
            let temperature = [0.3f32, 0.7, 1.0, 1.5][case % 4];
            let top_k = [0usize, 50][case % 2];
            let top_p = [1.0f32, 0.95, 0.9, 0.5][(case / 2) % 4];
            let sampler = Sampler::new(SamplingParams {
                temperature,
                top_k,
                top_p,
                seed: 0,
            });
            let mut ours = sampler.distribution(&logits);
            ours.sort_by_key(|x| x.0);
            let mut want = reference(&logits, temperature, top_k, top_p);
            want.sort_by_key(|x| x.0);
            // Token sets agree except for a token sitting exactly on the top-p boundary.
            let ids = |d: &[(u32, f32)]| d.iter().map(|x| x.0).collect::<Vec<_>>();
            let (a, b) = (ids(&ours), ids(&want));
            assert!(
                a.len().abs_diff(b.len()) <= 1,
                "case {case}: {} vs {} tokens",
                a.len(),
                b.len()
            );
            if a == b {
                for (x, y) in ours.iter().zip(&want) {
                    assert!((x.1 - y.1).abs() < 1e-5, "case {case}: {x:?} vs {y:?}");
                }
            }
            let sum: f32 = ours.iter().map(|x| x.1).sum();
            assert!((sum - 1.0).abs() < 1e-4);
        }
    }

    /// A head read instead of the logits draws from the same distribution: for top-p alone,
    /// top-k alone and both, wherever a head is taken; and none is taken where the draw can
    /// reach more tokens than a head holds.
    #[test]
    fn a_head_gives_the_distribution_of_the_whole_logits() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut taken = 0;
        for case in 0..48 {
            let spread = [10.0f32, 20.0, 40.0][case % 3];
            let logits: Vec<f32> = (0..5000)
                .map(|_| rng.random::<f32>().powi(6) * spread)
                .collect();
            let params = SamplingParams {
                temperature: [0.7f32, 1.0][case % 2],
                top_k: [0usize, 0, 40, 400][(case / 2) % 4],
                top_p: [0.95f32, 0.5, 1.0, 0.9][(case / 8) % 4],
                seed: 0,
            };
            let Readout::Head(head_params) = Readout::of(&params, false) else {
                // A draw that can reach every token reads the logits.
                assert_eq!((params.top_k, params.top_p), (0, 1.0), "case {case}");
                continue;
            };
            let Some(head) = Head::of(&logits, &head_params) else {
                continue;
            };
            taken += 1;
            assert!(head.weights.len() >= params.top_k, "case {case}");
            let sampler = Sampler::new(params);
            let mut whole = sampler.distribution(&logits);
            let mut ours = sampler.distribution_of(&Scores::Head(head));
            whole.sort_by_key(|x| x.0);
            ours.sort_by_key(|x| x.0);
            assert_eq!(ours.len(), whole.len(), "case {case}");
            for (x, y) in ours.iter().zip(&whole) {
                assert_eq!(x.0, y.0, "case {case}");
                assert!((x.1 - y.1).abs() < 1e-5, "case {case}: {x:?} vs {y:?}");
            }
        }
        assert!(taken >= 34, "heads taken in {taken} of 42 cases");
        // Nearly flat logits: the nucleus spans most of the vocabulary, past any head.
        let flat: Vec<f32> = (0..5000).map(|i| (i % 7) as f32 * 0.01).collect();
        let params = |top_k, top_p| HeadParams {
            inv_temperature: 1.0,
            min_tokens: top_k,
            min_mass: top_p,
        };
        assert_eq!(Head::of(&flat, &params(0, 0.9)), None);
        assert_eq!(Head::of(&flat, &params(HEAD_CAP + 1, 0.0)), None);
        assert_eq!(Head::of(&flat, &params(HEAD_CAP, 0.0)), None);
        assert!(Head::of(&[0.0, 9.0, 1.0], &params(2, 0.0)).is_some());
    }

    /// The GPU kernel that takes heads lays out and cuts them as [`Head::of`] does: the same
    /// capacity (the host reads its output by it) and the same cuts.
    #[test]
    fn the_head_kernel_shares_the_hosts_constants() {
        let kernels = include_str!("../kernels/decode.cu");
        let define = |name: &str| {
            kernels
                .lines()
                .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
                .map(str::trim)
        };
        assert_eq!(define("HEAD_CAP"), Some(HEAD_CAP.to_string().as_str()));
        assert_eq!(
            define("HEAD_CUTS"),
            Some(HEAD_CUTS.len().to_string().as_str())
        );
        let cuts = HEAD_CUTS
            .iter()
            .map(|c| format!("{c:e}f"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            kernels.contains(&format!("{{{cuts}}}")),
            "the kernel's cuts are not {{{cuts}}}"
        );
    }

    /// What a step reads follows the sampler: logits whenever log-probabilities are reported
    /// or a draw can reach every token.
    #[test]
    fn the_readout_is_what_the_sampler_needs() {
        let sampled = |top_k, top_p| SamplingParams {
            temperature: 0.5,
            top_k,
            top_p,
            seed: 0,
        };
        assert_eq!(
            Readout::of(&SamplingParams::default(), false),
            Readout::Greedy
        );
        assert_eq!(
            Readout::of(&SamplingParams::default(), true),
            Readout::Logits
        );
        assert_eq!(Readout::of(&sampled(0, 1.0), false), Readout::Logits);
        assert_eq!(Readout::of(&sampled(0, 0.9), true), Readout::Logits);
        let head = |min_tokens, min_mass| {
            Readout::Head(HeadParams {
                inv_temperature: 2.0,
                min_tokens,
                min_mass,
            })
        };
        assert_eq!(Readout::of(&sampled(0, 0.9), false), head(0, 0.9));
        // With top-k, top-p measures the k tokens' mass: the head needs only the k tokens.
        assert_eq!(Readout::of(&sampled(20, 0.9), false), head(20, 0.0));
        assert_eq!(Readout::of(&sampled(20, 1.0), false), head(20, 0.0));
    }

    /// Log-probabilities are the textbook log-softmax at temperature 1, and the alternatives
    /// the k likeliest tokens, most likely first (ties by id).
    #[test]
    fn token_logprobs_are_the_log_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        let want = |id: u32| logits[id as usize] as f64 - lse;
        let lp = TokenLogprobs::new(&logits, 2, 3);
        assert!((lp.logprob as f64 - want(2)).abs() < 1e-6, "{lp:?}");
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 0]);
        for &(id, l) in &lp.top {
            assert!((l as f64 - want(id)).abs() < 1e-6, "{lp:?}");
        }
        assert!(TokenLogprobs::new(&logits, 2, 0).top.is_empty());
        assert_eq!(TokenLogprobs::new(&logits, 2, 99).top.len(), 5);
    }

    #[test]
    fn greedy_is_the_argmax_and_draws_follow_the_cumulative_mass() {
        let s = Sampler::new(SamplingParams::default());
        assert_eq!(s.distribution(&[0.1, 2.0, 2.0, -1.0]), vec![(1, 1.0)]);
        let d = [(4u32, 0.25f32), (7, 0.5), (9, 0.25)];
        assert_eq!(draw(&d, 0.0), 4);
        assert_eq!(draw(&d, 0.3), 7);
        assert_eq!(draw(&d, 0.99), 9);
    }
}
