//! The compute budget of one query, and the meter that spends it.
//!
//! **One compute unit is one token position computed by the policy model.** Prefilling a prompt
//! of P tokens costs P units (a prompt shared by N candidates is prefilled once), and every
//! decoding step costs one unit per live row. Reward work is counted in the same unit, weighted
//! by the reward model's size relative to the policy: a judge running on the policy's own model
//! costs 1.0 unit per position it reads; a verifier or a remote scorer costs 0 units (hone does
//! not compute anything for it), though its calls are still counted.
//!
//! The "never exceed" guarantee is structural rather than checked after the fact: every policy
//! call is sized by [`plan`] so that its worst case (prefill + N × max_tokens, plus the scoring
//! of N responses of max_tokens) fits what is left, and it runs with `max_positions` set so the
//! engine itself cannot pass the limit. Scoring that would not fit is not started.

use policies::{GenerationStats, ModelConfig};
use reward_models::manifest::{Manifest, Manifests};
use reward_models::RewardError;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What one query may spend. Every limit is optional; `Budget::default()` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Compute units (policy token positions, plus weighted reward positions).
    pub compute: Option<u64>,
    /// No new step starts after this instant; the loop answers with the best so far.
    pub deadline: Option<Instant>,
    /// The most improvement rounds a loop may run (TPO's depth D).
    pub max_rounds: Option<u32>,
}

impl Budget {
    /// A budget limited only in compute units.
    pub fn compute(units: u64) -> Self {
        Self {
            compute: Some(units),
            ..Self::default()
        }
    }
}

/// What a query spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// All compute units: `policy_positions + reward_positions`.
    pub compute: u64,
    /// Token positions the policy computed (prefills and decoding steps).
    pub policy_positions: u64,
    /// Reward work in compute units: the positions a reward model reads, times its weight.
    pub reward_positions: u64,
    /// Tokens the policy sampled, over all candidates and critiques.
    pub tokens_generated: u64,
    /// Calls to the reward.
    pub reward_calls: u64,
    /// How long the loop ran, in milliseconds.
    pub wall_ms: u64,
    /// Speculative decoding (as vLLM counts it): policy steps that verified draft tokens.
    pub spec_drafts: u64,
    /// Speculative decoding: draft tokens verified (their positions are part of
    /// `policy_positions`).
    pub spec_draft_tokens: u64,
    /// Speculative decoding: draft tokens accepted.
    pub spec_accepted_tokens: u64,
    /// Speculative decoding: the drafter's tokens not verified, because at their row's
    /// acceptance rate they would cost more than they save (hone's own counter).
    pub spec_withheld_tokens: u64,
    /// Speculative decoding: of `spec_drafts`, `spec_draft_tokens` and `spec_accepted_tokens`,
    /// those the drafter found in sibling rows (the other samples of the same prompt), not in
    /// the row's own context (hone's own counters): each drafter's acceptance rate and mean
    /// accepted length follow.
    pub spec_sibling_drafts: u64,
    pub spec_sibling_draft_tokens: u64,
    pub spec_sibling_accepted_tokens: u64,
    /// Speculative decoding: of `spec_drafts`, `spec_draft_tokens` and `spec_accepted_tokens`,
    /// those a draft model guessed (`--draft`; hone's own counters).
    pub spec_model_drafts: u64,
    pub spec_model_draft_tokens: u64,
    pub spec_model_accepted_tokens: u64,
}

/// Records what a query spends and says what is left of its budget.
#[derive(Debug, Clone)]
pub struct Meter {
    budget: Budget,
    reward_weight: f64,
    started: Instant,
    /// Everything but `compute` and `wall_ms`, which [`Self::usage`] fills in.
    counts: Usage,
}

impl Meter {
    /// `reward_weight` is the compute units charged per position the reward model reads; it must
    /// be finite and not negative (see [`reward_weight`]).
    pub fn new(budget: Budget, reward_weight: f64) -> Self {
        Self {
            budget,
            reward_weight,
            started: Instant::now(),
            counts: Usage::default(),
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn spent(&self) -> u64 {
        self.counts.policy_positions + self.counts.reward_positions
    }

    /// Compute units left; `None` when the budget has no compute limit.
    pub fn remaining(&self) -> Option<u64> {
        self.budget.compute.map(|c| c.saturating_sub(self.spent()))
    }

    pub fn deadline_passed(&self) -> bool {
        self.budget.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The charge for a reward model reading `positions` tokens. Rounded up, so that estimates
    /// summed call by call never undercount.
    pub fn reward_cost(&self, positions: usize) -> u64 {
        reward_cost(self.reward_weight, positions)
    }

    /// Records one policy call.
    pub fn record_generation(&mut self, stats: &GenerationStats, tokens: usize) {
        let c = &mut self.counts;
        c.policy_positions += stats.positions() as u64;
        c.tokens_generated += tokens as u64;
        c.spec_drafts += stats.num_drafts as u64;
        c.spec_draft_tokens += stats.num_draft_tokens as u64;
        c.spec_accepted_tokens += stats.num_accepted_tokens as u64;
        c.spec_withheld_tokens += stats.num_withheld_tokens as u64;
        c.spec_sibling_drafts += stats.num_sibling_drafts as u64;
        c.spec_sibling_draft_tokens += stats.num_sibling_draft_tokens as u64;
        c.spec_sibling_accepted_tokens += stats.num_sibling_accepted_tokens as u64;
        c.spec_model_drafts += stats.num_model_drafts as u64;
        c.spec_model_draft_tokens += stats.num_model_draft_tokens as u64;
        c.spec_model_accepted_tokens += stats.num_model_accepted_tokens as u64;
    }

    /// Records one reward call and its (estimated) cost in compute units.
    pub fn record_reward(&mut self, cost: u64) {
        self.counts.reward_positions += cost;
        self.counts.reward_calls += 1;
    }

    pub fn usage(&self) -> Usage {
        Usage {
            compute: self.spent(),
            wall_ms: self.started.elapsed().as_millis() as u64,
            ..self.counts
        }
    }
}

/// `weight × positions`, rounded up.
pub fn reward_cost(weight: f64, positions: usize) -> u64 {
    (weight * positions as f64).ceil() as u64
}

/// The size of one policy call, chosen so that its worst case fits the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub n: usize,
    pub max_tokens: usize,
    /// The limit to hand the policy (`GenerateParams::max_positions`): what is left minus the
    /// reserve for scoring the responses. `None` when the budget is unlimited.
    pub max_positions: Option<usize>,
}

/// Sizes a call that prefills `prompt` tokens and samples `n` responses of up to `max_tokens`,
/// each of which then costs `reward(tokens)` to score (0 for critiques, which are not scored).
///
/// The worst case is `prompt + n × max_tokens + n × reward(max_tokens)`. When it does not fit
/// `remaining`, fewer responses are asked for first (each one whole is worth more than many cut
/// short), then a single shorter one. `None` when not even one token fits.
pub fn plan(
    remaining: Option<u64>,
    prompt: usize,
    n: usize,
    max_tokens: usize,
    reward: impl Fn(usize) -> u64,
) -> Option<Plan> {
    if n == 0 || max_tokens == 0 {
        return None;
    }
    let Some(remaining) = remaining else {
        return Some(Plan {
            n,
            max_tokens,
            max_positions: None,
        });
    };
    let worst = |n: usize, t: usize| prompt as u64 + n as u64 * (t as u64 + reward(t));
    let make = |n: usize, t: usize| Plan {
        n,
        max_tokens: t,
        max_positions: Some(remaining.saturating_sub(n as u64 * reward(t)) as usize),
    };
    if let Some(n) = (1..=n).rev().find(|&k| worst(k, max_tokens) <= remaining) {
        return Some(make(n, max_tokens));
    }
    // One response, as long as fits: the worst case grows with the length, so bisect.
    if worst(1, 1) > remaining {
        return None;
    }
    let (mut fits, mut too_long) = (1, max_tokens);
    while too_long - fits > 1 {
        let mid = fits + (too_long - fits) / 2;
        if worst(1, mid) <= remaining {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    Some(make(1, fits))
}

/// Compute units per position that the reward `name` reads, relative to the policy.
///
/// A model's cost per position is taken as `layers × hidden²` (its weight matrices, which
/// dominate the work at these lengths), so a judge on the policy's own model weighs 1.0 and a
/// judge twice as deep weighs 2.0. Verifiers, remote scorers and judges on another server
/// weigh 0: they cost hone no model compute. A combined reward runs each part once, so its
/// weight is the sum of its parts'.
/// `dir` is the folder of the manifests, against which relative model paths resolve.
pub fn reward_weight(
    manifests: &Manifests,
    dir: &Path,
    name: &str,
    policy_path: &Path,
    policy: &ModelConfig,
) -> Result<f64, RewardError> {
    weight_inner(manifests, dir, name, policy_path, policy, 0)
}

fn weight_inner(
    manifests: &Manifests,
    dir: &Path,
    name: &str,
    policy_path: &Path,
    policy: &ModelConfig,
    depth: usize,
) -> Result<f64, RewardError> {
    if depth > 8 {
        return Err(RewardError::Config(format!(
            "reward `{name}`: combined rewards nest too deeply (a cycle?)"
        )));
    }
    let manifest = manifests
        .get(name)
        .ok_or_else(|| RewardError::Config(format!("unknown reward `{name}`")))?;
    let config_err = |e: policies::PolicyError| RewardError::Model(e.to_string());
    Ok(match manifest {
        Manifest::Verifier { .. } | Manifest::Remote { .. } | Manifest::OpenaiJudge { .. } => 0.0,
        Manifest::Judge { model, .. } => {
            let resolved = policies::store::resolve(model).map_err(config_err)?;
            let path = if resolved.is_relative() && !resolved.exists() {
                dir.join(resolved)
            } else {
                resolved
            };
            if same_file(&path, policy_path) {
                1.0
            } else {
                relative_size(&read_config(&path).map_err(config_err)?, policy)
            }
        }
        Manifest::Classifier { path } => {
            relative_size(&read_config(&dir.join(path)).map_err(config_err)?, policy)
        }
        Manifest::Combined { parts } => {
            let mut sum = 0.0;
            for part in parts {
                sum += weight_inner(manifests, dir, &part.reward, policy_path, policy, depth + 1)?;
            }
            sum
        }
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A model's shape without loading its weights: a GGUF header or an HF `config.json`.
fn read_config(path: &Path) -> policies::Result<ModelConfig> {
    if path.is_dir() {
        let file = path.join("config.json");
        let text = std::fs::read_to_string(&file)
            .map_err(|_| policies::PolicyError::NotFound(file.clone()))?;
        return ModelConfig::from_hf_json(&text);
    }
    let mut file =
        std::fs::File::open(path).map_err(|_| policies::PolicyError::NotFound(path.into()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| {
        policies::PolicyError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        }
    })?;
    ModelConfig::from_gguf(&content)
}

/// Compute units that take about one CPU core-minute on the default model (SmolLM2-135M, 30
/// layers of width 576): it decodes about 30 positions per core-second and prefills about 50
/// (60 and 100 tok/s on 2 threads, docs/PERFORMANCE.md), so 1,800 units are at most a minute
/// of one core's decoding, and less when much of it is prefill.
pub const CORE_MINUTE_UNITS: u64 = 1800;

/// The shape (`n_layers`, `hidden_size`) [`CORE_MINUTE_UNITS`] was measured on.
const CORE_MINUTE_SHAPE: (usize, usize) = (30, 576);

/// The server's cap on one request's compute when the operator sets none: about one CPU
/// core-minute of work on `policy`. A unit is one position of the policy, and a position of a
/// larger model costs more (`layers × hidden²`, as [`relative_size`] prices it), so the cap
/// is [`CORE_MINUTE_UNITS`] scaled down by the policy's size relative to the default model:
/// 1,800 for SmolLM2-135M, about 270 for Qwen2.5-1.5B. Never below one unit.
pub fn default_max_budget(policy: &ModelConfig) -> u64 {
    let (layers, hidden) = CORE_MINUTE_SHAPE;
    let reference = layers as f64 * (hidden as f64).powi(2);
    let size = policy.n_layers as f64 * (policy.hidden_size as f64).powi(2);
    ((CORE_MINUTE_UNITS as f64 * reference / size.max(1.0)).round() as u64).max(1)
}

/// Cost per position of `model` in units of the policy's.
pub fn relative_size(model: &ModelConfig, policy: &ModelConfig) -> f64 {
    let size = |c: &ModelConfig| c.n_layers as f64 * (c.hidden_size as f64).powi(2);
    size(model) / size(policy).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_budget_keeps_the_request() {
        let p = plan(None, 100, 4, 64, |_| 10).unwrap();
        assert_eq!(
            p,
            Plan {
                n: 4,
                max_tokens: 64,
                max_positions: None
            }
        );
    }

    #[test]
    fn whole_request_fits() {
        // 20 + 4 × (16 + 0) = 84.
        let p = plan(Some(84), 20, 4, 16, |_| 0).unwrap();
        assert_eq!(
            p,
            Plan {
                n: 4,
                max_tokens: 16,
                max_positions: Some(84)
            }
        );
    }

    #[test]
    fn fewer_candidates_before_shorter_ones() {
        // Each candidate: 16 tokens + 5 to score = 21; 20 + 3 × 21 = 83 <= 90 < 104.
        let p = plan(Some(90), 20, 4, 16, |_| 5).unwrap();
        assert_eq!(p.n, 3);
        assert_eq!(p.max_tokens, 16);
        // The scoring reserve is kept out of the policy's limit.
        assert_eq!(p.max_positions, Some(90 - 15));
    }

    #[test]
    fn one_shorter_candidate_when_one_whole_does_not_fit() {
        // Reward reads the conversation (20) plus the response: weight 1.
        let reward = |t: usize| reward_cost(1.0, 20 + t);
        // 20 + t + 20 + t <= 50 -> t = 5.
        let p = plan(Some(50), 20, 4, 16, reward).unwrap();
        assert_eq!(
            p,
            Plan {
                n: 1,
                max_tokens: 5,
                max_positions: Some(50 - 25)
            }
        );
        let worst = 20 + p.max_tokens as u64 + reward(p.max_tokens);
        assert!(worst <= 50);
    }

    #[test]
    fn nothing_fits_below_one_prefill_and_token() {
        assert_eq!(plan(Some(20), 20, 1, 16, |_| 0), None);
        assert!(plan(Some(21), 20, 1, 16, |_| 0).is_some());
        assert_eq!(plan(Some(1000), 20, 0, 16, |_| 0), None);
    }

    #[test]
    fn plans_never_exceed_the_remaining_budget() {
        for remaining in 0..400u64 {
            for weight in [0.0, 0.5, 1.0, 2.5] {
                let reward = |t: usize| reward_cost(weight, 30 + t);
                if let Some(p) = plan(Some(remaining), 30, 5, 40, reward) {
                    let worst = 30 + p.n as u64 * (p.max_tokens as u64 + reward(p.max_tokens));
                    assert!(worst <= remaining, "{remaining} {weight} {p:?}");
                    assert!(
                        p.max_positions.unwrap() as u64 + p.n as u64 * reward(p.max_tokens)
                            <= remaining
                    );
                }
            }
        }
    }

    #[test]
    fn meter_adds_policy_and_weighted_reward_work() {
        let mut m = Meter::new(Budget::compute(1000), 0.5);
        let stats = GenerationStats {
            prefill_tokens: 30,
            decode_tokens: 40,
            ..Default::default()
        };
        m.record_generation(&stats, 44);
        assert_eq!(m.reward_cost(41), 21);
        m.record_reward(m.reward_cost(41));
        let u = m.usage();
        assert_eq!(
            (u.policy_positions, u.reward_positions, u.compute),
            (70, 21, 91)
        );
        assert_eq!((u.tokens_generated, u.reward_calls), (44, 1));
        assert_eq!(m.remaining(), Some(909));
        m.record_reward(5000);
        assert_eq!(m.remaining(), Some(0));
        assert_eq!(Meter::new(Budget::default(), 1.0).remaining(), None);
    }

    #[test]
    fn deadline_in_the_past_has_passed() {
        let budget = Budget {
            deadline: Some(Instant::now()),
            ..Budget::default()
        };
        assert!(Meter::new(budget, 0.0).deadline_passed());
        assert!(!Meter::new(Budget::default(), 0.0).deadline_passed());
    }

    #[test]
    fn the_default_cap_is_a_core_minute_of_the_policy() {
        let text = r#"{"model_type":"llama","vocab_size":10,"hidden_size":576,"num_hidden_layers":30,"num_attention_heads":9}"#;
        let smollm = ModelConfig::from_hf_json(text).unwrap();
        assert_eq!(default_max_budget(&smollm), CORE_MINUTE_UNITS);
        // Qwen2.5-1.5B: 28 layers of 1536, 6.6 times the cost per position.
        let mut qwen = smollm.clone();
        qwen.n_layers = 28;
        qwen.hidden_size = 1536;
        assert_eq!(default_max_budget(&qwen), 271);
        qwen.n_layers = 100_000;
        assert_eq!(default_max_budget(&qwen), 1);
    }

    #[test]
    fn relative_size_of_the_same_shape_is_one() {
        let text = r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_hidden_layers":4,"num_attention_heads":4}"#;
        let small = ModelConfig::from_hf_json(text).unwrap();
        let mut big = small.clone();
        big.n_layers = 8;
        big.hidden_size = 128;
        assert_eq!(relative_size(&small, &small), 1.0);
        assert_eq!(relative_size(&big, &small), 8.0);
    }
}
