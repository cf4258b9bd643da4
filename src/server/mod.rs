//! The HTTP service: one loaded policy, reward models built on first use, and the optimization
//! loops behind a bounded queue.
//!
//! The loops are synchronous and CPU-bound, so each request runs them on tokio's blocking pool
//! while its handler waits. `max_concurrency` slots bound the model work; up to `max_queue`
//! requests wait for a slot and the rest get 429 at once ([`queue`]).
//!
//! A client that goes away is noticed by actix itself: the server does not allow half-closed
//! connections, so the end of the client's stream closes the connection and drops the
//! request's handler (or its stream's body). What the handler held goes with it: its place in
//! the queue, and its [`CancelOnDrop`], which stops the loop at its next step rather than after
//! a full answer nobody reads.

pub mod ab;
mod access_log;
pub mod api;
mod auth;
mod body;
mod completions;
mod config;
pub mod error;
mod fallback;
pub mod feedback;
mod logprobs;
pub mod metrics;
pub mod openai;
pub mod openapi;
mod queue;
pub mod rate_limit;
mod record;
mod reward_files;
pub mod routes;
pub mod served;

use crate::budget;
use crate::strategy::{Engine, Event, Execution, Learned, Strategy, StrategyError, Trace};
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpServer};
use anyhow::{bail, Context};
use api::{Job, Limits};
use error::ApiError;
use policies::{manifest, Endpoint, Policy, RemotePolicy, Speculation};
use reward_models::combined::Combined;
use reward_models::manifest::{Manifests, PolicyCache};
use reward_models::RewardModel;
use served::Served;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::Config;
use queue::{Queue, Ticket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A progress callback for a streamed request, called on the blocking pool as the loop runs.
pub type Progress = Box<dyn FnMut(Event) + Send>;

/// A built reward and its weight in compute units per position it reads.
type LoadedReward = (Arc<dyn RewardModel>, f64);

/// The weight of a query's own constraints when they join its reward: all of them met is worth
/// 10 points, more than the whole range of a 1-9 judge.
const CONSTRAINT_WEIGHT: f32 = 10.0;

/// Everything the handlers share.
pub struct AppState {
    pub config: Config,
    policy: Served,
    policy_path: PathBuf,
    device: candle_core::Device,
    manifests: Manifests,
    /// Rewards whose manifests name files that are not there, with why (for the log only).
    broken_rewards: BTreeMap<String, String>,
    /// Rewards by manifest name, built on first use (a classifier or judge loads a model).
    rewards: Mutex<HashMap<String, LoadedReward>>,
    /// Loaded models, so that a judge on the policy's own model shares the loaded copy.
    loaded: Mutex<PolicyCache>,
    queue: Queue,
    shutting_down: AtomicBool,
    pub metrics: metrics::Metrics,
    pub ab: ab::AbStats,
    /// The last answers given, for `POST /feedback`.
    pub answers: feedback::Answers,
    /// Per-key and per-user limits on model requests, when configured.
    rate_limiter: Option<rate_limit::RateLimiter>,
    /// What `auto` has learned about the policy from the queries so far.
    pub learned: Learned,
    /// Unix seconds at startup (the `created` of /v1/models).
    pub started: u64,
}

/// What a run produced.
pub struct Outcome {
    pub trace: Trace,
    /// The plain-decoding baseline, when asked for.
    pub plain: Option<Trace>,
    /// Tokens of the conversation as the policy reads it.
    pub prompt_tokens: usize,
}

impl AppState {
    /// Loads the policy and the default reward; an error here stops startup rather than
    /// failing every request later.
    pub fn load(mut config: Config) -> anyhow::Result<Self> {
        if config.max_concurrency == 0 {
            bail!("--max-concurrency must be at least 1");
        }
        if !(0.0..=1.0).contains(&config.ab_plain_fraction) {
            bail!("--ab-plain-fraction must be between 0 and 1");
        }
        if config.api_keys.iter().any(|k| k.trim().is_empty()) {
            bail!("an API key is empty");
        }
        if config.workers == Some(0) {
            bail!("--workers must be at least 1");
        }
        // actix reads its clock every 500 ms: a shorter timeout could expire at once.
        if config.request_timeout_ms < 1000 {
            bail!("--request-timeout-ms must be at least 1000");
        }
        if config.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if config.max_prompt_tokens == 0 {
            bail!("--max-prompt-tokens must be at least 1");
        }
        if config.rate_limit == Some(0) {
            bail!("--rate-limit must be at least 1 request a minute (leave it out for no limit)");
        }
        if config.remote_max_n == Some(0) {
            bail!("--remote-max-n must be at least 1");
        }
        if config.rate_limit_burst == Some(0) {
            bail!("--rate-limit-burst must be at least 1");
        }
        if config.rate_limit_burst.is_some() && config.rate_limit.is_none() {
            bail!("--rate-limit-burst needs --rate-limit");
        }
        let rate_limiter = config.rate_limit.map(|per_minute| {
            let burst = config.rate_limit_burst.unwrap_or(per_minute);
            rate_limit::RateLimiter::new(per_minute, burst, rate_limit::MAX_BUCKETS)
        });
        let policy_path = manifest::resolve(&config.policies, &config.model)
            .with_context(|| format!("resolving model `{}`", config.model))?;
        let device = policies::device(config.cpu)?;
        let policy = match &config.remote {
            None => Served::Local(Arc::new(
                Policy::load(&policy_path, &device)
                    .with_context(|| format!("loading model {}", policy_path.display()))?,
            )),
            Some(url) => {
                if config.speculate > 0 {
                    bail!("--speculate is the remote server's to do; leave it out with --remote");
                }
                let endpoint = Endpoint {
                    url: url.clone(),
                    served_model: config.remote_model.clone(),
                    api_key: std::env::var("HONE_REMOTE_API_KEY").ok(),
                    max_n: config.remote_max_n,
                };
                Served::Remote(Box::new(
                    RemotePolicy::open(&policy_path, endpoint).with_context(|| {
                        format!("reading model {} for --remote", policy_path.display())
                    })?,
                ))
            }
        };
        // Without a cap, one request could keep the model busy for as long as it asks.
        let max_budget = match config.max_budget {
            Some(m) => m,
            None => budget::default_max_budget(policy.config()),
        };
        if let Some(d) = config.default_budget.filter(|&d| d > max_budget) {
            bail!(
                "--default-budget ({d}) is above --max-budget ({max_budget}{})",
                if config.max_budget.is_none() {
                    ", the default: about one core-minute of this model"
                } else {
                    ""
                }
            );
        }
        config.max_budget = Some(max_budget);
        let manifests = Manifests::read_dir(&config.rewards)?;
        let broken_rewards = reward_files::missing(&manifests, &config.rewards);
        for (name, why) in &broken_rewards {
            tracing::warn!("reward `{name}` is unavailable: {why}");
        }
        let mut loaded = PolicyCache::default();
        if let Some(local) = policy.local() {
            loaded.insert(policy_path.clone(), local.clone());
        }
        let metrics =
            metrics::Metrics::new(policy.name(), &config.reward).context("registering metrics")?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let queue = Queue::new(
            config.max_concurrency,
            config.max_queue,
            metrics.queue_depth.clone(),
        );
        let learned = match &config.learned_file {
            Some(path) => Learned::persistent(path, policy.name())?,
            None => Learned::default(),
        };
        let state = Self {
            queue,
            config,
            policy,
            policy_path,
            device,
            manifests,
            broken_rewards,
            rewards: Mutex::new(HashMap::new()),
            loaded: Mutex::new(loaded),
            shutting_down: AtomicBool::new(false),
            metrics,
            ab: ab::AbStats::default(),
            answers: feedback::Answers::default(),
            rate_limiter,
            learned,
            started,
        };
        state.reward(&state.config.reward).map_err(|e| {
            anyhow::anyhow!("default reward `{}`: {}", state.config.reward, e.message)
        })?;
        // The rules that read a prompt's constraints compile on first use (about 0.5 s on one
        // core). Here, not in the first request: that runs on an actix worker thread, and every
        // connection of that worker stalls meanwhile; on a busy machine, long enough for
        // actix to answer their requests 408 (its clock is stale after the stall).
        let _ = reward_models::verifier::extract::from_prompt("Answer in fewer than 40 words.");
        Ok(state)
    }

    pub fn policy(&self) -> &Served {
        &self.policy
    }

    /// The id the API shows for the served model.
    pub fn model_id(&self) -> &str {
        self.policy.name()
    }

    /// The bounds on a request body.
    pub fn body_limits(&self) -> body::Limits {
        body::Limits {
            max_bytes: self.config.max_body_bytes,
            timeout: Duration::from_millis(self.config.request_timeout_ms),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            default_budget: self.config.default_budget,
            max_budget: self.config.max_budget,
        }
    }

    /// 429 when the request's API key or `user` is over the rate limit (see [`rate_limit`]);
    /// else takes a token from each. The key is the bearer token the auth middleware let
    /// through, counted only when the server has keys.
    pub fn check_rate(&self, req: &HttpRequest, user: Option<&str>) -> Result<(), ApiError> {
        let Some(limiter) = &self.rate_limiter else {
            return Ok(());
        };
        let key = (!self.config.api_keys.is_empty())
            .then(|| auth::token(req.headers()))
            .flatten();
        let who: Vec<(rate_limit::By, &str)> = [
            key.map(|k| (rate_limit::By::Key, k)),
            user.map(|u| (rate_limit::By::User, u)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if who.is_empty() {
            return Ok(());
        }
        let Err(limited) = limiter.check(&who, std::time::Instant::now()) else {
            return Ok(());
        };
        self.metrics.rate_limited(limited.by);
        let whose = match limited.by {
            rate_limit::By::Key => "this API key",
            rate_limit::By::User => "this user",
        };
        let mut error = ApiError::rate_limited(
            format!(
                "rate limit of {} requests a minute (bursts of {}) for {whose} reached; \
                 retry in {} s",
                limiter.per_minute(),
                limiter.burst(),
                limited.retry_after_secs
            ),
            limited.retry_after_secs,
        );
        if limited.by == rate_limit::By::User {
            error = error.with_param("user");
        }
        Err(error)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Refuses new work: waiting requests and new ones get 503; running ones finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.queue.close();
    }

    /// A model slot or a place in the queue for `job`, decided now: 429 when the queue is full,
    /// 503 when shutting down. A stream answers 200 before its loop starts, so its budget is
    /// checked first, for the same 422 a plain call would get. Dropping the ticket gives the
    /// place up.
    pub fn admit(&self, job: &Job, stream: bool) -> Result<Ticket, ApiError> {
        if stream {
            self.check_budget(job)?;
        }
        if self.shutting_down() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        self.queue.admit()
    }

    /// Admission for raw generation (`/v1/completions`): no loop, so no budget to check first.
    pub fn admit_generation(&self) -> Result<Ticket, ApiError> {
        if self.shutting_down() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        self.queue.admit()
    }

    /// 404 (naming `param`) unless `name` is the served policy: its id, `default`, or the
    /// `--model` it was loaded as. One server serves one policy.
    pub fn check_policy(&self, param: &str, name: &str) -> Result<(), ApiError> {
        if name == self.model_id() || name == self.config.model || name == "default" {
            return Ok(());
        }
        Err(ApiError::not_found(
            param,
            format!(
                "unknown model `{name}` (this server has `{}`)",
                self.model_id()
            ),
        ))
    }

    /// 404 for a reward no manifest defines, 503 for one whose files are missing; checked
    /// before the request queues.
    pub fn check_reward(&self, name: Option<&str>) -> Result<(), ApiError> {
        let name = name.unwrap_or(&self.config.reward);
        if self.manifests.get(name).is_none() {
            return Err(ApiError::not_found(
                "reward",
                format!("unknown reward `{name}`; GET /rewards lists this server's rewards"),
            ));
        }
        if self.broken_rewards.contains_key(name) {
            return Err(reward_unavailable(name));
        }
        Ok(())
    }

    /// The reward manifests: name, kind, and whether the server can build it.
    pub fn reward_list(&self) -> Vec<(&str, &'static str, bool)> {
        self.manifests
            .names()
            .filter_map(|name| {
                let kind = match self.manifests.get(name)? {
                    reward_models::manifest::Manifest::Classifier { .. } => "classifier",
                    reward_models::manifest::Manifest::Judge { .. } => "judge",
                    reward_models::manifest::Manifest::Verifier { .. } => "verifier",
                    reward_models::manifest::Manifest::Remote { .. } => "remote",
                    reward_models::manifest::Manifest::OpenaiJudge { .. } => "openai_judge",
                    reward_models::manifest::Manifest::Combined { .. } => "combined",
                };
                Some((name, kind, !self.broken_rewards.contains_key(name)))
            })
            .collect()
    }

    /// 422 naming `messages` when the conversation is longer than `--max-prompt-tokens` (or
    /// than the model's context), checked before the request queues: a long prompt costs the
    /// model time in proportion to its length, and more per token the longer it gets.
    pub fn check_prompt(&self, job: &Job) -> Result<(), ApiError> {
        let tokens = self
            .policy
            .model()
            .encode_chat(&job.request.messages)
            .map_err(|e| ApiError::from(StrategyError::Policy(e)))?
            .len();
        let cap = self.config.max_prompt_tokens;
        if tokens > cap {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "the conversation has {tokens} tokens, above this server's cap of {cap} \
                     prompt tokens (--max-prompt-tokens)"
                ),
            ));
        }
        Ok(())
    }

    /// For a streamed request, which answers 200 before its loop starts: 422 now, the way the
    /// loop would refuse it, when its compute budget does not cover one prefill of the prompt
    /// and a scored response. (A reward not built yet counts as free here; the loop still
    /// checks with its real weight.)
    pub fn check_budget(&self, job: &Job) -> Result<(), ApiError> {
        let Some(budget) = job.compute_budget() else {
            return Ok(());
        };
        let prompt = self
            .policy
            .model()
            .encode_chat(&job.request.messages)
            .map_err(|e| ApiError::from(StrategyError::Policy(e)))?;
        let weight = match &job.checks {
            Some(c) if c.only => 0.0,
            _ => {
                let name = job.reward.as_deref().unwrap_or(&self.config.reward);
                lock(&self.rewards).get(name).map_or(0.0, |(_, w)| *w)
            }
        };
        let minimum = prompt.len() as u64 + 1 + budget::reward_cost(weight, prompt.len() + 1);
        if budget < minimum {
            return Err(ApiError::from(StrategyError::BudgetTooSmall {
                budget,
                minimum,
                prompt_tokens: prompt.len(),
            }));
        }
        Ok(())
    }

    /// The reward `name`, built on first use.
    fn reward(&self, name: &str) -> Result<LoadedReward, ApiError> {
        self.check_reward(Some(name))?;
        let mut rewards = lock(&self.rewards);
        if let Some(r) = rewards.get(name) {
            return Ok(r.clone());
        }
        // The error may name files on the server: it goes to the log, not to the client.
        let failed = |e: reward_models::RewardError| {
            tracing::error!("reward `{name}` cannot be built: {e}");
            reward_unavailable(name)
        };
        let model = self
            .manifests
            .build(name, &self.device, &mut lock(&self.loaded))
            .map_err(failed)?;
        let weight = budget::reward_weight(
            &self.manifests,
            &self.config.rewards,
            name,
            &self.policy_path,
            self.policy.config(),
        )
        .map_err(failed)?;
        rewards.insert(name.to_string(), (model.clone(), weight));
        Ok((model, weight))
    }

    /// Waits for a model slot (see [`Self::admit`]), then runs `job` on the blocking pool; 503
    /// when the server starts shutting down meanwhile. Setting `cancel` (see [`CancelOnDrop`])
    /// stops the loop at its next step. `progress` sees the loop's events (not the plain
    /// baseline's).
    pub async fn run(
        self: Arc<Self>,
        ticket: Ticket,
        job: Job,
        compare_plain: bool,
        cancel: Arc<AtomicBool>,
        progress: Option<Progress>,
    ) -> Result<Outcome, ApiError> {
        let permit = ticket.slot().await?;
        let flag = cancel;
        let state = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            // The slot is held by the work itself, not the handler: a cancelled loop still
            // occupies the model until it notices the flag.
            let _permit = permit;
            state.metrics.in_flight.inc();
            let _in_flight = Defer(|| state.metrics.in_flight.dec());
            state.execute(&job, compare_plain, flag, progress)
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(ApiError::internal(format!("the model task failed: {e}"))),
        }
    }

    /// Runs the loop (and the plain baseline) on this thread.
    fn execute(
        &self,
        job: &Job,
        compare_plain: bool,
        cancel: Arc<AtomicBool>,
        mut progress: Option<Progress>,
    ) -> Result<Outcome, ApiError> {
        let name = job.reward.as_deref().unwrap_or(&self.config.reward);
        let (named, named_weight) = self.reward(name)?;
        // A query's own constraints join the reward, weighted so that meeting all of them
        // outweighs any difference on a judge's 1-9 scale, or replace it.
        let (reward, reward_weight): (Arc<dyn RewardModel>, f64) = match &job.checks {
            None => (named, named_weight),
            Some(c) if c.only => (Arc::new(c.verifier.clone()), 0.0),
            Some(c) => (
                Arc::new(Combined::new(vec![
                    (named, 1.0),
                    (Arc::new(c.verifier.clone()), CONSTRAINT_WEIGHT),
                ])),
                named_weight,
            ),
        };
        let engine = Engine {
            policy: self.policy.model(),
            reward: reward.as_ref(),
            reward_weight,
            learned: &self.learned,
            execution: Execution::Batched,
            speculation: Speculation::drafts(self.config.speculate),
        };
        // The first event (a scored candidate) is when a streaming client first hears back.
        let arm = ab::Arm::of(job.strategy);
        let mut first = true;
        let mut events = |event: Event| {
            if std::mem::take(&mut first) {
                self.metrics
                    .first_event(job.strategy.name(), arm, job.arrived.elapsed());
            }
            if let Some(p) = progress.as_mut() {
                p(event);
            }
        };
        let trace = job.strategy.run(
            &engine,
            &job.request,
            Some(&mut events),
            Some(cancel.clone()),
        )?;
        let plain = match (compare_plain, job.strategy) {
            (false, _) => None,
            (true, Strategy::Plain) => Some(trace.clone()),
            (true, _) => {
                // The same compute budget, but not the deadline: the optimized run has already
                // spent the time, and a baseline cut short compares nothing.
                let mut request = job.request.clone();
                request.budget.deadline = None;
                Some(Strategy::Plain.run(&engine, &request, None, Some(cancel))?)
            }
        };
        let prompt_tokens = self
            .policy
            .model()
            .encode_chat(&job.request.messages)
            .map_or(0, |t| t.len());
        Ok(Outcome {
            trace,
            plain,
            prompt_tokens,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a usable map behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request's cancel flag, set when this guard is dropped. It is held by whatever stops
/// existing when the client goes away: the handler's future, or a streaming response's body.
#[derive(Default)]
pub struct CancelOnDrop {
    flag: Arc<AtomicBool>,
}

impl CancelOnDrop {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}

/// 503 for a reward whose manifest names files the server does not have: the reward's name,
/// never the path.
fn reward_unavailable(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("reward `{name}` is unavailable on this server (its files are missing; the server log says which)"),
    )
    .with_param("reward")
}

/// Runs a closure when dropped, on every exit path.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A server bound to its address, not yet running: await `server` (inside an actix system) to
/// serve; `server.handle()` stops it.
pub struct Started {
    pub addr: SocketAddr,
    pub server: actix_web::dev::Server,
    pub state: Arc<AppState>,
}

/// Binds the service to `config.host:config.port` (port 0 picks a free one).
///
/// Middleware, outermost first: the access log, the error shape for errors that have none,
/// the API key check. Bodies are read by the handlers ([`body`]), with their own limits.
pub fn start(state: AppState) -> std::io::Result<Started> {
    let state = Arc::new(state);
    let data = web::Data::from(state.clone());
    let config = &state.config;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(routes::configure)
            .wrap(from_fn(auth::middleware))
            .wrap(from_fn(fallback::shape_errors))
            .wrap(from_fn(access_log::middleware))
    });
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let server = server
        .workers(workers)
        // actix's limit is per worker.
        .max_connections(config.max_connections.div_ceil(workers).max(1))
        .client_request_timeout(Duration::from_millis(config.request_timeout_ms))
        // The end of a client's stream ends its connection and drops its handler: that is how
        // a client that goes away is noticed (see the module's doc).
        .h1_allow_half_closed(false)
        .shutdown_timeout(config.shutdown_timeout_secs);
    let server = server.bind((config.host.as_str(), config.port))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("the server bound no address"))?;
    Ok(Started {
        addr,
        server: server.run(),
        state,
    })
}

/// Waits for SIGINT or SIGTERM, then refuses new work. actix's own signal handling stops the
/// server gracefully on the same signal, letting running requests finish.
pub async fn shutdown_on_signal(state: Arc<AppState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    state.begin_shutdown();
}
