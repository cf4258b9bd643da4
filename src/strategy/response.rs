//! Reading a response out of what the policy wrote.
//!
//! Small policies follow the update instructions loosely: they echo the instructions, open with
//! "Here's the improved response:", talk about "the task" instead of doing it, or restate the
//! query. Measured on SmolLM2-135M, such text often outscores real answers under weak rewards,
//! so it must never count as an answer: the update asks for the response between markers, only
//! the marked text is kept, meta text is stripped, and empty or restating candidates are dropped.

use policies::{Message, Role};
use std::collections::HashSet;

pub const OPEN: &str = "<response>";
pub const CLOSE: &str = "</response>";

/// The query as the feedback prompts quote it: the user's message, or the whole conversation
/// role by role when there is more than one message.
pub fn query_text(messages: &[Message]) -> String {
    match messages {
        [only] => only.content.clone(),
        _ => messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "System",
                    Role::User => "User",
                    Role::Assistant => "Assistant",
                };
                format!("{role}: {}", m.content)
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The response an update generation holds, or why there is none.
///
/// The prompt ends with [`OPEN`], so the generation is the response up to [`CLOSE`]; a model that
/// writes its own opener is read after the last one. Echoed instruction lines (`echoes`) and meta
/// lead-ins are removed before the [`usable`] check.
pub fn parse_update(generated: &str, query: &str, echoes: &[String]) -> Result<String, String> {
    let start = generated.rfind(OPEN).map_or(0, |i| i + OPEN.len());
    let body = &generated[start..];
    let body = body.find(CLOSE).map_or(body, |i| &body[..i]);
    let text = strip_meta(strip_partial_close(body), echoes, query);
    usable(&text, query)?;
    Ok(text)
}

/// Checks that a candidate can count as an answer: not empty, and not a restatement of the query.
pub fn usable(text: &str, query: &str) -> Result<(), String> {
    let has_content = text
        .chars()
        .any(|c| c.is_alphanumeric() || (!c.is_ascii() && !c.is_whitespace()));
    if !has_content {
        return Err("empty".to_string());
    }
    if restates(text, query) {
        return Err("restates the task".to_string());
    }
    Ok(())
}

/// True when every word of `text` is a word of the query and it repeats at least half of them:
/// "The capital of France?" restates "What is the capital of France?", but "yes" does not
/// restate "Is water wet? Answer yes or no."
fn restates(text: &str, query: &str) -> bool {
    let query: HashSet<String> = words(query).collect();
    let text: HashSet<String> = words(text).collect();
    !text.is_empty() && text.is_subset(&query) && text.len() * 2 >= query.len()
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A generation cut by the token limit may end inside the closing marker.
fn strip_partial_close(text: &str) -> &str {
    (1..CLOSE.len())
        .rev()
        .find(|&k| text.ends_with(&CLOSE[..k]))
        .map_or(text, |k| &text[..text.len() - k])
}

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
const META_PHRASES: [&str; 25] = [
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
    "the evaluation",
    "the answer should",
    "the improved",
];

/// Removes, line by line: echoed instruction lines, meta lead-ins and task talk at the start of
/// a line, and lines of meta commentary.
pub fn strip_meta(text: &str, echoes: &[String], query: &str) -> String {
    let echoes: HashSet<String> = echoes
        .iter()
        .map(|e| normalize(e))
        .filter(|e| !e.is_empty())
        .collect();
    let query = query.to_lowercase();
    let phrases: Vec<&str> = META_PHRASES
        .iter()
        .copied()
        .filter(|p| !query.contains(p))
        .collect();
    let mut kept = Vec::new();
    for line in text.lines() {
        if echoes_one(&normalize(line), &echoes) {
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
    kept.join("\n").trim().to_string()
}

/// Whether a normalized line repeats an echo: equal to it, or, when both are long enough to be
/// unmistakable, one cut short of the other (generations stop mid-line).
fn echoes_one(line: &str, echoes: &HashSet<String>) -> bool {
    const LONG: usize = 20;
    echoes.contains(line)
        || (line.len() >= LONG
            && echoes
                .iter()
                .any(|e| e.len() >= LONG && (e.starts_with(line) || line.starts_with(e.as_str()))))
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
    use super::*;

    const QUERY: &str = "What is the capital of France?";

    fn echoes() -> Vec<String> {
        [
            "Current response:",
            "Suggestions:",
            "Write only the improved response, between <response> and </response>.",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn reads_the_marked_response() {
        let parse = |g: &str| parse_update(g, QUERY, &echoes());
        assert_eq!(
            parse("Paris is the capital of France.").unwrap(),
            "Paris is the capital of France."
        );
        assert_eq!(
            parse("Sure!\n<response>Paris.</response> extra").unwrap(),
            "Paris."
        );
        assert_eq!(
            parse("The capital is Paris.</resp").unwrap(),
            "The capital is Paris."
        );
        assert_eq!(parse(" Paris <").unwrap(), "Paris");
    }

    #[test]
    fn strips_announcements_and_task_talk() {
        let parse = |g: &str| parse_update(g, QUERY, &echoes());
        assert_eq!(
            parse("Here's the improved response: Paris is the capital.").unwrap(),
            "Paris is the capital."
        );
        assert_eq!(parse("**Improved response:**\n\nParis.").unwrap(), "Paris.");
        assert_eq!(
            parse("The task is to name the capital of France. The capital of France is Paris.")
                .unwrap(),
            "The capital of France is Paris."
        );
        assert_eq!(
            parse("Current response:\nParis\nSuggestions:").unwrap(),
            "Paris"
        );
    }

    #[test]
    fn drops_empty_meta_and_restatements() {
        let parse = |g: &str| parse_update(g, QUERY, &echoes());
        assert_eq!(parse("").unwrap_err(), "empty");
        assert_eq!(parse("  </response>").unwrap_err(), "empty");
        assert_eq!(
            parse("Here is the improved response:").unwrap_err(),
            "empty"
        );
        assert_eq!(
            parse("The task is to answer the question.").unwrap_err(),
            "empty"
        );
        assert_eq!(
            parse("What is the capital of France?").unwrap_err(),
            "restates the task"
        );
        assert_eq!(
            parse("The capital of France").unwrap_err(),
            "restates the task"
        );
    }

    /// What SmolLM2-135M wrote in update rounds with the first prompts.
    #[test]
    fn measured_meta_text_is_removed() {
        let parse = |g: &str| parse_update(g, QUERY, &echoes());
        assert_eq!(
            parse("The capital of France is Paris.\n\nImproved response:").unwrap(),
            "The capital of France is Paris."
        );
        let g = "The capital of France is Paris.\n\nThe requested improvement was done with the \
                 replacement of the informal expression \"The capital of France\" with the more formal one.";
        assert_eq!(parse(g).unwrap(), "The capital of France is Paris.");
        let g =
            "The answer should not repeat the previous response.\n\nHere is the improved response.";
        assert_eq!(parse(g).unwrap_err(), "empty");
        assert_eq!(
            parse("\n\nThe better response is that Paris is the capital.").unwrap_err(),
            "empty"
        );
    }

    #[test]
    fn lines_echoing_the_feedback_are_removed_even_cut_short() {
        let query = "Give two tips for sleeping better.";
        let feedback = ["1. Avoid naps after 3 pm, since they delay sleep at night.".to_string()];
        let g = "Keep a fixed bedtime.\nAvoid naps after 3 pm, since";
        assert_eq!(
            parse_update(g, query, &feedback).unwrap(),
            "Keep a fixed bedtime."
        );
        let g = "Keep a fixed bedtime.\nAvoid late naps.";
        assert_eq!(parse_update(g, query, &feedback).unwrap(), g);
    }

    #[test]
    fn meta_phrases_the_query_uses_are_content() {
        let query = "Why does the query planner ignore my index?";
        let text = "The query planner skips the index when a scan is cheaper.";
        assert_eq!(parse_update(text, query, &[]).unwrap(), text);
        assert_eq!(parse_update(text, QUERY, &[]).unwrap_err(), "empty");
    }

    #[test]
    fn short_answers_made_of_query_words_are_kept() {
        assert!(usable("yes", "Is water wet? Answer yes or no.").is_ok());
        assert!(usable("Paris", QUERY).is_ok());
        assert!(usable("🙂", "Reply with an emoji").is_ok());
        assert!(usable("...", QUERY).is_err());
    }

    #[test]
    fn content_that_merely_starts_like_a_lead_in_is_kept() {
        let text = "Here is why: Paris has been the capital since 987.";
        // An announcement needs a colon; this one has one, so the clause before it goes.
        assert_eq!(
            strip_meta(text, &[], QUERY),
            "Paris has been the capital since 987."
        );
        assert_eq!(
            strip_meta("Paris, my friend.", &[], QUERY),
            "Paris, my friend."
        );
        assert_eq!(
            strip_meta("My advice: rest.", &[], QUERY),
            "My advice: rest."
        );
        assert_eq!(
            strip_meta("The user interface is simple.", &[], QUERY),
            "The user interface is simple."
        );
        assert_eq!(
            strip_meta("Responses vary: Paris.", &[], QUERY),
            "Responses vary: Paris."
        );
        assert_eq!(strip_meta("Response: Paris.", &[], QUERY), "Paris.");
    }

    #[test]
    fn query_text_of_one_or_many_messages() {
        let one = [Message::new(Role::User, "Hi")];
        assert_eq!(query_text(&one), "Hi");
        let two = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
        ];
        assert_eq!(query_text(&two), "System: Be brief.\nUser: Hi");
    }
}
