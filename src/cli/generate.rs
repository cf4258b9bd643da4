//! `hone generate`: complete a prompt from the shell.

use anyhow::Result;
use clap::Args;
use policies::{GenerateParams, Message, Role, SamplingParams};

#[derive(Args)]
pub struct GenerateArgs {
    /// The user's message (rendered with the model's chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// A policy manifest name (in $HONE_POLICIES, default policies/manifests), a GGUF file, an
    /// HF checkpoint folder, or `default` (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    model: String,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of completions, decoded as one batch over one shared prefill.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Send the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Speculative decoding: the most draft tokens verified per step (0 = off).
    #[arg(long, default_value_t = 0)]
    speculate: usize,
    /// Verify every draft, whether it pays or not (to compare drafters, not pacing).
    #[arg(long)]
    unpaced: bool,
    /// A draft model (name or path; it must share the policy's tokenizer) that guesses where
    /// the text does not repeat. Used only with --speculate.
    #[arg(long)]
    draft: Option<String>,
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let policy = super::with_draft(super::load_policy(&a.model, a.cpu)?, a.draft.as_deref())?;
    let prompt = if a.raw {
        policy.encode_prompt(&a.prompt)?
    } else {
        policy.encode_chat(&[Message::new(Role::User, a.prompt.clone())])?
    };
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop: a.stop,
        speculation: super::speculation(a.speculate, a.unpaced),
        ..Default::default()
    };
    let (outs, stats) = policy.generate(&prompt, a.batch, &params)?;
    for (i, g) in outs.iter().enumerate() {
        if outs.len() > 1 {
            println!(
                "--- completion {i} ({} tokens, {:?})",
                g.tokens.len(),
                g.finish
            );
        }
        println!("{}", g.text);
    }
    // Tokens generated per second of decoding; with speculation a step may gain several.
    let generated: usize = outs.iter().map(|g| g.tokens.len()).sum();
    eprintln!(
        "prefill: {} tokens, {:.1} tok/s | decode: {generated} tokens in {:.2} s, {:.1} tok/s ({} positions computed)",
        stats.prefill_tokens,
        stats.prefill_tps(),
        stats.decode_secs,
        generated as f64 / stats.decode_secs.max(1e-9),
        stats.decode_tokens,
    );
    if a.speculate > 0 {
        eprintln!(
            "speculation: {} of {} draft tokens accepted over {} drafting steps ({} of {} over {} steps from sibling rows); {} withheld (would not pay)",
            stats.num_accepted_tokens, stats.num_draft_tokens, stats.num_drafts,
            stats.num_sibling_accepted_tokens, stats.num_sibling_draft_tokens, stats.num_sibling_drafts,
            stats.num_withheld_tokens
        );
    }
    if let Some(draft) = policy.draft().filter(|_| a.speculate > 0) {
        eprintln!(
            "draft model {}: {} of {} draft tokens accepted over {} drafting steps; {} positions computed",
            draft.name(),
            stats.num_model_accepted_tokens,
            stats.num_model_draft_tokens,
            stats.num_model_drafts,
            stats.draft_positions
        );
    }
    Ok(())
}
