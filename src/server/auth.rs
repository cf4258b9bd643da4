//! API keys: when the server has any (`--api-key`, `HONE_API_KEYS`, `api_keys`), every route
//! but `/health` and `/metrics` needs `Authorization: Bearer <key>`; else 401.
//!
//! Probes and scrapers stay open: they carry no prompts and start no model work.

use super::error::ApiError;
use super::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

/// Routes anyone may call.
const OPEN: [&str; 2] = ["/health", "/metrics"];

/// The middleware: lets a request through when no key is configured, when its route is open,
/// or when it carries one of the keys.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let allowed = match req.app_data::<web::Data<AppState>>() {
        Some(state) => {
            let keys = &state.config.api_keys;
            keys.is_empty() || OPEN.contains(&req.path()) || carries_key(&req, keys)
        }
        // Never served without its state; refuse rather than guess.
        None => false,
    };
    if allowed {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let error = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "this server needs an API key: send `Authorization: Bearer <key>`",
    );
    let mut response = error.error_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Bearer"),
    );
    Ok(req.into_response(response).map_into_right_body())
}

/// Whether the request's bearer token is one of `keys`. Every key is compared, whatever the
/// outcome, each in constant time.
fn carries_key(req: &ServiceRequest, keys: &[String]) -> bool {
    let Some(token) = token(req.headers()) else {
        return false;
    };
    keys.iter().fold(false, |found, key| {
        found | same(token.as_bytes(), key.as_bytes())
    })
}

/// The bearer token a request carries, if any (the rate limit's key: see [`super::rate_limit`]).
pub fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `given` equals `key`, in a time that depends on `key`'s length only: no early exit
/// at the first differing byte, so response times do not reveal how much of a guess was right.
fn same(given: &[u8], key: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != key.len());
    for (i, k) in key.iter().enumerate() {
        diff |= k ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_keys() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secreT", b"secret"));
        assert!(!same(b"secre", b"secret"));
        assert!(!same(b"secrets", b"secret"));
        assert!(!same(b"", b"secret"));
        // A NUL-padded guess is not the key.
        assert!(!same(b"secret\0", b"secret"));
    }

    #[test]
    fn reads_bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
