//! Reading a response out of what the policy wrote.
//!
//! Small policies follow the update instructions loosely: they echo the instructions, open with
//! "Here's the improved response:", talk about "the task" instead of doing it, or restate the
//! query. Measured on SmolLM2-135M, such text often outscores real answers under weak rewards,
//! so it must never count as an answer: the update asks for the response between markers, only
//! the marked text is kept, echoes of the prompt and meta text are stripped (see
//! [`super::echoes`]), and empty or restating candidates are dropped.

use super::echoes::{strip_meta, Echoes};
use super::Dropped;
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
/// writes its own opener is read after the last one. Lines that repeat the prompt ([`Echoes`])
/// and meta text are removed before the [`usable`] check.
pub fn parse_update(generated: &str, query: &str, echoes: &Echoes) -> Result<String, Dropped> {
    let start = generated.rfind(OPEN).map_or(0, |i| i + OPEN.len());
    let body = &generated[start..];
    let body = body.find(CLOSE).map_or(body, |i| &body[..i]);
    let text = strip_meta(strip_partial_close(body), echoes, query);
    usable(&text, query)?;
    Ok(text)
}

/// Checks that a candidate can count as an answer: not empty, and not a restatement of the query.
pub fn usable(text: &str, query: &str) -> Result<(), Dropped> {
    let has_content = text
        .chars()
        .any(|c| c.is_alphanumeric() || (!c.is_ascii() && !c.is_whitespace()));
    if !has_content {
        return Err(Dropped::Empty);
    }
    if restates(text, query) {
        return Err(Dropped::RestatesTask);
    }
    Ok(())
}

/// True when every word of `text` is a word of the query and it repeats at least half of them:
/// "The capital of France?" restates "What is the capital of France?", but "yes" does not
/// restate "Is water wet? Answer yes or no."
pub(crate) fn restates(text: &str, query: &str) -> bool {
    let query: HashSet<String> = words(query).collect();
    let text: HashSet<String> = words(text).collect();
    !text.is_empty() && text.is_subset(&query) && text.len() * 2 >= query.len()
}

/// The lowercased words of `text`; [`super::echoes`] compares lines by them too.
pub(super) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
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

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &str = "What is the capital of France?";

    fn echoes() -> Echoes {
        let instructions = [
            "Current response:",
            "Suggestions:",
            "Write only the improved response, between <response> and </response>.",
        ]
        .map(String::from);
        Echoes::new(&instructions, QUERY, &[], "")
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
        assert_eq!(parse("").unwrap_err(), Dropped::Empty);
        assert_eq!(parse("  </response>").unwrap_err(), Dropped::Empty);
        assert_eq!(
            parse("Here is the improved response:").unwrap_err(),
            Dropped::Empty
        );
        assert_eq!(
            parse("The task is to answer the question.").unwrap_err(),
            Dropped::Empty
        );
        // The query's own line is an echo; reworded, it is a restatement.
        assert_eq!(
            parse("What is the capital of France?").unwrap_err(),
            Dropped::Empty
        );
        assert_eq!(
            parse("The capital of France is what?").unwrap_err(),
            Dropped::RestatesTask
        );
        assert_eq!(
            parse("The capital of France").unwrap_err(),
            Dropped::RestatesTask
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
        assert_eq!(parse(g).unwrap_err(), Dropped::Empty);
        assert_eq!(
            parse("\n\nThe better response is that Paris is the capital.").unwrap_err(),
            Dropped::Empty
        );
        let g = "Your first suggested tip is worth rephrasing to:";
        assert_eq!(parse(g).unwrap_err(), Dropped::Empty);
        assert_eq!(parse("Paris.\n\nIn short:").unwrap(), "Paris.");
    }

    #[test]
    fn meta_phrases_the_query_uses_are_content() {
        let query = "Why does the query planner ignore my index?";
        let text = "The query planner skips the index when a scan is cheaper.";
        assert_eq!(parse_update(text, query, &Echoes::default()).unwrap(), text);
        assert_eq!(
            parse_update(text, QUERY, &Echoes::default()).unwrap_err(),
            Dropped::Empty
        );
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
            strip_meta(text, &Echoes::default(), QUERY),
            "Paris has been the capital since 987."
        );
        assert_eq!(
            strip_meta("Paris, my friend.", &Echoes::default(), QUERY),
            "Paris, my friend."
        );
        assert_eq!(
            strip_meta("My advice: rest.", &Echoes::default(), QUERY),
            "My advice: rest."
        );
        assert_eq!(
            strip_meta("The user interface is simple.", &Echoes::default(), QUERY),
            "The user interface is simple."
        );
        assert_eq!(
            strip_meta("Responses vary: Paris.", &Echoes::default(), QUERY),
            "Responses vary: Paris."
        );
        assert_eq!(
            strip_meta("Response: Paris.", &Echoes::default(), QUERY),
            "Paris."
        );
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
