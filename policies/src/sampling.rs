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
    /// Every logit: for sampling, and for reporting log-probabilities.
    Logits(Vec<f32>),
    /// The greedy token alone ([`argmax`] of the logits), taken where the logits are: on a
    /// GPU one integer is read back instead of the vocabulary's floats.
    Greedy(u32),
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
        }
    }

    /// [`Self::distribution`] of one position's scores.
    pub fn distribution_of(&self, scores: &Scores) -> Vec<(u32, f32)> {
        match scores {
            Scores::Logits(logits) => self.distribution(logits),
            Scores::Greedy(token) => vec![(*token, 1.0)],
        }
    }

    /// A uniform draw in [0, 1) from this sequence's generator (speculative acceptance).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    /// The distribution this sampler draws from, as (token, probability) pairs in no
    /// particular order. Speculative decoding accepts and resamples against exactly this
    /// distribution.
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
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .collect();
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
            let total: f32 = probs.iter().map(|p| p.1).sum();
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
pub fn draw(dist: &[(u32, f32)], u: f32) -> u32 {
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
