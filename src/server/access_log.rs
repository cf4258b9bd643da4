//! One log line per request (`tracing`, target `hone::access`): method, route, status,
//! milliseconds, and for model runs the arm and the compute spent. Never the prompt, the path
//! of an unknown route, or a header: the log must be safe to keep.
//!
//! The middleware logs every request when its response starts. A model run logs its own line
//! instead, when it ends ([`super::record::Record`]): a stream's response starts long before
//! its outcome is known, and a client that leaves ends a request without any response.

use super::ab::Arm;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use std::time::Instant;

/// Set in a request's extensions when a [`super::record::Record`] logs it.
pub struct Logged;

/// Logs one request. `route` is a route pattern of this server, never a client's raw path.
pub fn line(
    method: &str,
    route: &str,
    status: u16,
    started: Instant,
    arm: Option<Arm>,
    compute: Option<u64>,
) {
    let ms = started.elapsed().as_millis() as u64;
    let arm = arm.map(Arm::name);
    // Health checks and scrapes come every few seconds; they would drown the rest.
    if route == "/health" || route == "/metrics" {
        tracing::debug!(target: "hone::access", method, route, status, ms, "request");
    } else {
        tracing::info!(target: "hone::access", method, route, status, ms, arm, compute, "request");
    }
}

/// The middleware: logs each request that no [`super::record::Record`] logs.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let res = next.call(req).await?;
    if !res.request().extensions().contains::<Logged>() {
        let route = res.request().match_pattern();
        let route = route.as_deref().unwrap_or("(no route)");
        line(&method, route, res.status().as_u16(), started, None, None);
    }
    Ok(res)
}
