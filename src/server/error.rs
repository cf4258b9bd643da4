//! The one error shape every endpoint answers with:
//! `{"error": {"type": "...", "message": "...", "param": "field" | null}}`.
//!
//! Each status has one `type`, so clients can branch on it without parsing the message; 429 has
//! two, `queue_full` and `rate_limited`, since a client retries the one soon and backs off from
//! the other.
//! Messages are for people: they name the field at fault in plain words, never a Rust type or
//! a path on the server (a 500 says only that the log has the details).

use crate::strategy::StrategyError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use policies::PolicyError;
use reward_models::RewardError;
use serde::Serialize;
use std::fmt;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// The body's `type` when it is not the status's own (a 429 is `queue_full` unless it is
    /// `rate_limited`: a client backs off differently from each).
    pub kind: Option<ErrorType>,
    /// Seconds for `Retry-After` when the error knows better than its status's default.
    pub retry_after: Option<u64>,
}

/// What went wrong, for a client to branch on without reading the message: one type per
/// status (400 `invalid_request_error`, 401 `authentication_error`, 404 `not_found_error`, 405
/// `method_not_allowed`, 408 `request_timeout`, 413 `request_too_large`, 415
/// `unsupported_media_type`, 422 `validation_error`, 499 `cancelled`, 502 `upstream_error`, 503
/// `unavailable`, else `internal_error`), but 429's two: `queue_full` (retry soon) and
/// `rate_limited` (back off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    AuthenticationError,
    NotFoundError,
    MethodNotAllowed,
    RequestTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
    ValidationError,
    QueueFull,
    RateLimited,
    Cancelled,
    UpstreamError,
    Unavailable,
    InternalError,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// One error, as the body tells it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// For people: names the field at fault in plain words; for a 500, only that the server's
    /// log has the details.
    pub message: String,
    /// The request field at fault (`budget.compute`, `messages[0].role`), when there is one.
    #[schema(required)]
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            kind: None,
            retry_after: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: the body is not JSON, or a field has the wrong type.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: well-formed, but the values make no sense (empty messages, negative budget...).
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message).with_param(param)
    }

    /// 404: an unknown reward or model.
    pub fn not_found(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message).with_param(param)
    }

    /// 429 for a client over its rate limit: `Retry-After` is `retry_after` seconds, when its
    /// next request will be let through.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, message);
        e.kind = Some(ErrorType::RateLimited);
        e.retry_after = Some(retry_after);
        e
    }

    /// 500. `detail` goes to the log, not to the client: it may name files on the server.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed to answer; its log has the details",
        )
    }

    /// 405 for a route that exists under other methods (`allow`, also sent as `Allow`).
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} does not answer {method}; use {allow}"),
        )
    }

    /// The `type` of the error body: one per status, but for errors that name their own.
    pub fn kind(&self) -> ErrorType {
        if let Some(kind) = self.kind {
            return kind;
        }
        match self.status.as_u16() {
            400 => ErrorType::InvalidRequestError,
            401 => ErrorType::AuthenticationError,
            404 => ErrorType::NotFoundError,
            405 => ErrorType::MethodNotAllowed,
            408 => ErrorType::RequestTimeout,
            413 => ErrorType::RequestTooLarge,
            415 => ErrorType::UnsupportedMediaType,
            422 => ErrorType::ValidationError,
            429 => ErrorType::QueueFull,
            499 => ErrorType::Cancelled,
            502 => ErrorType::UpstreamError,
            503 => ErrorType::Unavailable,
            _ => ErrorType::InternalError,
        }
    }

    /// The JSON body: `{"error": {"type", "message", "param"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!(ErrorBody {
            error: ErrorDetail {
                kind: self.kind(),
                message: self.message.clone(),
                param: self.param.clone(),
            },
        })
    }

    /// 400 for a body that is not JSON at all.
    pub fn malformed(err: &serde_json::Error) -> Self {
        Self::bad_request(format!("the request body is not valid JSON: {err}"))
    }

    /// How long a client should wait before trying again, for statuses where a retry can
    /// succeed: a full queue drains in a few requests' time; a server shutting down is
    /// usually replaced within seconds.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.retry_after.is_some() {
            return self.retry_after;
        }
        match self.status.as_u16() {
            429 => Some(5),
            503 => Some(10),
            _ => None,
        }
    }

    /// A body that is JSON but not the expected shape, naming the field at fault.
    pub fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = plain_words(&inner.to_string());
        if path.is_empty() || path == "." {
            return Self::bad_request(message);
        }
        Self::bad_request(format!("field `{path}`: {message}")).with_param(path)
    }
}

/// serde's message with the Rust types it expects named in plain words: "expected usize"
/// becomes "expected a non-negative integer", "expected struct BudgetBody" "expected an
/// object".
pub fn plain_words(message: &str) -> String {
    const TYPES: [(&str, &str); 14] = [
        ("u8", "a non-negative integer up to 255"),
        ("u16", "a non-negative integer up to 65535"),
        ("u32", "a non-negative integer up to 4294967295"),
        ("u64", "a non-negative integer"),
        ("u128", "a non-negative integer"),
        ("usize", "a non-negative integer"),
        ("i8", "an integer"),
        ("i16", "an integer"),
        ("i32", "an integer"),
        ("i64", "an integer"),
        ("i128", "an integer"),
        ("isize", "an integer"),
        ("f32", "a number"),
        ("f64", "a number"),
    ];
    let Some((head, expected)) = message.split_once("expected ") else {
        return message.to_string();
    };
    // What follows "expected" up to the end of the word: `usize`, or `struct Name`.
    let word_end = |s: &str| {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let (what, rest) = if let Some(name) = expected.strip_prefix("struct ") {
        ("an object", &name[word_end(name)..])
    } else if let Some(name) = expected.strip_prefix("enum ") {
        ("one of the documented values", &name[word_end(name)..])
    } else {
        let (word, rest) = expected.split_at(word_end(expected));
        match TYPES.iter().find(|(t, _)| *t == word) {
            Some((_, plain)) => (*plain, rest),
            None => return message.to_string(),
        }
    };
    format!("{head}expected {what}{rest}")
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs() {
            response.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        response.json(self.body())
    }
}

/// Why a loop could not answer, as an HTTP status: what the client can fix is 422, a reward
/// service that failed is 502, the rest is the server's fault.
impl From<StrategyError> for ApiError {
    fn from(e: StrategyError) -> Self {
        let message = e.to_string();
        match e {
            StrategyError::Invalid(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            StrategyError::BudgetTooSmall { .. } => Self::invalid("budget.compute", message),
            StrategyError::DeadlineBeforeAnswer => Self::invalid("budget.deadline_ms", message),
            StrategyError::NoAnswer { .. } => Self::invalid("budget", message),
            StrategyError::Prompt { .. } => Self::internal(message),
            StrategyError::Cancelled => Self::new(status(499), message),
            StrategyError::Policy(p) => match p {
                PolicyError::PromptTooLong { .. } | PolicyError::EmptyPrompt => {
                    Self::invalid("messages", message)
                }
                PolicyError::InvalidParameter { param, .. } => Self::invalid(param, message),
                PolicyError::OverBudget { .. } => Self::invalid("budget.compute", message),
                PolicyError::Template(_) => Self::invalid("messages", message),
                PolicyError::Remote(_) => Self::new(StatusCode::BAD_GATEWAY, message),
                _ => Self::internal(message),
            },
            StrategyError::Reward(r) => match r {
                RewardError::InputTooLong { .. } => Self::invalid("messages", message),
                RewardError::Remote(_) => Self::new(StatusCode::BAD_GATEWAY, message),
                _ => Self::internal(message),
            },
        }
    }
}

/// 499 (client closed the request) is not a named constant; it is only logged and counted, since
/// the client is gone.
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_type_names_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct B {
            n: u32,
        }
        let v = serde_json::json!({"n": "four"});
        let err = serde_path_to_error::deserialize::<_, B>(v).unwrap_err();
        let api = ApiError::from_serde(err);
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(api.param.as_deref(), Some("n"));
        assert!(api.message.contains("`n`"), "{}", api.message);
        assert!(!api.message.contains("u32"), "{}", api.message);
    }

    #[test]
    fn rust_types_become_plain_words() {
        assert_eq!(
            plain_words("invalid type: string \"two\", expected usize"),
            "invalid type: string \"two\", expected a non-negative integer"
        );
        assert_eq!(
            plain_words("invalid value: integer `-1`, expected u64 at line 1"),
            "invalid value: integer `-1`, expected a non-negative integer at line 1"
        );
        assert_eq!(
            plain_words("invalid type: string \"x\", expected i64"),
            "invalid type: string \"x\", expected an integer"
        );
        assert_eq!(
            plain_words("invalid type: integer `5`, expected struct BudgetBody"),
            "invalid type: integer `5`, expected an object"
        );
        assert_eq!(
            plain_words("invalid type: integer `5`, expected a string"),
            "invalid type: integer `5`, expected a string"
        );
        assert_eq!(plain_words("missing field `x`"), "missing field `x`");
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let e = ApiError::internal("reading /home/someone/models/x.gguf: not found");
        assert!(!e.message.contains('/'), "{}", e.message);
        assert_eq!(e.status.as_u16(), 500);
    }

    #[test]
    fn statuses_have_their_types() {
        assert_eq!(
            ApiError::invalid("x", "y").kind(),
            ErrorType::ValidationError
        );
        assert_eq!(
            ApiError::not_found("x", "y").kind(),
            ErrorType::NotFoundError
        );
        let budget = StrategyError::BudgetTooSmall {
            budget: 1,
            minimum: 30,
            prompt_tokens: 29,
        };
        assert_eq!(ApiError::from(budget).status.as_u16(), 422);
        assert_eq!(
            ApiError::from(StrategyError::Cancelled).status.as_u16(),
            499
        );
        let limited = ApiError::rate_limited("slow down", 12);
        assert_eq!(limited.kind(), ErrorType::RateLimited);
        assert_eq!(limited.retry_after_secs(), Some(12));
        let full = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "full");
        assert_eq!(
            (full.kind(), full.retry_after_secs()),
            (ErrorType::QueueFull, Some(5))
        );
    }
}
