//! `hone bench reward`: a reward model's scoring throughput, pairs per second, when a round's
//! candidates are scored `--batch` at a time.

use super::BenchArgs;
use anyhow::Result;
use policies::{Message, Role};
use reward_models::manifest::{Manifests, PolicyCache};
use reward_models::Candidate;
use std::time::Instant;

/// Scores the same 8 candidates `batch` at a time and reports pairs per second.
pub fn run(a: &BenchArgs) -> Result<()> {
    let name = a.reward.as_deref().unwrap_or("judge");
    let manifests = Manifests::read_dir(&a.rewards)?;
    let reward = manifests.build(
        name,
        &crate::cli::device(a.cpu)?,
        &mut PolicyCache::default(),
    )?;
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
