//! `hone bench tpo`: the cost of a TPO query run the way the reference implementation does
//! (each candidate its own prefill and decoding, each score its own reward call), as hone runs
//! it (a round's candidates decode as one batch over one prefill, a round is scored in one
//! reward call), and as hone runs it with speculative decoding. All three write the same
//! candidates, token for token (tested in tests/optimize.rs; the `same text` column says so
//! for each query), so they differ in cost alone. The arms alternate query by query in one
//! process.

use super::BenchArgs;
use anyhow::Result;
use hone::strategy::{Engine, Execution, Learned, Request, Strategy, Trace};
use policies::{Message, Role, Speculation};

/// Instructions with checkable constraints, of the kind TPO is used for.
const PROMPTS: [&str; 4] = [
    "Write a two-sentence product description for a reusable water bottle. Mention that it keeps drinks cold.",
    "Explain what a compiler does in three short bullet points.",
    "Give a one-paragraph summary of why the sky is blue, without using the word 'light'.",
    "Write a polite email of at most 60 words declining a meeting invitation.",
];

#[derive(Default)]
struct Totals {
    compute: u64,
    policy: u64,
    reward_calls: u64,
    wall_ms: u64,
    draft_tokens: u64,
    accepted: u64,
    tokens: u64,
}

impl Totals {
    fn add(&mut self, t: &Trace) {
        self.compute += t.usage.compute;
        self.policy += t.usage.policy_positions;
        self.reward_calls += t.usage.reward_calls;
        self.wall_ms += t.usage.wall_ms;
        self.draft_tokens += t.usage.spec_draft_tokens;
        self.accepted += t.usage.spec_accepted_tokens;
        self.tokens += t.usage.tokens_generated;
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let name = a.reward.as_deref().unwrap_or("judge");
    let models = crate::cli::load_models(&a.model, a.draft.as_deref(), name, &a.rewards, a.cpu)?;
    let (policy, reward, weight, device) = (
        &models.policy,
        &models.reward,
        models.reward_weight,
        &models.device,
    );
    println!(
        "policy: {} | reward: {name} (weight {weight:.2}) | device: {:?} | threads: {} | TPO n={} rounds={} max_tokens={}",
        policy.name(),
        device,
        candle_core::utils::get_num_threads(),
        a.n,
        a.rounds,
        a.max_tokens
    );
    println!("| query | arm | compute units | policy positions | tokens generated | reward calls | accepted / drafted | wall s | same text |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut arms = vec![
        ("naive", Execution::Sequential, Speculation::OFF),
        ("batched", Execution::Batched, Speculation::OFF),
    ];
    if a.speculate > 0 {
        arms.push((
            "batched + speculative",
            Execution::Batched,
            crate::cli::speculation(a.speculate, a.unpaced),
        ));
    }
    let mut totals: Vec<Totals> = arms.iter().map(|_| Totals::default()).collect();
    for (q, prompt) in PROMPTS.iter().enumerate() {
        let request = Request {
            messages: vec![Message::new(Role::User, *prompt)],
            n: a.n,
            rounds: a.rounds,
            max_tokens: a.max_tokens,
            seed: q as u64,
            ..Request::default()
        };
        let mut first: Option<Vec<String>> = None;
        for (k, &(arm, execution, speculation)) in arms.iter().enumerate() {
            let learned = Learned::default();
            let engine = Engine {
                policy: policy.as_ref(),
                reward: reward.as_ref(),
                reward_weight: weight,
                learned: &learned,
                execution,
                speculation,
            };
            let trace = Strategy::Tpo.run(&engine, &request, None, None)?;
            let texts: Vec<String> = trace
                .rounds
                .iter()
                .flat_map(|r| &r.candidates)
                .map(|c| c.text.clone())
                .chain([trace.answer.clone()])
                .collect();
            let same = match &first {
                None => {
                    first = Some(texts);
                    "-"
                }
                Some(f) if *f == texts => "yes",
                Some(_) => "no",
            };
            let u = &trace.usage;
            println!(
                "| {q} | {arm} | {} | {} | {} | {} | {} / {} | {:.1} | {same} |",
                u.compute,
                u.policy_positions,
                u.tokens_generated,
                u.reward_calls,
                u.spec_accepted_tokens,
                u.spec_draft_tokens,
                u.wall_ms as f64 / 1000.0
            );
            totals[k].add(&trace);
        }
    }
    println!("\n| arm (all queries) | compute units | policy positions | tokens generated | reward calls | accepted / drafted | wall s | ms per token |");
    println!("|---|---|---|---|---|---|---|---|");
    for ((arm, _, _), t) in arms.iter().zip(&totals) {
        println!(
            "| {arm} | {} | {} | {} | {} | {} / {} | {:.1} | {:.1} |",
            t.compute,
            t.policy,
            t.tokens,
            t.reward_calls,
            t.accepted,
            t.draft_tokens,
            t.wall_ms as f64 / 1000.0,
            t.wall_ms as f64 / t.tokens.max(1) as f64
        );
    }
    Ok(())
}
