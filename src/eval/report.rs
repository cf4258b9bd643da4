//! The figures of `hone eval run`, per strategy and budget, and the Markdown report.
//!
//! Every rate comes with its count and a 95% interval: with a few dozen prompts per cell the
//! intervals are wide, and the report should say so rather than let a difference inside them
//! pass for a finding.

use super::run::RunRecord;
use super::stats::{mean, mean_interval, sign_test, wilson};
use crate::strategy::{Move, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A proportion with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Successes (a win rate counts ties as halves).
    pub k: f64,
    pub n: usize,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Rate {
    pub fn of(k: f64, n: usize) -> Option<Self> {
        let (lo, hi) = wilson(k, n)?;
        Some(Self {
            k,
            n,
            rate: k / n as f64,
            lo,
            hi,
        })
    }
}

/// A mean with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// The figures of one strategy at one budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub strategy: Strategy,
    pub budget: u64,
    /// Runs, and how many of them the service refused.
    pub runs: usize,
    pub refused: usize,
    /// Answers meeting every constraint, over the prompts that have constraints.
    pub pass: Option<Rate>,
    /// The reward of the answers that were scored.
    pub reward: Option<Mean>,
    /// Final answers equal to the reference, over the prompts that have one.
    pub exact: Option<Rate>,
    pub mean_compute: Option<f64>,
    pub mean_latency_ms: Option<f64>,
    /// Answers that restate the task or the critique (the goal is 0).
    pub restated: usize,
    /// Judged better than plain decoding at the same budget (ties count half); `--judge` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beats_plain: Option<Rate>,
    /// Pass or fail against plain decoding's on the same prompts at the same budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired: Option<Paired>,
}

/// A strategy's pass/fail against plain decoding's, prompt by prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Prompts this strategy passes and plain decoding fails, and the reverse.
    pub gained: usize,
    pub lost: usize,
    /// The exact sign test's p-value for that split ([`sign_test`]).
    pub p: f64,
}

/// Pairs `runs` with plain decoding's runs of the same prompts at `budget`; `None` for plain
/// itself or when no prompt with constraints was answered by both.
fn paired(
    strategy: Strategy,
    budget: u64,
    runs: &[&RunRecord],
    records: &[RunRecord],
) -> Option<Paired> {
    if strategy == Strategy::Plain {
        return None;
    }
    let plain: HashMap<usize, bool> = records
        .iter()
        .filter(|r| r.strategy == Strategy::Plain && r.budget == budget && r.answer.is_some())
        .filter_map(|r| Some((r.line, r.grade.pass?)))
        .collect();
    let pairs: Vec<(bool, bool)> = runs
        .iter()
        .filter(|r| r.answer.is_some())
        .filter_map(|r| Some((r.grade.pass?, *plain.get(&r.line)?)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let gained = pairs.iter().filter(|&&(s, p)| s && !p).count();
    let lost = pairs.iter().filter(|&&(s, p)| !s && p).count();
    Some(Paired {
        gained,
        lost,
        p: sign_test(gained, lost),
    })
}

/// The cells, strategy by strategy in the order given, each budget in the order given.
pub fn cells(strategies: &[Strategy], budgets: &[u64], records: &[RunRecord]) -> Vec<Cell> {
    let mut out = Vec::new();
    for &strategy in strategies {
        for &budget in budgets {
            let runs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| r.strategy == strategy && r.budget == budget)
                .collect();
            let answered: Vec<&RunRecord> = runs
                .iter()
                .copied()
                .filter(|r| r.answer.is_some())
                .collect();
            let rate = |flags: Vec<bool>| {
                Rate::of(flags.iter().filter(|&&f| f).count() as f64, flags.len())
            };
            let wins: Vec<f64> = answered
                .iter()
                .filter_map(|r| r.beats_plain)
                .map(|p| match p {
                    p if p > 0.5 => 1.0,
                    p if p < 0.5 => 0.0,
                    _ => 0.5,
                })
                .collect();
            let scores: Vec<f64> = answered
                .iter()
                .filter_map(|r| r.score.map(f64::from))
                .collect();
            let compute: Vec<f64> = answered
                .iter()
                .filter_map(|r| r.compute.map(|c| c as f64))
                .collect();
            let latency: Vec<f64> = answered
                .iter()
                .filter_map(|r| r.latency_ms.map(|l| l as f64))
                .collect();
            out.push(Cell {
                strategy,
                budget,
                runs: runs.len(),
                refused: runs.len() - answered.len(),
                pass: rate(answered.iter().filter_map(|r| r.grade.pass).collect()),
                reward: mean_interval(&scores).map(|(mean, lo, hi)| Mean {
                    mean,
                    lo,
                    hi,
                    n: scores.len(),
                }),
                exact: rate(answered.iter().filter_map(|r| r.grade.exact).collect()),
                mean_compute: mean(&compute),
                mean_latency_ms: mean(&latency),
                restated: answered
                    .iter()
                    .filter(|r| r.grade.restates.is_some())
                    .count(),
                beats_plain: Rate::of(wins.iter().sum(), wins.len()),
                paired: paired(strategy, budget, &runs, records),
            });
        }
    }
    out
}

/// What the report says about how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The day the run finished (UTC, YYYY-MM-DD).
    pub date: String,
    /// The CPU (or, with `--server`, the server's address: its hardware is not known here).
    pub machine: String,
    pub model: String,
    pub reward: String,
    pub prompt_set: String,
    pub prompts: usize,
    pub seed: u64,
    pub judge: Option<String>,
    pub wall_secs: f64,
}

fn percent(r: &Option<Rate>) -> String {
    match r {
        None => "-".into(),
        Some(r) => format!(
            "{:.0}% ({}/{}) [{:.0}, {:.0}]",
            100.0 * r.rate,
            trim_number(r.k),
            r.n,
            100.0 * r.lo,
            100.0 * r.hi
        ),
    }
}

/// 3 for 3.0, 2.5 for 2.5.
fn trim_number(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The table of cells: one row per strategy and budget.
pub fn table(cells: &[Cell]) -> String {
    let judged = cells.iter().any(|c| c.beats_plain.is_some());
    let mut out = String::from(
        "| strategy | budget | pass rate [95% CI] | passes vs plain (p) | mean reward [95% CI] | exact match [95% CI] | mean units | mean latency (s) | restated | refused |",
    );
    if judged {
        out.push_str(" beats plain [95% CI] |");
    }
    out.push_str("\n|---|---:|---|---|---|---|---:|---:|---:|---:|");
    if judged {
        out.push_str("---|");
    }
    out.push('\n');
    for c in cells {
        let reward = c.reward.map_or("-".into(), |m| {
            format!("{:.3} [{:.3}, {:.3}]", m.mean, m.lo, m.hi)
        });
        let paired = c.paired.map_or("-".into(), |p| {
            format!("+{} -{} ({})", p.gained, p.lost, p_value(p.p))
        });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.strategy.name(),
            c.budget,
            percent(&c.pass),
            paired,
            reward,
            percent(&c.exact),
            c.mean_compute.map_or("-".into(), |u| format!("{u:.0}")),
            c.mean_latency_ms
                .map_or("-".into(), |ms| format!("{:.1}", ms / 1000.0)),
            c.restated,
            c.refused,
        ));
        if judged {
            out.push_str(&format!(" {} |", percent(&c.beats_plain)));
        }
        out.push('\n');
    }
    out
}

/// A p-value to three decimals, floored at 0.001.
fn p_value(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// How often each kind of round raised the best score, for one strategy over all its budgets:
/// the question `auto` decides each round (refine or resample?).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moves {
    pub strategy: Strategy,
    pub refine: Option<Rate>,
    pub resample: Option<Rate>,
}

/// One row per strategy that ran rounds after its first.
pub fn moves(strategies: &[Strategy], records: &[RunRecord]) -> Vec<Moves> {
    strategies
        .iter()
        .filter_map(|&strategy| {
            let rate = |m: Move| {
                let tried: Vec<bool> = records
                    .iter()
                    .filter(|r| r.strategy == strategy)
                    .flat_map(|r| &r.moves)
                    .filter(|o| o.tried == m)
                    .map(|o| o.improved)
                    .collect();
                Rate::of(tried.iter().filter(|&&i| i).count() as f64, tried.len())
            };
            let row = Moves {
                strategy,
                refine: rate(Move::Refine),
                resample: rate(Move::Resample),
            };
            (row.refine.is_some() || row.resample.is_some()).then_some(row)
        })
        .collect()
}

fn moves_table(rows: &[Moves]) -> String {
    let mut out = String::from(
        "| strategy | refine rounds that raised the best | resample rounds that raised the best |\n\
         |---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            r.strategy.name(),
            percent(&r.refine),
            percent(&r.resample)
        ));
    }
    out
}

/// The whole report: how it was made, the table, and how to read it.
pub fn markdown(meta: &Meta, cells: &[Cell], moves: &[Moves], chart_file: &str) -> String {
    let mut out = format!(
        "# Strategies at equal compute\n\n\
         {date}; {machine}. Model `{model}`, reward `{reward}`, {prompts} prompts of {set}, \
         seed {seed}; {mins:.1} minutes.\n\n",
        date = meta.date,
        machine = meta.machine,
        model = meta.model,
        reward = meta.reward,
        prompts = meta.prompts,
        set = meta.prompt_set,
        seed = meta.seed,
        mins = meta.wall_secs / 60.0,
    );
    out.push_str(&table(cells));
    out.push_str(&format!("\n![pass rate against compute]({chart_file})\n\n"));
    if !moves.is_empty() {
        out.push_str(&moves_table(moves));
        out.push('\n');
    }
    out.push_str(
        "- **pass rate**: answers meeting every constraint of their prompt (given, or read from \
         its words), over the prompts that have constraints.\n\
         - **passes vs plain**: prompts this strategy passes and plain decoding fails (+), and \
         the reverse (-), at the same budget; p is the exact sign test's (McNemar's) chance of a \
         split this uneven were both equally good.\n\
         - **mean reward**: the reward of the answer as the loop scored it; a prompt's own \
         constraints join the reward, so prompts with constraints score on a larger scale. \
         Compare rows, not prompts.\n\
         - **exact match**: the final answer (`final_answer`'s extractor) equals the reference, \
         over the prompts that have one.\n\
         - **mean units**: compute units spent (see `src/budget.rs`); **latency**: the whole \
         request as the client saw it.\n\
         - **restated**: answers that restate the task or repeat the critique; the goal is 0.\n\
         - **refused**: requests the service refused (422), such as a budget below one \
         prefill and one token.\n\
         - **rounds that raised the best**: of the rounds after the first, those whose best \
         candidate scored above every candidate before them, by what the round tried.\n",
    );
    if let Some(judge) = &meta.judge {
        out.push_str(&format!(
            "- **beats plain**: `{judge}`, comparing the answer with plain decoding's at the same \
             budget in both orders, prefers it (ties and identical answers count half).\n"
        ));
    }
    out
}

/// The UTC date of `unix_secs` as YYYY-MM-DD (Hinnant's days-to-civil algorithm).
pub fn date(unix_secs: u64) -> String {
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::grade::Grade;

    fn run(strategy: Strategy, budget: u64, pass: Option<bool>, score: f32) -> RunRecord {
        RunRecord {
            line: 1,
            strategy,
            budget,
            refused: None,
            answer: Some("a".into()),
            score: Some(score),
            compute: Some(100),
            latency_ms: Some(2000),
            loop_ms: Some(1900),
            stopped: Some("done".into()),
            grade: Grade {
                pass,
                exact: None,
                restates: None,
            },
            beats_plain: None,
            moves: Vec::new(),
        }
    }

    #[test]
    fn cells_count_over_the_prompts_that_apply() {
        let mut records = vec![
            run(Strategy::Plain, 300, Some(true), 1.0),
            run(Strategy::Plain, 300, Some(false), 0.0),
            run(Strategy::Plain, 300, None, 0.5),
            run(Strategy::BestOfN, 300, Some(true), 1.0),
        ];
        let mut refused = run(Strategy::BestOfN, 300, None, 0.0);
        refused.answer = None;
        refused.score = None;
        refused.refused = Some("too small".into());
        records.push(refused);
        records[3].grade.restates = Some("restates the query".into());
        records[3].beats_plain = Some(0.5);
        let cells = cells(&[Strategy::Plain, Strategy::BestOfN], &[300], &records);
        assert_eq!(cells.len(), 2);
        let plain = &cells[0];
        assert_eq!((plain.runs, plain.refused, plain.restated), (3, 0, 0));
        let pass = plain.pass.unwrap();
        assert_eq!(
            (pass.k, pass.n),
            (1.0, 2),
            "the prompt without constraints is left out"
        );
        assert_eq!(plain.reward.unwrap().mean, 0.5);
        assert_eq!(plain.exact, None);
        assert_eq!(plain.beats_plain, None);
        let bon = &cells[1];
        assert_eq!((bon.runs, bon.refused, bon.restated), (2, 1, 1));
        assert_eq!(bon.beats_plain.unwrap().k, 0.5);
    }

    #[test]
    fn the_table_has_one_row_per_cell_with_intervals() {
        let records: Vec<RunRecord> = (0..10)
            .map(|i| run(Strategy::Plain, 900, Some(i < 8), 1.0))
            .collect();
        let table = table(&cells(&[Strategy::Plain], &[900], &records));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("| strategy | budget | pass rate"));
        assert!(!lines[0].contains("beats plain"));
        assert_eq!(
            lines[2],
            "| plain | 900 | 80% (8/10) [49, 94] | - | 1.000 [1.000, 1.000] | - | 100 | 2.0 | 0 | 0 |"
        );
        // Every row has as many cells as the header.
        let columns = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| columns(l) == columns(lines[0])));
    }

    #[test]
    fn strategies_are_paired_with_plain_prompt_by_prompt() {
        let mut records = Vec::new();
        // 10 prompts with constraints: plain passes 0..3, best-of-N passes 0..2 and 3..9.
        for line in 0..10 {
            let mut p = run(Strategy::Plain, 900, Some(line < 3), 1.0);
            p.line = line;
            let mut b = run(Strategy::BestOfN, 900, Some(line != 2), 1.0);
            b.line = line;
            records.extend([p, b]);
        }
        // A prompt only best-of-N answered is not paired.
        let mut alone = run(Strategy::BestOfN, 900, Some(true), 1.0);
        alone.line = 99;
        records.push(alone);
        let cells = cells(&[Strategy::Plain, Strategy::BestOfN], &[900], &records);
        assert_eq!(cells[0].paired, None);
        let paired = cells[1].paired.unwrap();
        assert_eq!((paired.gained, paired.lost), (7, 1));
        assert!((paired.p - sign_test(7, 1)).abs() < 1e-12);
        assert!(
            table(&cells).contains("| +7 -1 (p = 0.070) |"),
            "{}",
            table(&cells)
        );
    }

    #[test]
    fn the_judge_column_appears_with_a_judge() {
        let mut r = run(Strategy::Tpo, 900, None, 1.0);
        r.beats_plain = Some(0.9);
        let table = table(&cells(&[Strategy::Tpo], &[900], &[r]));
        assert!(table
            .lines()
            .next()
            .unwrap()
            .ends_with("beats plain [95% CI] |"));
        assert!(table.contains("| 100% (1/1) [21, 100] |"), "{table}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_764_460_800), "2025-11-30");
    }

    #[test]
    fn moves_count_rounds_per_strategy_and_kind() {
        use crate::eval::grade::MoveOutcome;
        let outcome = |tried, improved| MoveOutcome { tried, improved };
        let mut tpo = run(Strategy::Tpo, 900, None, 1.0);
        tpo.moves = vec![outcome(Move::Refine, true), outcome(Move::Refine, false)];
        let mut auto = run(Strategy::Auto, 900, None, 1.0);
        auto.moves = vec![outcome(Move::Resample, true)];
        let plain = run(Strategy::Plain, 900, None, 1.0);
        let rows = moves(
            &[Strategy::Plain, Strategy::Tpo, Strategy::Auto],
            &[plain, tpo, auto],
        );
        assert_eq!(rows.len(), 2, "plain ran no later rounds");
        assert_eq!(rows[0].strategy, Strategy::Tpo);
        let refine = rows[0].refine.unwrap();
        assert_eq!((refine.k, refine.n), (1.0, 2));
        assert_eq!(rows[0].resample, None);
        let resample = rows[1].resample.unwrap();
        assert_eq!((resample.k, resample.n), (1.0, 1));
        assert!(moves_table(&rows).contains("| tpo | 50% (1/2)"));
    }
}
