//! The loops' logic and their budget over a scripted language model (tests/common/scripted.rs):
//! no weights, so every strategy can be run at many budgets in milliseconds. What needs the
//! real engine (batching, speculation, the real model's answers) is tested in optimize.rs.

mod common;

use common::scripted::Scripted;
use hone::budget::Budget;
use hone::strategy::{Engine, Execution, Learned, Request, RoundKind, Stopped, Strategy, Trace};
use policies::{LanguageModel, Message, Role, Speculation};
use reward_models::RewardModel;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const QUESTION: &str = "What is the capital of France?";

/// The shipped `concise` verifier: 1-120 words and no apologies; its maximum is 1.
fn concise() -> Arc<dyn RewardModel> {
    common::shipped_reward("concise")
}

/// Fresh answers apologise (below the reward's maximum), so the loops keep searching; a
/// rewrite (the update prompt opens the response) drops the apology on odd seeds. Lengths vary
/// with the seed, so that budgets cut responses at many different points.
fn script(prompt: &str, seed: u64) -> String {
    let repeat = |words: &str| words.repeat((seed % 5) as usize);
    if prompt.ends_with("<response>") {
        let apology = if seed % 2 == 1 { "" } else { "Sorry, " };
        let filler = repeat("a fine city ");
        format!("{apology}Paris is the capital {filler}</response> trailing words")
    } else if prompt.split_whitespace().count() < 12 {
        // The user's question alone: a fresh answer.
        format!("Sorry, I believe it is Paris {}", repeat("a fine city "))
    } else {
        // A critique or suggestions, asked with the candidates quoted.
        format!("Drop the apology. {}", repeat("Please "))
    }
}

fn run(
    policy: &dyn LanguageModel,
    reward: &dyn RewardModel,
    strategy: Strategy,
    request: &Request,
) -> Trace {
    let learned = Learned::default();
    let engine = Engine {
        policy,
        reward,
        reward_weight: 0.0,
        learned: &learned,
        execution: Execution::Batched,
        speculation: Speculation::OFF,
    };
    strategy.run(&engine, request, None, None).unwrap()
}

fn request(budget: Option<u64>) -> Request {
    Request {
        messages: vec![Message::new(Role::User, QUESTION)],
        max_tokens: 24,
        budget: budget.map(Budget::compute).unwrap_or_default(),
        ..Request::default()
    }
}

#[test]
fn best_of_n_answers_with_the_best_candidate_and_plain_with_the_first() {
    let policy = Scripted::new(|_, seed| {
        if seed == 2 {
            "Paris.".to_string()
        } else {
            "Sorry, Paris.".to_string()
        }
    });
    let reward = concise();
    let plain = run(&policy, reward.as_ref(), Strategy::Plain, &request(None));
    assert_eq!(plain.answer, "Sorry, Paris.");
    let best = run(&policy, reward.as_ref(), Strategy::BestOfN, &request(None));
    assert_eq!(best.answer, "Paris.");
    assert!(
        best.score > plain.score,
        "{:?} vs {:?}",
        best.score,
        plain.score
    );
    let candidates: Vec<&str> = best.rounds[0]
        .candidates
        .iter()
        .map(|c| c.text.as_str())
        .collect();
    assert_eq!(
        candidates,
        ["Sorry, Paris.", "Sorry, Paris.", "Paris.", "Sorry, Paris."]
    );
}

#[test]
fn tpo_rewrites_from_the_critique_it_wrote() {
    let policy = Scripted::new(script);
    let reward = concise();
    let req = Request {
        rounds: 2,
        ..request(None)
    };
    let trace = run(&policy, reward.as_ref(), Strategy::Tpo, &req);
    let kinds: Vec<RoundKind> = trace.rounds.iter().map(|r| r.kind).collect();
    assert_eq!(kinds[0], RoundKind::Sample);
    assert!(
        kinds.len() >= 2 && kinds[1..].iter().all(|&k| k == RoundKind::Refine),
        "{kinds:?}"
    );
    // The rewrite without the apology wins, cut at the closing marker.
    assert_eq!(trace.answer.split_whitespace().next(), Some("Paris"));
    assert!(!trace.answer.contains("</response>") && !trace.answer.contains("trailing"));
    assert_eq!(trace.score, Some(1.0));
    // The first round's critique was written from its candidates.
    let first = &trace.rounds[0];
    assert!(
        first.loss.as_deref().is_some_and(|l| l.contains("apology")),
        "{first:?}"
    );
    assert!(first.gradient.is_some());
}

/// TPO runs the rounds it was given, as the paper's D, whether or not they raise the best
/// score; `auto` stops at its first round without gain.
#[test]
fn tpo_runs_every_round_without_gain_and_auto_stops() {
    // Rewrites apologise like fresh answers: no round beats the first round's best.
    let policy = Scripted::new(|prompt, seed| {
        if prompt.ends_with("<response>") {
            let filler = "indeed ".repeat((seed % 3) as usize);
            format!("Sorry, Paris is the capital {filler}</response>")
        } else {
            script(prompt, seed)
        }
    });
    let reward = concise();
    let req = Request {
        rounds: 3,
        ..request(None)
    };
    let tpo = run(&policy, reward.as_ref(), Strategy::Tpo, &req);
    let kinds: Vec<RoundKind> = tpo.rounds.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RoundKind::Sample,
            RoundKind::Refine,
            RoundKind::Refine,
            RoundKind::Refine
        ]
    );
    assert_eq!(tpo.stopped, Stopped::Done);
    assert!(tpo.score.is_some_and(|s| s < 1.0), "{:?}", tpo.score);
    let auto = run(&policy, reward.as_ref(), Strategy::Auto, &req);
    assert_eq!(auto.stopped, Stopped::Converged);
    assert!(auto.rounds.len() < 4, "{} rounds", auto.rounds.len());
}

/// Every strategy at every budget from one prefill upwards: what the loop reports spending
/// never passes the budget, and it is exactly what the model computed.
#[test]
fn no_loop_spends_more_than_its_budget_and_every_position_is_metered() {
    let reward = concise();
    for strategy in [
        Strategy::Plain,
        Strategy::BestOfN,
        Strategy::WeightedBestOfN,
        Strategy::Tpo,
        Strategy::Auto,
    ] {
        let policy = Scripted::new(script);
        let prompt = policy.encode_chat(&request(None).messages).unwrap().len() as u64;
        let (mut cut, mut most_rounds) = (0, 0);
        for budget in (prompt + 1..=1500).step_by(7) {
            let before = policy.positions.load(Ordering::Relaxed);
            let trace = run(&policy, reward.as_ref(), strategy, &request(Some(budget)));
            let computed = policy.positions.load(Ordering::Relaxed) - before;
            let usage = trace.usage;
            assert!(
                usage.compute <= budget,
                "{strategy:?} spent {} of {budget}",
                usage.compute
            );
            assert_eq!(usage.policy_positions, computed, "{strategy:?} at {budget}");
            assert!(!trace.answer.is_empty(), "{strategy:?} at {budget}");
            cut += usize::from(trace.stopped == Stopped::Budget);
            most_rounds = most_rounds.max(trace.rounds.len());
        }
        // The budgets bind (small ones cut the loop), and large ones buy a later round.
        assert!(cut > 0, "{strategy:?}: no budget was binding");
        let single_round = matches!(
            strategy,
            Strategy::Plain | Strategy::BestOfN | Strategy::WeightedBestOfN
        );
        assert!(
            single_round || most_rounds >= 2,
            "{strategy:?}: {most_rounds} rounds at most"
        );
    }
}
