//! Removing what is not a response from an update's text, line by line: lines that repeat the
//! prompt ([`Echoes`]: its instructions, the query, the critique) and meta text about the
//! response rather than of it ([`strip_meta`]), before [`super::response::parse_update`] checks
//! what is left.

use super::response::words;
use std::collections::HashSet;

/// Lead-ins that announce a response instead of being one, when followed by a colon.
const ANNOUNCE: [&str; 15] = [
    "here's",
    "here is",
    "sure",
    "certainly",
    "okay",
    "improved response",
    "the improved",
    "revised response",
    "the revised",
    "updated response",
    "the updated",
    "new response",
    "response",
    "my response",
    "my improved",
];

/// Sentences about the task rather than answers to it.
const TASK_TALK: [&str; 13] = [
    "the task is",
    "the query is",
    "the query asks",
    "the user wants",
    "the user asks",
    "the user is asking",
    "your task",
    "the suggestions",
    "the response should",
    "to improve the response",
    "i will",
    "i'll",
    "let me",
];

/// Phrases that only text about a response (not a response) uses. A line holding one is meta
/// commentary ("The answer should not repeat the previous response."), unless the query itself
/// uses the phrase.
const META_PHRASES: [&str; 30] = [
    "the response",
    "this response",
    "your response",
    "my response",
    "improved response",
    "revised response",
    "updated response",
    "rewritten response",
    "new response",
    "original response",
    "previous response",
    "current response",
    "better response",
    "worse response",
    "chosen response",
    "rejected response",
    "suggestion",
    "these suggestions",
    "the query",
    "this query",
    "the task",
    "the requested improvement",
    "the improvement",
    "correct response",
    "suggested tip",
    "rephras",
    "rewrit",
    "the evaluation",
    "the answer should",
    "the improved",
];

/// What an update must not repeat. Measured on SmolLM2-135M: besides echoing its instructions,
/// the update often copies the critique ("The grammar and spelling are correct but...") as its
/// "improved response", and a weak judge scores that above the real answer.
#[derive(Debug, Clone, Default)]
pub struct Echoes {
    /// Normalized lines that must not be repeated, even cut short: instructions and the query.
    lines: HashSet<String>,
    /// Word sets of the critique's lines, for near copies.
    critique: Vec<HashSet<String>>,
    /// Word sets of the chosen response's lines: repeating those is the update's job, even where
    /// the critique quotes them.
    own: Vec<HashSet<String>>,
}

/// Lines this long (normalized) are unmistakable when repeated cut short.
const LONG_LINE: usize = 20;
/// Lines of this many distinct words or more are compared as word sets.
const MIN_WORDS: usize = 5;
/// The share of a line's distinct words found in one critique line that makes it a copy.
const COPIED: f64 = 0.8;

impl Echoes {
    /// `critique` holds the loss and the gradient. A critique that writes out a revised response
    /// after an announcement ("Here's the rewritten response:") is read up to it: what follows
    /// is response text, and using it is the update working.
    pub fn new(instructions: &[String], query: &str, critique: &[&str], chosen: &str) -> Self {
        let mut lines: HashSet<String> = instructions
            .iter()
            .map(|l| normalize(l))
            .filter(|l| !l.is_empty())
            .collect();
        lines.extend(
            query
                .lines()
                .map(normalize)
                .filter(|l| l.len() >= LONG_LINE),
        );
        let word_sets = |text: &str| -> Vec<HashSet<String>> {
            text.lines()
                .map(|l| words(l).collect::<HashSet<_>>())
                .filter(|w| w.len() >= MIN_WORDS)
                .collect()
        };
        let critique = critique
            .iter()
            .flat_map(|c| {
                let before = c.lines().take_while(|l| !announces_response(l));
                word_sets(&before.collect::<Vec<_>>().join("\n"))
            })
            .collect();
        Self {
            lines,
            critique,
            own: word_sets(chosen),
        }
    }

    /// Whether `line` of a candidate repeats the prompt.
    pub(crate) fn repeats(&self, line: &str) -> bool {
        let normalized = normalize(line);
        let cut_short = |e: &String| {
            e.len() >= LONG_LINE
                && (e.starts_with(&normalized) || normalized.starts_with(e.as_str()))
        };
        if self.lines.contains(&normalized)
            || (normalized.len() >= LONG_LINE && self.lines.iter().any(cut_short))
        {
            return true;
        }
        let mine: HashSet<String> = words(line).collect();
        if mine.len() < MIN_WORDS {
            return false;
        }
        let within = |set: &HashSet<String>| {
            mine.iter().filter(|w| set.contains(*w)).count() as f64 >= COPIED * mine.len() as f64
        };
        self.critique.iter().any(within) && !self.own.iter().any(within)
    }
}

/// A line that announces a response with nothing after it: "Here's the rewritten response:".
fn announces_response(line: &str) -> bool {
    let label = normalize(line);
    strip_lead_in(line).is_some_and(|rest| rest.trim().is_empty())
        && (label.contains("response") || label.contains("version"))
}

/// Removes, line by line: lines repeating the prompt, meta lead-ins and task talk at the start
/// of a line, and lines of meta commentary.
pub fn strip_meta(text: &str, echoes: &Echoes, query: &str) -> String {
    let query = query.to_lowercase();
    let phrases: Vec<&str> = META_PHRASES
        .iter()
        .copied()
        .filter(|p| !query.contains(p))
        .collect();
    let mut kept = Vec::new();
    for line in text.lines() {
        if echoes.repeats(line) {
            continue;
        }
        let mut line = line.to_string();
        while let Some(rest) = strip_lead_in(&line) {
            line = rest;
        }
        let lower = line.to_lowercase();
        if !phrases.iter().any(|p| lower.contains(p)) {
            kept.push(line);
        }
    }
    // A last line that announces something ("...worth rephrasing to:") announces nothing.
    while let Some(last) = kept.iter().rposition(|l| !l.trim().is_empty()) {
        if !kept[last].trim_end().ends_with(':') {
            break;
        }
        kept.truncate(last);
    }
    kept.join("\n").trim().to_string()
}

/// The rest of `line` after a meta lead-in, or `None` when it does not open with one.
fn strip_lead_in(line: &str) -> Option<String> {
    let bare = line.trim().trim_start_matches(['*', '#', '"', '>', ' ']);
    let lower = bare.to_lowercase();
    if ANNOUNCE.iter().any(|a| starts_with_word(&lower, a)) {
        if let Some(colon) = bare.find(':').filter(|&i| i < 80) {
            return Some(bare[colon + 1..].trim_start_matches(['*', ' ']).to_string());
        }
        // A heading such as "**Improved Response**" on its own line.
        let label = normalize(bare);
        if label.ends_with("response") || label.ends_with("version") {
            return Some(String::new());
        }
    }
    if TASK_TALK.iter().any(|t| starts_with_word(&lower, t)) {
        let end = bare
            .find(['.', '!', ':', '?'])
            .map_or(bare.len(), |i| i + 1);
        return Some(bare[end..].trim_start().to_string());
    }
    None
}

/// `text` opens with `prefix` as whole words ("response" does not open "responses").
fn starts_with_word(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|rest| {
        prefix.ends_with(' ') || !rest.starts_with(|c: char| c.is_alphanumeric() || c == '\'')
    })
}

/// Lowercased words only, for comparing lines regardless of markup, spacing and list numbers.
fn normalize(line: &str) -> String {
    words(line)
        .skip_while(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::response::parse_update;
    use super::super::Dropped;
    use super::*;

    #[test]
    fn lines_echoing_instructions_are_removed_even_cut_short() {
        let query = "Give two tips for sleeping better.";
        let instructions = ["1. Keep it under fifty words and use plain language.".to_string()];
        let echoes = Echoes::new(&instructions, query, &[], "");
        let g = "Keep a fixed bedtime.\nKeep it under fifty words and";
        assert_eq!(
            parse_update(g, query, &echoes).unwrap(),
            "Keep a fixed bedtime."
        );
        let g = "Keep a fixed bedtime.\nWrite it down.";
        assert_eq!(parse_update(g, query, &echoes).unwrap(), g);
    }

    /// Round 1 of a measured run: the gradient was critique, and the update copied it.
    #[test]
    fn copies_of_the_critique_are_removed_but_the_chosen_may_be_repeated() {
        let query = "What is the capital of France? Answer in one sentence.";
        let chosen = "The capital of France is Paris.";
        let loss = "The better response is: The capital of France is Paris, which is correct.";
        let gradient = "The better response is: The grammar and spelling are correct but the \
                        phrasing is not grammatically correct. The correct phrase to use is \
                        \"the capital of France is\" rather than";
        let echoes = Echoes::new(&[], query, &[loss, gradient], chosen);
        let copy = "The grammar and spelling are correct but the phrasing is not grammatically \
                    correct. The correct phrase to use is";
        assert_eq!(
            parse_update(copy, query, &echoes).unwrap_err(),
            Dropped::Empty
        );
        assert_eq!(parse_update(chosen, query, &echoes).unwrap(), chosen);
        let new = "Paris, on the Seine, is the capital and largest city of France.";
        assert_eq!(parse_update(new, query, &echoes).unwrap(), new);
    }

    #[test]
    fn a_revised_response_inside_the_gradient_may_be_used() {
        let query = "Give two tips for sleeping better.";
        let gradient = "Add more detail to the second tip.\n\nHere's the rewritten response:\n\n\
                        Keep a fixed bedtime and avoid screens an hour before bed.";
        let echoes = Echoes::new(&[], query, &[gradient], "Keep a fixed bedtime.");
        let g = "Keep a fixed bedtime and avoid screens an hour before bed.";
        assert_eq!(parse_update(g, query, &echoes).unwrap(), g);
        let g = "Add more detail to the second tip.";
        assert_eq!(parse_update(g, query, &echoes).unwrap_err(), Dropped::Empty);
    }
}
