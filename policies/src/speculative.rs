//! Lossless speculative decoding with a model-free drafter.
//!
//! A drafter guesses the next few tokens; the policy checks them all in one forward pass, which
//! computes every drafted position exactly as a lone decoding step would (see the `attention`
//! module and the GPU kernels' batch invariance). Each position's token is then drawn exactly
//! as plain decoding draws it, with the row's next uniform number, and a draft is accepted
//! when it is that token; the first token that differs from its draft ends the chunk and is
//! kept in its place. Every drafter proposes one token with certainty per position, so this
//! accepts a draft `x` with probability `p(x)` and, on a rejection, keeps a token drawn from
//! `p` with `x` removed, renormalized: the rejection sampling of Leviathan et al. (2023) and
//! Chen et al. (2023) for such drafters, with the draws coupled to plain decoding's. One
//! uniform is used per emitted token either way, so a sampled row writes plain decoding's
//! tokens, seed for seed, whatever was drafted; the drafts decide only how many of them one
//! forward pass yields. Under greedy decoding a draft is accepted exactly when it is the
//! argmax.
//!
//! The first drafter looks up the context's last tokens in the prompt and in what every row of
//! the same prompt has written so far ([`crate::suffix`]). It costs next to nothing and
//! proposes nothing when the text does not repeat, which makes it a fit for TPO: an update
//! round rewrites the chosen response, which sits in its prompt, and the candidates of one
//! round repeat each other. Where it has nothing, a draft model paired with the policy, if
//! any, guesses instead ([`crate::draft`]).

use crate::sampling::{Sampler, Scores};

/// A drafter's guess at a row's next tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub source: Source,
}

/// Where a proposal came from: each drafter's acceptance is counted apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// The suffix drafter, from the prompt or the row's own text.
    #[default]
    Text,
    /// The suffix drafter, from other rows' text alone.
    Siblings,
    /// The draft model ([`crate::draft`]).
    Model,
}

/// How much to speculate. `max_draft == 0` turns speculation off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// The most draft tokens verified per step.
    pub max_draft: usize,
    /// Whether each row verifies only the drafts that pay at its acceptance rate (see
    /// [`crate::pacing`]); off, every proposed draft is verified.
    pub paced: bool,
}

impl Speculation {
    pub const OFF: Self = Self {
        max_draft: 0,
        paced: true,
    };

    /// Up to `max_draft` tokens per step.
    pub fn drafts(max_draft: usize) -> Self {
        Self {
            max_draft,
            ..Self::OFF
        }
    }

    /// Every proposed draft verified, whatever it costs: for tests of verification itself.
    pub fn unpaced(self) -> Self {
        Self {
            paced: false,
            ..self
        }
    }

    pub fn is_on(&self) -> bool {
        self.max_draft > 0
    }
}

/// The chi-square distribution's critical value at the 0.1% level for `df` degrees of freedom
/// (Wilson-Hilferty): the bound the statistical checks of speculative sampling (its tests,
/// `hone check`) hold their statistics to.
pub fn chi_square_bound(df: usize) -> f64 {
    let k = df.max(1) as f64;
    let z = 3.0902; // the normal distribution's 99.9th percentile
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// What the policy kept of one row's drafts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// How many draft tokens, from the first, were accepted.
    pub accepted: usize,
    /// The token after them: the replacement of the first rejected draft, or a token drawn
    /// after the last draft when all were accepted.
    pub next: u32,
}

/// Verification of `drafts` against the policy's scores. `scores[i]` is the policy's
/// next-token scores after the `i`-th token of the verified chunk (the token before the first
/// draft, then each draft), so `scores.len() == drafts.len() + 1`. Each position's token is
/// drawn as plain decoding draws it ([`Sampler::choose`]), up to the first that is not its
/// draft.
pub fn verify(sampler: &mut Sampler, scores: &[Scores], drafts: &[u32]) -> Verdict {
    debug_assert_eq!(scores.len(), drafts.len() + 1, "one score per position");
    for (i, &draft) in drafts.iter().enumerate() {
        let next = sampler.choose(&scores[i]);
        if next != draft {
            return Verdict { accepted: i, next };
        }
    }
    Verdict {
        accepted: drafts.len(),
        next: sampler.choose(&scores[drafts.len()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    fn sampler(seed: u64, temperature: f32) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            seed,
        })
    }

    /// Greedy verification accepts the drafts that are each position's argmax, the same
    /// from every logit as from the argmax alone (what a GPU step reads back).
    #[test]
    fn greedy_accepts_exactly_the_argmax() {
        let logits = [
            vec![0.0, 3.0, 1.0],
            vec![2.0, 0.0, 1.0],
            vec![0.0, 0.0, 5.0],
        ];
        let full: Vec<Scores> = logits.iter().cloned().map(Scores::Logits).collect();
        let greedy = [Scores::Greedy(1), Scores::Greedy(0), Scores::Greedy(2)];
        for scores in [&full[..], &greedy[..]] {
            let mut s = sampler(0, 0.0);
            let cases = [([1, 0], 2, 2), ([1, 2], 1, 0), ([2, 0], 0, 1)];
            for (drafts, accepted, next) in cases {
                assert_eq!(
                    verify(&mut s, scores, &drafts),
                    Verdict { accepted, next },
                    "{scores:?} {drafts:?}"
                );
            }
        }
    }

    /// Chi-square statistic of observed counts against expected probabilities.
    fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Verification against heads (what a GPU step reads for top-p) keeps the nucleus'
    /// distribution: a draft outside the nucleus is never accepted, one inside it is accepted
    /// as often as the nucleus draws it.
    #[test]
    fn sampled_output_from_heads_follows_the_nucleus() {
        let logits = vec![2.0f32, 1.5, 0.0, -1.0, 1.0, -6.0];
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.9,
            seed: 0,
        };
        let crate::sampling::Readout::Head(head_params) =
            crate::sampling::Readout::of(&params, false)
        else {
            panic!("top-p reads heads");
        };
        let head = crate::sampling::Head::of(&logits, &head_params).expect("a narrow head");
        let scores = [Scores::Head(head.clone()), Scores::Head(head)];
        let nucleus = Sampler::new(params.clone()).distribution(&logits);
        let mut probs = vec![0f64; logits.len()];
        for &(t, p) in &nucleus {
            probs[t as usize] = p as f64;
        }
        assert_eq!(nucleus.len(), 3, "{nucleus:?}");
        for draft in [1u32, 5] {
            let mut counts = vec![0u64; logits.len()];
            for seed in 0..40_000 {
                let mut s = Sampler::new(SamplingParams {
                    seed,
                    ..params.clone()
                });
                let v = verify(&mut s, &scores, &[draft]);
                counts[if v.accepted == 1 { draft } else { v.next } as usize] += 1;
            }
            let outside = counts.iter().zip(&probs).filter(|(_, &p)| p == 0.0);
            assert!(
                outside.map(|(&c, _)| c).sum::<u64>() == 0,
                "draft {draft}: {counts:?}"
            );
            let df = nucleus.len() - 1;
            let x = chi_square(&counts, &probs);
            assert!(
                x < chi_square_bound(df),
                "draft {draft}: chi2 {x} over {df} df"
            );
        }
    }

    #[test]
    fn sampled_output_follows_the_target_distribution() {
        // Two positions over a 4-token vocabulary; the drafts are one likely and one unlikely
        // guess. The pair of tokens produced must follow p(a) p(b | a) whatever was drafted:
        // the first output token is the first draft if accepted, else the replacement; the
        // second comes from the second position only after an accepted first draft.
        let first = vec![1.0f32, 2.0, 0.5, -1.0];
        let second = vec![0.3f32, -0.5, 1.5, 0.0];
        let softmax = |l: &[f32]| -> Vec<f64> {
            let e: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        let (p1, p2) = (softmax(&first), softmax(&second));
        for drafts in [[1u32, 2], [3, 0]] {
            let logits = [&first, &second, &second].map(|l| Scores::Logits(l.clone()));
            let mut counts = vec![0u64; 4];
            let mut second_counts = vec![0u64; 4];
            let draws = 40_000;
            for seed in 0..draws {
                let mut s = sampler(seed, 1.0);
                let v = verify(&mut s, &logits, &drafts);
                let token = if v.accepted == 0 { v.next } else { drafts[0] };
                counts[token as usize] += 1;
                if v.accepted >= 1 {
                    let after = if v.accepted == 1 { v.next } else { drafts[1] };
                    second_counts[after as usize] += 1;
                }
            }
            // 3 degrees of freedom: 16.27 is the 0.1% critical value. A drafter that biased
            // the output (accepting with probability 1, say) fails by orders of magnitude.
            let x1 = chi_square(&counts, &p1);
            assert!(x1 < 16.27, "first token, drafts {drafts:?}: chi2 {x1}");
            if second_counts.iter().sum::<u64>() > 1000 {
                let x2 = chi_square(&second_counts, &p2);
                assert!(x2 < 16.27, "second token, drafts {drafts:?}: chi2 {x2}");
            }
        }
    }
}
