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
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let policy = super::load_policy(&a.model, a.cpu)?;
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
    eprintln!(
        "prefill: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s",
        stats.prefill_tokens,
        stats.prefill_tps(),
        stats.decode_tokens,
        stats.decode_tps()
    );
    Ok(())
}
