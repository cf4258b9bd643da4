//! The handlers: `/optimize`, `/rewards`, `/ab`, `/health`, `/metrics`, `/openapi.json`, the
//! OpenAI-compatible routes (see [`super::openai`]) and `/feedback` ([`super::feedback`]).
//!
//! Bodies are read as JSON values ([`super::body`]: content type, size and time checked) and
//! then deserialized with `serde_path_to_error`, so a wrong type is reported with the field's
//! path. Each route answers one method; the others get 405.

use super::ab::{self, Arm};
use super::api::{self, Job, OptimizeResponse};
use super::error::ApiError;
use super::queue::Ticket;
use super::record::{Record, Route};
use super::{body, completions, fallback, feedback, openai, AppState, CancelOnDrop, Progress};
use crate::strategy::{Event, Strategy};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/optimize", "POST", web::post().to(optimize)))
        .service(only(
            "/v1/chat/completions",
            "POST",
            web::post().to(openai::chat_completions),
        ))
        .service(only(
            "/v1/completions",
            "POST",
            web::post().to(completions::completions),
        ))
        .service(only("/v1/models", "GET", web::get().to(openai::models)))
        .service(only("/rewards", "GET", web::get().to(rewards)))
        .service(only("/health", "GET", web::get().to(health)))
        .service(only("/metrics", "GET", web::get().to(metrics)))
        .service(only("/ab", "GET", web::get().to(ab_summary)))
        .service(only("/feedback", "POST", web::post().to(feedback::post)))
        .service(only("/openapi.json", "GET", web::get().to(openapi)))
        .default_service(web::to(fallback::not_found));
}

/// A route answering one method; the others get 405 with `Allow: allow`.
fn only(path: &str, allow: &'static str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move |req: HttpRequest| async move {
            fallback::method_not_allowed(&req, allow)
        }))
}

/// A JSON body as `T`, naming the field at fault when a type is wrong.
pub fn parse<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(ApiError::from_serde)
}

async fn optimize(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let body: api::OptimizeBody = parse(body::json(&req, payload, state.body_limits()).await?)?;
    state.check_rate(&req, body.user.as_deref())?;
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
    state.check_prompt(&job)?;
    let arm = match job.strategy {
        Strategy::Plain => Arm::Plain,
        _ => ab::assign(&key, state.config.ab_plain_fraction),
    };
    if arm == Arm::Plain {
        job.strategy = Strategy::Plain;
    }
    let constraints = job.checks.as_ref().map(api::Checks::applied);
    let state: Arc<AppState> = state.into_inner();
    let record = Record::new(&req, state.clone(), Route::Optimize, &job, arm);
    let ticket = match state.admit(&job, body.stream) {
        Ok(ticket) => ticket,
        Err(e) => return Err(record.fail(e)),
    };
    // Dropped with this handler when the client goes away: the loop stops at its next step.
    let cancel = CancelOnDrop::new();
    if body.stream {
        return Ok(optimize_stream(
            state,
            (job, ticket),
            body.compare_plain,
            record,
            cancel,
        ));
    }
    let id = record.answer_id();
    let result = state
        .clone()
        .run(ticket, job, body.compare_plain, cancel.flag(), None)
        .await;
    record.finish(&result);
    let outcome = result?;
    Ok(HttpResponse::Ok().json(OptimizeResponse {
        id,
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
    (job, ticket): (Job, Ticket),
    compare_plain: bool,
    record: Record,
    cancel: CancelOnDrop,
) -> HttpResponse {
    let arm = ab::Arm::of(job.strategy);
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
    let id = record.answer_id();
    let task = actix_web::rt::spawn(async move {
        let result = state
            .run(ticket, job, compare_plain, flag, Some(progress))
            .await;
        record.finish(&result);
        let text = match result {
            Ok(outcome) => match serde_json::to_value(OptimizeResponse {
                id,
                trace: outcome.trace,
                arm,
                plain: outcome.plain,
                constraints,
            }) {
                Ok(body) => sse_event("result", &body),
                Err(e) => sse_event("error", &ApiError::internal(e).body()),
            },
            Err(e) => sse_event("error", &e.body()),
        };
        let _ = tx.send(text);
    });
    openai::sse(rx, cancel, task)
}

/// One server-sent event.
fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
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

/// `GET /rewards`: the reward manifests a request may name in `reward`.
async fn rewards(state: web::Data<AppState>) -> HttpResponse {
    let rewards: Vec<Value> = state
        .reward_list()
        .into_iter()
        .map(|(name, kind, available)| json!({"name": name, "kind": kind, "available": available}))
        .collect();
    HttpResponse::Ok().json(json!({"default": state.config.reward, "rewards": rewards}))
}

async fn ab_summary(state: web::Data<AppState>) -> HttpResponse {
    let (optimize, chat) = state.answers.outcomes();
    HttpResponse::Ok().json(
        state
            .ab
            .summary(state.config.ab_plain_fraction, optimize, chat),
    )
}

/// The hand-written OpenAPI 3.0 description of these routes.
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("openapi.json"))
}
