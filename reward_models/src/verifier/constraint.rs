//! The constraints a verifier can check, and the plain-English reasons given when one fails.

use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{answer, json, text};

/// One requirement a response must meet.
///
/// Written as a table tagged with `kind`: `{ kind = "word_count", max = 50 }` in a manifest,
/// `{"kind": "word_count", "max": 50}` in a request. Counting constraints take `exact`, or
/// `min` and/or `max` (both inclusive). Every constraint takes an optional `weight` (default
/// 1.0): its share of the score. A weight of 0 keeps the constraint in the critique without
/// moving the score.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// Words are whitespace-separated tokens with at least one letter or digit.
    WordCount {
        exact: Option<usize>,
        min: Option<usize>,
        max: Option<usize>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// Sentences end with `.`, `!` or `?` before whitespace or the end, or with `。！？`.
    SentenceCount {
        exact: Option<usize>,
        min: Option<usize>,
        max: Option<usize>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// Paragraphs are separated by blank lines.
    ParagraphCount {
        exact: Option<usize>,
        min: Option<usize>,
        max: Option<usize>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// Every keyword (a word or a phrase) must appear as whole words, ignoring case.
    RequiredKeywords {
        keywords: Vec<String>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// No keyword may appear as whole words, ignoring case.
    ForbiddenKeywords {
        keywords: Vec<String>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// How many times a word or phrase appears as whole words, ignoring case.
    KeywordFrequency {
        keyword: String,
        exact: Option<usize>,
        min: Option<usize>,
        max: Option<usize>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// Bullet points are lines starting with `-`, `*` or `•`, outside code blocks.
    BulletCount {
        exact: Option<usize>,
        min: Option<usize>,
        max: Option<usize>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// Sections are markdown headers (`# Title`), or, when `splitter` is set, lines starting with
    /// it (such as "SECTION 1").
    SectionCount {
        exact: Option<usize>,
        min: Option<usize>,
        max: Option<usize>,
        splitter: Option<String>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// The response, ignoring surrounding whitespace and case, starts with `prefix`.
    StartsWith {
        prefix: String,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// The response, ignoring surrounding whitespace and case, ends with `suffix`.
    EndsWith {
        suffix: String,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// No letter of the other case appears. Text without cased letters (digits, CJK) passes.
    LetterCase {
        case: Case,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// The response is valid JSON, bare or in a ```json block, and, when `required_keys` is not
    /// empty, an object with those top-level keys.
    Json {
        #[serde(default)]
        required_keys: Vec<String>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// The regex (Rust `regex` syntax) matches somewhere in the response. `description` says in
    /// words what the pattern wants, for the critique; models read words better than regexes.
    RegexMatch {
        pattern: String,
        description: Option<String>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// The regex matches nowhere in the response.
    RegexNoMatch {
        pattern: String,
        description: Option<String>,
        #[serde(default = "default_weight")]
        weight: f32,
    },
    /// The response's final answer equals `answer` after normalization. The answer is taken from
    /// `\boxed{...}`, "The answer is X", "Answer: X", or else the last line.
    FinalAnswer {
        answer: String,
        #[serde(default = "default_weight")]
        weight: f32,
    },
}

/// The letter case a [`Constraint::LetterCase`] requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    Lowercase,
    Uppercase,
}

fn default_weight() -> f32 {
    1.0
}

impl Constraint {
    /// The constraint's share of the score.
    pub fn weight(&self) -> f32 {
        match self {
            Self::WordCount { weight, .. }
            | Self::SentenceCount { weight, .. }
            | Self::ParagraphCount { weight, .. }
            | Self::RequiredKeywords { weight, .. }
            | Self::ForbiddenKeywords { weight, .. }
            | Self::KeywordFrequency { weight, .. }
            | Self::BulletCount { weight, .. }
            | Self::SectionCount { weight, .. }
            | Self::StartsWith { weight, .. }
            | Self::EndsWith { weight, .. }
            | Self::LetterCase { weight, .. }
            | Self::Json { weight, .. }
            | Self::RegexMatch { weight, .. }
            | Self::RegexNoMatch { weight, .. }
            | Self::FinalAnswer { weight, .. } => *weight,
        }
    }

    /// The `kind` tag as written in manifests, for error messages and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WordCount { .. } => "word_count",
            Self::SentenceCount { .. } => "sentence_count",
            Self::ParagraphCount { .. } => "paragraph_count",
            Self::RequiredKeywords { .. } => "required_keywords",
            Self::ForbiddenKeywords { .. } => "forbidden_keywords",
            Self::KeywordFrequency { .. } => "keyword_frequency",
            Self::BulletCount { .. } => "bullet_count",
            Self::SectionCount { .. } => "section_count",
            Self::StartsWith { .. } => "starts_with",
            Self::EndsWith { .. } => "ends_with",
            Self::LetterCase { .. } => "letter_case",
            Self::Json { .. } => "json",
            Self::RegexMatch { .. } => "regex_match",
            Self::RegexNoMatch { .. } => "regex_no_match",
            Self::FinalAnswer { .. } => "final_answer",
        }
    }

    /// The allowed range of a counting constraint; `None` for the other kinds.
    fn bounds(&self) -> Option<Bounds> {
        match *self {
            Self::WordCount {
                exact, min, max, ..
            }
            | Self::SentenceCount {
                exact, min, max, ..
            }
            | Self::ParagraphCount {
                exact, min, max, ..
            }
            | Self::KeywordFrequency {
                exact, min, max, ..
            }
            | Self::BulletCount {
                exact, min, max, ..
            }
            | Self::SectionCount {
                exact, min, max, ..
            } => Some(Bounds { exact, min, max }),
            _ => None,
        }
    }

    /// Checks the settings and compiles the regex of regex constraints.
    ///
    /// Done once when the verifier is built, so that a bad manifest fails at startup rather
    /// than on every scored response.
    pub(crate) fn prepare(&self) -> Result<Option<Regex>, String> {
        self.validate()?;
        match self {
            Self::RegexMatch { pattern, .. } | Self::RegexNoMatch { pattern, .. } => {
                Regex::new(pattern)
                    .map(Some)
                    .map_err(|e| format!("invalid regex /{pattern}/: {e}"))
            }
            _ => Ok(None),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let weight = self.weight();
        if !weight.is_finite() || weight < 0.0 {
            return Err(format!(
                "`weight` must be a finite number >= 0, got {weight}"
            ));
        }
        if let Some(bounds) = self.bounds() {
            bounds.validate()?;
        }
        match self {
            Self::RequiredKeywords { keywords, .. } | Self::ForbiddenKeywords { keywords, .. } => {
                if keywords.is_empty() {
                    return Err("`keywords` must not be empty".to_string());
                }
                keywords.iter().try_for_each(|k| validate_keyword(k))
            }
            Self::KeywordFrequency { keyword, .. } => validate_keyword(keyword),
            Self::SectionCount {
                splitter: Some(needle),
                ..
            }
            | Self::StartsWith { prefix: needle, .. }
            | Self::EndsWith { suffix: needle, .. }
                if needle.trim().is_empty() =>
            {
                Err("the text to match must not be blank".to_string())
            }
            Self::FinalAnswer {
                answer: expected, ..
            } if answer::normalize(expected).is_empty() => {
                Err("`answer` must not be blank".to_string())
            }
            _ => Ok(()),
        }
    }

    /// Checks one response: `Ok` when satisfied, otherwise one line saying what was required
    /// and what was found, written to be read back by the model as critique.
    ///
    /// `regex` is what [`Constraint::prepare`] compiled; regex constraints fail without it.
    pub(crate) fn check(&self, response: &str, regex: Option<&Regex>) -> Result<(), String> {
        let bounds = self.bounds().unwrap_or(Bounds::ANY);
        match self {
            Self::WordCount { .. } => check_count(text::word_count(response), bounds, &WORDS),
            Self::SentenceCount { .. } => {
                check_count(text::sentence_count(response), bounds, &SENTENCES)
            }
            Self::ParagraphCount { .. } => {
                check_count(text::paragraph_count(response), bounds, &PARAGRAPHS)
            }
            Self::BulletCount { .. } => check_count(text::bullet_count(response), bounds, &BULLETS),
            Self::SectionCount { splitter, .. } => {
                check_sections(response, bounds, splitter.as_deref())
            }
            Self::RequiredKeywords { keywords, .. } => check_required(response, keywords),
            Self::ForbiddenKeywords { keywords, .. } => check_forbidden(response, keywords),
            Self::KeywordFrequency { keyword, .. } => check_frequency(response, keyword, bounds),
            Self::StartsWith { prefix, .. } => check_starts_with(response, prefix),
            Self::EndsWith { suffix, .. } => check_ends_with(response, suffix),
            Self::LetterCase { case, .. } => check_case(response, *case),
            Self::Json { required_keys, .. } => check_json(response, required_keys),
            Self::RegexMatch { description, .. } | Self::RegexNoMatch { description, .. } => {
                let Some(regex) = regex else {
                    return Err("the regex was not compiled".to_string());
                };
                let must_match = matches!(self, Self::RegexMatch { .. });
                check_regex(response, regex, must_match, description.as_deref())
            }
            Self::FinalAnswer {
                answer: expected, ..
            } => check_final_answer(response, expected),
        }
    }
}

/// How much of the response to quote in a reason.
const QUOTE_CHARS: usize = 40;

fn validate_keyword(keyword: &str) -> Result<(), String> {
    if text::has_alphanumeric(keyword) {
        Ok(())
    } else {
        // Keywords match whole words; one without letters or digits has no words to match.
        Err(format!(
            "keyword {keyword:?} has no letters or digits; use regex_match for symbols"
        ))
    }
}

/// An allowed range of counts: `exact`, or `min` and/or `max`, inclusive.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    exact: Option<usize>,
    min: Option<usize>,
    max: Option<usize>,
}

impl Bounds {
    /// No limit at all.
    const ANY: Bounds = Bounds {
        exact: None,
        min: None,
        max: None,
    };

    fn validate(self) -> Result<(), String> {
        match (self.exact, self.min, self.max) {
            (None, None, None) => Err("set `exact`, or `min` and/or `max`".to_string()),
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err("`exact` cannot be combined with `min` or `max`".to_string())
            }
            (None, Some(min), Some(max)) if min > max => {
                Err(format!("`min` ({min}) is greater than `max` ({max})"))
            }
            _ => Ok(()),
        }
    }

    fn contains(self, n: usize) -> bool {
        self.exact.is_none_or(|exact| n == exact)
            && self.min.is_none_or(|min| n >= min)
            && self.max.is_none_or(|max| n <= max)
    }

    /// The requirement in words: "at most 50 words", "between 2 and 4 paragraphs".
    fn describe(self, unit: &Unit) -> String {
        match (self.exact, self.min, self.max) {
            (Some(n), _, _) => format!("exactly {}", unit.count(n)),
            (None, Some(min), Some(max)) if min == max => format!("exactly {}", unit.count(min)),
            (None, Some(min), Some(max)) => format!("between {min} and {}", unit.count(max)),
            (None, Some(min), None) => format!("at least {}", unit.count(min)),
            (None, None, Some(max)) => format!("at most {}", unit.count(max)),
            (None, None, None) => format!("any number of {}", unit.many),
        }
    }
}

/// The singular and plural name of what is counted.
struct Unit {
    one: &'static str,
    many: &'static str,
}

const WORDS: Unit = Unit::new("word", "words");
const SENTENCES: Unit = Unit::new("sentence", "sentences");
const PARAGRAPHS: Unit = Unit::new(
    "paragraph (separated by blank lines)",
    "paragraphs (separated by blank lines)",
);
const BULLETS: Unit = Unit::new("bullet point", "bullet points");
const SECTIONS: Unit = Unit::new("section", "sections");
const TIMES: Unit = Unit::new("time", "times");

impl Unit {
    const fn new(one: &'static str, many: &'static str) -> Self {
        Self { one, many }
    }

    /// "1 word", "3 words".
    fn count(&self, n: usize) -> String {
        format!("{n} {}", if n == 1 { self.one } else { self.many })
    }
}

fn check_count(found: usize, bounds: Bounds, unit: &Unit) -> Result<(), String> {
    if bounds.contains(found) {
        Ok(())
    } else {
        Err(format!("needs {}, has {found}", bounds.describe(unit)))
    }
}

fn check_sections(response: &str, bounds: Bounds, splitter: Option<&str>) -> Result<(), String> {
    let (found, how) = match splitter {
        Some(splitter) => (
            text::splitter_count(response, splitter),
            format!("lines starting with {splitter:?}"),
        ),
        None => (
            text::header_count(response),
            "markdown headers like \"# Title\"".to_string(),
        ),
    };
    if bounds.contains(found) {
        return Ok(());
    }
    Err(format!(
        "needs {} ({how}), has {found}",
        bounds.describe(&SECTIONS)
    ))
}

fn check_required(response: &str, keywords: &[String]) -> Result<(), String> {
    let tokens = text::word_tokens(response);
    let missing: Vec<&str> = keywords
        .iter()
        .filter(|keyword| text::phrase_occurrences(&tokens, &text::word_tokens(keyword)) == 0)
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "needs to mention {}; missing {}",
        quoted_list(keywords.iter().map(String::as_str)),
        quoted_list(missing)
    ))
}

fn check_forbidden(response: &str, keywords: &[String]) -> Result<(), String> {
    let tokens = text::word_tokens(response);
    let found: Vec<String> = keywords
        .iter()
        .filter_map(|keyword| {
            let n = text::phrase_occurrences(&tokens, &text::word_tokens(keyword));
            (n > 0).then(|| format!("{keyword:?} ({})", TIMES.count(n)))
        })
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "must not use {}; uses {}",
        quoted_list(keywords.iter().map(String::as_str)),
        found.join(", ")
    ))
}

fn check_frequency(response: &str, keyword: &str, bounds: Bounds) -> Result<(), String> {
    let tokens = text::word_tokens(response);
    let found = text::phrase_occurrences(&tokens, &text::word_tokens(keyword));
    if bounds.contains(found) {
        return Ok(());
    }
    Err(format!(
        "needs {keyword:?} {}, has it {}",
        bounds.describe(&TIMES),
        TIMES.count(found)
    ))
}

fn check_starts_with(response: &str, prefix: &str) -> Result<(), String> {
    let start = response.trim_start();
    let wanted = prefix.trim();
    if start.to_lowercase().starts_with(&wanted.to_lowercase()) {
        return Ok(());
    }
    let quote = text::clip(start.trim_end(), wanted.chars().count() + QUOTE_CHARS / 2);
    Err(format!(
        "needs to start with {wanted:?}, {}",
        found_text("starts with", &quote)
    ))
}

fn check_ends_with(response: &str, suffix: &str) -> Result<(), String> {
    let end = response.trim_end();
    let wanted = suffix.trim();
    if end.to_lowercase().ends_with(&wanted.to_lowercase()) {
        return Ok(());
    }
    let quote = text::clip_end(end.trim_start(), wanted.chars().count() + QUOTE_CHARS / 2);
    Err(format!(
        "needs to end with {wanted:?}, {}",
        found_text("ends with", &quote)
    ))
}

/// "starts with \"...\"", or a note that there is no text at all.
fn found_text(verb: &str, quote: &str) -> String {
    if quote.is_empty() {
        "but the response is empty".to_string()
    } else {
        format!("{verb} {quote:?}")
    }
}

fn check_case(response: &str, case: Case) -> Result<(), String> {
    let (wanted, other, is_wrong): (&str, &str, fn(char) -> bool) = match case {
        Case::Lowercase => ("lowercase", "uppercase", char::is_uppercase),
        Case::Uppercase => ("uppercase", "lowercase", char::is_lowercase),
    };
    let wrong = response.chars().filter(|&c| is_wrong(c)).count();
    if wrong == 0 {
        return Ok(());
    }
    let example = response
        .split_whitespace()
        .find(|word| word.chars().any(is_wrong))
        .map(|word| format!(", e.g. in {:?}", text::clip(word, QUOTE_CHARS)))
        .unwrap_or_default();
    let noun = if wrong == 1 { "letter" } else { "letters" };
    Err(format!(
        "needs all letters in {wanted}, has {wrong} {other} {noun}{example}"
    ))
}

fn check_json(response: &str, required_keys: &[String]) -> Result<(), String> {
    let value = json::parse_response(response)
        .map_err(|error| format!("needs valid JSON, but the JSON is invalid: {error}"))?;
    if required_keys.is_empty() {
        return Ok(());
    }
    let wanted = quoted_list(required_keys.iter().map(String::as_str));
    let Some(object) = value.as_object() else {
        return Err(format!(
            "needs a JSON object with the keys {wanted}, found {}",
            json::kind_name(&value)
        ));
    };
    let missing: Vec<&str> = required_keys
        .iter()
        .filter(|key| !object.contains_key(key.as_str()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "needs a JSON object with the keys {wanted}; missing {}",
        quoted_list(missing)
    ))
}

fn check_regex(
    response: &str,
    regex: &Regex,
    must_match: bool,
    description: Option<&str>,
) -> Result<(), String> {
    match (regex.find(response), must_match) {
        (Some(_), true) | (None, false) => Ok(()),
        (None, true) => Err(format!(
            "needs to match {}, found no match",
            pattern_words(regex, description)
        )),
        (Some(found), false) => Err(format!(
            "must not match {}, found {:?}",
            pattern_words(regex, description),
            text::clip(found.as_str(), QUOTE_CHARS)
        )),
    }
}

/// "a date like 2024-01-31 (regex /\d{4}-\d\d-\d\d/)" or just the regex.
fn pattern_words(regex: &Regex, description: Option<&str>) -> String {
    let pattern = text::clip(regex.as_str(), 2 * QUOTE_CHARS);
    match description {
        Some(description) => format!("{description} (regex /{pattern}/)"),
        None => format!("the regex /{pattern}/"),
    }
}

/// Fails without naming the expected answer: the reason goes back to the policy, and telling it
/// the answer would turn the verifier into an answer key.
fn check_final_answer(response: &str, expected: &str) -> Result<(), String> {
    let expected = answer::normalize(expected);
    match answer::extract(response) {
        Some(found) if answer::same(&found, &expected) => Ok(()),
        Some(found) => Err(format!(
            "needs the correct final answer; the final answer {:?} is wrong",
            text::clip(&found, QUOTE_CHARS)
        )),
        None => Err(
            "needs a final answer, found none (state it as \"Answer: ...\" or \\boxed{...})"
                .to_string(),
        ),
    }
}

/// `"a", "b", "c"`.
fn quoted_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses a constraint, prepares it as the verifier would and checks `response`.
    fn check(constraint: serde_json::Value, response: &str) -> Result<(), String> {
        let constraint: Constraint = serde_json::from_value(constraint).unwrap();
        let regex = constraint.prepare().unwrap();
        constraint.check(response, regex.as_ref())
    }

    #[test]
    fn word_count() {
        let at_most_3 = json!({"kind": "word_count", "max": 3});
        assert_eq!(check(at_most_3.clone(), "one two — three!"), Ok(()));
        assert_eq!(
            check(at_most_3, "a b c d"),
            Err("needs at most 3 words, has 4".into())
        );
        let at_least_1 = json!({"kind": "word_count", "min": 1});
        assert_eq!(
            check(at_least_1.clone(), ""),
            Err("needs at least 1 word, has 0".into())
        );
        assert_eq!(
            check(at_least_1, "🙂 🙂"),
            Err("needs at least 1 word, has 0".into())
        );
        let range = json!({"kind": "word_count", "min": 2, "max": 3});
        assert_eq!(check(range.clone(), "日本語 です"), Ok(()));
        assert_eq!(
            check(range, "x"),
            Err("needs between 2 and 3 words, has 1".into())
        );
    }

    #[test]
    fn sentence_count() {
        let two = json!({"kind": "sentence_count", "exact": 2});
        assert_eq!(check(two.clone(), "It is 3.5 m long. Really!"), Ok(()));
        assert_eq!(check(two.clone(), "我是学生。你好！"), Ok(()));
        assert_eq!(
            check(two, "One. Two. Three."),
            Err("needs exactly 2 sentences, has 3".into())
        );
    }

    #[test]
    fn paragraph_count() {
        let two = json!({"kind": "paragraph_count", "min": 2, "max": 2});
        assert_eq!(
            check(two.clone(), "First.\nStill first.\n\nSecond."),
            Ok(())
        );
        assert_eq!(
            check(two, "Just one."),
            Err("needs exactly 2 paragraphs (separated by blank lines), has 1".into())
        );
    }

    #[test]
    fn required_keywords() {
        let keywords =
            json!({"kind": "required_keywords", "keywords": ["Rust", "type system", "学习"]});
        assert_eq!(
            check(keywords.clone(), "RUST's type-system helps 我学习."),
            Ok(())
        );
        assert_eq!(
            check(keywords, "Rusty types."),
            Err(r#"needs to mention "Rust", "type system", "学习"; missing "Rust", "type system", "学习""#.into())
        );
    }

    #[test]
    fn forbidden_keywords() {
        let forbidden = json!({"kind": "forbidden_keywords", "keywords": ["very", "as an AI"]});
        assert_eq!(
            check(forbidden.clone(), "Everything is every bit fine."),
            Ok(())
        );
        assert_eq!(
            check(forbidden, "Very, very good. As an AI..."),
            Err(
                r#"must not use "very", "as an AI"; uses "very" (2 times), "as an AI" (1 time)"#
                    .into()
            )
        );
    }

    #[test]
    fn keyword_frequency() {
        let at_least_2 = json!({"kind": "keyword_frequency", "keyword": "Data", "min": 2});
        assert_eq!(check(at_least_2.clone(), "data, DATA and database"), Ok(()));
        assert_eq!(
            check(at_least_2, "database"),
            Err(r#"needs "Data" at least 2 times, has it 0 times"#.into())
        );
        let at_most_1 = json!({"kind": "keyword_frequency", "keyword": "ok", "max": 1});
        assert_eq!(
            check(at_most_1, "ok ok"),
            Err(r#"needs "ok" at most 1 time, has it 2 times"#.into())
        );
    }

    #[test]
    fn bullet_count() {
        let three = json!({"kind": "bullet_count", "exact": 3});
        assert_eq!(
            check(three.clone(), "Intro\n- a\n* b\n• c\n**not**"),
            Ok(())
        );
        assert_eq!(
            check(three, ""),
            Err("needs exactly 3 bullet points, has 0".into())
        );
    }

    #[test]
    fn section_count() {
        let headers = json!({"kind": "section_count", "min": 2});
        assert_eq!(check(headers.clone(), "# A\ntext\n## B\ntext"), Ok(()));
        assert_eq!(
            check(headers, "#A\n```\n# not a header\n```"),
            Err(r##"needs at least 2 sections (markdown headers like "# Title"), has 0"##.into())
        );
        let split = json!({"kind": "section_count", "exact": 2, "splitter": "SECTION"});
        assert_eq!(
            check(split.clone(), "SECTION 1\nfoo\n**SECTION 2**\nbar"),
            Ok(())
        );
        assert_eq!(
            check(split, "SECTION 1\nSection 2"),
            Err(r#"needs exactly 2 sections (lines starting with "SECTION"), has 1"#.into())
        );
    }

    #[test]
    fn starts_with() {
        let dear = json!({"kind": "starts_with", "prefix": "Dear John,"});
        assert_eq!(check(dear.clone(), "\n  dear john, hello"), Ok(()));
        assert_eq!(
            check(
                dear.clone(),
                "Hello there John, how are you doing today? I hope well."
            ),
            Err(
                r#"needs to start with "Dear John,", starts with "Hello there John, how are you…""#
                    .into()
            )
        );
        assert_eq!(
            check(dear, "  "),
            Err(r#"needs to start with "Dear John,", but the response is empty"#.into())
        );
        let cjk = json!({"kind": "starts_with", "prefix": "你好"});
        assert_eq!(check(cjk, "你好，世界"), Ok(()));
    }

    #[test]
    fn ends_with() {
        let question = json!({"kind": "ends_with", "suffix": "Any other questions?"});
        assert_eq!(
            check(question.clone(), "Done. any other questions?\n"),
            Ok(())
        );
        assert_eq!(
            check(question, "That is all from me, see you soon 🙂"),
            Err(r#"needs to end with "Any other questions?", ends with "That is all from me, see you soon 🙂""#.into())
        );
    }

    #[test]
    fn letter_case() {
        let lower = json!({"kind": "letter_case", "case": "lowercase"});
        assert_eq!(check(lower.clone(), "all lower, 123 日本 ß"), Ok(()));
        assert_eq!(check(lower.clone(), ""), Ok(()));
        assert_eq!(
            check(lower, "mostly lower but NASA and Émile"),
            Err(
                r#"needs all letters in lowercase, has 5 uppercase letters, e.g. in "NASA""#.into()
            )
        );
        let upper = json!({"kind": "letter_case", "case": "uppercase"});
        assert_eq!(check(upper.clone(), "ÉCOLE 42!"), Ok(()));
        assert_eq!(
            check(upper, "LOUD quiet"),
            Err(
                r#"needs all letters in uppercase, has 5 lowercase letters, e.g. in "quiet""#
                    .into()
            )
        );
    }

    #[test]
    fn json_validity_and_keys() {
        let any = json!({"kind": "json"});
        assert_eq!(
            check(any.clone(), r#"{"a": {"b": [1, {"c": [true, null]}]}}"#),
            Ok(())
        );
        assert_eq!(check(any.clone(), "```json\n[1, 2, 3]\n```"), Ok(()));
        assert_eq!(check(any.clone(), "\"🙂 日本\""), Ok(()));
        let invalid = check(any.clone(), "{\"a\": 1,}").unwrap_err();
        assert!(
            invalid.starts_with("needs valid JSON, but the JSON is invalid: "),
            "{invalid}"
        );
        assert!(check(any, "").is_err());

        let keys = json!({"kind": "json", "required_keys": ["name", "age"]});
        let fenced =
            "Sure!\n```json\n{\"name\": \"Ada\", \"age\": 36, \"extra\": {\"name\": 1}}\n```";
        assert_eq!(check(keys.clone(), fenced), Ok(()));
        assert_eq!(
            check(keys.clone(), r#"{"name": "Ada", "meta": {"age": 36}}"#),
            Err(r#"needs a JSON object with the keys "name", "age"; missing "age""#.into())
        );
        assert_eq!(
            check(keys, r#"[{"name": "Ada", "age": 36}]"#),
            Err(r#"needs a JSON object with the keys "name", "age", found an array"#.into())
        );
    }

    #[test]
    fn regex_match() {
        let date = json!({
            "kind": "regex_match",
            "pattern": r"\d{4}-\d{2}-\d{2}",
            "description": "a date like 2024-01-31",
        });
        assert_eq!(check(date.clone(), "Due 2025-06-01."), Ok(()));
        assert_eq!(
            check(date, "Due next June."),
            Err(r"needs to match a date like 2024-01-31 (regex /\d{4}-\d{2}-\d{2}/), found no match".into())
        );
        let bare = json!({"kind": "regex_match", "pattern": "^日本"});
        assert_eq!(check(bare.clone(), "日本語"), Ok(()));
        assert_eq!(
            check(bare, ""),
            Err("needs to match the regex /^日本/, found no match".into())
        );
    }

    #[test]
    fn regex_no_match() {
        let no_urls = json!({"kind": "regex_no_match", "pattern": r"https?://\S+"});
        assert_eq!(check(no_urls.clone(), "No links here."), Ok(()));
        assert_eq!(
            check(no_urls, "See https://example.com now"),
            Err(r#"must not match the regex /https?://\S+/, found "https://example.com""#.into())
        );
    }

    #[test]
    fn final_answer() {
        let answer = json!({"kind": "final_answer", "answer": "Paris."});
        assert_eq!(
            check(answer.clone(), "Thinking...\nThe answer is PARIS"),
            Ok(())
        );
        assert_eq!(
            check(answer.clone(), "So \\boxed{\\text{x}} no, \\boxed{paris}"),
            Ok(())
        );
        assert_eq!(check(answer.clone(), "Answer: **paris**."), Ok(()));
        assert_eq!(check(answer.clone(), "I think it's\nparis"), Ok(()));
        assert_eq!(
            check(answer.clone(), "Answer: Lyon"),
            Err(r#"needs the correct final answer; the final answer "lyon" is wrong"#.into())
        );
        assert_eq!(
            check(answer, ""),
            Err(
                r#"needs a final answer, found none (state it as "Answer: ..." or \boxed{...})"#
                    .into()
            )
        );
        let number = json!({"kind": "final_answer", "answer": "42"});
        assert_eq!(check(number, "\\boxed{42.0}"), Ok(()));
    }

    #[test]
    fn the_expected_answer_is_never_leaked() {
        let answer = json!({"kind": "final_answer", "answer": "secret-value"});
        let reason = check(answer, "Answer: guess").unwrap_err();
        assert!(!reason.contains("secret"), "{reason}");
    }

    #[test]
    fn regex_constraints_without_a_compiled_regex_fail_instead_of_panicking() {
        let constraint: Constraint =
            serde_json::from_value(json!({"kind": "regex_match", "pattern": "a"})).unwrap();
        assert!(constraint.check("a", None).is_err());
    }
}
