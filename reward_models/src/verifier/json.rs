//! Finding the JSON document in a response.

use serde_json::Value;

/// Parses the response as JSON: either the whole response, or the first fenced code block
/// marked `json` (or unmarked) that holds valid JSON.
///
/// Models are often asked for "JSON only" and still wrap it in a ```json fence, which is a fair
/// way to answer, so both are accepted. On failure the error of the most likely intended
/// document (the first fence, else the whole response) is returned, to tell the model what to fix.
pub fn parse_response(text: &str) -> Result<Value, String> {
    let whole = serde_json::from_str::<Value>(text.trim()).map_err(|e| e.to_string());
    if whole.is_ok() {
        return whole;
    }
    let mut first_error = None;
    for block in json_code_blocks(text) {
        match serde_json::from_str::<Value>(block.trim()) {
            Ok(value) => return Ok(value),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => whole,
    }
}

/// The contents of the closed ``` code blocks whose info string is empty or `json`.
fn json_code_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("```") {
        let after_fence = &rest[open + 3..];
        let (info, body) = after_fence.split_once('\n').unwrap_or((after_fence, ""));
        let Some(close) = body.find("```") else {
            break;
        };
        let info = info.trim();
        if info.is_empty() || info.eq_ignore_ascii_case("json") {
            blocks.push(&body[..close]);
        }
        rest = &body[close + 3..];
    }
    blocks
}

/// "an object", "an array", ... for telling the model what it produced instead.
pub fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_response_is_parsed() {
        let value = parse_response("  {\"a\": {\"b\": [1, {\"c\": null}]}}\n");
        assert_eq!(value, Ok(json!({"a": {"b": [1, {"c": null}]}})));
    }

    #[test]
    fn fenced_json_is_accepted_with_text_around_it() {
        let text = "Here you go:\n```json\n{\"name\": \"Ada\"}\n```\nAnything else?";
        assert_eq!(parse_response(text), Ok(json!({"name": "Ada"})));
        let unmarked = "```\n[1, 2]\n```";
        assert_eq!(parse_response(unmarked), Ok(json!([1, 2])));
    }

    #[test]
    fn other_languages_and_unclosed_fences_are_ignored() {
        assert!(parse_response("```python\n{\"a\": 1}\n```").is_err());
        assert!(parse_response("```json\n{\"a\": 1}").is_err());
    }

    #[test]
    fn later_valid_block_is_found_after_an_invalid_one() {
        let text = "```json\n{oops}\n```\nFixed:\n```json\n{\"ok\": true}\n```";
        assert_eq!(parse_response(text), Ok(json!({"ok": true})));
    }

    #[test]
    fn invalid_json_reports_the_parser_error() {
        let error = parse_response("{\"a\": 1,}").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        let fenced = parse_response("```json\n{'a': 1}\n```").unwrap_err();
        assert!(fenced.contains("key must be a string"), "{fenced}");
        assert!(parse_response("").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(parse_response(&deep).is_err());
    }
}
