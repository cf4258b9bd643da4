//! `hone bench engine`: prefill and decode throughput, measured the way llama-bench does (a
//! prompt of `--prompt-tokens` tokens, then `--gen-tokens` single-token steps), for each batch
//! size; and what a speculative verification call of `--verify` positions per row costs, in
//! single steps at the same positions (speculation pays only when that is well under the
//! tokens it accepts).

use super::BenchArgs;
use anyhow::Result;
use policies::{read_scores, Logits, Readout};
use std::time::Instant;

pub fn run(a: &BenchArgs) -> Result<()> {
    let policy = crate::cli::load_policy(&a.model, a.cpu)?;
    let model = policy.model();
    let vocab = model.config().vocab_size as u32;
    let readout = if a.greedy {
        Readout::Greedy
    } else if a.sampled {
        let tpo = hone::strategy::Request::default();
        let sampling = policies::SamplingParams {
            temperature: tpo.temperature,
            top_p: tpo.top_p,
            ..Default::default()
        };
        Readout::of(&sampling, false)
    } else {
        Readout::Logits
    };
    println!(
        "model: {} | device: {:?} | threads: {} | reads {}",
        policy.name(),
        model.device(),
        candle_core::utils::get_num_threads(),
        match readout {
            Readout::Logits => "logits",
            Readout::Greedy => "greedy tokens",
            Readout::Head(_) => "heads of distributions",
        }
    );
    let verify = a.verify;
    println!("| batch | prefill tok/s | decode tok/s | verify {verify} / step |");
    println!("|---|---|---|---|");
    for &b in &a.batch {
        // Deterministic pseudo-random token ids away from the special tokens.
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (0..a.prompt_tokens)
                    .map(|i| 100 + ((i * 7919 + r * 104_729) as u32 % (vocab - 100)))
                    .collect()
            })
            .collect();
        let (mut prefill, mut decode, mut verifying) = (0.0, 0.0, 0.0);
        // As many verification calls as there were decoding steps' worth of positions.
        let verify_calls = if verify == 0 {
            0
        } else {
            a.gen_tokens.div_ceil(verify)
        };
        // One untimed pass first: kernel loading and the allocator's first growth are not
        // what a served request pays.
        for repeat in 0..=a.repeats {
            let mut cache = model.new_cache(b);
            let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let t = Instant::now();
            // What decoding reads is read back every call (and it waits for the GPU).
            read_scores(&model.forward(&rows, &mut cache, Logits::Last)?, readout)?;
            let prefill_secs = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for step in 0..a.gen_tokens {
                let toks: Vec<[u32; 1]> = (0..b)
                    .map(|r| [100 + ((step * 31 + r) as u32 % (vocab - 100))])
                    .collect();
                let rows: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
                read_scores(&model.forward(&rows, &mut cache, Logits::Last)?, readout)?;
            }
            let decode_secs = t.elapsed().as_secs_f64();
            // Verification starts again from the prompt, so that it covers the positions the
            // single steps did: after them, its attention would read more keys than they did.
            if verify_calls > 0 {
                cache = model.new_cache(b);
                read_scores(&model.forward(&rows, &mut cache, Logits::Last)?, readout)?;
            }
            let t = Instant::now();
            for call in 0..verify_calls {
                let toks: Vec<Vec<u32>> = (0..b)
                    .map(|r| {
                        (0..verify)
                            .map(|i| 100 + ((call * 37 + i * 13 + r) as u32 % (vocab - 100)))
                            .collect()
                    })
                    .collect();
                let rows: Vec<&[u32]> = toks.iter().map(Vec::as_slice).collect();
                // Verification reads every position's scores.
                read_scores(&model.forward(&rows, &mut cache, Logits::All)?, readout)?;
            }
            if repeat > 0 {
                prefill += prefill_secs;
                decode += decode_secs;
                verifying += t.elapsed().as_secs_f64();
            }
        }
        let n = a.repeats as f64;
        let step = decode / (a.gen_tokens as f64 * n);
        let verify_cost = match verify_calls {
            0 => "-".to_string(),
            calls => format!("{:.2}", verifying / (calls as f64 * n) / step),
        };
        println!(
            "| {b} | {:.1} | {:.1} | {verify_cost} |",
            (b * a.prompt_tokens) as f64 * n / prefill,
            (b * a.gen_tokens) as f64 * n / decode
        );
    }
    Ok(())
}
