//! `hone bench`: prefill and decode throughput, measured the way llama-bench does (a prompt of
//! `--prompt-tokens` tokens, then `--gen-tokens` single-token steps), for each batch size.
//! With `--reward NAME` it measures that reward model's scoring throughput instead.

use anyhow::Result;
use clap::Args;
use policies::{Logits, Message, Role};
use reward_models::manifest::{Manifests, PolicyCache};
use reward_models::Candidate;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// A policy manifest name (in $HONE_POLICIES, default policies/manifests), a GGUF file, an
    /// HF checkpoint folder, or `default` (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    model: String,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Batch sizes to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4])]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Measure this reward model (a manifest name) instead of the policy: pairs scored per
    /// second when a round's candidates are scored `batch` at a time.
    #[arg(long)]
    reward: Option<String>,
    /// Folder of reward manifests.
    #[arg(long, default_value = "reward_models/manifests", env = "HONE_REWARDS")]
    rewards: PathBuf,
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(reward) = &a.reward {
        return run_reward(&a, reward);
    }
    let policy = super::load_policy(&a.model, a.cpu)?;
    let model = policy.model();
    let vocab = model.config().vocab_size as u32;
    println!(
        "model: {} | device: {:?} | threads: {}",
        policy.name(),
        model.device(),
        candle_core::utils::get_num_threads()
    );
    println!("| batch | prefill tok/s | decode tok/s |");
    println!("|---|---|---|");
    for &b in &a.batch {
        // Deterministic pseudo-random token ids away from the special tokens.
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (0..a.prompt_tokens)
                    .map(|i| 100 + ((i * 7919 + r * 104_729) as u32 % (vocab - 100)))
                    .collect()
            })
            .collect();
        let (mut prefill, mut decode) = (0.0, 0.0);
        for _ in 0..a.repeats {
            let mut cache = model.new_cache(b);
            let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let t = Instant::now();
            model.forward(&rows, &mut cache, Logits::Last)?;
            prefill += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for step in 0..a.gen_tokens {
                let toks: Vec<[u32; 1]> = (0..b)
                    .map(|r| [100 + ((step * 31 + r) as u32 % (vocab - 100))])
                    .collect();
                let rows: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
                model.forward(&rows, &mut cache, Logits::Last)?;
            }
            decode += t.elapsed().as_secs_f64();
        }
        let n = a.repeats as f64;
        println!(
            "| {b} | {:.1} | {:.1} |",
            (b * a.prompt_tokens) as f64 * n / prefill,
            (b * a.gen_tokens) as f64 * n / decode
        );
    }
    Ok(())
}

/// Scores the same 8 candidates `batch` at a time and reports pairs per second.
fn run_reward(a: &BenchArgs, name: &str) -> Result<()> {
    let manifests = Manifests::read_dir(&a.rewards)?;
    let reward = manifests.build(name, &super::device(a.cpu)?, &mut PolicyCache::default())?;
    let messages = [Message::new(
        Role::User,
        "Explain why the sky is blue in two sentences.",
    )];
    let responses: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "Sunlight scatters off air molecules, and blue light scatters most (Rayleigh scattering). \
                 So the sky looks blue from every direction, variant {i}."
            )
        })
        .collect();
    let candidates: Vec<Candidate> = responses
        .iter()
        .map(|r| Candidate {
            messages: &messages,
            response: r,
        })
        .collect();
    println!(
        "reward: {name} | threads: {}",
        candle_core::utils::get_num_threads()
    );
    println!("| batch | pairs/s |");
    println!("|---|---|");
    for &b in &a.batch {
        let b = b.clamp(1, candidates.len());
        let t = Instant::now();
        for _ in 0..a.repeats {
            for chunk in candidates.chunks(b) {
                reward.score(chunk)?;
            }
        }
        let pairs = (candidates.len() * a.repeats) as f64;
        println!("| {b} | {:.2} |", pairs / t.elapsed().as_secs_f64());
    }
    Ok(())
}
