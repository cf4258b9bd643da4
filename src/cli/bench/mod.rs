//! `hone bench [engine|reward|tpo|service|speculate]`: the measurements behind docs/PERFORMANCE.md, made
//! by the binary users run. Each prints a Markdown table.

mod engine;
mod reward;
mod service;
mod speculate;
mod tpo;

use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// Policy prefill and decode tok/s per batch size.
    Engine,
    /// A reward model's pairs scored per second per batch size (`--reward`).
    Reward,
    /// TPO queries run naively (a prefill per candidate, a reward call per score), batched,
    /// and batched with speculative decoding: compute units and wall time, side by side.
    Tpo,
    /// What the HTTP service adds around the engine per request.
    Service,
    /// Greedy decoding at batch 1 with and without speculation (the suffix drafter, and the
    /// draft model with --draft), on chat prompts and on TPO refine rounds.
    Speculate,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure [default: engine, or reward when --reward is given].
    what: Option<What>,
    /// A policy manifest name (in $HONE_POLICIES, default policies/manifests), a GGUF file, an
    /// HF checkpoint folder, or `default` (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    model: String,
    /// engine: prompt length.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// engine: decoding steps.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// engine: positions per verification call (speculative decoding checks this many drafted
    /// tokens at once); the table gives its cost in single decoding steps. 0 skips it.
    #[arg(long, default_value_t = 5)]
    verify: usize,
    /// engine: read each position's greedy token (its argmax, taken where the logits are), as
    /// greedy decoding without log-probabilities does, instead of every logit, as sampling does.
    #[arg(long, conflicts_with = "sampled")]
    greedy: bool,
    /// engine: read the head of each position's distribution under TPO's sampling
    /// (temperature 0.7, top-p 0.95; the logits where it is too wide) instead of every logit.
    #[arg(long)]
    sampled: bool,
    /// engine, reward: batch sizes to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4])]
    batch: Vec<usize>,
    /// Times each measurement is repeated (service: requests per arm).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// reward, tpo, service: the reward (a manifest name) [default: `judge`, the cost of a
    /// model-backed reward; `concise` for service, whose requests should cost the engine little].
    #[arg(long)]
    reward: Option<String>,
    /// Folder of reward manifests.
    #[arg(long, default_value = reward_models::manifest::DEFAULT_DIR, env = "HONE_REWARDS")]
    rewards: PathBuf,
    /// tpo: candidates per round.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// tpo: improvement rounds.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// tpo: the most tokens of each candidate and critique; speculate: of each answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// tpo, speculate: draft tokens per step of the speculative arms (0 leaves them out of
    /// tpo).
    #[arg(long, default_value_t = 4)]
    speculate: usize,
    /// tpo, speculate: the suffix drafter's arm verifies every draft, whether it pays or not (to compare
    /// drafters, not pacing).
    #[arg(long)]
    unpaced: bool,
    /// tpo, speculate: a draft model for the speculative arms (name or path; it must share
    /// the policy's tokenizer), guessing where the text does not repeat.
    #[arg(long)]
    draft: Option<String>,
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    // Every figure belongs to a machine: name it above the tables.
    println!("CPU: {}\n", policies::cpu::describe());
    let what = a.what.unwrap_or(match a.reward {
        Some(_) => What::Reward,
        None => What::Engine,
    });
    match what {
        What::Engine => engine::run(&a),
        What::Reward => reward::run(&a),
        What::Tpo => tpo::run(&a),
        What::Service => service::run(&a),
        What::Speculate => speculate::run(&a),
    }
}
