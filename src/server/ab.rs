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
//!
//! Each comparison is made twice: by the reward, which is circular (it chose the optimized
//! answer), and by the feedback the answers received ([`super::feedback`]), which is not.

use crate::strategy::Strategy;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use utoipa::ToSchema;

/// Which arm answered a request: `optimized` (the loop asked for) or `plain` (plain decoding,
/// the control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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

/// Feedback outcomes (see [`super::feedback`]) of one kind of traffic: per scale, the outcomes
/// of each arm's answers, indexed by [`Arm`] as `usize`.
pub type Outcomes = BTreeMap<String, [Vec<f64>; 2]>;

/// What one arm's samples hold, copied out of the lock: the figures are computed after it is
/// released, so that a summary of 100,000 samples never holds up a request being recorded.
struct Copied {
    requests: usize,
    rewards: Vec<f64>,
    compute_sum: f64,
    latencies: Vec<f64>,
}

impl Copied {
    fn of(samples: &VecDeque<Sample>) -> Self {
        Self {
            requests: samples.len(),
            rewards: rewards(samples),
            compute_sum: samples.iter().map(|s| s.compute as f64).sum(),
            latencies: samples.iter().map(|s| s.latency_ms).collect(),
        }
    }
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

    /// The comparison of the arms on each scale: by the reward, and by the feedback
    /// `optimize` (randomized /optimize answers) and `chat` (chat answers, whose arm the client
    /// chose) received.
    pub fn summary(&self, plain_fraction: f64, optimize: Outcomes, chat: Outcomes) -> Summary {
        let copied: Vec<(String, [Copied; 2])> = {
            let scales = self.scales.lock().unwrap_or_else(|p| p.into_inner());
            scales
                .iter()
                .map(|(name, arms)| (name.clone(), arms.each_ref().map(Copied::of)))
                .collect()
        };
        let mut optimize = optimize;
        let mut rewards = BTreeMap::new();
        for (name, [optimized, plain]) in copied {
            let [fo, fp] = optimize.remove(&name).unwrap_or_default();
            rewards.insert(name, Comparison::of(optimized, plain, &fo, &fp));
        }
        // Feedback on a scale whose reward samples are gone (the two forget separately).
        for (name, [fo, fp]) in optimize {
            let none = || Copied::of(&VecDeque::new());
            rewards.insert(name, Comparison::of(none(), none(), &fo, &fp));
        }
        let chat_feedback = chat
            .into_iter()
            .map(|(name, [o, p])| {
                let arms = ChatFeedback {
                    optimized: FeedbackSummary::of(&o),
                    plain: FeedbackSummary::of(&p),
                };
                (name, arms)
            })
            .collect();
        Summary {
            plain_fraction,
            rewards,
            chat_feedback,
        }
    }
}

/// The body of `GET /ab`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    /// The share of /optimize users answered by plain decoding (`--ab-plain-fraction`).
    pub plain_fraction: f64,
    /// One comparison per reward scale: the reward's name; `NAME+constraints` when a query's
    /// own constraints were added to it; `constraints` when they replaced it.
    pub rewards: BTreeMap<String, Comparison>,
    /// Feedback on chat completions, per reward scale. Their arm is the client's choice (a
    /// strategy prefix or not), not a random assignment, so no uplift is computed from them:
    /// a difference would measure who opts in as much as what optimization does.
    pub chat_feedback: BTreeMap<String, ChatFeedback>,
}

/// The two arms on one reward scale.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Comparison {
    pub optimized: ArmSummary,
    pub plain: ArmSummary,
    /// Mean reward of optimized minus plain; null while either arm has fewer than two scored
    /// requests.
    pub uplift: Option<Uplift>,
    /// Mean feedback outcome of optimized minus plain over the remembered answers with
    /// feedback: the uplift by a measure the optimizing reward did not choose. Null while
    /// either arm has fewer than two answers with feedback.
    pub feedback_uplift: Option<Uplift>,
}

impl Comparison {
    fn of(optimized: Copied, plain: Copied, fo: &[f64], fp: &[f64]) -> Self {
        let uplift = Uplift::between(&optimized.rewards, &plain.rewards);
        Self {
            optimized: ArmSummary::of(optimized, fo),
            plain: ArmSummary::of(plain, fp),
            uplift,
            feedback_uplift: Uplift::between(fo, fp),
        }
    }
}

/// One arm's requests on one reward scale (the most recent 100,000), and the feedback on them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArmSummary {
    pub requests: usize,
    /// Requests whose answer was scored (the mean reward is over these).
    pub scored: usize,
    /// Null while no answer was scored.
    pub mean_reward: Option<f64>,
    /// Mean compute units spent per request; null without requests.
    pub mean_compute: Option<f64>,
    /// Median latency in milliseconds; null without requests.
    pub latency_ms_p50: Option<f64>,
    /// 95th percentile latency in milliseconds; null without requests.
    pub latency_ms_p95: Option<f64>,
    /// The feedback this arm's remembered answers received.
    pub feedback: FeedbackSummary,
}

/// Feedback outcomes of one arm's answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeedbackSummary {
    /// Remembered answers with feedback (a replaced feedback counts once).
    pub answers: usize,
    /// Their mean outcome; null without any.
    pub mean: Option<f64>,
}

impl FeedbackSummary {
    fn of(outcomes: &[f64]) -> Self {
        Self {
            answers: outcomes.len(),
            mean: mean(outcomes),
        }
    }
}

/// The feedback on chat answers of one scale, per arm (plain, or a strategy the client asked
/// for).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatFeedback {
    pub optimized: FeedbackSummary,
    pub plain: FeedbackSummary,
}

/// A difference of means, optimized minus plain.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Uplift {
    pub mean: f64,
    /// 95% confidence interval under the normal approximation (Welch's standard error).
    pub ci95_low: f64,
    pub ci95_high: f64,
}

impl Uplift {
    /// The difference of means `optimized - plain`, with a 95% interval of ±1.96 Welch
    /// standard errors, sqrt(s²ₒ/nₒ + s²ₚ/nₚ) (sample variances, n − 1). The normal
    /// approximation rather than Student's t: the interval is for dashboards of many requests,
    /// where the two agree. `None` while either side has fewer than two values.
    pub fn between(optimized: &[f64], plain: &[f64]) -> Option<Self> {
        let diff = mean(optimized)? - mean(plain)?;
        let se = (variance(optimized)? / optimized.len() as f64
            + variance(plain)? / plain.len() as f64)
            .sqrt();
        Some(Self {
            mean: diff,
            ci95_low: diff - 1.96 * se,
            ci95_high: diff + 1.96 * se,
        })
    }
}

impl ArmSummary {
    fn of(copied: Copied, feedback: &[f64]) -> Self {
        let Copied {
            requests,
            rewards,
            compute_sum,
            mut latencies,
        } = copied;
        Self {
            requests,
            scored: rewards.len(),
            mean_reward: mean(&rewards),
            mean_compute: (requests > 0).then(|| compute_sum / requests as f64),
            latency_ms_p50: percentile(&mut latencies, 0.50),
            latency_ms_p95: percentile(&mut latencies, 0.95),
            feedback: FeedbackSummary::of(feedback),
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

/// Nearest-rank percentile, by selection (linear time) rather than a sort; reorders `xs`.
fn percentile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let rank = (q * xs.len() as f64).ceil() as usize;
    let (_, nth, _) = xs.select_nth_unstable_by(rank.clamp(1, xs.len()) - 1, f64::total_cmp);
    Some(*nth)
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
        assert!(
            stats.summary(0.5, Outcomes::new(), Outcomes::new()).rewards["v"]
                .uplift
                .is_none()
        );
        stats.record("v", Arm::Plain, sample(0.3));
        let s = stats.summary(0.5, Outcomes::new(), Outcomes::new());
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
        let s = stats.summary(0.5, Outcomes::new(), Outcomes::new());
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
        // Shuffled: selection must not rely on sorted input.
        let mut xs: Vec<f64> = (1..=100).map(|i| f64::from((i * 37) % 100 + 1)).collect();
        assert_eq!(percentile(&mut xs, 0.5), Some(50.0));
        assert_eq!(percentile(&mut xs, 0.95), Some(95.0));
        assert_eq!(percentile(&mut [7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn welch_interval_matches_hand_computation() {
        // optimized: mean 2.5, s² = 5/3; plain: mean 1/3, s² = 1/3.
        // se = sqrt((5/3)/4 + (1/3)/3) = sqrt(19/36) = 0.726483157...
        let u = Uplift::between(&[1.0, 2.0, 3.0, 4.0], &[0.0, 0.0, 1.0]).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(u.mean, 13.0 / 6.0), "{u:?}");
        assert!(
            close(u.ci95_low, 13.0 / 6.0 - 1.96 * (19.0f64 / 36.0).sqrt()),
            "{u:?}"
        );
        assert!(close(u.ci95_low, 0.742759678), "{u:?}");
        assert!(close(u.ci95_high, 3.590573655), "{u:?}");
        // No spread: the interval is the point.
        let u = Uplift::between(&[1.0, 1.0], &[0.0, 0.0, 0.0]).unwrap();
        assert_eq!((u.mean, u.ci95_low, u.ci95_high), (1.0, 1.0, 1.0));
        // Fewer than two on either side: no interval.
        assert_eq!(Uplift::between(&[1.0], &[0.0, 1.0]), None);
        assert_eq!(Uplift::between(&[1.0, 0.0], &[]), None);
    }

    #[test]
    fn feedback_joins_its_scale_and_chat_stays_apart() {
        let stats = AbStats::default();
        let sample = Sample {
            reward: Some(0.5),
            compute: 10,
            latency_ms: 1.0,
        };
        stats.record("v", Arm::Optimized, sample);
        stats.record("v", Arm::Plain, sample);
        let mut optimize = Outcomes::new();
        optimize.insert("v".into(), [vec![1.0, 1.0, 0.0], vec![0.0, 0.0]]);
        optimize.insert("gone".into(), [vec![1.0], vec![]]);
        let mut chat = Outcomes::new();
        chat.insert("v".into(), [vec![1.0], vec![0.0, 1.0]]);
        let s = stats.summary(0.5, optimize, chat);
        let v = &s.rewards["v"];
        assert_eq!(v.optimized.feedback.answers, 3);
        assert_eq!(v.plain.feedback.answers, 2);
        assert_eq!(v.plain.feedback.mean, Some(0.0));
        let u = v.feedback_uplift.as_ref().unwrap();
        assert!((u.mean - 2.0 / 3.0).abs() < 1e-12, "{u:?}");
        // The reward uplift is not the feedback's: one sample per arm is too few.
        assert!(v.uplift.is_none());
        let gone = &s.rewards["gone"];
        assert_eq!(
            (gone.optimized.requests, gone.optimized.feedback.answers),
            (0, 1)
        );
        assert_eq!(gone.optimized.mean_compute, None);
        assert_eq!(s.chat_feedback["v"].plain.mean, Some(0.5));
    }
}
