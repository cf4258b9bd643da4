//! Measuring a response: words, sentences, paragraphs, list items, headers and keywords.
//!
//! Every function here walks chars or lines, never byte offsets, so any UTF-8 input is safe.

/// Counts whitespace-separated tokens that contain at least one letter or digit.
///
/// Tokens made only of punctuation or symbols ("-", "—", "🙂") are not words. Scripts written
/// without spaces (Chinese, Japanese) count one word per run of text, as the definition implies.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace()
        .filter(|token| has_alphanumeric(token))
        .count()
}

/// Counts sentences: stretches of text ended by `.`, `!` or `?` followed by whitespace or the
/// end of the text, or by a CJK full stop, exclamation or question mark.
///
/// The whitespace rule keeps "3.14" and "e.g.x" whole. CJK marks end a sentence on their own,
/// because CJK text puts no space after them. Stretches without a letter or digit ("...", "!!")
/// are not sentences; text after the last terminator is one.
pub fn sentence_count(text: &str) -> usize {
    let mut count = 0;
    let mut has_content = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            has_content = true;
        }
        let ends_sentence = matches!(c, '。' | '！' | '？')
            || (matches!(c, '.' | '!' | '?')
                && chars.peek().is_none_or(|next| next.is_whitespace()));
        if ends_sentence {
            if has_content {
                count += 1;
            }
            has_content = false;
        }
    }
    if has_content {
        count += 1;
    }
    count
}

/// Counts paragraphs: runs of non-blank lines separated by one or more blank lines.
pub fn paragraph_count(text: &str) -> usize {
    let mut count = 0;
    let mut in_paragraph = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            in_paragraph = false;
        } else if !in_paragraph {
            count += 1;
            in_paragraph = true;
        }
    }
    count
}

/// Counts bullet points: lines outside code blocks that start with `-`, `*` or `•`.
///
/// `-` and `*` must be followed by a space, so "**bold**", "---" rules and "-5 °C" are not
/// bullets. The item must have some text; a bare marker is not a bullet.
pub fn bullet_count(text: &str) -> usize {
    prose_lines(text).filter(|line| is_bullet(line)).count()
}

fn is_bullet(line: &str) -> bool {
    let line = line.trim_start();
    if let Some(item) = line.strip_prefix('•') {
        return !item.trim().is_empty();
    }
    let mut chars = line.chars();
    match (chars.next(), chars.next()) {
        (Some('-' | '*'), Some(gap)) if gap.is_whitespace() => !chars.as_str().trim().is_empty(),
        _ => false,
    }
}

/// Counts markdown headers: lines outside code blocks made of 1 to 6 `#`, a space and a title.
///
/// Code blocks are skipped because `# comment` lines in shell or Python code are not headers.
pub fn header_count(text: &str) -> usize {
    prose_lines(text).filter(|line| is_header(line)).count()
}

fn is_header(line: &str) -> bool {
    let line = line.trim_start();
    let title = line.trim_start_matches('#');
    let hashes = line.len() - title.len();
    (1..=6).contains(&hashes) && title.starts_with(char::is_whitespace) && !title.trim().is_empty()
}

/// Counts lines outside code blocks that start with `splitter`, such as "SECTION 1".
///
/// Leading `#`, `*` and whitespace are skipped so that "## SECTION 1" and "**SECTION 1**" count
/// too; models often dress section markers up like that. The match is case-sensitive because
/// splitters are usually chosen to stand out ("SECTION", "PART").
pub fn splitter_count(text: &str, splitter: &str) -> usize {
    prose_lines(text)
        .filter(|line| {
            line.trim_start_matches(|c: char| c == '#' || c == '*' || c.is_whitespace())
                .starts_with(splitter)
        })
        .count()
}

/// The lines of `text` that are not inside a fenced code block, fence lines excluded.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut in_code = false;
    text.lines().filter(move |line| {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_code = !in_code;
            return false;
        }
        !in_code
    })
}

/// Splits text into lowercase word tokens for keyword matching.
///
/// A token is a run of letters and digits; everything else separates tokens, so "Rust," and
/// "rust" match, and so do "don't" and "DON'T" (both become "don", "t"). Each CJK character is a
/// token of its own because those scripts do not separate words with spaces; this lets "学习"
/// be found as a whole word inside "我喜欢学习".
pub fn word_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if is_cjk(c) {
            flush(&mut current, &mut tokens);
            tokens.push(c.to_string());
        } else if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else {
            flush(&mut current, &mut tokens);
        }
    }
    flush(&mut current, &mut tokens);
    tokens
}

fn flush(current: &mut String, tokens: &mut Vec<String>) {
    if !current.is_empty() {
        tokens.push(std::mem::take(current));
    }
}

/// How often the token sequence `phrase` occurs in `tokens` (overlapping matches count).
pub fn phrase_occurrences(tokens: &[String], phrase: &[String]) -> usize {
    if phrase.is_empty() {
        return 0;
    }
    tokens
        .windows(phrase.len())
        .filter(|window| *window == phrase)
        .count()
}

/// Characters of the CJK scripts that are written without spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(
        c,
        '\u{3040}'..='\u{30FF}'     // Hiragana, Katakana
            | '\u{3400}'..='\u{4DBF}'   // CJK Extension A
            | '\u{4E00}'..='\u{9FFF}'   // CJK Unified Ideographs
            | '\u{F900}'..='\u{FAFF}'   // CJK Compatibility Ideographs
            | '\u{20000}'..='\u{2FA1F}' // CJK Extensions B and later
    )
}

/// Whether `text` has at least one letter or digit.
pub fn has_alphanumeric(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

/// The first `max_chars` characters of `text`, with "…" when something was cut.
///
/// Reasons quote the response; clipping keeps a huge response from flooding the critique.
pub fn clip(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        format!("{}…", head.trim_end())
    } else {
        head
    }
}

/// The last `max_chars` characters of `text`, with "…" in front when something was cut.
pub fn clip_end(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let tail: String = text.chars().skip(total - max_chars).collect();
    format!("…{}", tail.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_skip_punctuation_only_tokens() {
        assert_eq!(word_count("Hello, world — it's 2024 🙂 !"), 4);
        assert_eq!(word_count(""), 0);
        assert_eq!(word_count(" \n\t "), 0);
        assert_eq!(
            word_count("naïve café\u{00A0}résumé"),
            3,
            "no-break space separates words"
        );
    }

    #[test]
    fn words_in_cjk_count_per_whitespace_run() {
        assert_eq!(word_count("我喜欢学习 日本語です"), 2);
    }

    #[test]
    fn sentences_split_on_terminators_followed_by_space_or_end() {
        assert_eq!(sentence_count("One. Two! Three? Four"), 4);
        assert_eq!(sentence_count("Pi is 3.14 roughly. Yes."), 2);
        assert_eq!(sentence_count("Wait... what?!"), 2);
        assert_eq!(sentence_count("... !!! ?"), 0);
        assert_eq!(sentence_count(""), 0);
        assert_eq!(sentence_count("No terminator at all"), 1);
    }

    #[test]
    fn sentences_split_on_cjk_marks_without_spaces() {
        assert_eq!(sentence_count("我是学生。你是老师！对吗？"), 3);
    }

    #[test]
    fn paragraphs_are_separated_by_blank_lines() {
        assert_eq!(paragraph_count("a\nb\n\nc\n \t\n\n\nd"), 3);
        assert_eq!(paragraph_count("\n\nonly\n\n"), 1);
        assert_eq!(paragraph_count("a\r\n\r\nb"), 2);
        assert_eq!(paragraph_count(""), 0);
    }

    #[test]
    fn bullets_need_a_marker_a_space_and_text() {
        let text = "- one\n* two\n  • three\n•four\n**bold**\n---\n-5 degrees\n- \n1. numbered";
        assert_eq!(bullet_count(text), 4);
    }

    #[test]
    fn bullets_inside_code_blocks_do_not_count() {
        assert_eq!(bullet_count("- real\n```\n- code\n```\n- real too"), 2);
    }

    #[test]
    fn headers_are_hashes_space_and_title() {
        let text =
            "# One\n## Two\n####### seven\n#hashtag\n#\n   ### Indented\n```sh\n# comment\n```";
        assert_eq!(header_count(text), 3);
    }

    #[test]
    fn splitter_lines_start_with_the_splitter() {
        let text = "SECTION 1\nintro\n## SECTION 2\n**SECTION 3**\nsee SECTION 1\nsection 4";
        assert_eq!(splitter_count(text, "SECTION"), 3);
    }

    #[test]
    fn tokens_are_lowercase_alphanumeric_runs_and_single_cjk_chars() {
        assert_eq!(
            word_tokens("Rust, RUST! don't"),
            ["rust", "rust", "don", "t"]
        );
        assert_eq!(word_tokens("我爱Rust"), ["我", "爱", "rust"]);
        assert_eq!(word_tokens("ÉCOLE"), ["école"]);
        assert!(word_tokens("🙂 ... ").is_empty());
    }

    #[test]
    fn phrases_match_whole_token_sequences() {
        let tokens =
            word_tokens("Machine learning is fun; machine-learning rocks. Machines learn.");
        assert_eq!(
            phrase_occurrences(&tokens, &word_tokens("machine learning")),
            2
        );
        assert_eq!(phrase_occurrences(&tokens, &word_tokens("machine")), 2);
        assert_eq!(phrase_occurrences(&tokens, &[]), 0);
    }

    #[test]
    fn clipping_is_char_aware() {
        assert_eq!(clip("héllo wörld", 5), "héllo…");
        assert_eq!(clip("🙂🙂", 5), "🙂🙂");
        assert_eq!(clip_end("héllo wörld", 5), "…wörld");
        assert_eq!(clip_end("日本", 5), "日本");
        assert_eq!(clip("ab cd", 3), "ab…", "no space before the ellipsis");
        assert_eq!(clip_end("ab cd", 3), "…cd");
    }
}
