//! Answers for what no handler answers, in the server's error shape: unknown routes (404), a
//! route called with the wrong method (405 with `Allow`), and any other error response that
//! comes out of the app without a JSON body (actix's own extractor or routing errors).
//!
//! What actix's HTTP/1 layer answers before the app sees a request (a malformed request line,
//! headers that do not arrive within the request timeout) cannot be shaped here: that is an
//! empty 400 or 408, and the connection is closed.

use super::error::ApiError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

/// The default service: 404 for a path no route has.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// A route's default service: 405 naming the methods it answers (`allow`, e.g. `POST`).
pub fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let mut response =
        ApiError::method_not_allowed(req.method().as_str(), req.path(), allow).error_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// The middleware: an error response without a JSON body gets one, with the same status and
/// headers. The message is the error's own for a client error, generic for a server error.
pub async fn shape_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let status = res.status();
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Ok(res.map_into_left_body());
    }
    let error = if status.is_server_error() {
        let detail = res
            .response()
            .error()
            .map_or_else(|| status.to_string(), |e| e.to_string());
        let mut e = ApiError::internal(detail);
        e.status = status;
        e
    } else {
        let message = res.response().error().map_or_else(
            || {
                status
                    .canonical_reason()
                    .unwrap_or("bad request")
                    .to_string()
            },
            |e| e.to_string(),
        );
        ApiError::new(status, message)
    };
    let (req, old) = res.into_parts();
    let mut shaped = error.error_response();
    for (name, value) in old.headers() {
        if name != CONTENT_TYPE && name != actix_web::http::header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ServiceResponse::new(req, shaped).map_into_right_body())
}
