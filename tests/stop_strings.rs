//! Stop strings are found in the text followed token by token (only the newest piece is
//! decoded per token), and generation ends at the token that completes one.

mod common;

use common::load;
use policies::store::SMOLLM2;
use policies::{FinishReason, GenerateParams, Message, Role, SamplingParams, TextSink};
use std::sync::{Arc, Mutex};

#[test]
fn generation_ends_at_the_token_that_completes_a_stop_string() {
    let policy = load(&SMOLLM2);
    let tokenizer = policy.tokenizer();
    let prompts = [
        "Write two sentences about the sea.",
        "Say hello in French, Japanese and Greek, with an emoji after each.",
    ];
    let mut checked = 0;
    for (i, text) in prompts.iter().enumerate() {
        let prompt = policy
            .encode_chat(&[Message::new(Role::User, *text)])
            .unwrap();
        let free = GenerateParams {
            max_tokens: 48,
            sampling: SamplingParams {
                temperature: 0.8,
                seed: 7 + i as u64,
                ..Default::default()
            },
            ..Default::default()
        };
        let (out, _) = policy.generate(&prompt, 1, &free).unwrap();
        let full = &out[0].text;
        // A stop string from the middle of the free text: three characters a third of the
        // way in (for emoji, several bytes that no single token may hold).
        let chars: Vec<char> = full.chars().collect();
        assert!(
            chars.len() >= 9,
            "too short to pick a stop string from: {full:?}"
        );
        let stop: String = chars[chars.len() / 3..][..3].iter().collect();
        let first = full.find(&stop).unwrap();
        let stopped = GenerateParams {
            stop: vec![stop.clone()],
            ..free.clone()
        };
        let (cut, _) = policy.generate(&prompt, 1, &stopped).unwrap();
        let cut = &cut[0];
        assert_eq!(cut.finish, FinishReason::Stop, "{stop:?} in {full:?}");
        assert_eq!(cut.text, full[..first], "{stop:?} in {full:?}");
        // It stopped at the first token whose text holds the stop string, not later.
        let before = tokenizer
            .decode(&cut.tokens[..cut.tokens.len() - 1], true)
            .unwrap();
        assert!(
            !before.contains(&stop),
            "{} tokens generated, but {stop:?} was already in {before:?}",
            cut.tokens.len()
        );
        assert!(tokenizer.decode(&cut.tokens, true).unwrap().contains(&stop));
        checked += 1;
    }
    assert_eq!(checked, prompts.len());
}

/// What a [`TextSink`] hears, joined row by row, is each row's final text exactly: with stop
/// strings (text that might begin one is held back, never sent and taken back) and without.
#[test]
fn streamed_text_joins_to_the_final_text_of_every_row() {
    let policy = load(&SMOLLM2);
    let prompt = policy
        .encode_chat(&[Message::new(
            Role::User,
            "Write two sentences about the sea.",
        )])
        .unwrap();
    for stop in [vec![], vec!["sea".to_string(), ", ".to_string()]] {
        let heard: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let sink = heard.clone();
        let params = GenerateParams {
            max_tokens: 40,
            sampling: SamplingParams {
                temperature: 0.9,
                seed: 11,
                ..Default::default()
            },
            stop: stop.clone(),
            on_text: Some(TextSink::new(move |row, text| {
                sink.lock().unwrap().push((row, text.to_string()));
            })),
            ..Default::default()
        };
        let (out, _) = policy.generate(&prompt, 3, &params).unwrap();
        assert_eq!(out.len(), 3);
        let heard = heard.lock().unwrap();
        assert!(
            heard.iter().all(|(_, t)| !t.is_empty()),
            "empty pieces sent"
        );
        for (row, generation) in out.iter().enumerate() {
            let pieces: Vec<&str> = heard
                .iter()
                .filter(|(r, _)| *r == row)
                .map(|(_, t)| t.as_str())
                .collect();
            assert!(
                pieces.len() > 1 || generation.text.chars().count() <= 1,
                "row {row}: {pieces:?}"
            );
            assert_eq!(pieces.concat(), generation.text, "row {row}, stop {stop:?}");
        }
    }
}
