//! Running the prompt set through every strategy at every budget, and, when asked, judging
//! each answer against plain decoding's answer to the same prompt at the same budget.
//!
//! Every run of one prompt uses the same seed. Plain decoding with seed `s` is then the first
//! candidate best-of-N samples with seed `s`, so the strategies are compared on the same
//! draws (a paired comparison) rather than on luck, and a rerun repeats every answer.

use super::grade::{grade, move_outcomes, Answered, Grade, MoveOutcome};
use super::prompts::EvalPrompt;
use super::service::{Reply, Service};
use crate::strategy::{query_text, Strategy};
use anyhow::{Context, Result};
use reward_models::judge::Judge;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;

/// The candidates best-of-N asks for: the request API's upper limit. The loop's planner
/// lowers it to what the budget affords (`budget::plan` drops candidates before shortening
/// them), so best-of-N spends its budget on width instead of stopping at the default 4.
pub const BEST_OF_N_WIDTH: usize = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub strategies: Vec<Strategy>,
    /// Compute units per query.
    pub budgets: Vec<u64>,
    pub seed: u64,
    /// A reward manifest name; `None` is the service's default reward.
    pub reward: Option<String>,
}

/// One prompt run through one strategy at one budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The prompt's line in its file.
    pub line: usize,
    pub strategy: Strategy,
    pub budget: u64,
    /// Why the service refused the request (a 422), in which case nothing below is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub answer: Option<String>,
    /// The reward of the answer, on the scale of the reward the prompt was scored with.
    pub score: Option<f32>,
    /// Compute units spent.
    pub compute: Option<u64>,
    /// The request's time as the client saw it, and the part spent inside the loop.
    pub latency_ms: Option<u64>,
    pub loop_ms: Option<u64>,
    pub stopped: Option<String>,
    #[serde(flatten)]
    pub grade: Grade,
    /// The judge's probability that this answer is better than plain decoding's answer to the
    /// same prompt at the same budget (both orders averaged); with `--judge` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beats_plain: Option<f32>,
    /// The rounds after the first, and whether each raised the best score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<MoveOutcome>,
}

/// The `/optimize` body of one run.
pub fn body(prompt: &EvalPrompt, strategy: Strategy, budget: u64, plan: &Plan) -> Value {
    let mut body = json!({
        "messages": prompt.messages,
        "strategy": strategy.name(),
        "budget": {"compute": budget},
        "seed": plan.seed,
    });
    if matches!(strategy, Strategy::BestOfN | Strategy::WeightedBestOfN) {
        body["n"] = json!(BEST_OF_N_WIDTH);
    }
    // Left out, the service reads the constraints from the prompt's words, as the grading did.
    if let Some(constraints) = &prompt.source.constraints {
        body["constraints"] = json!(constraints);
    }
    if let Some(reward) = &plan.reward {
        body["reward"] = json!(reward);
    }
    body
}

/// Runs every prompt through every strategy at every budget, prompt by prompt. Each record is
/// also appended to `log` as a JSON line as soon as it exists, so a long run can be watched
/// and what finished survives an interruption. `progress` hears (done, total) after each run.
pub fn run_all(
    service: &Service,
    prompts: &[EvalPrompt],
    plan: &Plan,
    mut log: Option<&mut dyn Write>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<RunRecord>> {
    let total = prompts.len() * plan.budgets.len() * plan.strategies.len();
    let mut records = Vec::with_capacity(total);
    for prompt in prompts {
        for &budget in &plan.budgets {
            for &strategy in &plan.strategies {
                let reply = service
                    .optimize(&body(prompt, strategy, budget, plan))
                    .with_context(|| {
                        format!("line {}, {} at {budget}", prompt.line, strategy.name())
                    })?;
                let record = record(prompt, strategy, budget, reply).with_context(|| {
                    format!("line {}, {} at {budget}", prompt.line, strategy.name())
                })?;
                if let Some(log) = log.as_mut() {
                    writeln!(log, "{}", serde_json::to_string(&record)?)
                        .context("writing the run log")?;
                }
                records.push(record);
                progress(records.len(), total);
            }
        }
    }
    Ok(records)
}

fn record(prompt: &EvalPrompt, strategy: Strategy, budget: u64, reply: Reply) -> Result<RunRecord> {
    let mut record = RunRecord {
        line: prompt.line,
        strategy,
        budget,
        refused: None,
        answer: None,
        score: None,
        compute: None,
        latency_ms: None,
        loop_ms: None,
        stopped: None,
        grade: Grade::default(),
        beats_plain: None,
        moves: Vec::new(),
    };
    match reply {
        Reply::Refused(why) => record.refused = Some(why),
        Reply::Answered(value, latency) => {
            let answered: Answered =
                serde_json::from_value(value).context("reading the service's answer")?;
            record.grade = grade(prompt, &answered);
            record.moves = move_outcomes(&answered.rounds);
            record.latency_ms = Some(latency.as_millis() as u64);
            record.loop_ms = Some(answered.usage.wall_ms);
            record.compute = Some(answered.usage.compute);
            record.score = answered.score;
            record.stopped = Some(answered.stopped);
            record.answer = Some(answered.answer);
        }
    }
    Ok(record)
}

/// Sets `beats_plain` on every answered run of a strategy other than plain whose prompt plain
/// decoding also answered at the same budget. Identical answers tie (0.5) without asking the
/// judge. `progress` hears (done, total).
pub fn judge_against_plain(
    judge: &Judge,
    prompts: &[EvalPrompt],
    records: &mut [RunRecord],
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let plain: std::collections::HashMap<(usize, u64), String> = records
        .iter()
        .filter(|r| r.strategy == Strategy::Plain)
        .filter_map(|r| Some(((r.line, r.budget), r.answer.clone()?)))
        .collect();
    let by_line: std::collections::HashMap<usize, &EvalPrompt> =
        prompts.iter().map(|p| (p.line, p)).collect();
    let todo: Vec<usize> = (0..records.len())
        .filter(|&i| {
            let r = &records[i];
            r.strategy != Strategy::Plain
                && r.answer.is_some()
                && plain.contains_key(&(r.line, r.budget))
        })
        .collect();
    for (done, &i) in todo.iter().enumerate() {
        let r = &records[i];
        let (Some(answer), Some(baseline), Some(prompt)) = (
            r.answer.as_deref(),
            plain.get(&(r.line, r.budget)),
            by_line.get(&r.line),
        ) else {
            continue;
        };
        let p = if answer.trim() == baseline.trim() {
            0.5
        } else {
            judge
                .prefer_first(&prompt.messages, answer, baseline)
                .with_context(|| {
                    format!("judging line {} ({})", r.line, query_text(&prompt.messages))
                })?
        };
        records[i].beats_plain = Some(p);
        progress(done + 1, todo.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::prompts::parse;

    #[test]
    fn bodies_carry_the_plan_and_the_line_own_constraints() {
        let prompts = parse(
            concat!(
                "{\"prompt\": \"Say hi in fewer than 5 words.\"}\n",
                "{\"prompt\": \"Say hi.\", \"constraints\": [{\"kind\": \"word_count\", \"max\": 3}]}\n",
            ),
            "t",
        )
        .unwrap();
        let plan = Plan {
            strategies: vec![Strategy::Plain, Strategy::BestOfN],
            budgets: vec![300],
            seed: 7,
            reward: None,
        };
        let b = body(&prompts[0], Strategy::BestOfN, 300, &plan);
        assert_eq!(b["strategy"], "best_of_n");
        assert_eq!(b["budget"]["compute"], 300);
        assert_eq!(b["seed"], 7);
        assert_eq!(b["n"], BEST_OF_N_WIDTH);
        assert_eq!(b["messages"][0]["content"], "Say hi in fewer than 5 words.");
        assert!(b.get("constraints").is_none() && b.get("reward").is_none());
        let plan = Plan {
            reward: Some("concise".into()),
            ..plan
        };
        let b = body(&prompts[1], Strategy::Tpo, 900, &plan);
        assert!(b.get("n").is_none(), "TPO keeps the service's width");
        assert_eq!(b["constraints"][0]["max"], 3);
        assert_eq!(b["reward"], "concise");
        // The body is one the service accepts.
        let parsed: crate::server::api::OptimizeBody = serde_json::from_value(b).unwrap();
        assert_eq!(parsed.strategy.as_deref(), Some("tpo"));
    }
}
