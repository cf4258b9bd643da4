//! `hone bench engine`: prefill and decode throughput, measured the way llama-bench does (a
//! prompt of `--prompt-tokens` tokens, then `--gen-tokens` single-token steps), for each batch
//! size.

use super::BenchArgs;
use anyhow::Result;
use policies::Logits;
use std::time::Instant;

pub fn run(a: &BenchArgs) -> Result<()> {
    let policy = crate::cli::load_policy(&a.model, a.cpu)?;
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
        // One untimed pass first: kernel loading and the allocator's first growth are not
        // what a served request pays.
        for repeat in 0..=a.repeats {
            let mut cache = model.new_cache(b);
            let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let t = Instant::now();
            // Logits are read back every call, as decoding does (and it waits for the GPU).
            model
                .forward(&rows, &mut cache, Logits::Last)?
                .to_vec2::<f32>()?;
            let prefill_secs = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for step in 0..a.gen_tokens {
                let toks: Vec<[u32; 1]> = (0..b)
                    .map(|r| [100 + ((step * 31 + r) as u32 % (vocab - 100))])
                    .collect();
                let rows: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
                model
                    .forward(&rows, &mut cache, Logits::Last)?
                    .to_vec2::<f32>()?;
            }
            if repeat > 0 {
                prefill += prefill_secs;
                decode += t.elapsed().as_secs_f64();
            }
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
