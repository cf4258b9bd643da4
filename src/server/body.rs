//! Reading a POST route's JSON body, with the checks a hostile client calls for:
//!
//! - `Content-Type` must be JSON (415 otherwise). A browser lets any web page send a "simple"
//!   POST (`text/plain`, a form) to localhost without asking the server first; requiring JSON
//!   makes it ask (a CORS preflight, which this server does not grant).
//! - A declared `Content-Length` over the limit is refused before anything is read (413), and
//!   a body that grows past it while read is cut off (413).
//! - The whole body must arrive within the request timeout (408): a client that declares 100
//!   bytes and sends 10 must not hold its connection for ever.
//! - It must be JSON (400).
//!
//! Errors are in the server's error shape; the field a body lacks or mistypes is checked
//! later, by [`super::routes::parse`].

use super::error::ApiError;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use serde_json::Value;
use std::time::Duration;

/// The bounds on a body, from the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// The request's body as a JSON value.
pub async fn json(
    req: &HttpRequest,
    payload: web::Payload,
    limits: Limits,
) -> Result<Value, ApiError> {
    check_content_type(req)?;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large(limits.max_bytes));
    }
    let bytes = match tokio::time::timeout(
        limits.timeout,
        payload.to_bytes_limited(limits.max_bytes),
    )
    .await
    {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    limits.timeout.as_millis()
                ),
            ))
        }
        Ok(Err(_)) => return Err(too_large(limits.max_bytes)),
        Ok(Ok(Err(e))) => {
            return Err(ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )))
        }
        Ok(Ok(Ok(bytes))) => bytes,
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::malformed(&e))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// 415 unless the body is declared as JSON: `application/json` (with any parameters, such as
/// `charset=utf-8`) or an `application/*+json` type.
fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if given.is_some_and(is_json) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "the request body must be JSON, sent with `Content-Type: application/json`",
    ))
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types_only() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("multipart/form-data; boundary=x"));
        assert!(!is_json("text/json+plain"));
        assert!(!is_json(""));
    }
}
