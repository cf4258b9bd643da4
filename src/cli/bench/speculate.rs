//! `hone bench speculate`: greedy decoding at batch 1 with and without speculation, on the two
//! kinds of text a TPO query generates: fresh answers to ordinary chat prompts, and refine
//! rounds (TPO's own update prompt over the policy's plain answer, with fixed suggestions). Arms
//! alternate prompt by prompt in one process; every arm must produce plain decoding's tokens,
//! or the command fails. Decoding speed is the figure compared (prefill is the same work in
//! every arm, but for the draft model's own prefill, shown apart).

use super::BenchArgs;
use anyhow::{bail, Result};
use hone::strategy::{tpo, Prompts};
use policies::{GenerateParams, GenerationStats, Message, Role, Speculation};

/// Ordinary chat prompts: the text of their answers is not in the prompt.
const CHAT: [&str; 6] = [
    "Explain how a hash map handles collisions, in one paragraph.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "What are three differences between TCP and UDP?",
    "Give a short recipe for a tomato and basil pasta.",
    "Summarize the causes of the French Revolution in four sentences.",
    "Write a haiku about a lighthouse, then explain its imagery in two sentences.",
];

/// The suggestions every refine round follows (TPO's gradient, fixed here so that each arm
/// rewrites the same text the same way).
const SUGGESTIONS: &str = "Keep what is correct, make the wording more precise, and end with \
                           a one-sentence summary.";

/// One arm: how it speculates, and whether the draft model takes part.
struct Arm {
    name: &'static str,
    speculation: Speculation,
    draft: bool,
}

#[derive(Default)]
struct Totals {
    tokens: usize,
    secs: f64,
    prefill_secs: f64,
    stats: GenerationStats,
}

impl Totals {
    fn add(&mut self, tokens: usize, s: &GenerationStats) {
        self.tokens += tokens;
        self.secs += s.decode_secs;
        self.prefill_secs += s.prefill_secs;
        let t = &mut self.stats;
        t.num_draft_tokens += s.num_draft_tokens;
        t.num_accepted_tokens += s.num_accepted_tokens;
        t.num_model_draft_tokens += s.num_model_draft_tokens;
        t.num_model_accepted_tokens += s.num_model_accepted_tokens;
        t.draft_positions += s.draft_positions;
        t.decode_tokens += s.decode_tokens;
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    // One model's weights behind both (a policy's clone shares its tensors).
    let plain = crate::cli::load_policy(&a.model, a.cpu)?;
    let policy = crate::cli::with_draft(plain.clone(), a.draft.as_deref())?;
    let k = a.speculate.max(1);
    let mut arms = vec![
        Arm {
            name: "plain",
            speculation: Speculation::OFF,
            draft: false,
        },
        Arm {
            name: "suffix",
            speculation: crate::cli::speculation(k, a.unpaced),
            draft: false,
        },
    ];
    if let Some(d) = policy.draft() {
        println!(
            "draft model: {} (a guess costs {:.2} steps to pacing)",
            d.name(),
            d.cost()
        );
        arms.push(Arm {
            name: "suffix + draft model",
            speculation: Speculation::drafts(k),
            draft: true,
        });
        arms.push(Arm {
            name: "suffix + draft model, unpaced",
            speculation: Speculation::drafts(k).unpaced(),
            draft: true,
        });
    }
    println!(
        "policy: {} | device: {:?} | threads: {} | batch 1, greedy, up to {} tokens, {k} drafts a step",
        policy.name(),
        policy.model().device(),
        candle_core::utils::get_num_threads(),
        a.max_tokens
    );
    // Each chat prompt, and a refine round over plain decoding's answer to it.
    let mut cases: Vec<(&str, Vec<u32>, Vec<String>)> = Vec::new();
    let first = GenerateParams {
        max_tokens: a.max_tokens,
        ..GenerateParams::default()
    };
    for q in CHAT {
        let chat = policy.encode_chat(&[Message::new(Role::User, q)])?;
        let (answer, _) = plain.generate(&chat, 1, &first)?;
        let Some(update) = tpo::update_prompt(
            &policy,
            &Prompts::default(),
            q,
            &answer[0].text,
            SUGGESTIONS,
        )?
        else {
            bail!("the refine prompt for {q:?} does not fit the context");
        };
        cases.push(("chat", chat, Vec::new()));
        cases.push(("refine", update, vec![tpo::UPDATE_STOP.to_string()]));
    }
    let mut totals: Vec<[Totals; 2]> = arms.iter().map(|_| Default::default()).collect();
    for _ in 0..a.repeats {
        for (kind, prompt, stop) in &cases {
            let mut reference: Option<Vec<u32>> = None;
            for (arm, totals) in arms.iter().zip(totals.iter_mut()) {
                let params = GenerateParams {
                    max_tokens: a.max_tokens,
                    stop: stop.clone(),
                    speculation: arm.speculation,
                    ..GenerateParams::default()
                };
                let model = if arm.draft { &policy } else { &plain };
                let (out, stats) = model.generate(prompt, 1, &params)?;
                let tokens = &out[0].tokens;
                match &reference {
                    None => reference = Some(tokens.clone()),
                    Some(r) if r != tokens => bail!(
                        "arm `{}` changed the greedy output of a {kind} prompt: {} tokens against plain's {}",
                        arm.name,
                        tokens.len(),
                        r.len()
                    ),
                    Some(_) => {}
                }
                totals[usize::from(*kind == "refine")].add(tokens.len(), &stats);
            }
        }
    }
    println!("\n| text | arm | tokens | prefill s | decode s | tok/s | vs plain | positions per token | suffix accepted / drafted | model accepted / drafted | draft positions |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (kind, c) in ["chat", "refine"].iter().enumerate() {
        let plain_tps = totals[0][kind].tokens as f64 / totals[0][kind].secs.max(1e-9);
        for (arm, t) in arms.iter().zip(&totals) {
            let t = &t[kind];
            let s = &t.stats;
            let tps = t.tokens as f64 / t.secs.max(1e-9);
            println!(
                "| {c} | {} | {} | {:.2} | {:.2} | {tps:.1} | {:.2}x | {:.2} | {} / {} | {} / {} | {} |",
                arm.name,
                t.tokens,
                t.prefill_secs,
                t.secs,
                tps / plain_tps,
                s.decode_tokens as f64 / t.tokens.max(1) as f64,
                s.num_accepted_tokens - s.num_model_accepted_tokens,
                s.num_draft_tokens - s.num_model_draft_tokens,
                s.num_model_accepted_tokens,
                s.num_model_draft_tokens,
                s.draft_positions,
            );
        }
    }
    Ok(())
}
