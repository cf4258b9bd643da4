//! The HTTP service: one loaded policy, reward models built on first use, and the optimization
//! loops behind a bounded queue.
//!
//! The loops are synchronous and CPU-bound, so each request runs them on tokio's blocking pool
//! while its handler waits. A semaphore of `max_concurrency` slots bounds the model work; up to
//! `max_queue` requests wait for a slot and the rest get 429 at once. A client that goes away
//! sets the loop's cancel flag ([`CancelOnDrop`]), so the slot is freed at the loop's next step
//! rather than after a full answer nobody reads.

pub mod ab;
pub mod api;
mod config;
mod disconnect;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod routes;

use crate::budget;
use crate::strategy::{Engine, Event, Execution, Learned, Strategy, Trace};
use actix_web::{web, App, HttpServer};
use anyhow::{bail, Context};
use api::{Job, Limits};
use error::ApiError;
use policies::{manifest, Policy, Speculation};
use reward_models::combined::Combined;
use reward_models::manifest::{Manifests, PolicyCache};
use reward_models::RewardModel;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::Config;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

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
    policy: Arc<Policy>,
    policy_path: PathBuf,
    device: candle_core::Device,
    manifests: Manifests,
    /// Rewards by manifest name, built on first use (a classifier or judge loads a model).
    rewards: Mutex<HashMap<String, LoadedReward>>,
    /// Loaded models, so that a judge on the policy's own model shares the loaded copy.
    loaded: Mutex<PolicyCache>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    shutting_down: AtomicBool,
    pub metrics: metrics::Metrics,
    pub ab: ab::AbStats,
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
    pub fn load(config: Config) -> anyhow::Result<Self> {
        if config.max_concurrency == 0 {
            bail!("--max-concurrency must be at least 1");
        }
        if !(0.0..=1.0).contains(&config.ab_plain_fraction) {
            bail!("--ab-plain-fraction must be between 0 and 1");
        }
        if let (Some(d), Some(m)) = (config.default_budget, config.max_budget) {
            if d > m {
                bail!("--default-budget ({d}) is above --max-budget ({m})");
            }
        }
        let policy_path = manifest::resolve(&config.policies, &config.model)
            .with_context(|| format!("resolving model `{}`", config.model))?;
        let device = if config.cpu {
            candle_core::Device::Cpu
        } else {
            candle_core::Device::cuda_if_available(0)?
        };
        if config.speculate > 0 && !device.is_cpu() {
            bail!("--speculate is exact only on the CPU backend; use it with --cpu or set it to 0");
        }
        let policy = Arc::new(
            Policy::load(&policy_path, &device)
                .with_context(|| format!("loading model {}", policy_path.display()))?,
        );
        let manifests = Manifests::read_dir(&config.rewards)?;
        let mut loaded = PolicyCache::default();
        loaded.insert(policy_path.clone(), policy.clone());
        let metrics =
            metrics::Metrics::new(policy.name(), &config.reward).context("registering metrics")?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let state = Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            config,
            policy,
            policy_path,
            device,
            manifests,
            rewards: Mutex::new(HashMap::new()),
            loaded: Mutex::new(loaded),
            waiting: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            metrics,
            ab: ab::AbStats::default(),
            learned: Learned::default(),
            started,
        };
        state.reward(&state.config.reward).map_err(|e| {
            anyhow::anyhow!("default reward `{}`: {}", state.config.reward, e.message)
        })?;
        Ok(state)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The id the API shows for the served model.
    pub fn model_id(&self) -> &str {
        self.policy.name()
    }

    pub fn limits(&self) -> Limits {
        Limits {
            default_budget: self.config.default_budget,
            max_budget: self.config.max_budget,
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Refuses new work: waiting requests and new ones get 503; running ones finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.slots.close();
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

    /// 404 for a reward no manifest defines, checked before the request queues.
    pub fn check_reward(&self, name: Option<&str>) -> Result<(), ApiError> {
        let name = name.unwrap_or(&self.config.reward);
        if self.manifests.get(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = self.manifests.names().collect();
        Err(ApiError::not_found(
            "reward",
            format!("unknown reward `{name}` (known: {})", known.join(", ")),
        ))
    }

    /// The reward `name`, built on first use.
    fn reward(&self, name: &str) -> Result<LoadedReward, ApiError> {
        self.check_reward(Some(name))?;
        let mut rewards = lock(&self.rewards);
        if let Some(r) = rewards.get(name) {
            return Ok(r.clone());
        }
        let model = self
            .manifests
            .build(name, &self.device, &mut lock(&self.loaded))
            .map_err(|e| ApiError::internal(format!("reward `{name}`: {e}")))?;
        let weight = budget::reward_weight(
            &self.manifests,
            &self.config.rewards,
            name,
            &self.policy_path,
            self.policy.model().config(),
        )
        .map_err(|e| ApiError::internal(format!("reward `{name}`: {e}")))?;
        rewards.insert(name.to_string(), (model.clone(), weight));
        Ok((model, weight))
    }

    /// Waits for a model slot, then runs `job` on the blocking pool. 429 when the queue is
    /// full, 503 when shutting down. Setting `cancel` (see [`CancelOnDrop`]) stops the loop at
    /// its next step. `progress` sees the loop's events (not the plain baseline's).
    pub async fn run(
        self: Arc<Self>,
        job: Job,
        compare_plain: bool,
        cancel: Arc<AtomicBool>,
        progress: Option<Progress>,
    ) -> Result<Outcome, ApiError> {
        let permit = self.acquire().await?;
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

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let unavailable = || {
            ApiError::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        };
        if self.shutting_down() {
            return Err(unavailable());
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(unavailable()),
            Err(TryAcquireError::NoPermits) => {}
        }
        let depth = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.queue_depth.set(depth as i64);
        let _leave = Defer(|| {
            let depth = self.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            self.metrics.queue_depth.set(depth as i64);
        });
        if depth > self.config.max_queue {
            return Err(ApiError::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the queue is full ({} requests waiting); retry later",
                    self.config.max_queue
                ),
            ));
        }
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable())
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
            policy: &self.policy,
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

/// A request's cancel flag: set when the client is seen to be gone (see [`disconnect`]), and
/// when this guard is dropped. It is held by whatever stops existing when the client goes away:
/// the handler's future, or a streaming response's body (dropped when a keep-alive write fails).
pub struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    _watch: Option<disconnect::Watch>,
}

impl CancelOnDrop {
    pub fn new(req: &actix_web::HttpRequest) -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let peer = req.conn_data::<disconnect::Peer>().cloned();
        Self {
            _watch: disconnect::watch(peer, flag.clone()),
            flag,
        }
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
pub fn start(state: AppState) -> std::io::Result<Started> {
    let state = Arc::new(state);
    let data = web::Data::from(state.clone());
    let limit = state.config.max_body_bytes;
    let server = HttpServer::new(move || {
        let json = web::JsonConfig::default()
            .limit(limit)
            .content_type_required(false)
            .error_handler(|err, _req| ApiError::from_json(&err).into());
        App::new()
            .app_data(data.clone())
            .app_data(json)
            .configure(routes::configure)
    });
    let mut server = server.on_connect(disconnect::remember);
    if let Some(workers) = state.config.workers {
        server = server.workers(workers);
    }
    let server = server.bind((state.config.host.as_str(), state.config.port))?;
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
