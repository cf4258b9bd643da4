//! `hone eval judges`: each judge's accuracy on labelled preference pairs, as a Markdown table
//! (the table in docs/EVAL.md). `hone eval run`: a prompt set through every strategy at every
//! budget, written up as results.json, report.md and a chart (docs/EVAL.md, "Strategies at
//! equal compute").

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hone::eval::prompts::{self, spread};
use hone::eval::run::RunRecord;
use hone::eval::run::{self, Plan};
use hone::eval::service::Service;
use hone::eval::{judges, report, svg};
use hone::server::Config;
use hone::strategy::Strategy;
use reward_models::judge::{Judge, Prompts};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    /// Every strategy at every compute budget on a prompt set: pass rate, reward, exact match,
    /// compute and latency per strategy and budget, with 95% intervals and a chart.
    Run(RunArgs),
    /// Writes report.md, results.json and the chart again from a run's folder (plan.json and
    /// runs.jsonl): after changing the report, or for a run that was stopped part way.
    Report(ReportArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// The folder `hone eval run --out` wrote.
    dir: PathBuf,
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
    #[command(flatten)]
    prompts: PromptFiles,
    /// Also write what each judge said about each pair to this JSONL file.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// Rating points taken off per doubling of a response's length in words (a manifest's
    /// `length_penalty`).
    #[arg(long, default_value_t = 0.0)]
    length_penalty: f32,
    /// Fail (exit non-zero) when a judge's side-by-side accuracy is below this fraction, so
    /// that a judge's floor can be checked by one command (0.85 for the shipped 1.5B judge).
    #[arg(long)]
    min_pairwise_accuracy: Option<f64>,
    #[arg(long)]
    cpu: bool,
}

/// Judge prompts read from files, to try a prompt before putting it in a reward manifest.
#[derive(Args)]
struct PromptFiles {
    /// The rating prompt (with {question} and {response}) from this file.
    #[arg(long)]
    rating_prompt: Option<PathBuf>,
    /// The pairwise prompt (with {question}, {a} and {b}) from this file.
    #[arg(long)]
    pairwise_prompt: Option<PathBuf>,
}

impl PromptFiles {
    fn read(&self) -> Result<Prompts> {
        let read = |p: &Option<PathBuf>| -> Result<Option<String>> {
            p.as_ref()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()
        };
        Ok(Prompts::new(
            read(&self.rating_prompt)?,
            read(&self.pairwise_prompt)?,
        )?)
    }
}

#[derive(Args)]
struct RunArgs {
    /// A JSONL prompt set: {"prompt": ...} or {"messages": [...]}, with optional
    /// "constraints" (as /optimize takes them) and "reference". Default: the built-in set.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The strategies, by the names /optimize takes.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = super::optimize::parse_strategy,
        default_values = ["plain", "best_of_n", "weighted_best_of_n", "tpo", "auto"]
    )]
    strategies: Vec<Strategy>,
    /// Compute budgets per query, in compute units (src/budget.rs). On the default model a
    /// plain answer costs about 100; 900 buys best-of-N about six whole candidates; 2700 buys
    /// TPO a whole refinement round (critique, suggestions, rewrites).
    #[arg(long, value_delimiter = ',', default_values_t = [300u64, 900, 2700])]
    budgets: Vec<u64>,
    /// Only N prompts, spread evenly over the set (so the mix of kinds is kept).
    #[arg(long)]
    limit: Option<usize>,
    /// Only the prompts with requirements (the ones the pass rate counts), before --limit.
    #[arg(long)]
    constrained: bool,
    /// The sampling seed of every run; the same seed repeats every answer.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where results.json, runs.jsonl, report.md and pass_rate.svg go.
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    /// A reward manifest name. Default: the service's default reward.
    #[arg(long)]
    reward: Option<String>,
    /// Folder of reward manifests (in-process only).
    #[arg(long, default_value = reward_models::manifest::DEFAULT_DIR, env = "HONE_REWARDS")]
    rewards: PathBuf,
    /// The policy (in-process only): as `hone optimize --model`.
    #[arg(long, default_value = "default", conflicts_with = "server")]
    model: String,
    /// Send the requests to a running hone server (http:// or https://host:port) instead of starting one
    /// in this process.
    #[arg(long)]
    server: Option<String>,
    /// Also compare each answer with plain decoding's at the same budget, with this model as a
    /// pairwise judge (both orders). Slow on a CPU.
    #[arg(long)]
    judge: Option<String>,
    #[command(flatten)]
    judge_prompts: PromptFiles,
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.what {
        What::Judges(a) => run_judges(a),
        What::Run(a) => run_strategies(a),
        What::Report(a) => rebuild_report(&a.dir),
    }
}

fn run_judges(a: JudgesArgs) -> Result<()> {
    let pairs = spread(&judges::read_pairs(&a.pairs)?, a.limit);
    let prompts = a.prompts.read()?;
    println!("Machine: {}\n", policies::describe(&super::device(a.cpu)?));
    let mut reports = Vec::new();
    for model in &a.models {
        let judge = Judge::new(Arc::new(super::load_policy(model, a.cpu)?), prompts.clone())?
            .with_length_penalty(a.length_penalty)?;
        let report = judges::evaluate(&judge, &pairs, |done| {
            eprint!("\r{model}: {done}/{} pairs", pairs.len());
        })?;
        eprintln!();
        reports.push((model.clone(), report));
    }
    if let Some(path) = &a.scores {
        let mut lines = String::new();
        for (model, report) in &reports {
            for pair in &report.pairs {
                let mut line = serde_json::to_value(pair)?;
                line["judge"] = model.clone().into();
                lines.push_str(&format!("{line}\n"));
            }
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", judges::markdown(&reports));
    if let Some(floor) = a.min_pairwise_accuracy {
        let below: Vec<String> = reports
            .iter()
            .filter(|(_, r)| r.pairwise.accuracy() < floor)
            .map(|(model, r)| format!("{model} ({:.1}%)", 100.0 * r.pairwise.accuracy()))
            .collect();
        if !below.is_empty() {
            bail!(
                "side-by-side accuracy below the floor of {:.1}%: {}",
                100.0 * floor,
                below.join(", ")
            );
        }
    }
    Ok(())
}

fn run_strategies(a: RunArgs) -> Result<()> {
    if a.strategies.is_empty() || a.budgets.is_empty() {
        bail!("--strategies and --budgets need at least one value each");
    }
    if a.budgets.contains(&0) {
        bail!("--budgets must be positive numbers of compute units");
    }
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let mut strategies = a.strategies.clone();
    dedup(&mut strategies);
    let mut budgets = a.budgets.clone();
    budgets.sort_unstable();
    budgets.dedup();
    if a.judge.is_some() && !strategies.contains(&Strategy::Plain) {
        bail!("--judge compares answers with plain decoding's: add plain to --strategies");
    }
    let all = prompts::read(a.prompts.as_deref())?;
    let total = all.len();
    let prompts = prompts::select(all, a.constrained, a.limit);
    let which = if a.constrained {
        ", with requirements"
    } else {
        ""
    };
    let prompt_set = match &a.prompts {
        None => format!("the built-in set ({} of {total}{which})", prompts.len()),
        Some(p) => format!("{} ({} of {total}{which})", p.display(), prompts.len()),
    };
    let machine = match &a.server {
        None => policies::describe(&super::device(a.cpu)?),
        Some(url) => format!("the server at {url}"),
    };
    eprintln!("Machine: {machine}");
    let judge = match &a.judge {
        Some(model) => Some(Judge::new(
            Arc::new(super::load_policy(model, a.cpu)?),
            a.judge_prompts.read()?,
        )?),
        None => None,
    };
    let service = match &a.server {
        Some(url) => Service::connect(url)?,
        None => Service::start(Config {
            model: a.model.clone(),
            policies: super::policies_dir(),
            reward: a.reward.clone().unwrap_or_else(|| Config::default().reward),
            rewards: a.rewards.clone(),
            cpu: a.cpu,
            // A free port of 127.0.0.1, never a server's usual one.
            host: "127.0.0.1".into(),
            port: 0,
            // The largest budget asked for, rather than the server's one-core-minute default.
            max_budget: budgets.last().copied(),
            ..Config::default()
        })?,
    };
    let plan = Plan {
        strategies,
        budgets,
        seed: a.seed,
        reward: a.reward.clone(),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let log_path = a.out.join("runs.jsonl");
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!(
        "{} prompts x {} strategies x {} budgets on `{}` ({}), reward `{}`",
        prompts.len(),
        plan.strategies.len(),
        plan.budgets.len(),
        service.model,
        service.url(),
        plan.reward.as_deref().unwrap_or(&service.reward)
    );
    let mut meta = report::Meta {
        date: String::new(),
        machine,
        model: service.model.clone(),
        reward: plan
            .reward
            .clone()
            .unwrap_or_else(|| service.reward.clone()),
        prompt_set,
        prompts: prompts.len(),
        seed: plan.seed,
        judge: a.judge.clone(),
        wall_secs: 0.0,
    };
    let header = Header {
        meta: meta.clone(),
        strategies: plan.strategies.clone(),
        budgets: plan.budgets.clone(),
    };
    write(
        &a.out.join(PLAN_FILE),
        serde_json::to_string_pretty(&header)?,
    )?;
    let start = Instant::now();
    let mut records = run::run_all(&service, &prompts, &plan, Some(&mut log), |done, total| {
        eprint!(
            "\r{done}/{total} runs, {:.0} s",
            start.elapsed().as_secs_f64()
        );
    })?;
    eprintln!();
    if let Some(judge) = &judge {
        run::judge_against_plain(judge, &prompts, &mut records, |done, total| {
            eprint!("\rjudged {done}/{total} answers against plain");
        })?;
        eprintln!();
    }
    meta.date = today();
    meta.wall_secs = start.elapsed().as_secs_f64();
    let header = Header { meta, ..header };
    write(
        &a.out.join(PLAN_FILE),
        serde_json::to_string_pretty(&header)?,
    )?;
    let markdown = write_report(&a.out, &header, &records)?;
    let mut refusals: Vec<&str> = records
        .iter()
        .filter_map(|r| r.refused.as_deref())
        .collect();
    refusals.sort_unstable();
    refusals.dedup();
    for why in refusals {
        eprintln!("refused: {why}");
    }
    print!("{markdown}");
    eprintln!("written to {}", a.out.display());
    Ok(())
}

/// What a run folder's `plan.json` holds: how the run was made, written before it starts.
#[derive(Serialize, Deserialize)]
struct Header {
    meta: report::Meta,
    strategies: Vec<Strategy>,
    budgets: Vec<u64>,
}

const PLAN_FILE: &str = "plan.json";

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn today() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    report::date(now)
}

/// Writes results.json, report.md and the chart of `records` into `dir`; returns the report.
fn write_report(dir: &Path, header: &Header, records: &[RunRecord]) -> Result<String> {
    let cells = report::cells(&header.strategies, &header.budgets, records);
    let moves = report::moves(&header.strategies, records);
    let meta = &header.meta;
    let results = serde_json::json!({
        "meta": meta,
        "strategies": header.strategies,
        "budgets": header.budgets,
        "cells": cells,
        "moves": moves,
        "runs": records,
    });
    let chart = "pass_rate.svg";
    let title = format!(
        "{}: pass rate against compute ({} prompts)",
        meta.model, meta.prompts
    );
    let markdown = report::markdown(meta, &cells, &moves, chart);
    write(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    write(&dir.join("report.md"), markdown.clone())?;
    write(&dir.join(chart), svg::chart(&title, &cells))?;
    Ok(markdown)
}

/// `hone eval report DIR`: the report of the runs in DIR's log. For a run stopped part way,
/// the prompt count and the time are those of the runs that finished.
fn rebuild_report(dir: &Path) -> Result<()> {
    let plan_path = dir.join(PLAN_FILE);
    let text = std::fs::read_to_string(&plan_path)
        .with_context(|| format!("reading {}", plan_path.display()))?;
    let mut header: Header =
        serde_json::from_str(&text).with_context(|| format!("reading {}", plan_path.display()))?;
    let log_path = dir.join("runs.jsonl");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    let records = log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<RunRecord>(l)
                .with_context(|| format!("{} line {}", log_path.display(), i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    if records.is_empty() {
        bail!("{} holds no runs", log_path.display());
    }
    let lines: std::collections::BTreeSet<usize> = records.iter().map(|r| r.line).collect();
    let meta = &mut header.meta;
    if meta.date.is_empty() {
        meta.date = today();
    }
    if meta.wall_secs == 0.0 {
        meta.prompts = lines.len();
        meta.wall_secs = records
            .iter()
            .filter_map(|r| r.latency_ms)
            .map(|ms| ms as f64 / 1000.0)
            .sum();
    }
    print!("{}", write_report(dir, &header, &records)?);
    eprintln!("written to {}", dir.display());
    Ok(())
}

/// Removes repeated entries, keeping the first of each.
fn dedup(strategies: &mut Vec<Strategy>) {
    let mut seen = Vec::new();
    strategies.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
}
