//! The prompt set `hone eval run` spends its budgets on.
//!
//! One JSON object per line: `{"prompt": "..."}` or `{"messages": [...]}`, with optional
//! `constraints` (verifier constraint tables, exactly as `POST /optimize` takes them) and an
//! optional `reference` answer. A line without `constraints` is checked against what its last
//! user message asks for in words, as the service reads it.
//!
//! Every line is checked the way the service checks a request body ([`api::build`]) as it is
//! read, so a bad line stops the evaluation before any model time is spent, and the error
//! names the line.

use crate::server::api::{self, OptimizeBody, Options};
use crate::server::error::ApiError;
use crate::strategy::Strategy;
use anyhow::{anyhow, Context, Result};
use policies::Message;
use reward_models::verifier::{Constraint, Verifier};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The built-in set, compiled in so that `hone eval run` works from any folder.
pub const BUILT_IN: &str = include_str!("prompts.jsonl");

/// One line of a prompt set, as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Verifier constraint tables; absent: read from the prompt's words; `[]`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<serde_json::Value>>,
    /// The expected final answer, compared as the verifier's `final_answer` compares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A line, checked and ready to run.
#[derive(Debug, Clone)]
pub struct EvalPrompt {
    /// 1-based line number in its file: how results and errors name the prompt.
    pub line: usize,
    /// The line as written: what is sent to the service.
    pub source: Line,
    pub messages: Vec<Message>,
    /// What the answer must meet: the line's own constraints, else those its prompt states.
    /// `None` when there are none; such prompts do not count in the pass rate.
    pub checks: Option<Verifier>,
    /// A `final_answer` verifier for the reference answer, when the line has one.
    pub reference: Option<Verifier>,
}

/// Parses a prompt set; `name` says where it came from in errors ("prompts.jsonl line 3: ...").
/// Blank lines are skipped but counted, so line numbers match an editor's.
pub fn parse(text: &str, name: &str) -> Result<Vec<EvalPrompt>> {
    let prompts = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l, i + 1).with_context(|| format!("{name} line {}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    if prompts.is_empty() {
        anyhow::bail!("{name} holds no prompts");
    }
    Ok(prompts)
}

/// Reads the prompt set at `path`, or the built-in one when `None`.
pub fn read(path: Option<&Path>) -> Result<Vec<EvalPrompt>> {
    match path {
        None => parse(BUILT_IN, "the built-in prompt set"),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse(&text, &path.display().to_string())
        }
    }
}

fn parse_line(text: &str, line: usize) -> Result<EvalPrompt> {
    let source: Line = serde_json::from_str(text)?;
    // The same checks as a request body: `messages` or `prompt` (not both), messages not
    // empty, and the constraints either valid tables or read from the prompt.
    let body = OptimizeBody {
        messages: source.messages.clone(),
        prompt: source.prompt.clone(),
        ..OptimizeBody::default()
    };
    let messages = api::conversation(&body).map_err(plain)?;
    let options = Options {
        constraints: source.constraints.clone(),
        ..Options::default()
    };
    let job = api::build(
        messages,
        &options,
        Strategy::Plain,
        api::Limits::default(),
        Instant::now(),
    )
    .map_err(plain)?;
    let reference = match &source.reference {
        None => None,
        Some(answer) => Some(
            Verifier::new(vec![Constraint::FinalAnswer {
                answer: answer.clone(),
                weight: 1.0,
            }])
            .map_err(|e| anyhow!("reference: {e}"))?,
        ),
    };
    Ok(EvalPrompt {
        line,
        source,
        messages: job.request.messages,
        checks: job.checks.map(|c| c.verifier),
        reference,
    })
}

/// The service's error as a sentence naming the field at fault.
fn plain(e: ApiError) -> anyhow::Error {
    match e.param {
        Some(param) => anyhow!("{param}: {}", e.message),
        None => anyhow!("{}", e.message),
    }
}

/// `limit` items spread evenly over `items` (all of them when `limit` is `None` or not below
/// the length), so that a subset keeps the mix of the whole set.
pub fn spread<T: Clone>(items: &[T], limit: Option<usize>) -> Vec<T> {
    match limit {
        Some(limit) if limit < items.len() => (0..limit)
            .map(|i| items[i * items.len() / limit].clone())
            .collect(),
        _ => items.to_vec(),
    }
}

/// The prompts a run takes: with `constrained` only those with requirements (the ones the pass
/// rate counts), then `limit` of them spread evenly.
pub fn select(
    mut all: Vec<EvalPrompt>,
    constrained: bool,
    limit: Option<usize>,
) -> Vec<EvalPrompt> {
    if constrained {
        all.retain(|p| p.checks.is_some());
    }
    spread(&all, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constrained_takes_every_prompt_with_requirements_and_only_those() {
        let all = read(None).unwrap();
        let with = all.iter().filter(|p| p.checks.is_some()).count();
        let picked = select(all.clone(), true, None);
        assert_eq!(picked.len(), with);
        assert!(picked.iter().all(|p| p.checks.is_some()));
        let some = select(all.clone(), true, Some(7));
        assert_eq!(some.len(), 7);
        assert!(some.iter().all(|p| p.checks.is_some()));
        assert_eq!(select(all.clone(), false, None).len(), all.len());
    }

    /// The shipped set: at least 150 prompts, valid as requests, with the mix docs/EVAL.md
    /// describes (prompts with checkable requirements, questions with reference answers, and
    /// open questions), every constraint accepted by the verifier.
    #[test]
    fn the_built_in_set_parses_and_has_the_promised_mix() {
        let prompts = read(None).unwrap();
        assert!(prompts.len() >= 150, "{} prompts", prompts.len());
        let checked = prompts.iter().filter(|p| p.checks.is_some()).count();
        let referenced = prompts.iter().filter(|p| p.reference.is_some()).count();
        let open = prompts
            .iter()
            .filter(|p| p.checks.is_none() && p.reference.is_none())
            .count();
        assert!(checked >= 90, "{checked} prompts with constraints");
        assert!(referenced >= 30, "{referenced} prompts with a reference");
        assert!(open >= 20, "{open} open prompts");
        // Stated in words, not only given as tables: the extractor must find most of them.
        let from_words = prompts
            .iter()
            .filter(|p| p.checks.is_some() && p.source.constraints.is_none())
            .count();
        assert!(
            from_words >= 90,
            "{from_words} prompts with constraints in words"
        );
        for p in &prompts {
            if let Some(v) = &p.checks {
                // Rebuilding from the constraints proves each one valid on its own.
                for c in v.constraints() {
                    assert!(Verifier::new(vec![c.clone()]).is_ok(), "line {}", p.line);
                }
            }
        }
        let texts: std::collections::BTreeSet<String> = prompts
            .iter()
            .map(|p| crate::strategy::query_text(&p.messages))
            .collect();
        assert_eq!(texts.len(), prompts.len(), "prompts repeat");
    }

    /// Prompts whose requirements are only in words must not be read as something else: the
    /// reference questions and open questions state no requirement the extractor would take.
    #[test]
    fn reference_and_open_questions_carry_no_constraints() {
        for p in read(None).unwrap() {
            if p.reference.is_some() {
                assert!(p.checks.is_none(), "line {} has constraints", p.line);
            }
        }
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let cases = [
            ("{\"prompt\": \"hi\"}\n\n{\"prompt\": 3}", "line 3"),
            ("{\"prompt\": \"hi\", \"messages\": []}", "not both"),
            ("{\"messages\": []}", "no messages"),
            ("{\"prompt\": \"hi\", \"answer\": \"x\"}", "unknown field"),
            (
                "{\"prompt\": \"hi\", \"constraints\": [{\"kind\": \"vibes\"}]}",
                "constraints[0]",
            ),
            ("{\"prompt\": \"hi\", \"reference\": \" . \"}", "reference"),
            ("not json", "line 1"),
            ("\n \n", "no prompts"),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", parse(text, "set.jsonl").unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with("set.jsonl"), "{err}");
        }
    }

    #[test]
    fn lines_keep_their_constraints_and_reference() {
        let text = concat!(
            "{\"prompt\": \"Describe rain in fewer than 20 words.\"}\n",
            "{\"prompt\": \"Say hi.\", \"constraints\": []}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}], \"reference\": \"4\"}\n",
        );
        let p = parse(text, "t").unwrap();
        let kinds = |p: &EvalPrompt| -> Vec<&str> {
            p.checks
                .as_ref()
                .map_or(vec![], |v| v.constraints().map(|c| c.kind()).collect())
        };
        assert_eq!(kinds(&p[0]), ["word_count"]);
        assert!(
            p[1].checks.is_none(),
            "[] means none, not read from the words"
        );
        let reference = p[2].reference.as_ref().unwrap();
        assert!(reference.check("2 + 2 = 4.\nAnswer: 4").reasons.is_empty());
        assert!(!reference.check("Answer: 5").reasons.is_empty());
    }

    #[test]
    fn spread_keeps_the_mix() {
        let items: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&items, Some(3)), [0, 3, 6]);
        assert_eq!(spread(&items, Some(20)), items);
        assert_eq!(spread(&items, None), items);
        assert!(spread(&items, Some(0)).is_empty());
    }
}
