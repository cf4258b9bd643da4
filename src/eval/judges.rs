//! Judge accuracy on labelled preference pairs: for each pair, does the judge prefer the
//! better response? Measured two ways, as the [`Judge`] can judge:
//!
//! - **absolute**: each response rated alone (expected 1-9 rating); right when the better one
//!   is rated strictly higher. This is how the `judge` reward scores candidates.
//! - **pairwise**: both responses shown together, in both orders, and the probabilities that
//!   the better one wins averaged; right when that average is above one half.

use anyhow::{Context, Result};
use policies::{Message, Role};
use reward_models::judge::Judge;
use reward_models::{Candidate, RewardModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// One labelled pair (a line of `tests/fixtures/judge_pairs.jsonl`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    /// What the pair tests: correct, constraint, on_topic, fluent or concise.
    pub category: String,
    pub question: String,
    pub better: String,
    pub worse: String,
}

/// Reads a JSONL file of pairs.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// How often one way of judging got a pair right, overall and per category.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub right: usize,
    pub total: usize,
    pub by_category: BTreeMap<String, (usize, usize)>,
}

impl Tally {
    fn add(&mut self, category: &str, right: bool) {
        self.total += 1;
        self.right += usize::from(right);
        let entry = self.by_category.entry(category.to_string()).or_default();
        entry.0 += usize::from(right);
        entry.1 += 1;
    }

    /// The fraction right, 0 for no pairs.
    pub fn accuracy(&self) -> f64 {
        self.right as f64 / self.total.max(1) as f64
    }
}

/// What a judge said about one pair, for studying its mistakes (`hone eval judges --scores`).
#[derive(Debug, Clone, Serialize)]
pub struct PairScores {
    pub category: String,
    /// Expected 1-9 ratings of each response alone.
    pub better_rating: f64,
    pub worse_rating: f64,
    /// The probability that the better response wins side by side, both orders averaged.
    pub better_wins: f64,
    /// Words in each response.
    pub better_words: usize,
    pub worse_words: usize,
}

/// One judge's results.
#[derive(Debug, Clone)]
pub struct JudgeReport {
    pub absolute: Tally,
    pub pairwise: Tally,
    /// Pair by pair, in the order judged.
    pub pairs: Vec<PairScores>,
    /// Wall time per pair of each way of judging.
    pub absolute_secs_per_pair: f64,
    pub pairwise_secs_per_pair: f64,
}

/// Runs `judge` over `pairs` both ways; `progress` hears each finished pair.
pub fn evaluate(
    judge: &Judge,
    pairs: &[Pair],
    mut progress: impl FnMut(usize),
) -> Result<JudgeReport> {
    let mut absolute = Tally::default();
    let mut pairwise = Tally::default();
    let mut scored = Vec::with_capacity(pairs.len());
    let (mut t_abs, mut t_pair) = (0.0, 0.0);
    for (i, pair) in pairs.iter().enumerate() {
        let messages = [Message::new(Role::User, pair.question.clone())];
        let start = Instant::now();
        let scores = judge.score(&[
            Candidate {
                messages: &messages,
                response: &pair.better,
            },
            Candidate {
                messages: &messages,
                response: &pair.worse,
            },
        ])?;
        t_abs += start.elapsed().as_secs_f64();
        let [better, worse] = scores.as_slice() else {
            anyhow::bail!("the judge returned {} scores for 2 responses", scores.len());
        };
        absolute.add(&pair.category, better.value > worse.value);
        let start = Instant::now();
        let p = judge.prefer_first(&messages, &pair.better, &pair.worse)?;
        t_pair += start.elapsed().as_secs_f64();
        pairwise.add(&pair.category, p > 0.5);
        scored.push(PairScores {
            category: pair.category.clone(),
            better_rating: f64::from(better.value),
            worse_rating: f64::from(worse.value),
            better_wins: f64::from(p),
            better_words: pair.better.split_whitespace().count(),
            worse_words: pair.worse.split_whitespace().count(),
        });
        progress(i + 1);
    }
    let n = pairs.len().max(1) as f64;
    Ok(JudgeReport {
        absolute,
        pairwise,
        pairs: scored,
        absolute_secs_per_pair: t_abs / n,
        pairwise_secs_per_pair: t_pair / n,
    })
}

/// A Markdown table of judges' results: one row per judge and way of judging.
pub fn markdown(reports: &[(String, JudgeReport)]) -> String {
    let categories: Vec<String> = reports
        .iter()
        .flat_map(|(_, r)| r.pairwise.by_category.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = format!(
        "| judge | mode | accuracy | {} | s/pair |\n|---|---|---|{}---|\n",
        categories.join(" | "),
        "---|".repeat(categories.len())
    );
    for (name, r) in reports {
        for (mode, tally, secs) in [
            ("absolute", &r.absolute, r.absolute_secs_per_pair),
            ("pairwise", &r.pairwise, r.pairwise_secs_per_pair),
        ] {
            let cells: Vec<String> = categories
                .iter()
                .map(|c| match tally.by_category.get(c) {
                    Some((right, total)) => format!("{right}/{total}"),
                    None => "-".into(),
                })
                .collect();
            out.push_str(&format!(
                "| {name} | {mode} | {:.1}% ({}/{}) | {} | {secs:.2} |\n",
                100.0 * tally.accuracy(),
                tally.right,
                tally.total,
                cells.join(" | ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped set is what docs/EVAL.md describes: 75 distinct pairs, 15 per category.
    #[test]
    fn the_labelled_pairs_are_balanced_and_distinct() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/judge_pairs.jsonl");
        let pairs = read_pairs(&path).unwrap();
        assert_eq!(pairs.len(), 75);
        let mut per_category = BTreeMap::new();
        for p in &pairs {
            *per_category.entry(p.category.as_str()).or_insert(0) += 1;
            assert_ne!(p.better, p.worse, "{}", p.question);
        }
        let expected: BTreeMap<&str, usize> =
            ["concise", "constraint", "correct", "fluent", "on_topic"]
                .into_iter()
                .map(|c| (c, 15))
                .collect();
        assert_eq!(per_category, expected);
        let questions: std::collections::BTreeSet<&str> =
            pairs.iter().map(|p| p.question.as_str()).collect();
        assert_eq!(questions.len(), pairs.len(), "questions repeat");
    }

    #[test]
    fn tallies_count_per_category_and_render_as_markdown() {
        let mut t = Tally::default();
        t.add("correct", true);
        t.add("correct", false);
        t.add("fluent", true);
        assert_eq!((t.right, t.total), (2, 3));
        assert_eq!(t.by_category["correct"], (1, 2));
        let report = JudgeReport {
            absolute: t.clone(),
            pairwise: t,
            pairs: Vec::new(),
            absolute_secs_per_pair: 1.0,
            pairwise_secs_per_pair: 2.0,
        };
        let table = markdown(&[("m".into(), report)]);
        assert!(
            table.contains("| m | absolute | 66.7% (2/3) | 1/2 | 1/1 | 1.00 |"),
            "{table}"
        );
    }
}
