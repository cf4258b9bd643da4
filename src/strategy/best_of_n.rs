//! Best-of-N: sample N responses in one batched call over one prefill, score them in one reward
//! call, answer with the best. Weighted best-of-N instead sums the scores of the responses that
//! reach the same final answer and answers with the best response of the strongest group, which
//! helps on tasks with one checkable answer (a majority of decent responses beats one lucky one).

use super::pick::chosen_rejected;
use super::response::{query_text, usable};
use super::session::{Draft, Session};
use super::{RoundKind, Stopped, Strategy, StrategyError, Trace};
use reward_models::verifier::answer;
use std::ops::ControlFlow;

pub(super) fn run(mut s: Session<'_>) -> Result<Trace, StrategyError> {
    let stopped = sample_round(&mut s)?;
    s.finish(Strategy::BestOfN, stopped)
}

pub(super) fn run_weighted(mut s: Session<'_>) -> Result<Trace, StrategyError> {
    let stopped = sample_round(&mut s)?;
    let answers: Vec<Option<String>> = s.cache.iter().map(|c| answer::extract(&c.text)).collect();
    let scores: Vec<f32> = s.cache.iter().map(|c| c.score).collect();
    let Some(pick) = weighted_pick(&answers, &scores) else {
        return Err(s.no_answer(stopped));
    };
    let chosen = s.cache[pick].clone();
    if let Some(round) = s.rounds.last_mut() {
        round.chosen = Some(chosen.id);
    }
    Ok(s.into_trace(
        Strategy::WeightedBestOfN,
        stopped,
        chosen.text,
        Some(chosen.score),
    ))
}

/// The first round of every search loop: N responses to the query, scored. An error when not
/// even one response could be afforded, as there is then nothing to answer with.
pub(super) fn sample_round(s: &mut Session<'_>) -> Result<Stopped, StrategyError> {
    if let Some(stopped) = s.check()? {
        return Err(s.no_answer(stopped));
    }
    match fresh_round(s, RoundKind::Sample)? {
        Some(stopped) => Ok(stopped),
        None => Err(s.no_answer(Stopped::Budget)),
    }
}

/// A later round of N more fresh responses (`auto`'s resample move). Continues when the whole
/// round ran.
pub(super) fn resample(s: &mut Session<'_>) -> Result<ControlFlow<Stopped>, StrategyError> {
    Ok(match fresh_round(s, RoundKind::Resample)? {
        Some(Stopped::Done) => ControlFlow::Continue(()),
        Some(stopped) => ControlFlow::Break(stopped),
        None => ControlFlow::Break(Stopped::Budget),
    })
}

/// N responses to the query in one call, scored in one call; empty responses and restatements
/// of the query are dropped before scoring. `Done` when the whole round ran, `Budget` when it
/// was cut short, `None` when not even one token fitted.
fn fresh_round(s: &mut Session<'_>, kind: RoundKind) -> Result<Option<Stopped>, StrategyError> {
    s.start_round(kind);
    let prompt = s.prompt.clone();
    let Some(sampled) = s.sample(&prompt, s.request.n, true, &[])? else {
        return Ok(None);
    };
    let query = query_text(&s.request.messages);
    let drafts = sampled
        .generations
        .into_iter()
        .map(|g| {
            let text = g.text.trim().to_string();
            let dropped = usable(&text, &query).err();
            Draft { text, dropped }
        })
        .collect();
    let whole = s.score(drafts)? && !sampled.limited;
    s.end_round(whole);
    Ok(Some(if whole {
        Stopped::Done
    } else {
        Stopped::Budget
    }))
}

/// Index of the answer of weighted best-of-N.
///
/// Each group of responses with the same final answer weighs the sum of its members' scores
/// above the lowest score of the batch: reward scales may be negative (classifiers) or offset
/// (a judge's 1-9), and a plain sum would then favor small groups, or any group. Responses with
/// no extractable answer stand alone; answers are the same as the verifier's `final_answer`
/// judges them ([`answer::same`]: "42.0" is "42"). Ties go to the larger group, then to the
/// better member. `None` when there are no responses, or not one score per answer.
pub fn weighted_pick(answers: &[Option<String>], scores: &[f32]) -> Option<usize> {
    if answers.len() != scores.len() {
        return None;
    }
    let floor = scores
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .fold(f32::INFINITY, f32::min);
    // (members, weight) per group, groups in order of first appearance.
    let mut groups: Vec<(Vec<usize>, f32)> = Vec::new();
    for (i, (answer, &score)) in answers.iter().zip(scores).enumerate() {
        let weight = if score.is_finite() {
            score - floor
        } else {
            0.0
        };
        let group = answer.as_ref().and_then(|a| {
            groups.iter().position(|(m, _)| {
                answers[m[0]]
                    .as_ref()
                    .is_some_and(|first| answer::same(first, a))
            })
        });
        match group {
            Some(g) => {
                groups[g].0.push(i);
                groups[g].1 += weight;
            }
            None => groups.push((vec![i], weight)),
        }
    }
    let best_member = |members: &[usize]| {
        let member_scores: Vec<f32> = members.iter().map(|&m| scores[m]).collect();
        chosen_rejected(&member_scores).map(|(c, _)| members[c])
    };
    let mut winner: Option<&(Vec<usize>, f32)> = None;
    for group in &groups {
        let better = match winner {
            None => true,
            Some(w) => {
                let by_weight = group.1.total_cmp(&w.1);
                let by_size = group.0.len().cmp(&w.0.len());
                let (gb, wb) = (best_member(&group.0), best_member(&w.0));
                let by_member = match (gb, wb) {
                    (Some(g), Some(w)) => scores[g].total_cmp(&scores[w]),
                    _ => std::cmp::Ordering::Equal,
                };
                by_weight.then(by_size).then(by_member).is_gt()
            }
        };
        if better {
            winner = Some(group);
        }
    }
    winner.and_then(|(members, _)| best_member(members))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(texts: &[&str]) -> Vec<Option<String>> {
        texts.iter().map(|t| answer::extract(t)).collect()
    }

    #[test]
    fn equal_numbers_are_one_answer() {
        let a = answers(&[
            "Answer: 42",
            "so the answer is 42.0",
            "Answer: 41",
            "Answer: 40",
        ]);
        // Above the floor of 0.5: "42" and "42.0" together weigh 0.2 + 0.2, as much as "41"
        // alone (0.4), and the larger group wins the tie. Apart, "41" would win.
        assert_eq!(weighted_pick(&a, &[0.7, 0.7, 0.9, 0.5]), Some(0));
        assert_eq!(weighted_pick(&a, &[0.7, 0.7]), None);
    }

    #[test]
    fn the_heaviest_group_wins_over_the_single_best() {
        let a = answers(&[
            "So the answer is 4.",
            "Answer: 4",
            "2 + 2 = 4\nAnswer: 4",
            "Answer: 5",
        ]);
        // Weights are scores above the batch's lowest (0.5): group "4" = 0.1 + 0 + 0 = 0.1,
        // group "5" = 0.4, so the lone top response wins.
        assert_eq!(weighted_pick(&a, &[0.6, 0.5, 0.5, 0.9]), Some(3));
        // Group "4" = 0.4 + 0.3 + 0.3 = 1.0 against 0: the group's best member wins.
        assert_eq!(weighted_pick(&a, &[0.9, 0.8, 0.8, 0.5]), Some(0));
        // With a weak fifth response setting the floor at 0.5: group "4" = 0.3 × 3 = 0.9 beats
        // "5" = 0.5, though 5 scored highest.
        let mut a = a;
        a.push(answer::extract("Answer: 6"));
        assert_eq!(weighted_pick(&a, &[0.8, 0.8, 0.8, 1.0, 0.5]), Some(0));
    }

    #[test]
    fn majority_wins_when_scores_are_equal() {
        let a = answers(&["Answer: 7", "Answer: 8", "Answer: 8"]);
        assert_eq!(weighted_pick(&a, &[1.0, 1.0, 1.0]), Some(1));
    }

    #[test]
    fn negative_scales_do_not_favor_small_groups() {
        let a = answers(&["Answer: 3", "Answer: 3", "Answer: 9"]);
        // A classifier's scores: group "3" = (−1+3) + (−1.5+3) = 3.5 > group "9" = 0.
        assert_eq!(weighted_pick(&a, &[-1.0, -1.5, -3.0]), Some(0));
    }

    #[test]
    fn responses_without_an_answer_stand_alone() {
        let a = vec![None, None, Some("x".to_string())];
        assert_eq!(weighted_pick(&a, &[0.2, 0.3, 0.1]), Some(1));
        assert_eq!(weighted_pick(&[], &[]), None);
    }
}
