//! The handlers: `/optimize`, `/ab`, `/health`, `/metrics`, and the OpenAI-compatible routes
//! (see [`super::openai`]).
//!
//! Bodies are taken as JSON values and then deserialized with `serde_path_to_error`, so a wrong
//! type is reported with the field's path; malformed JSON and oversize bodies are turned into
//! the error shape by the `JsonConfig` error handler (see [`super::start`]).

use super::ab::{self, Arm, Sample};
use super::api::{self, OptimizeResponse};
use super::error::ApiError;
use super::{openai, AppState, CancelOnDrop, Outcome};
use crate::strategy::Strategy;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

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
        .default_service(web::to(not_found));
}

/// A JSON body as `T`, naming the field at fault when a type is wrong.
pub fn parse<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(ApiError::from_serde)
}

async fn optimize(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let body: api::OptimizeBody = parse(body.into_inner())?;
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
    let state: Arc<AppState> = state.into_inner();
    let cancel = CancelOnDrop::new();
    let result = state
        .clone()
        .run(job, body.compare_plain, cancel.flag())
        .await;
    record(&state, strategy, arm, budget, &result, arrived, true);
    let outcome = result?;
    Ok(HttpResponse::Ok().json(OptimizeResponse {
        trace: outcome.trace,
        arm,
        plain: outcome.plain,
    }))
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
    let text = state.metrics.render().map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

async fn ab_summary(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.ab.summary(state.config.ab_plain_fraction))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
