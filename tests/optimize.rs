//! The optimization loops on the real default model. The reward is a verifier built in code, so
//! scoring is instant and the runtime is the policy's decoding; weight 1.0 is also tried, as if
//! the verifier were a judge, to exercise the reward's share of the budget.

mod common;

use common::load;
use hone::budget::Budget;
use hone::strategy::{Event, Request, Stopped, Strategy, StrategyError};
use policies::store::SMOLLM2;
use policies::{Message, Policy, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reward_models::Verifier;
use std::sync::OnceLock;

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| load(&SMOLLM2))
}

fn verifier() -> Verifier {
    let constraints = serde_json::json!([
        {"kind": "word_count", "min": 3, "max": 40},
        {"kind": "required_keywords", "keywords": ["Paris"]},
    ]);
    Verifier::new(serde_json::from_value(constraints).unwrap()).unwrap()
}

fn request(n: usize, rounds: u32, max_tokens: usize, budget: u64) -> Request {
    Request {
        messages: vec![Message::new(Role::User, QUESTION)],
        n,
        rounds,
        max_tokens,
        budget: Budget::compute(budget),
        ..Request::default()
    }
}

fn prompt_tokens() -> u64 {
    policy()
        .encode_chat(&[Message::new(Role::User, QUESTION)])
        .unwrap()
        .len() as u64
}

#[test]
fn tpo_runs_a_round_of_feedback_within_budget() {
    let budget = 4000;
    let mut events = Vec::new();
    let mut progress = |e: Event| events.push(e);
    let req = request(2, 1, 32, budget);
    let trace = Strategy::Tpo
        .run(policy(), &verifier(), 0.0, &req, Some(&mut progress), None)
        .unwrap();
    let json = serde_json::to_string_pretty(&trace).unwrap();
    assert!(!trace.answer.trim().is_empty(), "{json}");
    assert!(trace.score.is_some());
    assert_eq!(trace.rounds.len(), 2, "{json}");
    assert_eq!(trace.rounds[0].candidates.len(), 2);
    assert_eq!(trace.rounds[1].candidates.len(), 2);
    assert!(
        trace.rounds[0].loss.is_some() && trace.rounds[0].gradient.is_some(),
        "{json}"
    );
    assert!(
        matches!(trace.stopped, Stopped::Done | Stopped::Converged),
        "{json}"
    );
    assert!(trace.usage.compute <= budget, "{json}");
    assert_eq!(
        trace.usage.compute,
        trace.usage.policy_positions + trace.usage.reward_positions
    );
    assert_eq!(trace.usage.reward_calls, 2);
    // The answer is the best candidate of the cache, and it was announced while streaming.
    let best = trace
        .rounds
        .iter()
        .flat_map(|r| &r.candidates)
        .filter_map(|c| c.score)
        .fold(f32::MIN, f32::max);
    assert_eq!(trace.score, Some(best));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RoundDone { round: 1, .. })));
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CandidateScored { .. }))
            .count()
            >= 1
    );
}

#[test]
fn a_tiny_budget_stops_early_but_answers() {
    let p = prompt_tokens();
    let budget = p + 12;
    let req = request(2, 2, 32, budget);
    let trace = Strategy::Tpo
        .run(policy(), &verifier(), 0.0, &req, None, None)
        .unwrap();
    assert_eq!(trace.stopped, Stopped::Budget);
    assert!(!trace.answer.trim().is_empty());
    assert!(trace.usage.compute <= budget);

    let req = request(2, 2, 32, p);
    let err = Strategy::Tpo
        .run(policy(), &verifier(), 0.0, &req, None, None)
        .unwrap_err();
    assert!(
        matches!(err, StrategyError::BudgetTooSmall { minimum, .. } if minimum == p + 1),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("at least {} units", p + 1)),
        "{err}"
    );
}

#[test]
fn best_of_n_never_exceeds_random_budgets() {
    let p = prompt_tokens();
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..12 {
        let budget = rng.random_range(p - 4..=p * 2 + 3 * 16 + 20);
        let weight = if i % 2 == 0 { 0.0 } else { 1.0 };
        let req = Request {
            seed: i,
            ..request(3, 0, 16, budget)
        };
        match Strategy::BestOfN.run(policy(), &verifier(), weight, &req, None, None) {
            Ok(trace) => {
                assert!(
                    trace.usage.compute <= budget,
                    "budget {budget}, weight {weight}: {:?}",
                    trace.usage
                );
                assert!(!trace.answer.trim().is_empty());
            }
            Err(StrategyError::BudgetTooSmall { minimum, .. }) => assert!(budget < minimum),
            Err(StrategyError::NoAnswer { usage, .. }) => assert!(usage.compute <= budget),
            Err(e) => panic!("budget {budget}: {e}"),
        }
    }
}

#[test]
fn tpo_never_exceeds_random_budgets() {
    let p = prompt_tokens();
    let mut rng = StdRng::seed_from_u64(11);
    for i in 0..2 {
        // From one short answer up to a full round of feedback at weight 1.
        let budget = rng.random_range(p * 2 + 10..=1000);
        let req = Request {
            seed: i,
            ..request(2, 1, 16, budget)
        };
        match Strategy::Tpo.run(policy(), &verifier(), 1.0, &req, None, None) {
            Ok(trace) => assert!(
                trace.usage.compute <= budget,
                "budget {budget}: {:?}",
                trace.usage
            ),
            Err(StrategyError::NoAnswer { usage, .. }) => assert!(usage.compute <= budget),
            Err(e) => panic!("budget {budget}: {e}"),
        }
    }
}
