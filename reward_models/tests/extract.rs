//! Measures the prompt constraint extractor against a labelled set of prompts.
//!
//! Precision and recall are counted over (prompt, constraint) pairs: an extracted constraint is
//! correct when it equals one labelled for its prompt (each label matches at most once).

use reward_models::verifier::extract::from_prompt;
use reward_models::{Constraint, Verifier};
use serde_json::Value;

const FIXTURE: &str = "../tests/fixtures/constraint_prompts.jsonl";

struct Example {
    line: usize,
    prompt: String,
    constraints: Vec<Constraint>,
}

fn examples() -> Vec<Example> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {}: invalid JSON: {e}", i + 1));
            let prompt = value["prompt"]
                .as_str()
                .unwrap_or_else(|| panic!("line {}: no prompt", i + 1))
                .to_string();
            let constraints = serde_json::from_value(value["constraints"].clone())
                .unwrap_or_else(|e| panic!("line {}: bad constraints: {e}", i + 1));
            Example {
                line: i + 1,
                prompt,
                constraints,
            }
        })
        .collect()
}

/// How many of `predicted` equal a distinct member of `labelled`.
fn matches(predicted: &[Constraint], labelled: &[Constraint]) -> usize {
    let mut unused: Vec<&Constraint> = labelled.iter().collect();
    predicted
        .iter()
        .filter(|p| match unused.iter().position(|l| *l == *p) {
            Some(i) => {
                unused.swap_remove(i);
                true
            }
            None => false,
        })
        .count()
}

#[test]
fn extractor_is_precise_and_finds_most_constraints() {
    let examples = examples();
    assert!(
        examples.len() >= 80,
        "the labelled set has {} prompts, expected at least 80",
        examples.len()
    );
    let mut predicted_total = 0;
    let mut labelled_total = 0;
    let mut correct = 0;
    let mut spurious_in_plain_prompts = Vec::new();
    for example in &examples {
        let predicted = from_prompt(&example.prompt);
        if !predicted.is_empty() {
            Verifier::new(predicted.clone()).unwrap_or_else(|e| {
                panic!("line {}: extracted constraints rejected: {e}", example.line)
            });
        }
        let hits = matches(&predicted, &example.constraints);
        if hits != predicted.len() || hits != example.constraints.len() {
            println!(
                "line {}: {:?}\n  labelled:  {:?}\n  extracted: {:?}",
                example.line, example.prompt, example.constraints, predicted
            );
        }
        if example.constraints.is_empty() && !predicted.is_empty() {
            spurious_in_plain_prompts.push(example.line);
        }
        predicted_total += predicted.len();
        labelled_total += example.constraints.len();
        correct += hits;
    }
    assert!(predicted_total > 0 && labelled_total > 0);
    let precision = correct as f64 / predicted_total as f64;
    let recall = correct as f64 / labelled_total as f64;
    println!(
        "precision {precision:.3} ({correct}/{predicted_total}), recall {recall:.3} ({correct}/{labelled_total})"
    );
    assert!(
        spurious_in_plain_prompts.is_empty(),
        "prompts without constraints yielded some, at lines {spurious_in_plain_prompts:?}"
    );
    assert!(precision >= 0.95, "precision {precision:.3} < 0.95");
    assert!(recall >= 0.85, "recall {recall:.3} < 0.85");
}

#[test]
fn the_labelled_set_covers_every_kind_and_plain_prompts() {
    let examples = examples();
    let plain = examples.iter().filter(|e| e.constraints.is_empty()).count();
    assert!(plain >= 25, "only {plain} prompts without constraints");
    for kind in [
        "word_count",
        "sentence_count",
        "paragraph_count",
        "bullet_count",
        "letter_case",
        "forbidden_keywords",
        "required_keywords",
        "keyword_frequency",
        "json",
        "starts_with",
        "ends_with",
    ] {
        let n = examples
            .iter()
            .flat_map(|e| &e.constraints)
            .filter(|c| c.kind() == kind)
            .count();
        assert!(n >= 3, "only {n} labelled {kind} constraints");
    }
}
