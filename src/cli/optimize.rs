//! `hone optimize`: run one optimization loop from the shell. Progress goes to stderr, the
//! trace as JSON to stdout.

use anyhow::Result;
use clap::Args;
use hone::budget::Budget;
use hone::strategy::{Engine, Event, Execution, Learned, Request, Strategy};
use policies::{Message, Role, Speculation};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct OptimizeArgs {
    /// The user's message.
    #[arg(long)]
    prompt: String,
    /// tpo, auto, best_of_n, weighted_best_of_n or plain.
    #[arg(long, default_value = "tpo", value_parser = parse_strategy)]
    strategy: Strategy,
    /// Compute units: token positions the policy computes, plus the positions the reward reads
    /// weighted by its size relative to the policy. Unlimited when left out.
    #[arg(long)]
    budget: Option<u64>,
    /// Candidates per round.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Improvement rounds after the first sampling (default: 2, and 8 for auto).
    #[arg(long)]
    rounds: Option<u32>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds after which no new step starts; the best answer so far is returned.
    #[arg(long)]
    deadline: Option<f64>,
    /// Name of a reward manifest (a file stem in --rewards).
    #[arg(long, default_value = "default")]
    reward: String,
    /// Folder of reward manifests.
    #[arg(long, default_value = reward_models::manifest::DEFAULT_DIR, env = "HONE_REWARDS")]
    rewards: PathBuf,
    /// A policy manifest name (in $HONE_POLICIES, default policies/manifests), a GGUF file, an
    /// HF checkpoint folder, or `default` (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    model: String,
    /// A folder whose loss.txt, gradient.txt or update.txt replace TPO's built-in prompts.
    #[arg(long)]
    prompts_dir: Option<PathBuf>,
    /// The most draft tokens speculative decoding verifies per step; 0 turns it off.
    #[arg(long, default_value_t = 0)]
    speculate: usize,
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
}

pub fn parse_strategy(name: &str) -> Result<Strategy, String> {
    Strategy::parse(name)
        .ok_or_else(|| format!("unknown strategy `{name}` (known: {})", Strategy::NAMES))
}

pub fn run(a: OptimizeArgs) -> Result<()> {
    let deadline = match a.deadline {
        Some(secs) if !(secs.is_finite() && secs >= 0.0) => {
            anyhow::bail!("--deadline must be a number of seconds >= 0")
        }
        Some(secs) => Some(Instant::now() + Duration::from_secs_f64(secs)),
        None => None,
    };
    let models = super::load_models(&a.model, None, &a.reward, &a.rewards, a.cpu)?;
    let weight = models.reward_weight;
    let rounds = a.rounds.unwrap_or(a.strategy.default_rounds());
    let request = Request {
        messages: vec![Message::new(Role::User, a.prompt)],
        n: a.n,
        rounds,
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        budget: Budget {
            compute: a.budget,
            deadline,
            max_rounds: None,
        },
        prompts_dir: a.prompts_dir,
        on_text: None,
    };
    eprintln!(
        "{}: n={} rounds={} max_tokens={} budget={} reward `{}` (weight {weight:.2})",
        a.strategy.name(),
        a.n,
        rounds,
        a.max_tokens,
        a.budget.map_or("unlimited".to_string(), |b| b.to_string()),
        a.reward
    );
    let mut progress = |event: Event| match event {
        Event::CandidateScored {
            round,
            index,
            score,
        } => {
            eprintln!("round {round} candidate {index}: score {score:.4}")
        }
        Event::RoundDone { round, best } => match best {
            Some(best) => eprintln!("round {round} done: best so far {best:.4}"),
            None => eprintln!("round {round} done: nothing scored yet"),
        },
    };
    let learned = Learned::default();
    let engine = Engine {
        policy: models.policy.as_ref(),
        reward: models.reward.as_ref(),
        reward_weight: weight,
        learned: &learned,
        execution: Execution::Batched,
        speculation: Speculation::drafts(a.speculate),
    };
    let trace = a
        .strategy
        .run(&engine, &request, Some(&mut progress), None)?;
    eprintln!(
        "stopped: {:?}; compute {} units ({} policy + {} reward) in {} ms",
        trace.stopped,
        trace.usage.compute,
        trace.usage.policy_positions,
        trace.usage.reward_positions,
        trace.usage.wall_ms
    );
    println!("{}", serde_json::to_string_pretty(&trace)?);
    Ok(())
}
