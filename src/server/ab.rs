//! The A/B experiment: a stable share of /optimize traffic is answered by plain decoding, and
//! the two arms' rewards, compute and latencies are compared.
//!
//! Assignment hashes the request's `user` (or, without one, its prompt) so that a user stays in
//! one arm across requests and across restarts: the hash is FNV-1a with a fixed mixer, not the
//! standard library's, whose output may change between Rust releases.
//!
//! Rewards have each their own scale (a verifier 0-1, a judge 1-9, a classifier's logits, plus
//! 10 when a query's own constraints are added), so the arms are compared per scale: one
//! comparison per reward name, and per way constraints joined it ([`scale`]).

use crate::strategy::Strategy;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Which arm answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Optimized,
    Plain,
}

impl Arm {
    /// The arm a request that runs `strategy` belongs to: plain decoding is the control.
    pub fn of(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Plain => Self::Plain,
            _ => Self::Optimized,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Optimized => "optimized",
            Self::Plain => "plain",
        }
    }
}

/// The arm of `key`: plain when its hash falls below `plain_fraction` of the hash space.
pub fn assign(key: &str, plain_fraction: f64) -> Arm {
    if plain_fraction > 0.0 && unit_hash(key) < plain_fraction {
        Arm::Plain
    } else {
        Arm::Optimized
    }
}

/// A stable hash of `key` mapped to [0, 1).
fn unit_hash(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone leaves similar keys ("user-1", "user-2") close together.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// What one answered request contributes to the comparison.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// `None` when the answer could not be scored within the budget.
    pub reward: Option<f32>,
    pub compute: u64,
    pub latency_ms: f64,
}

/// Only the most recent samples of each scale are kept, so memory stays bounded on a
/// long-running server. (The number of scales is bounded too: the server's reward manifests,
/// each alone, with constraints, and constraints alone.)
const KEEP: usize = 100_000;

/// The name under which a request's scores are compared: the reward's name, with
/// `+constraints` when the query's own constraints were added to it, or `constraints` when
/// they replaced it.
pub fn scale(reward: &str, constraints: Option<bool>) -> String {
    match constraints {
        None => reward.to_string(),
        Some(false) => format!("{reward}+constraints"),
        Some(true) => "constraints".to_string(),
    }
}

/// The samples of both arms, per scale.
#[derive(Debug, Default)]
pub struct AbStats {
    scales: Mutex<BTreeMap<String, [VecDeque<Sample>; 2]>>,
}

impl AbStats {
    pub fn record(&self, scale: &str, arm: Arm, sample: Sample) {
        // A panic elsewhere while holding the lock leaves plain numbers behind; keep using them.
        let mut scales = self.scales.lock().unwrap_or_else(|p| p.into_inner());
        let samples = &mut scales.entry(scale.to_string()).or_default()[arm as usize];
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn summary(&self, plain_fraction: f64) -> Summary {
        let scales = self.scales.lock().unwrap_or_else(|p| p.into_inner());
        let rewards = scales
            .iter()
            .map(|(name, arms)| {
                let (optimized, plain) =
                    (&arms[Arm::Optimized as usize], &arms[Arm::Plain as usize]);
                let comparison = Comparison {
                    optimized: ArmSummary::of(optimized),
                    plain: ArmSummary::of(plain),
                    uplift: uplift(optimized, plain),
                };
                (name.clone(), comparison)
            })
            .collect();
        Summary {
            plain_fraction,
            rewards,
        }
    }
}

/// The body of `GET /ab`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub plain_fraction: f64,
    /// One comparison per reward scale (see [`scale`]).
    pub rewards: BTreeMap<String, Comparison>,
}

/// The two arms on one reward scale.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub optimized: ArmSummary,
    pub plain: ArmSummary,
    /// Mean reward of optimized minus plain; `None` while either arm has fewer than two scored
    /// requests.
    pub uplift: Option<Uplift>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmSummary {
    pub requests: usize,
    /// Requests whose answer was scored (the mean reward is over these).
    pub scored: usize,
    pub mean_reward: Option<f64>,
    pub mean_compute: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Uplift {
    pub mean: f64,
    /// 95% confidence interval under the normal approximation (Welch's standard error).
    pub ci95_low: f64,
    pub ci95_high: f64,
}

impl ArmSummary {
    fn of(samples: &VecDeque<Sample>) -> Self {
        let rewards: Vec<f64> = rewards(samples);
        let compute: Vec<f64> = samples.iter().map(|s| s.compute as f64).collect();
        let mut latencies: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        Self {
            requests: samples.len(),
            scored: rewards.len(),
            mean_reward: mean(&rewards),
            mean_compute: mean(&compute),
            latency_ms_p50: percentile(&latencies, 0.50),
            latency_ms_p95: percentile(&latencies, 0.95),
        }
    }
}

fn rewards(samples: &VecDeque<Sample>) -> Vec<f64> {
    samples
        .iter()
        .filter_map(|s| s.reward)
        .map(f64::from)
        .filter(|r| r.is_finite())
        .collect()
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample variance (n − 1); needs two values.
fn variance(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    (xs.len() >= 2).then(|| xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn uplift(optimized: &VecDeque<Sample>, plain: &VecDeque<Sample>) -> Option<Uplift> {
    let (o, p) = (rewards(optimized), rewards(plain));
    let diff = mean(&o)? - mean(&p)?;
    let se = (variance(&o)? / o.len() as f64 + variance(&p)? / p.len() as f64).sqrt();
    Some(Uplift {
        mean: diff,
        ci95_low: diff - 1.96 * se,
        ci95_high: diff + 1.96 * se,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_stable_and_splits_users() {
        let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
        let plain = users
            .iter()
            .filter(|u| assign(u, 0.5) == Arm::Plain)
            .count();
        assert!((5..=15).contains(&plain), "{plain} of 20 plain");
        for u in &users {
            assert_eq!(assign(u, 0.5), assign(u, 0.5));
        }
        // Over many keys the share matches the fraction.
        let many = (0..10_000)
            .filter(|i| assign(&format!("k{i}"), 0.3) == Arm::Plain)
            .count();
        assert!((2_700..3_300).contains(&many), "{many}");
    }

    #[test]
    fn fraction_zero_and_one_are_absolute() {
        assert!((0..100).all(|i| assign(&i.to_string(), 0.0) == Arm::Optimized));
        assert!((0..100).all(|i| assign(&i.to_string(), 1.0) == Arm::Plain));
    }

    #[test]
    fn uplift_needs_two_samples_per_arm() {
        let stats = AbStats::default();
        let sample = |r: f32| Sample {
            reward: Some(r),
            compute: 100,
            latency_ms: 10.0,
        };
        stats.record("v", Arm::Optimized, sample(0.9));
        stats.record("v", Arm::Optimized, sample(0.7));
        stats.record("v", Arm::Plain, sample(0.5));
        assert!(stats.summary(0.5).rewards["v"].uplift.is_none());
        stats.record("v", Arm::Plain, sample(0.3));
        let s = stats.summary(0.5);
        let v = &s.rewards["v"];
        let u = v.uplift.as_ref().unwrap();
        assert!((u.mean - 0.4).abs() < 1e-6);
        // Each arm: variance 0.02, se = sqrt(0.01 + 0.01) = 0.1414.
        assert!((u.ci95_high - u.mean - 1.96 * 0.02f64.sqrt()).abs() < 1e-6);
        assert_eq!(v.optimized.requests, 2);
        assert_eq!(v.plain.mean_compute, Some(100.0));
    }

    #[test]
    fn scales_are_compared_apart() {
        let stats = AbStats::default();
        let sample = |r: f32| Sample {
            reward: Some(r),
            compute: 1,
            latency_ms: 1.0,
        };
        stats.record(&scale("judge", None), Arm::Optimized, sample(8.0));
        stats.record(&scale("concise", None), Arm::Plain, sample(0.5));
        stats.record(&scale("concise", Some(false)), Arm::Plain, sample(10.5));
        let s = stats.summary(0.5);
        assert_eq!(s.rewards["judge"].optimized.mean_reward, Some(8.0));
        assert_eq!(s.rewards["concise"].plain.mean_reward, Some(0.5));
        assert_eq!(
            s.rewards["concise+constraints"].plain.mean_reward,
            Some(10.5)
        );
        assert_eq!(scale("judge", Some(true)), "constraints");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.5), Some(50.0));
        assert_eq!(percentile(&xs, 0.95), Some(95.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
