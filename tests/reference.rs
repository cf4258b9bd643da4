//! Tokenizer, logits and greedy decoding checked against llama.cpp on the same GGUF files.
//!
//! Tolerances: log-probabilities are compared on llama.cpp's 32 most likely tokens of every
//! prompt position. Both engines run the same quantized weights and quantize activations to
//! 8 bits before each matmul, but llama.cpp keeps its KV cache in f16 and sums in another
//! order; a last-bit difference can flip an 8-bit activation, so differences of a few tenths
//! appear on some positions. We bound the mean and the maximum.

mod common;

use common::{fixture, load, Fixture};
use policies::store::{KnownModel, GEMMA3_270M, SMOLLM2};
use policies::{Logits, Policy};

const MEAN_TOL: f32 = 0.3;
const MAX_TOL: f32 = 2.0;
/// A greedy step whose top-2 margin (in logits) is below this is a near-tie: the engines may
/// legitimately split there, so continuations are compared only up to the first one.
const NEAR_TIE: f32 = 0.5;

fn check_tokenizer(policy: &Policy, fx: &Fixture) {
    let tok = policy.tokenizer();
    for case in &fx.tokenize {
        let ids = tok.encode(&case.text).unwrap();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        // llama.cpp detokenizes without special tokens.
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case.decoded,
            "decoding of {:?}",
            case.text
        );
    }
}

fn check_logits(policy: &Policy, fx: &Fixture) {
    let model = policy.model();
    let (mut worst, mut total, mut n, mut top1_agree, mut positions) =
        (0f32, 0f64, 0usize, 0usize, 0usize);
    for case in &fx.logits {
        let mut cache = model.new_cache(1);
        let logits = model
            .forward(&[case.prompt_ids.as_slice()], &mut cache, Logits::All)
            .unwrap();
        let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        assert_eq!(logits.len(), case.positions.len());
        for (ours, theirs) in logits.iter().zip(&case.positions) {
            // Compare log-probabilities, so that a constant shift of the logits cannot hide.
            let max = ours.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let lse = max + ours.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            for &(id, reference) in &theirs.top {
                let d = ((ours[id as usize] - lse) - (reference - theirs.logsumexp)).abs();
                worst = worst.max(d);
                total += d as f64;
                n += 1;
            }
            positions += 1;
            top1_agree += usize::from(policies::sampling::argmax(ours) == theirs.top[0].0);
        }
    }
    let mean = total / n as f64;
    eprintln!("log-prob |diff| vs llama.cpp over the top-32 of {positions} positions: mean {mean:.4}, max {worst:.4}; top-1 agrees at {top1_agree}/{positions}");
    assert!(mean <= MEAN_TOL as f64, "mean |diff| {mean}");
    assert!(worst <= MAX_TOL, "max |diff| {worst}");
}

fn check_greedy(policy: &Policy, fx: &Fixture) {
    let params = policies::GenerateParams {
        max_tokens: 32,
        ..Default::default()
    };
    assert!(!fx.greedy.is_empty(), "the fixture has no greedy cases");
    for case in &fx.greedy {
        let (out, _) = policy.generate(&case.prompt_ids, 1, &params).unwrap();
        let ours = &out[0].tokens;
        assert_eq!(
            case.tokens.len(),
            case.margins.len(),
            "one margin per reference token"
        );
        let agree = case
            .tokens
            .iter()
            .zip(&case.margins)
            .take_while(|(_, &m)| m >= NEAR_TIE)
            .count();
        assert!(
            ours.len() >= agree.min(case.tokens.len())
                || out[0].finish == policies::FinishReason::Stop
        );
        assert_eq!(
            &ours[..agree.min(ours.len())],
            &case.tokens[..agree.min(ours.len())],
            "greedy continuation of {:?}",
            case.prompt_ids
        );
        let split = ours.iter().zip(&case.tokens).position(|(a, b)| a != b);
        eprintln!(
            "greedy: identical for {} tokens{}",
            split.unwrap_or(ours.len().min(case.tokens.len())),
            match split {
                Some(i) => format!(", split at a margin of {:.3}", case.margins[i]),
                None => String::new(),
            }
        );
    }
}

fn check_all(model: &KnownModel, name: &str) {
    let policy = load(model);
    let fx = fixture(name);
    check_tokenizer(&policy, &fx);
    check_greedy(&policy, &fx);
    check_logits(&policy, &fx);
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_all(&SMOLLM2, "smollm2");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_all(&GEMMA3_270M, "gemma3");
}
