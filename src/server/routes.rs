//! The handlers: `/optimize`, `/rewards`, `/ab`, `/health`, `/metrics`, `/openapi.json`, the
//! OpenAI-compatible routes (see [`super::openai`]) and `/feedback` ([`super::feedback`]).
//!
//! Bodies are read as JSON values ([`super::body`]: content type, size and time checked) and
//! then deserialized with `serde_path_to_error`, so a wrong type is reported with the field's
//! path. Each route answers one method; the others get 405.
//!
//! Each handler's `#[utoipa::path]` describes its route for the OpenAPI document
//! ([`super::openapi`]); its doc comment is the operation's summary (first line) and
//! description.

use super::ab::{self, Arm, Summary};
use super::api::{self, Job, OptimizeBody, OptimizeResponse};
use super::error::ApiError;
use super::openapi as doc;
use super::queue::Ticket;
use super::record::{Record, Route};
use super::{body, completions, fallback, feedback, openai, AppState, CancelOnDrop, Progress};
use crate::strategy::{Event, Strategy};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use utoipa::ToSchema;

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

/// Run one optimization loop
///
/// Runs TPO, `auto`, best-of-N, weighted best-of-N or plain decoding under the budget. A share
/// of users (`--ab-plain-fraction`, by `user` or else by prompt) is answered by plain decoding
/// for the A/B comparison of `GET /ab`; `arm` says which answered.
///
/// With `stream: true` the answer is `text/event-stream`: a `candidate` event per scored
/// candidate (`{round, index, score}`), a `round` event per finished round (`{round, best}`),
/// then one `result` event carrying the same body as the plain call, or an `error` event
/// carrying the error body when the run fails after the stream began. Keep-alive comments
/// (`: keep-alive`) come in between; a client that disconnects cancels the run. A full queue
/// (429), shutting down (503) and a budget below one prefill (422) are answered before the
/// stream starts.
#[utoipa::path(
    post,
    path = "/optimize",
    tag = "hone",
    request_body = OptimizeBody,
    responses(
        (status = 200, description = "The trace of the loop, or its events when streamed.",
            content(
                (OptimizeResponse = "application/json"),
                (String = "text/event-stream"),
            )),
        doc::ModelErrors,
    )
)]
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

/// The body of `GET /health`.
#[derive(Serialize, ToSchema)]
struct Health {
    status: HealthStatus,
    /// The served model's id.
    model: String,
    /// The server's default reward.
    reward: String,
    /// Requests running on the model.
    in_flight: i64,
    /// Requests waiting for a model slot.
    queue_depth: i64,
}

/// `ok`, or `shutting_down` once the server has stopped taking requests.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    Ok,
    ShuttingDown,
}

/// Liveness and load
///
/// Open to all, even when the server has API keys.
#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    responses(
        (status = 200, description = "Serving.", body = Health),
        (status = 503, description = "Shutting down (`status` is `shutting_down`).",
            body = Health),
    )
)]
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let (status, health) = if state.shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, HealthStatus::ShuttingDown)
    } else {
        (StatusCode::OK, HealthStatus::Ok)
    };
    HttpResponse::build(status).json(Health {
        status: health,
        model: state.model_id().to_string(),
        reward: state.config.reward.clone(),
        in_flight: state.metrics.in_flight.get(),
        queue_depth: state.metrics.queue_depth.get(),
    })
}

/// Prometheus metrics
///
/// Open to all, even when the server has API keys.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String,
            content_type = "text/plain"),
        (status = 500, response = doc::Internal),
    )
)]
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state
        .metrics
        .render(&state.learned.snapshot())
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

/// The body of `GET /rewards`.
#[derive(Serialize, ToSchema)]
struct Rewards {
    /// The reward of a request that names none (`--reward`).
    default: String,
    /// Every reward manifest, by name.
    rewards: Vec<RewardInfo>,
}

/// One reward manifest.
#[derive(Serialize, ToSchema)]
struct RewardInfo {
    /// What a request names in `reward`.
    name: String,
    /// The manifest's kind: `classifier`, `judge`, `verifier`, `remote`, `openai_judge` or
    /// `combined`.
    kind: String,
    /// False when the manifest names files that are not there: a request naming it gets 503.
    available: bool,
}

/// The rewards a request may name in `reward`
#[utoipa::path(
    get,
    path = "/rewards",
    tag = "hone",
    responses(
        (status = 200, description = "The server's default reward and every reward manifest.",
            body = Rewards),
        (status = 401, response = doc::Unauthorized),
    )
)]
async fn rewards(state: web::Data<AppState>) -> HttpResponse {
    let rewards = state
        .reward_list()
        .into_iter()
        .map(|(name, kind, available)| RewardInfo {
            name: name.to_string(),
            kind: kind.to_string(),
            available,
        })
        .collect();
    HttpResponse::Ok().json(Rewards {
        default: state.config.reward.clone(),
        rewards,
    })
}

/// The A/B comparison of the optimized and plain arms, per reward scale
///
/// Per reward scale (the reward's name; `NAME+constraints` when a query's own constraints were
/// added to it; `constraints` when they replaced it), per-arm summaries of /optimize requests,
/// the reward uplift, and the uplift by feedback (`POST /feedback`), which the reward that
/// chose the optimized answers did not produce. Chat completions are not randomized between
/// arms: their feedback is in `chat_feedback`, without an uplift.
#[utoipa::path(
    get,
    path = "/ab",
    tag = "hone",
    responses(
        (status = 200, description = "The comparison.", body = Summary),
        (status = 401, response = doc::Unauthorized),
    )
)]
async fn ab_summary(state: web::Data<AppState>) -> HttpResponse {
    let (optimize, chat) = state.answers.outcomes();
    HttpResponse::Ok().json(
        state
            .ab
            .summary(state.config.ab_plain_fraction, optimize, chat),
    )
}

/// This document
///
/// The OpenAPI 3.1 description of these routes, generated from the handlers and the request
/// and response types.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Value),
        (status = 401, response = doc::Unauthorized),
    )
)]
async fn openapi() -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(doc::json()?))
}
