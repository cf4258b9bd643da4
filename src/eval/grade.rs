//! Grading one answer: does it meet its prompt's constraints, does its final answer match the
//! reference, and is it an answer at all rather than the task or the critique said back.
//!
//! The checks are the ones the service itself uses, so the evaluation measures what the loops
//! were asked to optimize: the verifier for constraints, the verifier's `final_answer`
//! extractor for references, and the loops' own test for a restated query. A restated task
//! is counted separately because under a weak reward it can score well while answering
//! nothing; the loops drop such candidates, so the count should be 0.

use super::prompts::EvalPrompt;
use crate::strategy::{query_text, restates, Echoes, Move, Prompts, RoundKind};
use serde::{Deserialize, Serialize};

/// What the service answered, read from the `/optimize` body (the fields the grading needs).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Answered {
    pub answer: String,
    /// The reward of the answer; `None` when the budget did not cover scoring it.
    pub score: Option<f32>,
    pub stopped: String,
    pub usage: UsageView,
    #[serde(default)]
    pub rounds: Vec<RoundView>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct UsageView {
    pub compute: u64,
    /// Time inside the loop.
    pub wall_ms: u64,
}

/// A round of the trace: its candidates and, in TPO rounds, the critique written from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RoundView {
    #[serde(default)]
    pub kind: RoundKind,
    pub candidates: Vec<CandidateView>,
    pub chosen: Option<usize>,
    pub loss: Option<String>,
    pub gradient: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CandidateView {
    pub id: usize,
    pub text: String,
    /// `None` when the candidate was dropped or not scored.
    #[serde(default)]
    pub score: Option<f32>,
}

/// A round after the first: what it tried, and whether its best candidate scored above every
/// candidate before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveOutcome {
    #[serde(rename = "move")]
    pub tried: Move,
    pub improved: bool,
}

/// Each later round of a trace and whether it raised the best score. A round none of whose
/// candidates was scored did not improve.
pub fn move_outcomes(rounds: &[RoundView]) -> Vec<MoveOutcome> {
    let best = |r: &RoundView| {
        r.candidates
            .iter()
            .filter_map(|c| c.score)
            .fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))))
    };
    let mut so_far = rounds.first().and_then(best);
    let mut out = Vec::new();
    for round in rounds.iter().skip(1) {
        let Some(tried) = round.kind.as_move() else {
            continue;
        };
        let this = best(round);
        let improved = match (this, so_far) {
            (Some(t), Some(b)) => t > b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if improved {
            so_far = this;
        }
        out.push(MoveOutcome { tried, improved });
    }
    out
}

/// How one answer fared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grade {
    /// Every constraint of the prompt met; `None` when the prompt has none.
    pub pass: Option<bool>,
    /// The final answer equals the reference; `None` when the prompt has no reference.
    pub exact: Option<bool>,
    /// Why the answer is a restatement of the task or the critique, when it is one.
    pub restates: Option<String>,
}

/// Grades `answered` against `prompt`.
pub fn grade(prompt: &EvalPrompt, answered: &Answered) -> Grade {
    let answer = &answered.answer;
    Grade {
        // A constraint with weight 0 still reports its failure: "all met" is no reasons.
        pass: prompt
            .checks
            .as_ref()
            .map(|v| v.check(answer).reasons.is_empty()),
        exact: prompt
            .reference
            .as_ref()
            .map(|v| v.check(answer).reasons.is_empty()),
        restates: restatement(prompt, answer, &answered.rounds),
    }
}

/// Why `answer` says the task back instead of doing it: it holds only words of the query (and
/// at least half of them), or a line of it repeats TPO's instructions or a critique written
/// during the search (lines of the response that critique was about excepted, as the loops
/// except them).
pub fn restatement(prompt: &EvalPrompt, answer: &str, rounds: &[RoundView]) -> Option<String> {
    let query = query_text(&prompt.messages);
    if restates(answer, &query) {
        return Some("restates the query".to_string());
    }
    let instructions = Prompts::default().update_instructions();
    let text_of = |id: usize| {
        rounds
            .iter()
            .flat_map(|r| &r.candidates)
            .find(|c| c.id == id)
            .map_or("", |c| c.text.as_str())
    };
    for round in rounds {
        let critique: Vec<&str> = [&round.loss, &round.gradient]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if critique.is_empty() {
            continue;
        }
        let chosen = round.chosen.map_or("", text_of);
        // The query's own lines are left out: quoting the question before answering it is
        // not a restatement; holding nothing but the question is, and is caught above.
        let echoes = Echoes::new(&instructions, "", &critique, chosen);
        if let Some(line) = answer.lines().find(|l| echoes.repeats(l)) {
            return Some(format!(
                "repeats the critique or instructions: {}",
                line.trim()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::prompts::parse;

    fn prompt(line: &str) -> EvalPrompt {
        parse(line, "t").unwrap().remove(0)
    }

    fn answered(answer: &str, rounds: Vec<RoundView>) -> Answered {
        Answered {
            answer: answer.into(),
            score: Some(1.0),
            stopped: "done".into(),
            usage: UsageView {
                compute: 10,
                wall_ms: 1,
            },
            rounds,
        }
    }

    #[test]
    fn constraints_and_reference_are_checked() {
        let p = prompt(
            r#"{"prompt": "Name a colour. Write it in all lowercase.", "reference": "red"}"#,
        );
        let g = grade(&p, &answered("red", vec![]));
        assert_eq!(
            (g.pass, g.exact, g.restates),
            (Some(true), Some(true), None)
        );
        let g = grade(&p, &answered("Red is nice.\nBlue", vec![]));
        assert_eq!((g.pass, g.exact), (Some(false), Some(false)));
        let open = prompt(r#"{"prompt": "Why do cats purr?"}"#);
        assert_eq!(
            grade(&open, &answered("They are content.", vec![])).pass,
            None
        );
    }

    #[test]
    fn restating_the_query_is_counted_but_answering_it_is_not() {
        let p = prompt(r#"{"prompt": "What is the capital of France?"}"#);
        assert!(restatement(&p, "The capital of France?", &[]).is_some());
        assert!(restatement(&p, "Paris is the capital of France.", &[]).is_none());
    }

    #[test]
    fn copying_the_critique_is_counted_unless_it_quotes_the_chosen_response() {
        let p = prompt(r#"{"prompt": "Describe the sea."}"#);
        let round = RoundView {
            kind: RoundKind::Sample,
            candidates: vec![CandidateView {
                id: 0,
                text: "The sea is wide and blue and full of fish.".into(),
                score: Some(1.0),
            }],
            chosen: Some(0),
            loss: Some(
                "The better response is vivid but it should mention the waves and the tides."
                    .into(),
            ),
            gradient: Some("1. Add a sentence about how the waves sound at night.".into()),
        };
        let rounds = vec![round];
        let copied = "Add a sentence about how the waves sound at night.";
        assert!(restatement(&p, copied, &rounds).is_some());
        let echoed = "Write only the improved response, between <response> and </response>.";
        assert!(restatement(&p, echoed, &rounds).is_some());
        let kept = "The sea is wide and blue and full of fish.";
        assert!(restatement(&p, kept, &rounds).is_none());
        let better = "The sea is wide and blue; its waves hush the shore at night.";
        assert!(restatement(&p, better, &rounds).is_none());
    }

    fn round(kind: RoundKind, scores: &[Option<f32>]) -> RoundView {
        RoundView {
            kind,
            candidates: scores
                .iter()
                .enumerate()
                .map(|(id, &score)| CandidateView {
                    id,
                    text: format!("candidate {id}"),
                    score,
                })
                .collect(),
            chosen: None,
            loss: None,
            gradient: None,
        }
    }

    #[test]
    fn a_round_improves_only_when_its_best_beats_every_earlier_candidate() {
        let rounds = [
            round(RoundKind::Sample, &[Some(1.0), Some(3.0)]),
            round(RoundKind::Refine, &[Some(3.0), Some(2.0)]),
            round(RoundKind::Resample, &[None, Some(3.5)]),
            round(RoundKind::Refine, &[Some(3.4)]),
            round(RoundKind::Refine, &[None]),
        ];
        let got: Vec<(Move, bool)> = move_outcomes(&rounds)
            .iter()
            .map(|o| (o.tried, o.improved))
            .collect();
        assert_eq!(
            got,
            [
                (Move::Refine, false),
                (Move::Resample, true),
                (Move::Refine, false),
                (Move::Refine, false),
            ]
        );
        assert!(move_outcomes(&rounds[..1]).is_empty());
    }
}
