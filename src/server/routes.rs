//! The handlers: `/optimize`, `/ab`, `/health`, `/metrics`, `/openapi.json`, and the
//! OpenAI-compatible routes (see [`super::openai`]).
//!
//! Bodies are taken as JSON values and then deserialized with `serde_path_to_error`, so a wrong
//! type is reported with the field's path; malformed JSON and oversize bodies are turned into
//! the error shape by the `JsonConfig` error handler (see [`super::start`]).

use super::ab::{self, Arm, Sample};
use super::api::{self, Job, OptimizeResponse};
use super::error::ApiError;
use super::{openai, AppState, CancelOnDrop, Outcome, Progress};
use crate::strategy::{Event, Strategy};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/optimize", web::post().to(optimize))
        .route(
            "/v1/chat/completions",
            web::post().to(openai::chat_completions),
        )
        .route("/v1/models", web::get().to(openai::models))
        .route("/health", web::get().to(health))
        .route("/metrics", web::get().to(metrics))
        .route("/ab", web::get().to(ab_summary))
        .route("/openapi.json", web::get().to(openapi))
        .default_service(web::to(not_found));
}

/// A JSON body as `T`, naming the field at fault when a type is wrong.
pub fn parse<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(ApiError::from_serde)
}

async fn optimize(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let body: api::OptimizeBody = parse(body.into_inner())?;
    if let Some(policy) = &body.policy {
        state.check_policy("policy", policy)?;
    }
    let messages = api::conversation(&body)?;
    let key = api::ab_key(body.user.as_deref(), &messages);
    let mut job = api::build(
        messages,
        &body.options(),
        Strategy::Tpo,
        state.limits(),
        arrived,
    )?;
    state.check_reward(job.reward.as_deref())?;
    let arm = match job.strategy {
        Strategy::Plain => Arm::Plain,
        _ => ab::assign(&key, state.config.ab_plain_fraction),
    };
    if arm == Arm::Plain {
        job.strategy = Strategy::Plain;
    }
    let budget = job.compute_budget();
    let strategy = job.strategy;
    let constraints = job.checks.as_ref().map(api::Checks::applied);
    let state: Arc<AppState> = state.into_inner();
    let cancel = CancelOnDrop::new(&req);
    if body.stream {
        return Ok(optimize_stream(
            state,
            job,
            body.compare_plain,
            (arm, arrived),
            cancel,
        ));
    }
    let result = state
        .clone()
        .run(job, body.compare_plain, cancel.flag(), None)
        .await;
    record(&state, strategy, arm, budget, &result, arrived, true);
    let outcome = result?;
    Ok(HttpResponse::Ok().json(OptimizeResponse {
        trace: outcome.trace,
        arm,
        plain: outcome.plain,
        constraints,
    }))
}

/// `/optimize` with `"stream": true`: a `candidate` or `round` event per step of the loop, then
/// `result` (the body the plain call answers with) or `error`. The loop's progress callback
/// sends the events down the response's channel as they happen.
fn optimize_stream(
    state: Arc<AppState>,
    job: Job,
    compare_plain: bool,
    (arm, arrived): (Arm, Instant),
    cancel: CancelOnDrop,
) -> HttpResponse {
    let (strategy, budget) = (job.strategy, job.compute_budget());
    let constraints = job.checks.as_ref().map(api::Checks::applied);
    let flag = cancel.flag();
    let (tx, rx) = mpsc::unbounded_channel();
    let events = tx.clone();
    let progress: Progress = Box::new(move |event| {
        let _ = events.send(match event {
            Event::CandidateScored {
                round,
                index,
                score,
            } => sse_event(
                "candidate",
                &json!({"round": round, "index": index, "score": score}),
            ),
            Event::RoundDone { round, best } => {
                sse_event("round", &json!({"round": round, "best": best}))
            }
        });
    });
    actix_web::rt::spawn(async move {
        let result = state
            .clone()
            .run(job, compare_plain, flag, Some(progress))
            .await;
        record(&state, strategy, arm, budget, &result, arrived, true);
        let text = match result {
            Ok(outcome) => match serde_json::to_value(OptimizeResponse {
                trace: outcome.trace,
                arm,
                plain: outcome.plain,
                constraints,
            }) {
                Ok(body) => sse_event("result", &body),
                Err(e) => sse_event("error", &ApiError::internal(e.to_string()).body()),
            },
            Err(e) => sse_event("error", &e.body()),
        };
        let _ = tx.send(text);
    });
    openai::sse(rx, cancel)
}

/// One server-sent event.
fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Counts a finished request in the metrics and, for /optimize, in the A/B comparison.
pub fn record(
    state: &AppState,
    strategy: Strategy,
    arm: Arm,
    budget: Option<u64>,
    result: &Result<Outcome, ApiError>,
    arrived: Instant,
    in_experiment: bool,
) {
    let elapsed = arrived.elapsed();
    let status = match result {
        Ok(_) => 200,
        Err(e) => e.status.as_u16(),
    };
    state.metrics.request(strategy.name(), arm, status, elapsed);
    if let Ok(outcome) = result {
        state.metrics.trace(arm, &outcome.trace, budget);
        if in_experiment {
            state.ab.record(
                arm,
                Sample {
                    reward: outcome.trace.score,
                    compute: outcome.trace.usage.compute,
                    latency_ms: elapsed.as_secs_f64() * 1000.0,
                },
            );
        }
    }
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    let status = if state.shutting_down() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    HttpResponse::build(status).json(serde_json::json!({
        "status": if state.shutting_down() { "shutting_down" } else { "ok" },
        "model": state.model_id(),
        "reward": state.config.reward,
        "in_flight": state.metrics.in_flight.get(),
        "queue_depth": state.metrics.queue_depth.get(),
    }))
}

async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state
        .metrics
        .render(&state.learned.snapshot())
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

async fn ab_summary(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.ab.summary(state.config.ab_plain_fraction))
}

/// The hand-written OpenAPI 3.0 description of these routes.
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("openapi.json"))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
