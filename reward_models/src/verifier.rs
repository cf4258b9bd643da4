//! Programmatic verifiers: rule-based checks of a response, such as length limits, required
//! keywords, valid JSON or an exact final answer.
//!
//! A verifier needs no model, so it is cheap, deterministic and exact about the things it can
//! check. Its score is the weighted fraction of satisfied constraints, and each failed
//! constraint adds one plain-English reason, which TPO feeds back to the policy as critique.
//!
//! A verifier manifest lists the constraints as tables tagged with `kind`:
//!
//! ```toml
//! kind = "verifier"
//!
//! [[constraints]]
//! kind = "word_count"
//! max = 50
//!
//! [[constraints]]
//! kind = "required_keywords"
//! keywords = ["latency", "throughput"]
//! weight = 2.0
//! ```

pub mod answer;
mod constraint;
pub mod extract;
mod json;
mod text;

pub use constraint::{Case, Constraint};

use regex::Regex;

use crate::{Candidate, Interrupt, RewardError, RewardModel, Score};

/// Scores responses by the weighted fraction of constraints they satisfy, in [0, 1].
#[derive(Debug, Clone)]
pub struct Verifier {
    rules: Vec<Rule>,
    total_weight: f32,
}

/// A constraint with its regex compiled once, up front.
#[derive(Debug, Clone)]
struct Rule {
    constraint: Constraint,
    regex: Option<Regex>,
}

impl Verifier {
    /// Builds a verifier, rejecting bad settings (an empty list, invalid regexes, `min` above
    /// `max`, negative weights...) now rather than while scoring.
    pub fn new(constraints: Vec<Constraint>) -> Result<Self, RewardError> {
        if constraints.is_empty() {
            return Err(RewardError::Config(
                "a verifier needs at least one constraint".to_string(),
            ));
        }
        let rules = constraints
            .into_iter()
            .enumerate()
            .map(|(i, constraint)| match constraint.prepare() {
                Ok(regex) => Ok(Rule { constraint, regex }),
                Err(error) => Err(RewardError::Config(format!(
                    "constraint {} ({}): {error}",
                    i + 1,
                    constraint.kind()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let total_weight: f32 = rules.iter().map(|rule| rule.constraint.weight()).sum();
        if !total_weight.is_finite() || total_weight <= 0.0 {
            return Err(RewardError::Config(format!(
                "the constraint weights must add up to a positive finite number, got {total_weight}"
            )));
        }
        Ok(Self {
            rules,
            total_weight,
        })
    }

    /// The constraints, in the order given.
    pub fn constraints(&self) -> impl Iterator<Item = &Constraint> {
        self.rules.iter().map(|rule| &rule.constraint)
    }

    /// Checks one response against every constraint.
    pub fn check(&self, response: &str) -> Score {
        let mut satisfied = 0.0;
        let mut reasons = Vec::new();
        for rule in &self.rules {
            match rule.constraint.check(response, rule.regex.as_ref()) {
                Ok(()) => satisfied += rule.constraint.weight(),
                Err(reason) => reasons.push(reason),
            }
        }
        Score {
            value: (satisfied / self.total_weight).clamp(0.0, 1.0),
            reasons,
        }
    }
}

impl RewardModel for Verifier {
    /// Only the response is checked; the conversation is not needed.
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        _interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError> {
        Ok(batch
            .iter()
            .map(|candidate| self.check(candidate.response))
            .collect())
    }

    /// Every constraint met.
    fn max_score(&self) -> Option<f32> {
        Some(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(constraints: serde_json::Value) -> Result<Verifier, RewardError> {
        Verifier::new(serde_json::from_value(constraints).unwrap())
    }

    #[test]
    fn manifest_toml_parses() {
        #[derive(serde::Deserialize)]
        struct Manifest {
            constraints: Vec<Constraint>,
        }
        let manifest = r#"
            [[constraints]]
            kind = "word_count"
            min = 20
            max = 50

            [[constraints]]
            kind = "required_keywords"
            keywords = ["latency", "throughput"]
            weight = 2

            [[constraints]]
            kind = "section_count"
            exact = 3
            splitter = "SECTION"

            [[constraints]]
            kind = "letter_case"
            case = "lowercase"

            [[constraints]]
            kind = "json"
            required_keys = ["name", "age"]
            weight = 0.5

            [[constraints]]
            kind = "regex_no_match"
            pattern = '(?i)\bas an ai\b'
            description = "no 'as an AI' disclaimers"

            [[constraints]]
            kind = "final_answer"
            answer = "42"
        "#;
        let manifest: Manifest = toml::from_str(manifest).unwrap();
        assert_eq!(manifest.constraints.len(), 7);
        assert_eq!(manifest.constraints[1].weight(), 2.0);
        assert_eq!(manifest.constraints[2].weight(), 1.0);
        assert!(Verifier::new(manifest.constraints).is_ok());
    }

    #[test]
    fn unknown_kinds_and_fields_are_rejected() {
        let unknown_kind = json!([{"kind": "vibes"}]);
        assert!(serde_json::from_value::<Vec<Constraint>>(unknown_kind).is_err());
        let typo = json!([{"kind": "word_count", "maximum": 5}]);
        let error = serde_json::from_value::<Vec<Constraint>>(typo).unwrap_err();
        assert!(error.to_string().contains("maximum"), "{error}");
        let missing = json!([{"kind": "starts_with"}]);
        assert!(serde_json::from_value::<Vec<Constraint>>(missing).is_err());
    }

    #[test]
    fn empty_constraint_list_is_a_config_error() {
        assert!(matches!(Verifier::new(vec![]), Err(RewardError::Config(_))));
    }

    #[test]
    fn invalid_regex_is_rejected_at_build_time() {
        let result = verifier(json!([
            {"kind": "word_count", "max": 5},
            {"kind": "regex_match", "pattern": "(unclosed"},
        ]));
        let Err(RewardError::Config(message)) = result else {
            panic!("expected a config error");
        };
        assert!(
            message.starts_with("constraint 2 (regex_match): invalid regex"),
            "{message}"
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for bad in [
            json!({"kind": "word_count"}),
            json!({"kind": "word_count", "min": 5, "max": 2}),
            json!({"kind": "bullet_count", "exact": 3, "max": 4}),
            json!({"kind": "required_keywords", "keywords": []}),
            json!({"kind": "forbidden_keywords", "keywords": ["ok", "🙂"]}),
            json!({"kind": "keyword_frequency", "keyword": "  ", "min": 1}),
            json!({"kind": "section_count", "exact": 2, "splitter": " "}),
            json!({"kind": "starts_with", "prefix": ""}),
            json!({"kind": "final_answer", "answer": " . "}),
            json!({"kind": "word_count", "max": 5, "weight": -1.0}),
            json!({"kind": "word_count", "max": 5, "weight": 0.0}),
        ] {
            let result = verifier(json!([bad.clone()]));
            assert!(
                matches!(result, Err(RewardError::Config(_))),
                "{bad} was accepted"
            );
        }
        let overflow = json!([
            {"kind": "word_count", "max": 5, "weight": 3e38},
            {"kind": "word_count", "max": 5, "weight": 3e38},
        ]);
        assert!(matches!(verifier(overflow), Err(RewardError::Config(_))));
    }

    #[test]
    fn score_is_the_weighted_fraction_satisfied() {
        let v = verifier(json!([
            {"kind": "word_count", "max": 3, "weight": 3.0},
            {"kind": "starts_with", "prefix": "Hello"},
            {"kind": "ends_with", "suffix": "bye", "weight": 0.0},
        ]))
        .unwrap();
        let all = v.check("Hello there, bye");
        assert_eq!(all.value, 1.0);
        assert!(all.reasons.is_empty());
        let one_of_four = v.check("Hello, this is far too long");
        assert_eq!(one_of_four.value, 0.25);
        assert_eq!(
            one_of_four.reasons.len(),
            2,
            "zero-weight failures still explain themselves"
        );
        assert_eq!(v.check("").value, 0.75);
    }

    #[test]
    fn reasons_say_what_was_required_and_found() {
        let v = verifier(json!([
            {"kind": "word_count", "max": 5},
            {"kind": "required_keywords", "keywords": ["Rust", "speed"]},
            {"kind": "bullet_count", "exact": 1},
        ]))
        .unwrap();
        let score = v.check("- Rust is a language\n- it has a borrow checker");
        assert_eq!(
            score.reasons,
            [
                "needs at most 5 words, has 9",
                "needs to mention \"Rust\", \"speed\"; missing \"speed\"",
                "needs exactly 1 bullet point, has 2",
            ]
        );
        assert_eq!(score.value, 0.0);
    }

    #[test]
    fn batch_scores_keep_candidate_order() {
        let v = verifier(json!([{"kind": "final_answer", "answer": "7"}])).unwrap();
        let messages = [policies::Message::new(policies::Role::User, "3 + 4?")];
        let batch = [
            Candidate {
                messages: &messages,
                response: "3 + 4 = 7. Answer: 7",
            },
            Candidate {
                messages: &messages,
                response: "Answer: 8",
            },
        ];
        let scores = v.score(&batch).unwrap();
        assert_eq!(
            scores.iter().map(|s| s.value).collect::<Vec<_>>(),
            [1.0, 0.0]
        );
    }

    #[test]
    fn scoring_never_panics() {
        let v = verifier(json!([
            {"kind": "word_count", "min": 1},
            {"kind": "sentence_count", "max": 2},
            {"kind": "paragraph_count", "exact": 1},
            {"kind": "required_keywords", "keywords": ["a"]},
            {"kind": "forbidden_keywords", "keywords": ["b c"]},
            {"kind": "keyword_frequency", "keyword": "x", "max": 1},
            {"kind": "bullet_count", "min": 1},
            {"kind": "section_count", "min": 1},
            {"kind": "section_count", "min": 1, "splitter": "§"},
            {"kind": "starts_with", "prefix": "日本"},
            {"kind": "ends_with", "suffix": "🙂"},
            {"kind": "letter_case", "case": "uppercase"},
            {"kind": "json", "required_keys": ["k"]},
            {"kind": "regex_match", "pattern": "\\d+"},
            {"kind": "regex_no_match", "pattern": "(?s).{3}"},
            {"kind": "final_answer", "answer": "İ"},
        ]))
        .unwrap();
        let huge = "Ünïcödé 🙂 日本語。 \\boxed{{{ ```json\n".repeat(20_000);
        let inputs = [
            "",
            " ",
            "\n\n\n",
            "🙂",
            "İ",
            "\u{0301}\u{200D}\u{FEFF}",
            "\\boxed{",
            "```",
            "```json\n",
            "Answer:",
            "The answer is",
            "#",
            "- ",
            "•",
            &huge,
        ];
        for input in inputs {
            let score = v.check(input);
            assert!((0.0..=1.0).contains(&score.value));
            assert!(
                score.reasons.iter().all(|r| !r.contains('\n')),
                "reasons are single lines"
            );
        }
    }
}
