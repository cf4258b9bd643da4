//! `hone bench tpo`: the cost of a TPO query as hone runs it (a round's candidates decode as one
//! batch over one prefill, a round is scored in one reward call) against the same loop run the
//! way the reference implementation does (each candidate its own prefill and decoding, each
//! score its own reward call). Both give the same candidates (tested in tests/optimize.rs), so
//! the difference is pure cost. The two alternate query by query in one process.

use super::BenchArgs;
use anyhow::{Context, Result};
use hone::budget;
use hone::strategy::{Engine, Execution, Learned, Request, Strategy, Trace};
use policies::{manifest, Message, Policy, Role};
use reward_models::manifest::{Manifests, PolicyCache};
use std::sync::Arc;

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
}

impl Totals {
    fn add(&mut self, t: &Trace) {
        self.compute += t.usage.compute;
        self.policy += t.usage.policy_positions;
        self.reward_calls += t.usage.reward_calls;
        self.wall_ms += t.usage.wall_ms;
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let path = manifest::resolve(&crate::cli::policies_dir(), &a.model)?;
    let device = crate::cli::device(a.cpu)?;
    let policy = Arc::new(
        Policy::load(&path, &device)
            .with_context(|| format!("loading model {}", path.display()))?,
    );
    let manifests = Manifests::read_dir(&a.rewards)?;
    let name = a.reward.as_deref().unwrap_or("default");
    let mut loaded = PolicyCache::default();
    loaded.insert(path.clone(), policy.clone());
    let reward = manifests.build(name, &device, &mut loaded)?;
    let weight =
        budget::reward_weight(&manifests, &a.rewards, name, &path, policy.model().config())?;
    println!(
        "policy: {} | reward: {name} (weight {weight:.2}) | device: {:?} | threads: {} | TPO n={} rounds={} max_tokens={}",
        policy.name(),
        device,
        candle_core::utils::get_num_threads(),
        a.n,
        a.rounds,
        a.max_tokens
    );
    println!("| query | execution | compute units | policy positions | reward calls | wall s |");
    println!("|---|---|---|---|---|---|");
    let mut totals = [Totals::default(), Totals::default()];
    for (q, prompt) in PROMPTS.iter().enumerate() {
        let request = Request {
            messages: vec![Message::new(Role::User, *prompt)],
            n: a.n,
            rounds: a.rounds,
            max_tokens: a.max_tokens,
            seed: q as u64,
            ..Request::default()
        };
        for (k, execution) in [Execution::Batched, Execution::Sequential]
            .into_iter()
            .enumerate()
        {
            let learned = Learned::default();
            let engine = Engine {
                policy: &policy,
                reward: reward.as_ref(),
                reward_weight: weight,
                learned: &learned,
                execution,
            };
            let trace = Strategy::Tpo.run(&engine, &request, None, None)?;
            println!(
                "| {q} | {execution:?} | {} | {} | {} | {:.1} |",
                trace.usage.compute,
                trace.usage.policy_positions,
                trace.usage.reward_calls,
                trace.usage.wall_ms as f64 / 1000.0
            );
            totals[k].add(&trace);
        }
    }
    let [b, s] = &totals;
    let ratio = |naive: u64, ours: u64| naive as f64 / ours.max(1) as f64;
    println!(
        "\nall queries: compute {} vs {} units ({:.2}x less batched), wall {:.1} vs {:.1} s ({:.2}x faster batched), reward calls {} vs {}",
        b.compute,
        s.compute,
        ratio(s.compute, b.compute),
        b.wall_ms as f64 / 1000.0,
        s.wall_ms as f64 / 1000.0,
        ratio(s.wall_ms, b.wall_ms),
        b.reward_calls,
        s.reward_calls
    );
    println!(
        "policy positions {} vs {} ({:.2}x)",
        b.policy,
        s.policy,
        ratio(s.policy, b.policy)
    );
    Ok(())
}
