//! The optimization loops on the real default model. The reward is a verifier built in code, so
//! scoring is instant and the runtime is the policy's decoding; weight 1.0 is also tried, as if
//! the verifier were a judge, to exercise the reward's share of the budget.

mod common;

use common::load;
use hone::budget::Budget;
use hone::strategy::{
    Engine, Event, Execution, Learned, Move, Request, RoundKind, Stopped, Strategy, StrategyError,
    Trace,
};
use policies::store::SMOLLM2;
use policies::{Message, Policy, Role, Speculation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reward_models::Verifier;
use std::sync::OnceLock;

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| load(&SMOLLM2))
}

/// A verifier whose highest score no answer reaches (no answer names "Zanzibar"), so that the
/// loops run their rounds rather than stop at a perfect answer.
fn verifier() -> Verifier {
    verifier_of(serde_json::json!([
        {"kind": "word_count", "min": 3, "max": 40},
        {"kind": "required_keywords", "keywords": ["Paris"]},
        {"kind": "required_keywords", "keywords": ["Zanzibar"]},
    ]))
}

/// A verifier every non-empty answer satisfies in full.
fn easy_verifier() -> Verifier {
    verifier_of(serde_json::json!([{"kind": "word_count", "min": 1, "max": 10000}]))
}

fn verifier_of(constraints: serde_json::Value) -> Verifier {
    Verifier::new(serde_json::from_value(constraints).unwrap()).unwrap()
}

/// Runs `strategy` on the default policy with `reward` weighing `weight` units per position.
fn run(
    strategy: Strategy,
    reward: &Verifier,
    weight: f64,
    learned: &Learned,
    req: &Request,
    progress: Option<&mut dyn FnMut(Event)>,
) -> Result<Trace, StrategyError> {
    run_as(
        strategy,
        (Execution::Batched, Speculation::OFF),
        reward,
        weight,
        learned,
        req,
        progress,
    )
}

fn run_as(
    strategy: Strategy,
    (execution, speculation): (Execution, Speculation),
    reward: &Verifier,
    weight: f64,
    learned: &Learned,
    req: &Request,
    progress: Option<&mut dyn FnMut(Event)>,
) -> Result<Trace, StrategyError> {
    let engine = Engine {
        policy: policy(),
        reward,
        reward_weight: weight,
        learned,
        execution,
        speculation,
    };
    strategy.run(&engine, req, progress, None)
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
    let learned = Learned::default();
    let trace = run(
        Strategy::Tpo,
        &verifier(),
        0.0,
        &learned,
        &req,
        Some(&mut progress),
    )
    .unwrap();
    let json = serde_json::to_string_pretty(&trace).unwrap();
    assert!(!trace.answer.trim().is_empty(), "{json}");
    assert!(trace.score.is_some());
    assert_eq!(trace.rounds.len(), 2, "{json}");
    assert_eq!(trace.rounds[0].candidates.len(), 2);
    assert_eq!(trace.rounds[1].candidates.len(), 2);
    assert_eq!(trace.rounds[0].kind, RoundKind::Sample);
    assert_eq!(trace.rounds[1].kind, RoundKind::Refine);
    // The update round is a refine trial per response, won by those above the first round's best.
    let first_best = trace.rounds[0]
        .candidates
        .iter()
        .filter_map(|c| c.score)
        .fold(f32::MIN, f32::max);
    let wins = trace.rounds[1]
        .candidates
        .iter()
        .filter(|c| c.score.is_some_and(|s| s > first_best))
        .count() as u64;
    let tallies = learned.snapshot();
    assert_eq!((tallies.refine.trials, tallies.refine.wins), (2, wins));
    assert_eq!(tallies.resample.trials, 0);
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
    // One reward call per round that had a usable response.
    let scored_rounds = trace
        .rounds
        .iter()
        .filter(|r| r.candidates.iter().any(|c| c.score.is_some()))
        .count() as u64;
    assert_eq!(trace.usage.reward_calls, scored_rounds, "{json}");
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
    let learned = Learned::default();
    let trace = run(Strategy::Tpo, &verifier(), 0.0, &learned, &req, None).unwrap();
    assert_eq!(trace.stopped, Stopped::Budget);
    assert!(!trace.answer.trim().is_empty());
    assert!(trace.usage.compute <= budget);

    let req = request(2, 2, 32, p);
    let err = run(Strategy::Tpo, &verifier(), 0.0, &learned, &req, None).unwrap_err();
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
        match run(
            Strategy::BestOfN,
            &verifier(),
            weight,
            &Learned::default(),
            &req,
            None,
        ) {
            Ok(trace) => {
                assert!(
                    trace.usage.compute <= budget,
                    "budget {budget}, weight {weight}: {:?}",
                    trace.usage
                );
                assert!(!trace.answer.trim().is_empty());
            }
            Err(StrategyError::BudgetTooSmall { minimum, .. }) => assert!(budget < minimum),
            // A budget that fits one scored response must answer: no answer is a failure.
            Err(e) => panic!("budget {budget}, weight {weight}: {e}"),
        }
    }
}

#[test]
fn tpo_and_auto_never_exceed_random_budgets() {
    let p = prompt_tokens();
    let mut rng = StdRng::seed_from_u64(11);
    let learned = Learned::default();
    for (i, strategy) in [Strategy::Tpo, Strategy::Auto, Strategy::Auto]
        .into_iter()
        .enumerate()
    {
        // From one short answer up to a full round of feedback at weight 1.
        let budget = rng.random_range(p * 2 + 10..=1000);
        let req = Request {
            seed: i as u64,
            ..request(2, 1, 16, budget)
        };
        match run(strategy, &verifier(), 1.0, &learned, &req, None) {
            Ok(trace) => assert!(
                trace.usage.compute <= budget,
                "budget {budget}: {:?}",
                trace.usage
            ),
            // No answer (nothing usable within the budget) is a failure like any other error.
            Err(e) => panic!("budget {budget}: {e}"),
        }
    }
}

#[test]
fn a_perfect_first_round_ends_the_search() {
    let learned = Learned::default();
    for strategy in [Strategy::Tpo, Strategy::Auto] {
        let req = request(2, 3, 16, 4000);
        let trace = run(strategy, &easy_verifier(), 0.0, &learned, &req, None).unwrap();
        assert_eq!(trace.score, Some(1.0));
        assert_eq!(trace.stopped, Stopped::Converged, "{strategy:?}");
        assert_eq!(trace.rounds.len(), 1, "{strategy:?}");
    }
    let tallies = learned.snapshot();
    assert_eq!(tallies.refine.trials + tallies.resample.trials, 0);
}

#[test]
fn auto_explores_both_moves_then_follows_its_estimate() {
    let learned = Learned::default();
    // Rounds of two responses: refine is tried first, then resample, until each has had
    // EXPLORE_TRIALS trials; every round's responses are counted as its move's trials.
    let req = Request {
        rounds: 3,
        ..request(2, 3, 16, 6000)
    };
    let trace = run(Strategy::Auto, &verifier(), 0.0, &learned, &req, None).unwrap();
    let json = serde_json::to_string_pretty(&trace).unwrap();
    let auto = trace.auto.as_ref().expect("auto explains its decisions");
    assert!(!auto.decisions.is_empty(), "{json}");
    assert_eq!(auto.decisions[0].chose, Move::Refine, "{json}");
    assert_eq!(auto.decisions[0].refine.trials, 0);
    for d in &auto.decisions {
        assert_eq!(trace.rounds[d.round].kind, d.chose.into(), "{json}");
    }
    assert!(trace.usage.compute <= 6000);
    let tallies = learned.snapshot();
    let trials = |kind: RoundKind| -> u64 {
        trace
            .rounds
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.candidates.len() as u64)
            .sum()
    };
    assert_eq!(tallies.refine.trials, trials(RoundKind::Refine), "{json}");
    assert_eq!(
        tallies.resample.trials,
        trials(RoundKind::Resample),
        "{json}"
    );
    assert_eq!(auto.learned, tallies);
    // Once both moves are measured, the choice follows the estimates.
    learned.record(Move::Refine, 8, 0, Some(3.0));
    learned.record(Move::Resample, 8, 4, Some(1.0));
    let trace = run(Strategy::Auto, &verifier(), 0.0, &learned, &req, None).unwrap();
    let json = serde_json::to_string_pretty(&trace).unwrap();
    let auto = trace.auto.as_ref().expect("auto explains its decisions");
    assert!(!auto.decisions.is_empty(), "{json}");
    assert!(
        auto.decisions.iter().all(|d| d.chose == Move::Resample),
        "{json}"
    );
}

/// A TPO query of 3 candidates and one update round, run `how`. Its budget is unlimited, so
/// that every way of running it plans the same calls.
fn unlimited_tpo(how: (Execution, Speculation), max_tokens: usize) -> Trace {
    let req = Request {
        budget: Budget::default(),
        ..request(3, 1, max_tokens, 0)
    };
    run_as(
        Strategy::Tpo,
        how,
        &verifier(),
        1.0,
        &Learned::default(),
        &req,
        None,
    )
    .unwrap()
}

/// Every candidate's text and score, in order.
fn candidates(t: &Trace) -> Vec<(String, Option<f32>)> {
    t.rounds
        .iter()
        .flat_map(|r| &r.candidates)
        .map(|c| (c.text.clone(), c.score))
        .collect()
}

#[test]
fn sequential_tpo_finds_the_same_candidates_at_a_higher_cost() {
    // The reference implementation's way (a prefill per response, a reward call per score)
    // against batching: the same trace, fewer policy positions.
    let batched = unlimited_tpo((Execution::Batched, Speculation::OFF), 16);
    let sequential = unlimited_tpo((Execution::Sequential, Speculation::OFF), 16);
    assert_eq!(candidates(&batched), candidates(&sequential));
    assert_eq!(batched.answer, sequential.answer);
    assert_eq!(
        batched.usage.tokens_generated,
        sequential.usage.tokens_generated
    );
    assert_eq!(
        batched.usage.reward_positions,
        sequential.usage.reward_positions
    );
    let p = prompt_tokens();
    // The first round alone prefills the query twice more when sequential.
    assert!(
        sequential.usage.policy_positions >= batched.usage.policy_positions + 2 * p,
        "{:?} vs {:?}",
        sequential.usage,
        batched.usage
    );
    assert!(sequential.usage.reward_calls > batched.usage.reward_calls);
}

#[test]
fn speculative_tpo_finds_the_same_candidates() {
    // Speculation changes how many tokens a forward pass yields, never which: a sampled TPO
    // query writes the same candidates, critique and answer with and without it, so its
    // saving is pure cost.
    let plain = unlimited_tpo((Execution::Batched, Speculation::OFF), 24);
    let speculative = unlimited_tpo((Execution::Batched, Speculation::drafts(4).unpaced()), 24);
    assert_eq!(candidates(&plain), candidates(&speculative));
    assert_eq!(plain.answer, speculative.answer);
    assert_eq!(
        plain.usage.tokens_generated,
        speculative.usage.tokens_generated
    );
    let u = &speculative.usage;
    assert!(
        u.spec_accepted_tokens > 0 && u.spec_accepted_tokens < u.spec_draft_tokens,
        "drafts must be both accepted and rejected: {u:?}"
    );
}

#[test]
fn usage_counts_a_draft_models_guesses_apart() {
    // The default model drafting for itself: its greedy guesses are accepted where sampling
    // picks the greedy token, and every one of them is counted under the draft model.
    let drafted = load(&SMOLLM2).with_draft(load(&SMOLLM2)).unwrap();
    let learned = Learned::default();
    let reward = verifier();
    let engine = Engine {
        policy: &drafted,
        reward: &reward,
        reward_weight: 1.0,
        learned: &learned,
        execution: Execution::Batched,
        speculation: Speculation::drafts(4).unpaced(),
    };
    let req = Request {
        budget: Budget::default(),
        ..request(2, 1, 16, 0)
    };
    let trace = Strategy::Tpo.run(&engine, &req, None, None).unwrap();
    let u = &trace.usage;
    assert!(
        u.spec_model_drafts > 0 && u.spec_model_draft_tokens >= u.spec_model_drafts,
        "{u:?}"
    );
    assert!(
        u.spec_model_accepted_tokens > 0
            && u.spec_model_accepted_tokens <= u.spec_model_draft_tokens,
        "{u:?}"
    );
    assert!(
        u.spec_model_draft_tokens + u.spec_sibling_draft_tokens <= u.spec_draft_tokens
            && u.spec_model_accepted_tokens <= u.spec_accepted_tokens,
        "the draft model's counts are part of the totals: {u:?}"
    );
}

#[test]
fn a_deadline_that_passes_during_a_long_prefill_stops_it() {
    // About 2,000 prompt tokens: seconds of prefill on any CPU, against a 300 ms deadline that
    // has not passed when the loop starts, so only the prefill's own checks can stop it.
    let words: Vec<String> = (0..500)
        .map(|i| {
            format!(
                "{}{i}",
                ["alpha", "river", "stone", "cloud", "seven"][i % 5]
            )
        })
        .collect();
    let prompt = format!("Summarize this list: {}", words.join(" "));
    for strategy in [Strategy::Plain, Strategy::BestOfN] {
        let req = Request {
            messages: vec![Message::new(Role::User, prompt.clone())],
            n: 2,
            max_tokens: 8,
            budget: Budget {
                deadline: Some(std::time::Instant::now() + std::time::Duration::from_millis(300)),
                ..Budget::default()
            },
            ..Request::default()
        };
        let learned = Learned::default();
        let err = run(strategy, &verifier(), 0.0, &learned, &req, None).unwrap_err();
        assert!(
            matches!(err, StrategyError::DeadlineBeforeAnswer),
            "{}: {err}",
            strategy.name()
        );
    }
}
