//! Extracting and comparing final answers.

/// Finds the final answer in a response and normalizes it (see [`normalize`]).
///
/// Looks, in order of how deliberately the model marked its answer, for the last `\boxed{...}`,
/// the last "answer is X" ("the answer is", "my answer is"), the last "Answer: X", and finally
/// the last non-empty line. Weighted best-of-N groups responses by this answer too, so the
/// service has one notion of a response's answer.
/// The search runs on the lowercased text: answers are compared case-folded anyway, and
/// searching the folded text avoids mapping offsets between two differently sized strings.
pub fn extract(response: &str) -> Option<String> {
    let folded = response.to_lowercase();
    boxed(&folded)
        .or_else(|| after_last(&folded, "answer is"))
        .or_else(|| after_last(&folded, "answer:"))
        .or_else(|| last_line(&folded))
        .map(normalize)
        .filter(|answer| !answer.is_empty())
}

/// Whether two answers, already normalized, are the same: equal text, or equal numbers so that
/// "42.0" matches "42".
pub fn same(found: &str, expected: &str) -> bool {
    if found == expected {
        return true;
    }
    match (found.parse::<f64>(), expected.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Makes equivalent spellings of an answer equal: trims, case-folds, collapses inner whitespace,
/// drops trailing periods (also the CJK `。`) and strips markdown or quote wrappers such as
/// `**42**` or `$x$`.
pub fn normalize(answer: &str) -> String {
    const WRAPPERS: [&str; 6] = ["**", "*", "`", "$", "\"", "'"];
    let mut text = answer.trim();
    loop {
        let before = text;
        text = text.trim_end_matches(['.', '。']).trim();
        for wrapper in WRAPPERS {
            if let Some(inner) = text
                .strip_prefix(wrapper)
                .and_then(|t| t.strip_suffix(wrapper))
            {
                text = inner.trim();
            }
        }
        if text == before {
            break;
        }
    }
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The contents of the last `\boxed{...}`, with nested braces balanced.
fn boxed(text: &str) -> Option<&str> {
    const MARKER: &str = "\\boxed{";
    let start = text.rfind(MARKER)? + MARKER.len();
    let inner = &text[start..];
    let mut depth = 1usize;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&inner[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// What follows the last `marker`: the rest of its line, or the next non-empty line when the
/// marker ends its line ("Answer:\n42").
fn after_last<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.rfind(marker)? + marker.len();
    let rest = text[start..].trim_start_matches(|c: char| c == ':' || c.is_whitespace());
    rest.lines().next().filter(|line| !line.trim().is_empty())
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().find(|line| !line.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_wins_and_nested_braces_are_kept() {
        let text = "The answer is 3.\nSo \\boxed{\\frac{1}{2}} is final.\nAnswer: 7";
        assert_eq!(extract(text).as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(
            extract("\\boxed{1} then \\boxed{ 2 }").as_deref(),
            Some("2")
        );
    }

    #[test]
    fn unclosed_box_falls_back_to_other_markers() {
        assert_eq!(extract("\\boxed{42\nAnswer: 41").as_deref(), Some("41"));
    }

    #[test]
    fn the_answer_is_phrase() {
        let text = "Let me think.\nSo the answer is **Paris**.\nHope that helps!";
        assert_eq!(extract(text).as_deref(), Some("paris"));
        assert_eq!(extract("THE ANSWER IS: 12").as_deref(), Some("12"));
        assert_eq!(extract("My answer is 12.\nThanks").as_deref(), Some("12"));
    }

    #[test]
    fn answer_colon_on_same_or_next_line() {
        assert_eq!(extract("Work...\nFinal Answer: B").as_deref(), Some("b"));
        assert_eq!(
            extract("Work...\nAnswer:\n\n  $x = 3$  \n").as_deref(),
            Some("x = 3")
        );
    }

    #[test]
    fn last_line_is_the_fallback() {
        assert_eq!(
            extract("Some steps\n\n  Forty   Two. \n\n").as_deref(),
            Some("forty two")
        );
    }

    #[test]
    fn empty_or_blank_response_has_no_answer() {
        assert_eq!(extract(""), None);
        assert_eq!(extract(" \n \n"), None);
        assert_eq!(extract("..."), None);
        assert_eq!(extract("\\boxed{}"), None);
    }

    #[test]
    fn unicode_answers_are_folded_safely() {
        assert_eq!(
            extract("答案是什么？\nAnswer: İSTANBUL").as_deref(),
            Some("i\u{307}stanbul")
        );
        assert_eq!(extract("🙂 the answer is 東京。").as_deref(), Some("東京"));
    }

    #[test]
    fn normalization_and_numeric_equality() {
        assert_eq!(normalize("  `Paris`. "), "paris");
        assert_eq!(normalize("'**42**'"), "42");
        assert!(same(&normalize("42.0"), &normalize("42")));
        assert!(!same("42", "43"));
        assert!(!same("nan", "42"));
    }
}
