//! The one error shape every endpoint answers with:
//! `{"error": {"type": "...", "message": "...", "param": "field" | null}}`.
//!
//! Each status has one `type`, so clients can branch on it without parsing the message.

use crate::strategy::StrategyError;
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use policies::PolicyError;
use reward_models::RewardError;
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    param: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
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

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The `type` of the error body, one per status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request_error",
            404 => "not_found_error",
            413 => "request_too_large",
            422 => "validation_error",
            429 => "queue_full",
            499 => "cancelled",
            502 => "upstream_error",
            503 => "unavailable",
            _ => "internal_error",
        }
    }

    /// The JSON body: `{"error": {"type", "message", "param"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!(Body {
            error: Inner {
                kind: self.kind(),
                message: &self.message,
                param: self.param.as_deref(),
            },
        })
    }

    /// Turns the JSON extractor's failures into this shape: 413 for an oversize body, 400 for
    /// the rest (malformed JSON and, through [`from_serde`], wrong types).
    pub fn from_json(err: &JsonPayloadError) -> Self {
        match err {
            JsonPayloadError::Overflow { limit }
            | JsonPayloadError::OverflowKnownLength { limit, .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {limit} bytes"),
            ),
            JsonPayloadError::Deserialize(e) => {
                Self::bad_request(format!("the request body is not valid JSON: {e}"))
            }
            e => Self::bad_request(format!("cannot read the request body: {e}")),
        }
    }

    /// A body that is JSON but not the expected shape, naming the field at fault.
    pub fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path.is_empty() || path == "." {
            return Self::bad_request(inner.to_string());
        }
        Self::bad_request(format!("field `{path}`: {inner}")).with_param(path)
    }
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
        HttpResponse::build(self.status).json(self.body())
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
    }

    #[test]
    fn statuses_have_their_types() {
        assert_eq!(ApiError::invalid("x", "y").kind(), "validation_error");
        assert_eq!(ApiError::not_found("x", "y").kind(), "not_found_error");
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
    }
}
