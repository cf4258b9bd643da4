//! `hone eval judges`: each judge's accuracy on labelled preference pairs, as a Markdown table
//! (the table in docs/EVAL.md).

use anyhow::Result;
use clap::{Args, Subcommand};
use hone::eval::judges;
use reward_models::judge::Judge;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// How often each judge prefers the better response of a labelled pair, rating responses
    /// alone and comparing them in both orders.
    Judges(JudgesArgs),
}

#[derive(Args)]
struct JudgesArgs {
    /// A JSONL file of {category, question, better, worse}.
    #[arg(long, default_value = "tests/fixtures/judge_pairs.jsonl")]
    pairs: PathBuf,
    /// The judges: policy manifest names, known model names or GGUF files (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = ["smollm2-135m".to_string(), "qwen2.5-coder-0.5b".into(), "qwen2.5-coder-1.5b".into()]
    )]
    models: Vec<String>,
    /// Only N pairs, spread evenly over the file (so every category keeps its share).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.what {
        What::Judges(a) => run_judges(a),
    }
}

fn run_judges(a: JudgesArgs) -> Result<()> {
    let mut pairs = judges::read_pairs(&a.pairs)?;
    if let Some(limit) = a.limit.filter(|&l| l < pairs.len()) {
        let len = pairs.len();
        pairs = (0..limit).map(|i| pairs[i * len / limit].clone()).collect();
    }
    println!("CPU: {}\n", policies::cpu::describe());
    let mut reports = Vec::new();
    for model in &a.models {
        let judge = Judge::new(Arc::new(super::load_policy(model, a.cpu)?), None)?;
        let report = judges::evaluate(&judge, &pairs, |done| {
            eprint!("\r{model}: {done}/{} pairs", pairs.len());
        })?;
        eprintln!();
        reports.push((model.clone(), report));
    }
    print!("{}", judges::markdown(&reports));
    Ok(())
}
