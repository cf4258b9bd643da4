//! `hone score`: score one response with a configured reward model.

use anyhow::Result;
use clap::Args;
use policies::{Message, Role};
use reward_models::manifest::{Manifests, PolicyCache};
use reward_models::Candidate;
use std::path::PathBuf;

#[derive(Args)]
pub struct ScoreArgs {
    /// Name of a reward manifest (a file stem in --rewards).
    #[arg(long, default_value = "default")]
    reward: String,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    response: String,
    /// Folder of reward manifests.
    #[arg(long, default_value = reward_models::manifest::DEFAULT_DIR, env = "HONE_REWARDS")]
    rewards: PathBuf,
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let manifests = Manifests::read_dir(&a.rewards)?;
    let device = super::device(a.cpu)?;
    let model = manifests.build(&a.reward, &device, &mut PolicyCache::default())?;
    let messages = [Message::new(Role::User, a.prompt)];
    let scores = model.score(&[Candidate {
        messages: &messages,
        response: &a.response,
    }])?;
    for s in scores {
        println!("score: {:.4}", s.value);
        for r in s.reasons {
            println!("  - {r}");
        }
    }
    Ok(())
}
