//! Counting a model request once, however it ends: in the metrics, in the A/B comparison
//! (/optimize traffic) and in the log.
//!
//! A [`Record`] is created once a request is checked and about to queue, and held by whatever
//! runs it: the handler, or a stream's task. It is finished with the outcome; dropped
//! unfinished, the client went away (actix dropped the handler, or the stream's body), and it
//! counts as cancelled: status 499 and `hone_requests_cancelled_total`.
//!
//! The record also holds the answer's id ([`super::feedback`]): the response shows it, and an
//! answered request is remembered under it before the response leaves, so that feedback sent
//! the moment the answer arrives finds it.

use super::ab::{self, Arm, Sample};
use super::access_log::{self, Logged};
use super::api::Job;
use super::error::ApiError;
use super::{feedback, AppState, Outcome};
use crate::strategy::Strategy;
use actix_web::{HttpMessage, HttpRequest};
use std::sync::Arc;
use std::time::Instant;

/// The model routes (the values of the metrics' `route` label, see `metrics::ROUTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Optimize,
    ChatCompletions,
}

impl Route {
    pub fn path(self) -> &'static str {
        match self {
            Self::Optimize => "/optimize",
            Self::ChatCompletions => "/v1/chat/completions",
        }
    }
}

/// 499 (client closed the request) is not a named status; it is only logged and counted.
const CANCELLED: u16 = 499;

pub struct Record {
    state: Arc<AppState>,
    route: Route,
    strategy: Strategy,
    arm: Arm,
    budget: Option<u64>,
    /// The reward scale the answer is scored on (see [`ab::scale`]).
    scale: String,
    /// The answer's id: 128 random bits.
    id: u128,
    arrived: Instant,
    finished: bool,
}

impl Record {
    /// Starts the record of `job`, answered by `arm`; from now on the middleware leaves the
    /// request's log line to this record.
    pub fn new(req: &HttpRequest, state: Arc<AppState>, route: Route, job: &Job, arm: Arm) -> Self {
        req.extensions_mut().insert(Logged);
        let reward = job.reward.as_deref().unwrap_or(&state.config.reward);
        let scale = ab::scale(reward, job.checks.as_ref().map(|c| c.only));
        Self {
            strategy: job.strategy,
            budget: job.compute_budget(),
            arrived: job.arrived,
            state,
            route,
            arm,
            scale,
            id: feedback::new_id(),
            finished: false,
        }
    }

    /// The answer's id, as its response shows it.
    pub fn answer_id(&self) -> String {
        feedback::show(self.route, self.id)
    }

    /// Counts the request's outcome.
    pub fn finish(mut self, result: &Result<Outcome, ApiError>) {
        self.finished = true;
        match result {
            Ok(outcome) => self.count(200, Some(outcome)),
            Err(e) => self.count(e.status.as_u16(), None),
        }
    }

    /// Counts a request refused before it ran, and hands its error back.
    pub fn fail(self, e: ApiError) -> ApiError {
        self.finish(&Err(e.clone()));
        e
    }

    fn count(&self, status: u16, outcome: Option<&Outcome>) {
        let state = &self.state;
        let elapsed = self.arrived.elapsed();
        // The cancellation first: a scraper that sees the 499 then sees it counted as cancelled.
        if status == CANCELLED {
            state.metrics.cancelled(self.route.path());
        }
        state
            .metrics
            .request(self.strategy.name(), self.arm, status, elapsed);
        if let Some(outcome) = outcome {
            state.metrics.trace(self.arm, &outcome.trace, self.budget);
            // Chat traffic is not randomized between arms: it stays out of the comparison.
            if self.route == Route::Optimize {
                let sample = Sample {
                    reward: outcome.trace.score,
                    compute: outcome.trace.usage.compute,
                    latency_ms: elapsed.as_secs_f64() * 1000.0,
                };
                state.ab.record(&self.scale, self.arm, sample);
            }
            state
                .answers
                .remember(self.route, self.id, self.arm, &self.scale);
        }
        let compute = outcome.map(|o| o.trace.usage.compute);
        access_log::line(
            "POST",
            self.route.path(),
            status,
            self.arrived,
            Some(self.arm),
            compute,
        );
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.finished {
            self.count(CANCELLED, None);
        }
    }
}
