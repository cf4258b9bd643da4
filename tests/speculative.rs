//! Speculative decoding on the default model is lossless: greedy output is plain greedy output,
//! token for token, sampled output is plain sampled output, seed for seed, and follows the
//! same distribution as plain sampling under other seeds.

mod common;

use common::load;
use policies::speculative::chi_square_bound;
use policies::store::SMOLLM2;
use policies::{GenerateParams, Generation, Message, Policy, Role, SamplingParams, Speculation};
use std::collections::HashMap;
use std::sync::OnceLock;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| load(&SMOLLM2))
}

fn chat(text: &str) -> Vec<u32> {
    policy()
        .encode_chat(&[Message::new(Role::User, text)])
        .unwrap()
}

/// Every proposed draft verified (unpaced): these tests are about verification.
fn params(max_tokens: usize, temperature: f32, seed: u64, speculate: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        },
        speculation: Speculation::drafts(speculate).unpaced(),
        ..GenerateParams::default()
    }
}

#[test]
fn paced_speculation_withholds_drafts_that_do_not_pay_and_keeps_the_output() {
    // On the CPU verifying drafts costs 0.3 decoding steps and 0.2 per token (`pacing::Cost`), so a row verifies drafts only while its acceptance rate is high enough
    // to pay for them; the output is the same either way.
    let prompt = chat(REPEATS[1]);
    let (plain, _) = policy()
        .generate(&prompt, 2, &params(48, 0.0, 0, 0))
        .unwrap();
    let (_, unpaced) = policy()
        .generate(&prompt, 2, &params(48, 0.0, 0, 4))
        .unwrap();
    let paced = GenerateParams {
        speculation: Speculation::drafts(4),
        ..params(48, 0.0, 0, 0)
    };
    let (spec, stats) = policy().generate(&prompt, 2, &paced).unwrap();
    assert_eq!(spec.len(), plain.len());
    for (p, s) in plain.iter().zip(&spec) {
        assert_eq!(p.tokens, s.tokens, "{:?} vs {:?}", p.text, s.text);
    }
    assert_eq!(unpaced.num_withheld_tokens, 0, "{unpaced:?}");
    assert!(stats.num_withheld_tokens > 0, "{stats:?}");
    assert!(
        stats.num_draft_tokens < unpaced.num_draft_tokens,
        "paced {stats:?} vs unpaced {unpaced:?}"
    );
}

#[test]
fn samples_of_one_prompt_draft_from_each_other() {
    // Fresh samples of a prompt that holds none of their text: what one row wrote, another
    // often writes too. Those drafts are counted apart, and they are verified like any other
    // (the greedy and sampled tests here run with siblings too).
    let prompt = chat("Write a short poem about the sea, with a title, in four lines.");
    let (out, stats) = policy()
        .generate(&prompt, 8, &params(48, 0.7, 0, 4))
        .unwrap();
    assert_eq!(out.len(), 8);
    assert!(stats.num_sibling_draft_tokens > 0, "{stats:?}");
    assert!(
        stats.num_sibling_drafts > 0 && stats.num_sibling_drafts < stats.num_drafts,
        "{stats:?}"
    );
    assert!(stats.num_sibling_drafts <= stats.num_sibling_draft_tokens);
    assert!(
        stats.num_sibling_accepted_tokens > 0,
        "no sibling draft was accepted: {stats:?}"
    );
    assert!(
        stats.num_sibling_draft_tokens < stats.num_draft_tokens,
        "the rows' own context drafted nothing: {stats:?}"
    );
}

/// Prompts whose answers repeat their own text, so that drafts are proposed, and accepted
/// and rejected in turn.
const REPEATS: [&str; 3] = [
    "Repeat this sentence exactly, twice: The quick brown fox jumps over the lazy dog near the river bank.",
    "Rewrite this more politely: Send me the quarterly report by Friday or you will be in trouble.",
    "List the numbers from one to twelve in words, separated by commas.",
];

#[test]
fn greedy_speculative_output_is_plain_greedy_output() {
    let (mut drafted, mut accepted) = (0, 0);
    for text in REPEATS {
        let prompt = chat(text);
        let (plain, plain_stats) = policy()
            .generate(&prompt, 2, &params(48, 0.0, 0, 0))
            .unwrap();
        let (spec, stats) = policy()
            .generate(&prompt, 2, &params(48, 0.0, 0, 4))
            .unwrap();
        assert_eq!(plain.len(), 2, "{text}: plain rows");
        assert_eq!(
            spec.len(),
            plain.len(),
            "{text}: speculative rows vs plain rows"
        );
        for (p, s) in plain.iter().zip(&spec) {
            assert_eq!(p.tokens, s.tokens, "{text}: {:?} vs {:?}", p.text, s.text);
            assert_eq!(p.finish, s.finish);
        }
        assert_eq!(plain_stats.num_draft_tokens, 0);
        // Every position computed is counted, rejected drafts included.
        assert_eq!(
            stats.decode_tokens,
            plain_stats.decode_tokens + stats.num_draft_tokens - stats.num_accepted_tokens
        );
        drafted += stats.num_draft_tokens;
        accepted += stats.num_accepted_tokens;
    }
    assert!(accepted > 0, "no draft was ever accepted");
    assert!(accepted < drafted, "no draft was ever rejected");
    eprintln!("greedy: {accepted} of {drafted} draft tokens accepted");

    // Rows of different prompts in one batch, each with its own drafts.
    let prompts: Vec<Vec<u32>> = REPEATS.iter().map(|t| chat(t)).collect();
    let (plain, _) = policy()
        .generate_batch(&prompts, &params(32, 0.0, 0, 0))
        .unwrap();
    let (spec, _) = policy()
        .generate_batch(&prompts, &params(32, 0.0, 0, 4))
        .unwrap();
    assert_eq!(plain.len(), prompts.len(), "plain batch rows");
    assert_eq!(spec.len(), plain.len(), "speculative batch rows vs plain");
    for (p, s) in plain.iter().zip(&spec) {
        assert_eq!(p.tokens, s.tokens);
    }
}

#[test]
fn sampled_speculative_output_is_plain_sampled_output_seed_for_seed() {
    // Each position's token is drawn with the row's next uniform number whether it was
    // drafted or not, so speculation changes how many tokens a forward pass yields and never
    // which ones: drafts from the text and from a draft model, accepted and rejected.
    let prompts: Vec<Vec<u32>> = REPEATS.iter().map(|t| chat(t)).collect();
    let sampled = |speculate| params(40, 0.8, 7, speculate);
    let (plain, _) = policy().generate_batch(&prompts, &sampled(0)).unwrap();
    for (name, drafting) in [("suffix", policy()), ("draft model", self_drafted())] {
        let (spec, stats) = drafting.generate_batch(&prompts, &sampled(4)).unwrap();
        assert_eq!(spec.len(), plain.len(), "{name}: rows");
        for (p, s) in plain.iter().zip(&spec) {
            assert_eq!(p.tokens, s.tokens, "{name}: {:?} vs {:?}", p.text, s.text);
        }
        assert!(
            stats.num_accepted_tokens > 0 && stats.num_accepted_tokens < stats.num_draft_tokens,
            "{name}: drafts must be both accepted and rejected: {stats:?}"
        );
    }
}

/// The two-sample chi-square statistic of two samples' category counts, and its degrees of
/// freedom; categories with fewer than 10 draws in both samples together are pooled.
fn two_sample_chi_square(a: &HashMap<u32, u64>, b: &HashMap<u32, u64>) -> (f64, usize) {
    let (na, nb) = (
        a.values().sum::<u64>() as f64,
        b.values().sum::<u64>() as f64,
    );
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut pooled = (0.0, 0.0);
    let keys: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
    for k in keys {
        let (x, y) = (
            *a.get(&k).unwrap_or(&0) as f64,
            *b.get(&k).unwrap_or(&0) as f64,
        );
        if x + y < 10.0 {
            pooled = (pooled.0 + x, pooled.1 + y);
        } else {
            cells.push((x, y));
        }
    }
    if pooled.0 + pooled.1 > 0.0 {
        cells.push(pooled);
    }
    let stat = cells
        .iter()
        .map(|&(x, y)| {
            let total = x + y;
            let (ea, eb) = (total * na / (na + nb), total * nb / (na + nb));
            (x - ea).powi(2) / ea + (y - eb).powi(2) / eb
        })
        .sum();
    (stat, cells.len().saturating_sub(1))
}

/// How often each token appears at positions `from`, `from + 1` and `from + 2` of the rows.
fn counts_at(out: &[Generation], from: usize) -> [HashMap<u32, u64>; 3] {
    let mut at: [HashMap<u32, u64>; 3] = Default::default();
    for g in out {
        for (i, slot) in at.iter_mut().enumerate() {
            if let Some(&t) = g.tokens.get(from + i) {
                *slot.entry(t).or_default() += 1;
            }
        }
    }
    at
}

/// Each of the three positions' tokens (counted from `from`) follows the same distribution
/// in both samples, by the two-sample chi-square test at the 0.1% level.
fn assert_same_distributions(
    plain: &[HashMap<u32, u64>; 3],
    spec: &[HashMap<u32, u64>; 3],
    from: usize,
) {
    for (i, (p, s)) in plain.iter().zip(spec).enumerate() {
        let (x, df) = two_sample_chi_square(p, s);
        eprintln!("token {}: chi2 {x:.1} with {df} df", from + i + 1);
        assert!(
            x < chi_square_bound(df),
            "token {}: chi2 {x:.1} with {df} df over {p:?} vs {s:?}",
            from + i + 1
        );
    }
}

#[test]
fn sampled_speculative_output_follows_the_plain_distribution() {
    // A raw text that repeats a pattern, sampled at T = 0.8 on 300 rows over one prefill: once
    // the first token continues the pattern, the drafter proposes the rest of it at every
    // step. The distributions of tokens 2 to 4 must match plain sampling's. A verifier that
    // accepted drafts too often (or too rarely) would shift mass onto (or off) the pattern.
    let prompt = policy()
        .tokenizer()
        .encode("red green blue red green blue red green blue red green blue red")
        .unwrap();
    let rows = 300;
    let count = |speculate: usize, seed: u64| {
        let (out, stats) = policy()
            .generate(&prompt, rows, &params(4, 0.8, seed, speculate))
            .unwrap();
        (counts_at(&out, 1), stats)
    };
    let (plain, _) = count(0, 0);
    let (spec, stats) = count(4, 1_000_000);
    eprintln!("sampled: {stats:?}");
    // Drafts are short here (4 tokens at most per row), but must be common.
    assert!(
        stats.num_draft_tokens >= rows / 2 && stats.num_accepted_tokens > 0,
        "too few drafts to test: {stats:?}"
    );
    assert_same_distributions(&plain, &spec, 1);
}

/// The default model paired with itself as its draft model: its guesses are the policy's own
/// greedy tokens, so every one of them must be accepted: any slip in keeping the draft's
/// cache in step with the policy's (rows finishing, drafts cut short, suffix drafts taken
/// instead) shows up as a rejection.
fn self_drafted() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| load(&SMOLLM2).with_draft(load(&SMOLLM2)).unwrap())
}

#[test]
fn a_draft_model_keeps_the_greedy_output_and_its_own_guesses_are_accepted() {
    let prompts: Vec<Vec<u32>> = [
        "Write a short poem about autumn leaves.",
        "What is the capital of Japan? Answer in one word.",
        REPEATS[1],
    ]
    .iter()
    .map(|t| chat(t))
    .collect();
    let (plain, _) = policy()
        .generate_batch(&prompts, &params(40, 0.0, 0, 0))
        .unwrap();
    let (spec, stats) = self_drafted()
        .generate_batch(&prompts, &params(40, 0.0, 0, 4))
        .unwrap();
    assert_eq!(spec.len(), plain.len(), "speculative rows vs plain");
    for (p, s) in plain.iter().zip(&spec) {
        assert_eq!(p.tokens, s.tokens, "{:?} vs {:?}", p.text, s.text);
    }
    // Rows of different lengths: the short answer finishes first and leaves the batch.
    assert!(plain[1].tokens.len() < plain[0].tokens.len(), "{plain:?}");
    assert!(stats.num_model_draft_tokens > 20, "{stats:?}");
    assert_eq!(
        stats.num_model_accepted_tokens, stats.num_model_draft_tokens,
        "{stats:?}"
    );
    // The suffix drafter had its turn too (the rewriting prompt), and the draft model's
    // positions are its own, not the policy's.
    assert!(
        stats.num_draft_tokens > stats.num_model_draft_tokens,
        "{stats:?}"
    );
    assert!(stats.draft_positions > 0, "{stats:?}");
}

#[test]
fn sampled_output_with_a_draft_model_follows_the_plain_distribution() {
    // At T = 0.8 the policy's tokens are its draws; the draft (here the policy itself) guesses
    // each with the row's own next uniform numbers, so every guess must be the token drawn and
    // be accepted, and the tokens must follow plain sampling's distribution.
    let prompt = chat("Name a colour.");
    let rows = 300;
    let count = |policy: &Policy, speculate: usize, seed: u64| {
        let (out, stats) = policy
            .generate(&prompt, rows, &params(3, 0.8, seed, speculate))
            .unwrap();
        (counts_at(&out, 0), stats)
    };
    let (plain, _) = count(policy(), 0, 0);
    let (spec, stats) = count(self_drafted(), 4, 1_000_000);
    // Every row drafts at its first step; the draft model guesses where the suffix drafter
    // has nothing, which is nearly every row of a three-token answer.
    assert!(
        stats.num_draft_tokens >= rows && stats.num_model_draft_tokens * 10 >= rows * 9,
        "{stats:?}"
    );
    assert_eq!(
        stats.num_model_accepted_tokens, stats.num_model_draft_tokens,
        "a draft that draws as the policy does must always be accepted: {stats:?}"
    );
    assert_same_distributions(&plain, &spec, 0);
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let tiny = Policy::load(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = load(&SMOLLM2).with_draft(tiny).unwrap_err().to_string();
    assert!(
        err.contains("`draft`") && err.contains("vocabulary of 320 tokens"),
        "{err}"
    );
}
