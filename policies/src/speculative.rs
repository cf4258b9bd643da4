//! Lossless speculative decoding with a model-free drafter.
//!
//! A drafter guesses the next few tokens; the policy checks them all in one forward pass, which
//! on the CPU computes every drafted position exactly as a lone decoding step would (see the
//! `attention` module), and rejection sampling (Leviathan et al. 2023; Chen et al.
//! 2023) keeps exactly the tokens the policy itself would have produced in distribution:
//! draft token `x` is accepted with probability `p(x)` (the drafter proposes one token with
//! certainty, so `min(1, p/q)` is `p(x)`); at the first rejection the replacement is drawn from
//! `p` with `x` removed, renormalized; when every draft is accepted, one more token is drawn
//! from the policy's distribution after the last one. Under greedy decoding this accepts a
//! draft exactly when it is the argmax, so the output is the plain greedy output.
//!
//! The drafter is prompt lookup: the longest recent n-gram of the context that occurred before
//! proposes what followed it. It costs nothing and proposes nothing when the text does not
//! repeat, which makes it a fit for TPO: an update round rewrites the chosen response, which
//! sits in its prompt. It also looks in the text its sibling rows (the other samples of the
//! same prompt in the call) have written so far: candidates of one round repeat each other.

use crate::sampling::{draw, Sampler};

/// How much to speculate. `max_draft == 0` turns speculation off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// The most draft tokens verified per step.
    pub max_draft: usize,
    /// The shortest n-gram that may match (shorter matches are mostly chance).
    pub min_match: usize,
    /// The longest n-gram tried first.
    pub max_match: usize,
    /// Whether each row verifies only the drafts that pay at its acceptance rate (see
    /// [`crate::pacing`]); off, every proposed draft is verified.
    pub paced: bool,
}

impl Speculation {
    pub const OFF: Self = Self {
        max_draft: 0,
        min_match: 2,
        max_match: 4,
        paced: true,
    };

    /// Up to `max_draft` tokens per step from matches of 2 to 4 tokens.
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

    /// Up to `limit` tokens that followed the latest earlier occurrence of the longest suffix
    /// of `context` (between `min_match` and `max_match` tokens long) in `context`, or else, at
    /// the same length, in one of `siblings` (the text other rows of the same prompt have
    /// written); empty when none occurs.
    pub fn propose(&self, context: &[u32], siblings: &[&[u32]], limit: usize) -> Proposal {
        let limit = limit.min(self.max_draft);
        if limit == 0 {
            return Proposal::default();
        }
        let longest = self.max_match.min(context.len().saturating_sub(1));
        for n in (self.min_match.max(1)..=longest).rev() {
            let suffix = &context[context.len() - n..];
            // In the context (the suffix itself has nothing after it, so it never matches).
            if let Some(found) = follows(context, suffix, limit) {
                return Proposal {
                    tokens: found.to_vec(),
                    from_siblings: false,
                };
            }
            if let Some(found) = siblings.iter().find_map(|t| follows(t, suffix, limit)) {
                return Proposal {
                    tokens: found.to_vec(),
                    from_siblings: true,
                };
            }
        }
        Proposal::default()
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

/// Up to `limit` tokens of `text` after the latest occurrence of `pattern` that has at least
/// one token after it.
fn follows<'a>(text: &'a [u32], pattern: &[u32], limit: usize) -> Option<&'a [u32]> {
    let n = pattern.len();
    let start = (0..text.len().checked_sub(n)?)
        .rev()
        .find(|&s| &text[s..s + n] == pattern)?;
    let from = start + n;
    Some(&text[from..(from + limit).min(text.len())])
}

/// A drafter's guess at a row's next tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    /// Whether they were found in a sibling row's text rather than the row's own context
    /// (counted apart, to show what the siblings are worth).
    pub from_siblings: bool,
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

/// Rejection sampling of `drafts` against the policy's logits. `logits[i]` is the policy's
/// next-token logits after the `i`-th token of the verified chunk (the token before the first
/// draft, then each draft), so `logits.len() == drafts.len() + 1`.
pub fn verify(sampler: &mut Sampler, logits: &[Vec<f32>], drafts: &[u32]) -> Verdict {
    for (i, &draft) in drafts.iter().enumerate() {
        let dist = sampler.distribution(&logits[i]);
        let p = dist
            .iter()
            .find(|(t, _)| *t == draft)
            .map_or(0.0, |(_, p)| *p);
        if sampler.uniform() < p {
            continue;
        }
        let residual: Vec<(u32, f32)> = dist.into_iter().filter(|(t, _)| *t != draft).collect();
        let total: f32 = residual.iter().map(|(_, p)| p).sum();
        let next = if total > 0.0 {
            let residual: Vec<(u32, f32)> =
                residual.into_iter().map(|(t, p)| (t, p / total)).collect();
            draw(&residual, sampler.uniform())
        } else {
            // p(draft) was 1 and the uniform draw hit 1.0 exactly: nothing else can come.
            draft
        };
        return Verdict { accepted: i, next };
    }
    Verdict {
        accepted: drafts.len(),
        next: sampler.sample(&logits[drafts.len()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    #[test]
    fn lookup_reads_sibling_rows_where_the_context_has_no_match() {
        let s = Speculation::drafts(3);
        let context = [10, 11, 1, 2, 3];
        // Nothing in the context; a sibling wrote "1 2 3" and went on with "4 5 6 7".
        assert_eq!(
            s.propose(&context, &[&[9, 9], &[8, 1, 2, 3, 4, 5, 6, 7]], 8),
            Proposal {
                tokens: vec![4, 5, 6],
                from_siblings: true
            }
        );
        // The longest match wins wherever it is: "2 3" in the context loses to "1 2 3" in a
        // sibling, and at equal length the context comes first.
        let context = [2, 3, 7, 1, 2, 3];
        assert_eq!(s.propose(&context, &[&[1, 2, 3, 5]], 8).tokens, vec![5]);
        let own = s.propose(&context, &[&[2, 3, 5]], 8);
        assert_eq!(own.tokens, vec![7, 1, 2]);
        assert!(!own.from_siblings);
        // A sibling whose text ends with the suffix has nothing to propose.
        assert!(s.propose(&[4, 1, 2], &[&[1, 2]], 8).tokens.is_empty());
    }

    #[test]
    fn lookup_proposes_what_followed_the_longest_repeated_suffix() {
        let s = Speculation::drafts(3);
        // "1 2 3 4 5 ... 1 2 3" -> "4 5" (then 9 ends the context).
        assert_eq!(
            s.propose(&[1, 2, 3, 4, 5, 9, 1, 2, 3], &[], 8).tokens,
            vec![4, 5, 9]
        );
        // The latest earlier occurrence wins.
        assert_eq!(s.propose(&[7, 8, 1, 7, 8, 2, 7, 8], &[], 1).tokens, vec![2]);
        // A single repeated token is not a match (min_match 2); nothing repeats here.
        assert!(s.propose(&[5, 1, 2, 5], &[], 4).tokens.is_empty());
        assert!(s.propose(&[1, 2, 3, 4], &[], 4).tokens.is_empty());
        assert!(Speculation::OFF
            .propose(&[1, 2, 1, 2], &[], 4)
            .tokens
            .is_empty());
        assert!(s.propose(&[], &[], 4).tokens.is_empty());
    }

    fn sampler(seed: u64, temperature: f32) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            seed,
        })
    }

    #[test]
    fn greedy_accepts_exactly_the_argmax() {
        let logits = vec![
            vec![0.0, 3.0, 1.0],
            vec![2.0, 0.0, 1.0],
            vec![0.0, 0.0, 5.0],
        ];
        let mut s = sampler(0, 0.0);
        assert_eq!(
            verify(&mut s, &logits, &[1, 0]),
            Verdict {
                accepted: 2,
                next: 2
            }
        );
        assert_eq!(
            verify(&mut s, &logits, &[1, 2]),
            Verdict {
                accepted: 1,
                next: 0
            }
        );
        assert_eq!(
            verify(&mut s, &logits, &[2, 0]),
            Verdict {
                accepted: 0,
                next: 1
            }
        );
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
            let logits = vec![first.clone(), second.clone(), second.clone()];
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
