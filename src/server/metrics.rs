//! Prometheus metrics of the service, in a registry the app state owns (not the crate's global
//! one, so that several servers in one process, as in the tests, do not share counters).

use super::ab::Arm;
use super::rate_limit::By;
use crate::budget::Usage;
use crate::strategy::tallies::Tallies;
use crate::strategy::{Move, Trace};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// The routes that run the model, the values of `hone_requests_cancelled_total`'s label.
pub const ROUTES: [&str; 2] = ["/optimize", "/v1/chat/completions"];

/// Reads one field of a query's usage.
type UsageField = fn(&Usage) -> u64;

/// Speculative decoding's counters, under vLLM's names where vLLM has them (acceptance rate =
/// accepted / draft tokens; mean acceptance length = 1 + accepted / drafts), each with the
/// `usage` field it adds up.
const SPEC_COUNTERS: [(&str, &str, UsageField); 10] = [
    (
        "hone_spec_decode_num_drafts_total",
        "Decoding steps that verified draft tokens",
        |u| u.spec_drafts,
    ),
    (
        "hone_spec_decode_num_draft_tokens_total",
        "Draft tokens verified",
        |u| u.spec_draft_tokens,
    ),
    (
        "hone_spec_decode_num_accepted_tokens_total",
        "Draft tokens accepted",
        |u| u.spec_accepted_tokens,
    ),
    (
        "hone_spec_decode_num_withheld_tokens_total",
        "Draft tokens proposed but not verified: at their row's acceptance rate they would cost more than they save",
        |u| u.spec_withheld_tokens,
    ),
    (
        "hone_spec_decode_num_sibling_drafts_total",
        "Drafts that the drafter found in sibling rows (other samples of the same prompt)",
        |u| u.spec_sibling_drafts,
    ),
    (
        "hone_spec_decode_num_sibling_draft_tokens_total",
        "Draft tokens verified that the drafter found in sibling rows (other samples of the same prompt)",
        |u| u.spec_sibling_draft_tokens,
    ),
    (
        "hone_spec_decode_num_sibling_accepted_tokens_total",
        "Draft tokens accepted that the drafter found in sibling rows",
        |u| u.spec_sibling_accepted_tokens,
    ),
    (
        "hone_spec_decode_num_model_drafts_total",
        "Drafts that the draft model guessed",
        |u| u.spec_model_drafts,
    ),
    (
        "hone_spec_decode_num_model_draft_tokens_total",
        "Draft tokens verified that the draft model guessed",
        |u| u.spec_model_draft_tokens,
    ),
    (
        "hone_spec_decode_num_model_accepted_tokens_total",
        "Draft tokens accepted that the draft model guessed",
        |u| u.spec_model_accepted_tokens,
    ),
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    cancelled: IntCounterVec,
    duration: HistogramVec,
    first_event: HistogramVec,
    first_token: Histogram,
    rounds: HistogramVec,
    candidates: HistogramVec,
    reward: HistogramVec,
    compute_used: IntCounterVec,
    budget_ratio: HistogramVec,
    tokens: IntCounterVec,
    completions: IntCounterVec,
    completion_tokens: IntCounter,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    auto_trials: IntGaugeVec,
    auto_wins: IntGaugeVec,
    auto_win_rate: GaugeVec,
    auto_cost: GaugeVec,
    /// [`SPEC_COUNTERS`]' counters, each with the `usage` field it adds up.
    spec: Vec<(IntCounterVec, UsageField)>,
    feedback: IntCounterVec,
    rate_limited: IntCounterVec,
}

impl Metrics {
    pub fn new(policy: &str, reward: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("hone_requests_total", "Requests answered, by outcome"),
            &["strategy", "arm", "status"],
        )?;
        let cancelled = IntCounterVec::new(
            Opts::new(
                "hone_requests_cancelled_total",
                "Requests whose client went away before the answer, queued or running",
            ),
            &["route"],
        )?;
        // The label's values are the model routes, fixed here: never a client's path.
        for route in ROUTES {
            cancelled.with_label_values(&[route]);
        }
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "hone_request_duration_seconds",
                "Time from arrival to answer, queueing included",
            )
            .buckets(prometheus::exponential_buckets(0.05, 2.0, 13)?),
            &["strategy", "arm"],
        )?;
        let first_event = HistogramVec::new(
            HistogramOpts::new(
                "hone_time_to_first_event_seconds",
                "Time from arrival to the first scored candidate, queueing included",
            )
            .buckets(prometheus::exponential_buckets(0.05, 2.0, 13)?),
            &["strategy", "arm"],
        )?;
        let first_token = Histogram::with_opts(
            HistogramOpts::new(
                "hone_time_to_first_token_seconds",
                "Time from arrival to the first streamed token of plain decoding, queueing included",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.0, 13)?),
        )?;
        let rounds = HistogramVec::new(
            HistogramOpts::new("hone_rounds_per_request", "Rounds a loop ran")
                .buckets(prometheus::linear_buckets(1.0, 1.0, 10)?),
            &["arm"],
        )?;
        let candidates = HistogramVec::new(
            HistogramOpts::new(
                "hone_candidates_per_request",
                "Candidates sampled for one answer",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 8)?),
            &["arm"],
        )?;
        // Rewards have each their own scale (a verifier 0-1, a judge 1-9, a classifier's logits).
        let reward_buckets = vec![
            -10.0, -5.0, -2.0, -1.0, 0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0,
            7.0, 8.0, 9.0, 10.0,
        ];
        let reward_h = HistogramVec::new(
            HistogramOpts::new("hone_reward", "Reward of the answer").buckets(reward_buckets),
            &["arm"],
        )?;
        let compute_used = IntCounterVec::new(
            Opts::new(
                "hone_compute_used_total",
                "Compute units spent (policy positions plus weighted reward positions)",
            ),
            &["arm"],
        )?;
        let budget_ratio = HistogramVec::new(
            HistogramOpts::new(
                "hone_compute_budget_ratio",
                "Compute spent over the compute budget, for budgeted requests",
            )
            .buckets(prometheus::linear_buckets(0.1, 0.1, 10)?),
            &["arm"],
        )?;
        let completions = IntCounterVec::new(
            Opts::new(
                "hone_completions_total",
                "POST /v1/completions requests answered (raw generation, no loop), by status",
            ),
            &["status"],
        )?;
        let completion_tokens = IntCounter::new(
            "hone_completion_tokens_total",
            "Tokens generated for /v1/completions, over all choices",
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "hone_tokens_generated_total",
                "Tokens sampled by the policy, candidates and critiques",
            ),
            &["arm"],
        )?;
        let queue_depth = IntGauge::new("hone_queue_depth", "Requests waiting for a model slot")?;
        let in_flight = IntGauge::new("hone_in_flight", "Requests running on the model")?;
        let info = IntGaugeVec::new(
            Opts::new(
                "hone_model_info",
                "The policy and default reward being served",
            ),
            &["policy", "reward"],
        )?;
        info.with_label_values(&[policy, reward]).set(1);
        // What `auto` has learned, read from its tallies when scraped (see `render`).
        let auto_trials = IntGaugeVec::new(
            Opts::new(
                "hone_auto_trials",
                "Responses written by rounds of each move, since startup",
            ),
            &["move"],
        )?;
        let auto_wins = IntGaugeVec::new(
            Opts::new(
                "hone_auto_wins",
                "Responses of each move that beat the best answer before their round",
            ),
            &["move"],
        )?;
        let auto_win_rate = GaugeVec::new(
            Opts::new(
                "hone_auto_win_rate",
                "Estimated chance that a response of each move beats the best so far",
            ),
            &["move"],
        )?;
        let auto_cost = GaugeVec::new(
            Opts::new(
                "hone_auto_round_cost",
                "Estimated compute of a round of each move, in first rounds of the same query",
            ),
            &["move"],
        )?;
        // Per-arm families show both arms from the start, so dashboards have no gaps.
        for arm in [Arm::Optimized, Arm::Plain] {
            compute_used.with_label_values(&[arm.name()]);
            tokens.with_label_values(&[arm.name()]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(cancelled.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(first_event.clone()))?;
        registry.register(Box::new(first_token.clone()))?;
        registry.register(Box::new(completions.clone()))?;
        registry.register(Box::new(completion_tokens.clone()))?;
        registry.register(Box::new(rounds.clone()))?;
        registry.register(Box::new(candidates.clone()))?;
        registry.register(Box::new(reward_h.clone()))?;
        registry.register(Box::new(compute_used.clone()))?;
        registry.register(Box::new(budget_ratio.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let spec = SPEC_COUNTERS
            .iter()
            .map(|&(name, help, field)| {
                IntCounterVec::new(Opts::new(name, help), &["arm"]).map(|c| (c, field))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (counter, _) in &spec {
            for arm in [Arm::Optimized, Arm::Plain] {
                counter.with_label_values(&[arm.name()]);
            }
            registry.register(Box::new(counter.clone()))?;
        }
        let feedback = IntCounterVec::new(
            Opts::new(
                "hone_feedback_total",
                "Feedback received on answers (POST /feedback), replacements included",
            ),
            &["arm"],
        )?;
        for arm in [Arm::Optimized, Arm::Plain] {
            feedback.with_label_values(&[arm.name()]);
        }
        registry.register(Box::new(feedback.clone()))?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "hone_rate_limited_total",
                "Requests refused by a rate limit, by the limit: per API key or per user",
            ),
            &["by"],
        )?;
        for by in [By::Key, By::User] {
            rate_limited.with_label_values(&[by.name()]);
        }
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(info))?;
        registry.register(Box::new(auto_trials.clone()))?;
        registry.register(Box::new(auto_wins.clone()))?;
        registry.register(Box::new(auto_win_rate.clone()))?;
        registry.register(Box::new(auto_cost.clone()))?;
        Ok(Self {
            registry,
            requests,
            cancelled,
            duration,
            first_event,
            first_token,
            completions,
            completion_tokens,
            rounds,
            candidates,
            reward: reward_h,
            compute_used,
            budget_ratio,
            tokens,
            queue_depth,
            in_flight,
            auto_trials,
            auto_wins,
            auto_win_rate,
            auto_cost,
            spec,
            feedback,
            rate_limited,
        })
    }

    /// Counts a feedback on an answer of `arm`.
    pub fn feedback(&self, arm: Arm) {
        self.feedback.with_label_values(&[arm.name()]).inc();
    }

    /// Counts a request refused by the rate limit `by`.
    pub fn rate_limited(&self, by: By) {
        self.rate_limited.with_label_values(&[by.name()]).inc();
    }

    /// Records a request's outcome; `status` is the HTTP status code.
    pub fn request(&self, strategy: &str, arm: Arm, status: u16, elapsed: Duration) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[strategy, arm.name(), &status])
            .inc();
        self.duration
            .with_label_values(&[strategy, arm.name()])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request whose client went away; `route` is one of [`ROUTES`].
    pub fn cancelled(&self, route: &'static str) {
        self.cancelled.with_label_values(&[route]).inc();
    }

    /// Records when a request's loop scored its first candidate.
    pub fn first_event(&self, strategy: &str, arm: Arm, elapsed: Duration) {
        self.first_event
            .with_label_values(&[strategy, arm.name()])
            .observe(elapsed.as_secs_f64());
    }

    /// Records a `/v1/completions` request's status and, answered, the tokens it generated.
    pub fn completion(&self, status: u16, tokens: u64) {
        self.completions
            .with_label_values(&[&status.to_string()])
            .inc();
        self.completion_tokens.inc_by(tokens);
    }

    /// Records when a streamed answer's first token went out.
    pub fn first_token(&self, elapsed: Duration) {
        self.first_token.observe(elapsed.as_secs_f64());
    }

    /// Records what an answered request spent. `budget` is its compute budget, if any.
    pub fn trace(&self, arm: Arm, trace: &Trace, budget: Option<u64>) {
        let label = [arm.name()];
        self.rounds
            .with_label_values(&label)
            .observe(trace.rounds.len() as f64);
        let candidates: usize = trace.rounds.iter().map(|r| r.candidates.len()).sum();
        self.candidates
            .with_label_values(&label)
            .observe(candidates as f64);
        if let Some(score) = trace.score.filter(|s| s.is_finite()) {
            self.reward
                .with_label_values(&[arm.name()])
                .observe(f64::from(score));
        }
        self.compute_used
            .with_label_values(&[arm.name()])
            .inc_by(trace.usage.compute);
        self.tokens
            .with_label_values(&[arm.name()])
            .inc_by(trace.usage.tokens_generated);
        for (counter, field) in &self.spec {
            counter
                .with_label_values(&[arm.name()])
                .inc_by(field(&trace.usage));
        }
        if let Some(budget) = budget.filter(|&b| b > 0) {
            self.budget_ratio
                .with_label_values(&label)
                .observe(trace.usage.compute as f64 / budget as f64);
        }
    }

    /// The text exposition format, with `auto`'s estimates as of now.
    pub fn render(&self, learned: &Tallies) -> Result<String, String> {
        for m in Move::ALL {
            let tally = learned.get(m);
            let label = [m.name()];
            self.auto_trials
                .with_label_values(&label)
                .set(tally.trials as i64);
            self.auto_wins
                .with_label_values(&label)
                .set(tally.wins as i64);
            self.auto_win_rate
                .with_label_values(&label)
                .set(tally.win_rate(m));
            self.auto_cost.with_label_values(&label).set(tally.cost(m));
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}
