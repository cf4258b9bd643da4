//! Tokenizer, logits and greedy decoding checked against llama.cpp on the same GGUF files.
//!
//! Tolerances: logits are compared on llama.cpp's 32 highest entries of every prompt position.
//! Both engines run the same quantized weights, but llama.cpp keeps its KV cache in f16 and
//! sums in another order, so we allow |Δ| <= LOGIT_TOL.

mod common;

use common::{fixture, load, Fixture};
use policies::store::{KnownModel, GEMMA3_270M, SMOLLM2};
use policies::{Logits, Policy};

const LOGIT_TOL: f32 = 0.05;
/// A greedy step whose top-2 margin (in logits) is below this is a near-tie: the engines may
/// legitimately split there, so continuations are compared only up to the first one.
const NEAR_TIE: f32 = 0.1;

fn check_tokenizer(policy: &Policy, fx: &Fixture) {
    let tok = policy.tokenizer();
    for case in &fx.tokenize {
        let ids = tok.encode(&case.text).unwrap();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        assert_eq!(tok.decode(&ids, false).unwrap(), case.decoded, "decoding of {:?}", case.text);
    }
}

fn check_logits(policy: &Policy, fx: &Fixture) {
    let model = policy.model();
    let mut worst = 0f32;
    for case in &fx.logits {
        let mut cache = model.new_cache(1);
        let logits = model.forward(&[case.prompt_ids.as_slice()], &mut cache, Logits::All).unwrap();
        let logits: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(logits.len(), case.positions.len());
        for (pos, (ours, theirs)) in logits.iter().zip(&case.positions).enumerate() {
            // Compare log-probabilities too, so a constant shift cannot hide.
            let lse = ours.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let lse = lse + ours.iter().map(|x| (x - lse).exp()).sum::<f32>().ln();
            for &(id, reference) in &theirs.top {
                let d = (ours[id as usize] - reference).abs();
                let dlp = ((ours[id as usize] - lse) - (reference - theirs.logsumexp)).abs();
                worst = worst.max(d).max(dlp);
                assert!(d <= LOGIT_TOL && dlp <= LOGIT_TOL, "position {pos}, token {id}: ours {} vs llama.cpp {reference}", ours[id as usize]);
            }
        }
    }
    eprintln!("max |logit diff| vs llama.cpp: {worst:.4}");
}

fn check_greedy(policy: &Policy, fx: &Fixture) {
    let params = policies::GenerateParams { max_tokens: 32, ..Default::default() };
    for case in &fx.greedy {
        let (out, _) = policy.generate(&case.prompt_ids, 1, &params).unwrap();
        let ours = &out[0].tokens;
        let agree = case.tokens.iter().zip(&case.margins).take_while(|(_, &m)| m >= NEAR_TIE).count();
        assert!(ours.len() >= agree.min(case.tokens.len()) || out[0].finish == policies::FinishReason::Stop);
        assert_eq!(&ours[..agree.min(ours.len())], &case.tokens[..agree.min(ours.len())], "greedy continuation of {:?}", case.prompt_ids);
        let split = ours.iter().zip(&case.tokens).position(|(a, b)| a != b);
        eprintln!("greedy: identical for {} tokens{}", split.unwrap_or(ours.len().min(case.tokens.len())), match split {
            Some(i) => format!(", split at a margin of {:.3}", case.margins[i]),
            None => String::new(),
        });
    }
}

fn check_all(model: &KnownModel, name: &str) {
    let policy = load(model);
    let fx = fixture(name);
    check_tokenizer(&policy, &fx);
    check_logits(&policy, &fx);
    check_greedy(&policy, &fx);
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_all(&SMOLLM2, "smollm2");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_all(&GEMMA3_270M, "gemma3");
}
