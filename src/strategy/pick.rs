//! Which candidates a round's scores pick: the chosen (the best) and the rejected (the worst
//! that says something else), as TPO's loss compares them and best-of-N answers with the first.

/// Chosen and rejected: the best candidate, and the worst of those whose text differs from the
/// chosen's (comparing a response with a copy of itself gives the loss nothing to say).
pub fn pick_pair(cands: &[(f32, &str)]) -> Option<(usize, Option<usize>)> {
    let scores: Vec<f32> = cands.iter().map(|c| c.0).collect();
    let (chosen, _) = chosen_rejected(&scores)?;
    let others: Vec<usize> = (0..cands.len())
        .filter(|&i| cands[i].1.trim() != cands[chosen].1.trim())
        .collect();
    let other_scores: Vec<f32> = others.iter().map(|&i| scores[i]).collect();
    let rejected =
        chosen_rejected(&other_scores).map(|(best, worst)| others[worst.unwrap_or(best)]);
    Some((chosen, rejected))
}

/// Indices of the best (the earliest of equals) and the worst (the latest of equals) scores;
/// the worst is `None` when it would be the best itself. NaN scores rank below everything.
pub fn chosen_rejected(scores: &[f32]) -> Option<(usize, Option<usize>)> {
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    let mut best: Option<usize> = None;
    let mut worst: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| key(s) > key(scores[b])) {
            best = Some(i);
        }
        if worst.is_none_or(|w| key(s) <= key(scores[w])) {
            worst = Some(i);
        }
    }
    let best = best?;
    Some((best, worst.filter(|&w| w != best)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_is_the_best_and_rejected_the_worst() {
        assert_eq!(chosen_rejected(&[]), None);
        assert_eq!(chosen_rejected(&[0.5]), Some((0, None)));
        assert_eq!(chosen_rejected(&[0.2, 0.9, 0.1, 0.5]), Some((1, Some(2))));
    }

    #[test]
    fn ties_keep_the_oldest_chosen_and_still_give_a_rejected() {
        assert_eq!(chosen_rejected(&[1.0, 1.0, 1.0]), Some((0, Some(2))));
        assert_eq!(chosen_rejected(&[0.3, 0.7, 0.7, 0.3]), Some((1, Some(3))));
    }

    #[test]
    fn rejected_differs_from_chosen_in_text() {
        let c = [
            (0.5, "Paris."),
            (0.2, "Paris. "),
            (0.3, "Lyon."),
            (0.4, "Nice."),
        ];
        assert_eq!(pick_pair(&c), Some((0, Some(2))));
        assert_eq!(pick_pair(&[(0.5, "a"), (0.1, "a")]), Some((0, None)));
        assert_eq!(pick_pair(&[(0.5, "a"), (0.5, "b")]), Some((0, Some(1))));
        assert_eq!(pick_pair(&[]), None);
    }

    #[test]
    fn nan_scores_rank_last() {
        assert_eq!(chosen_rejected(&[f32::NAN, 0.1, 0.4]), Some((2, Some(0))));
        assert_eq!(chosen_rejected(&[f32::NAN]), Some((0, None)));
    }
}
