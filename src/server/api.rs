//! The `/optimize` request and response, and the checks that turn a request body into a
//! [`strategy::Request`](crate::strategy::Request).
//!
//! Types are checked by serde (a wrong type is a 400 naming the field); values are checked
//! here (a negative budget, empty messages, n = 0 are 422), before the request waits for the
//! model, so a bad request costs nothing.

use super::ab::Arm;
use super::error::{plain_words, ApiError};
use crate::budget::Budget;
use crate::strategy::{Request, Strategy, Trace};
use policies::{Message, Role};
use reward_models::verifier::{self, Constraint, Verifier};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// The body of `POST /optimize`: the conversation (`messages` or `prompt`, not both) and how to
/// spend on it. Unknown fields are refused (400).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizeBody {
    /// The conversation.
    pub messages: Option<Vec<Message>>,
    /// A single user message, instead of `messages`.
    pub prompt: Option<String>,
    /// The loop (default `tpo`).
    #[schema(value_type = Option<Strategy>)]
    pub strategy: Option<String>,
    pub budget: Option<BudgetBody>,
    /// Candidates per round.
    #[schema(minimum = 1, maximum = 64)]
    pub n: Option<usize>,
    /// The most improvement rounds after the first sampling (default 2; 8 for `auto`).
    #[schema(maximum = 16)]
    pub rounds: Option<u32>,
    /// The most tokens of each response.
    #[schema(minimum = 1, maximum = 8192)]
    pub max_tokens: Option<usize>,
    /// 0 is greedy; a positive temperature must be at least 0.001.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: more than 0, at most 1.
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// A reward manifest name, as `GET /rewards` lists them (default: the server's `--reward`).
    pub reward: Option<String>,
    /// The policy: the one this server serves (its id, `default`, or the name it was started
    /// with); any other is 404.
    pub policy: Option<String>,
    /// Checkable requirements of this query, added to the reward (10 x the fraction met).
    /// Absent: read from the prompt's own words; `[]`: none. A bad one is a 422 naming it
    /// (`constraints[i]`).
    #[schema(value_type = Option<Vec<Constraint>>)]
    pub constraints: Option<Vec<serde_json::Value>>,
    /// Score by the constraints alone rather than adding them to the reward.
    #[serde(default)]
    #[schema(default = false)]
    pub constraints_only: bool,
    /// Also answer with plain decoding of the same prompt, scored by the same reward.
    #[serde(default)]
    #[schema(default = false)]
    pub compare_plain: bool,
    /// Who is asking: the key of the A/B assignment and of the per-user rate limit.
    pub user: Option<String>,
    /// Answer with server-sent events: the loop's progress, then the result.
    #[serde(default)]
    #[schema(default = false)]
    pub stream: bool,
}

impl OptimizeBody {
    /// The options, as the chat endpoint's `hone` object would carry them. (Not a flattened
    /// field: serde cannot deny unknown fields through `flatten`.)
    pub fn options(&self) -> Options {
        Options {
            strategy: self.strategy.clone(),
            budget: self.budget,
            n: self.n,
            rounds: self.rounds,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            reward: self.reward.clone(),
            constraints: self.constraints.clone(),
            constraints_only: self.constraints_only,
        }
    }
}

/// How to spend on a query: the `hone` object of a chat completion, and the same fields of
/// `POST /optimize`. Unknown fields are refused (400).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The loop (default: `tpo` on /optimize; on chat completions, the model name's prefix,
    /// else `plain`).
    #[schema(value_type = Option<Strategy>)]
    pub strategy: Option<String>,
    pub budget: Option<BudgetBody>,
    /// Candidates per round.
    #[schema(minimum = 1, maximum = 64)]
    pub n: Option<usize>,
    /// The most improvement rounds after the first sampling (default 2; 8 for `auto`).
    #[schema(maximum = 16)]
    pub rounds: Option<u32>,
    /// The most tokens of each response.
    #[schema(minimum = 1, maximum = 8192)]
    pub max_tokens: Option<usize>,
    /// 0 is greedy; a positive temperature must be at least 0.001.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: more than 0, at most 1.
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// A reward manifest name, as `GET /rewards` lists them (default: the server's `--reward`).
    pub reward: Option<String>,
    /// Checkable requirements of this query, added to the reward (10 x the fraction met).
    /// Absent: read from the prompt's own words; `[]`: none. A bad one is a 422 naming it
    /// (`constraints[i]`).
    #[schema(value_type = Option<Vec<Constraint>>)]
    pub constraints: Option<Vec<serde_json::Value>>,
    /// Score by the constraints alone rather than adding them to the reward.
    #[serde(default)]
    #[schema(default = false)]
    pub constraints_only: bool,
}

/// What a query may spend. Each limit is optional; the server's `--default-budget` and
/// `--max-budget` apply to `compute`.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Budget)]
pub struct BudgetBody {
    /// Compute units: policy token positions plus weighted reward positions. Signed, so that a
    /// negative budget is a 422 naming it rather than a type error.
    #[schema(minimum = 1, maximum = 1e12)]
    pub compute: Option<i64>,
    /// No new step starts after this many milliseconds from the request's arrival; the answer
    /// is the best found so far.
    #[schema(minimum = 0, maximum = 3600000)]
    pub deadline_ms: Option<i64>,
    /// The most improvement rounds (TPO's depth D).
    pub max_rounds: Option<u32>,
}

/// The server's settings that bound every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The compute budget of a request that names none.
    pub default_budget: Option<u64>,
    /// The most compute any request may spend: a request asking for more gets 422, one asking
    /// for nothing gets this.
    pub max_budget: Option<u64>,
}

/// Bounds past which a value is a mistake rather than a big request.
const MAX_N: usize = 64;
const MAX_ROUNDS: u32 = 16;
const MAX_TOKENS: usize = 8192;
const MAX_COMPUTE: i64 = 1_000_000_000_000;
pub const MAX_DEADLINE_MS: i64 = 3_600_000;
/// Below this, a positive temperature divides the logits into overflow: 0 (greedy) or this.
pub const MIN_TEMPERATURE: f32 = 1e-3;

/// A checked request, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub strategy: Strategy,
    pub request: Request,
    pub reward: Option<String>,
    /// The query's own verifier, when it has constraints.
    pub checks: Option<Checks>,
    /// When the request arrived: the start of its deadline and of its latency figures.
    pub arrived: Instant,
}

/// A query's own constraints and how they join the reward.
#[derive(Debug, Clone)]
pub struct Checks {
    pub verifier: Verifier,
    pub source: Source,
    /// Scored by the constraints alone, without the reward.
    pub only: bool,
}

/// Where a query's constraints came from: `request` (its `constraints`) or `prompt`
/// (requirements written in the prompt: "in fewer than 40 words", "all lowercase").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Request,
    Prompt,
}

/// The constraints an answer was scored against, as its body reports them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AppliedConstraints {
    pub source: Source,
    /// Whether they replaced the reward (`constraints_only`) rather than joined it.
    pub only: bool,
    pub constraints: Vec<Constraint>,
}

impl Checks {
    pub fn applied(&self) -> AppliedConstraints {
        AppliedConstraints {
            source: self.source,
            only: self.only,
            constraints: self.verifier.constraints().cloned().collect(),
        }
    }
}

/// The query's constraints: the request's own, else those its last user message states.
fn checks(options: &Options, messages: &[Message]) -> Result<Option<Checks>, ApiError> {
    let (constraints, source) = match &options.constraints {
        Some(tables) => {
            let parsed = tables
                .iter()
                .enumerate()
                .map(|(i, table)| {
                    serde_json::from_value::<Constraint>(table.clone()).map_err(|e| {
                        ApiError::invalid(&format!("constraints[{i}]"), plain_words(&e.to_string()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (parsed, Source::Request)
        }
        None => {
            let prompt = messages.iter().rev().find(|m| m.role == Role::User);
            let found =
                prompt.map_or_else(Vec::new, |m| verifier::extract::from_prompt(&m.content));
            (found, Source::Prompt)
        }
    };
    if constraints.is_empty() {
        if options.constraints_only {
            return Err(ApiError::invalid(
                "constraints_only",
                "constraints_only needs constraints, given or found in the prompt",
            ));
        }
        return Ok(None);
    }
    let verifier =
        Verifier::new(constraints).map_err(|e| ApiError::invalid("constraints", e.to_string()))?;
    Ok(Some(Checks {
        verifier,
        source,
        only: options.constraints_only,
    }))
}

impl Job {
    /// The compute budget actually applied (after the server's default and cap).
    pub fn compute_budget(&self) -> Option<u64> {
        self.request.budget.compute
    }
}

/// The conversation of an `/optimize` body: `messages` or `prompt`, not both.
pub fn conversation(body: &OptimizeBody) -> Result<Vec<Message>, ApiError> {
    match (&body.messages, &body.prompt) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "prompt",
            "send either `messages` or `prompt`, not both",
        )),
        (Some(messages), None) => Ok(messages.clone()),
        (None, Some(prompt)) => Ok(vec![Message::new(Role::User, prompt.clone())]),
        (None, None) => Err(ApiError::invalid(
            "messages",
            "the request needs `messages` or `prompt`",
        )),
    }
}

/// The A/B key of a request: its `user`, else the text of its conversation.
pub fn ab_key(user: Option<&str>, messages: &[Message]) -> String {
    match user {
        Some(u) => u.to_string(),
        None => messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Checks `options` for `messages` and builds the job; `arrived` starts the deadline.
pub fn build(
    messages: Vec<Message>,
    options: &Options,
    default_strategy: Strategy,
    limits: Limits,
    arrived: Instant,
) -> Result<Job, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "the conversation has no messages",
        ));
    }
    if messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(ApiError::invalid("messages", "every message is empty"));
    }
    let strategy = match &options.strategy {
        None => default_strategy,
        Some(name) => Strategy::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "strategy",
                format!("unknown strategy `{name}` (known: {})", Strategy::NAMES),
            )
        })?,
    };
    let defaults = Request::default();
    let n = options.n.unwrap_or(defaults.n);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {MAX_N}"),
        ));
    }
    let rounds = options.rounds.unwrap_or(strategy.default_rounds());
    if rounds > MAX_ROUNDS {
        return Err(ApiError::invalid(
            "rounds",
            format!("rounds must be at most {MAX_ROUNDS}"),
        ));
    }
    let max_tokens = options.max_tokens.unwrap_or(defaults.max_tokens);
    if max_tokens == 0 || max_tokens > MAX_TOKENS {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens must be between 1 and {MAX_TOKENS}"),
        ));
    }
    let temperature = options.temperature.unwrap_or(defaults.temperature);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be between 0 and 2",
        ));
    }
    if temperature > 0.0 && temperature < MIN_TEMPERATURE {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}"),
        ));
    }
    let top_p = options.top_p.unwrap_or(defaults.top_p);
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    let budget = budget(options.budget.unwrap_or_default(), limits, arrived)?;
    let checks = checks(options, &messages)?;
    Ok(Job {
        strategy,
        request: Request {
            messages,
            n,
            rounds,
            max_tokens,
            temperature,
            top_p,
            seed: options.seed.unwrap_or(defaults.seed),
            budget,
            prompts_dir: None,
            on_text: None,
        },
        reward: options.reward.clone(),
        checks,
        arrived,
    })
}

/// The request's budget with the server's default and cap applied.
fn budget(body: BudgetBody, limits: Limits, arrived: Instant) -> Result<Budget, ApiError> {
    let compute = match body.compute {
        Some(c) if c <= 0 => {
            return Err(ApiError::invalid(
                "budget.compute",
                "budget.compute must be a positive number of compute units",
            ))
        }
        Some(c) if c > MAX_COMPUTE => {
            return Err(ApiError::invalid(
                "budget.compute",
                format!("budget.compute must be at most {MAX_COMPUTE}"),
            ))
        }
        Some(c) => Some(c as u64),
        None => limits.default_budget,
    };
    let compute = match (compute, limits.max_budget) {
        // Refused rather than lowered: the client learns the cap instead of getting less than
        // it asked for without a word.
        (Some(c), Some(cap)) if c > cap => {
            return Err(ApiError::invalid(
                "budget.compute",
                format!(
                    "budget.compute ({c}) is above this server's cap of {cap} compute units \
                     per request (--max-budget)"
                ),
            ))
        }
        (None, cap) => cap,
        (c, _) => c,
    };
    let deadline = match body.deadline_ms {
        Some(ms) if !(0..=MAX_DEADLINE_MS).contains(&ms) => {
            return Err(ApiError::invalid(
                "budget.deadline_ms",
                format!("budget.deadline_ms must be between 0 and {MAX_DEADLINE_MS}"),
            ))
        }
        Some(ms) => Some(arrived + Duration::from_millis(ms as u64)),
        None => None,
    };
    Ok(Budget {
        compute,
        deadline,
        max_rounds: body.max_rounds,
    })
}

/// The body of a `/optimize` answer: its id, the loop's trace, the arm that answered, and the
/// plain baseline when asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptimizeResponse {
    /// The answer's id (`ans-` and 128 random bits in hex), for `POST /feedback`.
    pub id: String,
    #[serde(flatten)]
    pub trace: Trace,
    pub arm: Arm,
    /// Plain decoding of the same prompt, scored by the same reward, when `compare_plain` asked
    /// for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub plain: Option<Trace>,
    /// The query's own constraints, when it had any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub constraints: Option<AppliedConstraints>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Vec<Message> {
        vec![Message::new(Role::User, text)]
    }

    fn options(json: serde_json::Value) -> Options {
        serde_json::from_value(json).unwrap()
    }

    fn check(json: serde_json::Value, limits: Limits) -> Result<Job, ApiError> {
        build(
            user("hi"),
            &options(json),
            Strategy::Tpo,
            limits,
            Instant::now(),
        )
    }

    #[test]
    fn defaults_follow_the_paper() {
        let job = check(serde_json::json!({}), Limits::default()).unwrap();
        assert_eq!(job.strategy, Strategy::Tpo);
        assert_eq!((job.request.n, job.request.rounds), (4, 2));
        assert_eq!(job.request.budget, Budget::default());
        let auto = check(serde_json::json!({"strategy": "auto"}), Limits::default()).unwrap();
        assert_eq!(auto.strategy, Strategy::Auto);
        assert_eq!(auto.request.rounds, crate::strategy::auto::DEFAULT_ROUNDS);
        let capped = check(
            serde_json::json!({"strategy": "auto", "rounds": 1}),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(capped.request.rounds, 1);
    }

    #[test]
    fn server_default_and_cap_apply() {
        let limits = Limits {
            default_budget: Some(500),
            max_budget: Some(1000),
        };
        let job = check(serde_json::json!({}), limits).unwrap();
        assert_eq!(job.compute_budget(), Some(500));
        let job = check(serde_json::json!({"budget": {"compute": 1000}}), limits).unwrap();
        assert_eq!(job.compute_budget(), Some(1000));
        let err = check(serde_json::json!({"budget": {"compute": 1001}}), limits).unwrap_err();
        assert_eq!(err.status.as_u16(), 422);
        assert_eq!(err.param.as_deref(), Some("budget.compute"));
        assert!(err.message.contains("cap of 1000"), "{}", err.message);
        let capped = Limits {
            default_budget: None,
            max_budget: Some(800),
        };
        assert_eq!(
            check(serde_json::json!({}), capped)
                .unwrap()
                .compute_budget(),
            Some(800)
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                serde_json::json!({"budget": {"compute": -5}}),
                "budget.compute",
            ),
            (
                serde_json::json!({"budget": {"compute": 0}}),
                "budget.compute",
            ),
            (
                serde_json::json!({"budget": {"deadline_ms": -1}}),
                "budget.deadline_ms",
            ),
            (serde_json::json!({"strategy": "beam"}), "strategy"),
            (serde_json::json!({"n": 0}), "n"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
            (serde_json::json!({"temperature": 9.0}), "temperature"),
            (serde_json::json!({"temperature": 1e-39}), "temperature"),
        ];
        for (json, param) in cases {
            let err = check(json.clone(), Limits::default()).unwrap_err();
            assert_eq!(err.status.as_u16(), 422, "{json}");
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
        }
    }

    #[test]
    fn empty_conversations_are_rejected() {
        let opts = Options::default();
        let err = build(
            vec![],
            &opts,
            Strategy::Tpo,
            Limits::default(),
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(err.status.as_u16(), 422);
        let body = OptimizeBody::default();
        assert_eq!(conversation(&body).unwrap_err().status.as_u16(), 422);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = serde_json::json!({"prompt": "hi", "budgett": 5});
        assert!(serde_json::from_value::<OptimizeBody>(json).is_err());
    }

    #[test]
    fn ab_key_prefers_the_user() {
        assert_eq!(ab_key(Some("u1"), &user("hi")), "u1");
        assert_eq!(ab_key(None, &user("hi")), "hi");
    }
}
