//! The OpenAPI description of the routes, served at `GET /openapi.json`.
//!
//! It is generated, so that it cannot drift from what the server reads and writes: each
//! handler's `#[utoipa::path]` gives its method, path and responses, and the request and
//! response types derive their schemas (`utoipa::ToSchema`, which follows their serde
//! attributes). The doc comments of the handlers, types and fields are the descriptions: a
//! handler's first line is the operation's summary.
//!
//! The error answers every route shares are the reusable responses below, each a description
//! around the one error body ([`ErrorBody`]).

use super::error::{ApiError, ErrorBody};
use super::{completions, feedback, openai, routes};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::{Ref, RefOr, Response};
use utoipa::{IntoResponses, OpenApi, ToResponse};

/// The document's own description: what holds for every route.
const DESCRIPTION: &str = "Test-time compute scaling service: TPO and best-of-N under a \
    per-query compute budget.\n\n\
    Every error is answered with the `ErrorBody` shape. POST bodies must be sent as \
    `Content-Type: application/json` (415 otherwise). A path no route has answers 404; a route \
    called with another method answers 405 (`method_not_allowed`) with an `Allow` header \
    naming the one it answers. When the server has API keys, every route but /health and \
    /metrics needs `Authorization: Bearer <key>` (401 otherwise). With a rate limit \
    (`--rate-limit`), /optimize and the completion routes are limited per API key and per \
    `user`: over it, 429 with `type` `rate_limited` and `Retry-After`.\n\n\
    Every answer of /optimize and /v1/chat/completions has an `id`; `POST /feedback` records \
    the product's outcome for it, and `GET /ab` compares the arms by that outcome beside the \
    reward.";

/// Every route the server registers (`routes::configure`), with the schemas and responses they
/// name.
#[derive(OpenApi)]
#[openapi(
    info(description = DESCRIPTION),
    paths(
        routes::optimize,
        openai::chat_completions,
        completions::completions,
        openai::models,
        routes::rewards,
        routes::health,
        routes::metrics,
        routes::ab_summary,
        feedback::post,
        routes::openapi,
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            NotFound,
            Timeout,
            TooLarge,
            UnsupportedMediaType,
            Invalid,
            TooManyRequests,
            Internal,
            Upstream,
            Unavailable,
        )
    ),
    tags(
        (name = "hone", description = "Optimization, its A/B comparison and feedback."),
        (name = "openai", description = "OpenAI-compatible routes."),
        (name = "service", description = "Health, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built on first use and kept.
pub fn json() -> Result<&'static str, ApiError> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(ApiError::internal)
}

/// The error answers of the routes that run the model (/optimize and the completion routes),
/// each a reference to the shared response below: `responses(..., doc::ModelErrors)`.
pub struct ModelErrors;

impl IntoResponses for ModelErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            (400, BadRequest::response().0),
            (401, Unauthorized::response().0),
            (404, NotFound::response().0),
            (408, Timeout::response().0),
            (413, TooLarge::response().0),
            (415, UnsupportedMediaType::response().0),
            (422, Invalid::response().0),
            (429, TooManyRequests::response().0),
            (500, Internal::response().0),
            (502, Upstream::response().0),
            (503, Unavailable::response().0),
        ]
        .into_iter()
        .map(|(status, name)| {
            (
                status.to_string(),
                RefOr::Ref(Ref::from_response_name(name)),
            )
        })
        .collect()
    }
}

/// Malformed JSON, a field of the wrong type or an unknown field (`invalid_request_error`;
/// `param` names the field when there is one).
#[derive(ToResponse)]
pub struct BadRequest(pub ErrorBody);

/// The server has API keys and the request carries none of them as
/// `Authorization: Bearer <key>` (`authentication_error`).
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
pub struct Unauthorized(pub ErrorBody);

/// An unknown reward or model (`not_found_error`; `param` names the field).
#[derive(ToResponse)]
pub struct NotFound(pub ErrorBody);

/// The body did not arrive within the server's request timeout (`request_timeout`).
#[derive(ToResponse)]
pub struct Timeout(pub ErrorBody);

/// The body is over the size limit (`request_too_large`).
#[derive(ToResponse)]
pub struct TooLarge(pub ErrorBody);

/// The body was not sent as `Content-Type: application/json` (`unsupported_media_type`).
#[derive(ToResponse)]
pub struct UnsupportedMediaType(pub ErrorBody);

/// Values that make no sense: empty messages, a negative budget, n = 0, a prompt too long for
/// the model, a budget too small to answer (`validation_error`; `param` names the field).
#[derive(ToResponse)]
pub struct Invalid(pub ErrorBody);

/// Too many requests waiting (`queue_full`), or the API key or `user` is over the server's
/// rate limit (`rate_limited`; the message names the limit, `param` is `user` for the per-user
/// one).
#[derive(ToResponse)]
#[response(headers((
    "Retry-After" = u64,
    description = "Seconds to wait: for a rate limit, until a request will be let through."
)))]
pub struct TooManyRequests(pub ErrorBody);

/// The server's fault (`internal_error`); the details are in the server's log, not in the
/// message.
#[derive(ToResponse)]
pub struct Internal(pub ErrorBody);

/// A remote service failed: a remote reward, or the server behind a remote policy
/// (`upstream_error`).
#[derive(ToResponse)]
pub struct Upstream(pub ErrorBody);

/// The server is shutting down, or the named reward's files are missing (`unavailable`;
/// `param` is `reward`).
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait.")))]
pub struct Unavailable(pub ErrorBody);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::api::{self, Limits, Options};
    use crate::strategy::Strategy;
    use policies::{Message, Role};
    use serde_json::{json, Value};
    use std::time::Instant;

    fn document() -> Value {
        serde_json::from_str(json().unwrap()).unwrap()
    }

    /// Every `$ref` in `value`, recursively.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let target = r
                .strip_prefix("#/")
                .map(|path| path.split('/').fold(&doc, |v, key| &v[key]));
            assert!(target.is_some_and(|t| t.is_object()), "{r} names nothing");
        }
    }

    #[test]
    fn operations_have_their_own_ids() {
        let doc = document();
        let mut ids = Vec::new();
        for (path, operations) in doc["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                let id = operation["operationId"].as_str();
                assert!(id.is_some(), "{method} {path}");
                ids.push(id.unwrap_or_default().to_string());
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "{ids:?}");
    }

    /// `/optimize` takes the options as fields of its own: they are described alike.
    #[test]
    fn optimize_bodies_repeat_the_options() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let options = schemas["Options"]["properties"].as_object().unwrap();
        let body = &schemas["OptimizeBody"]["properties"];
        for (name, schema) in options {
            if name == "strategy" {
                // The default differs: `tpo` on /optimize, the model's prefix on chat.
                assert_eq!(undescribed(&body[name]), undescribed(schema), "{name}");
                continue;
            }
            assert_eq!(&body[name], schema, "{name}");
        }
    }

    /// `schema` without its descriptions.
    fn undescribed(schema: &Value) -> Value {
        match schema {
            Value::Object(map) => map
                .iter()
                .filter(|(key, _)| *key != "description")
                .map(|(key, v)| (key.clone(), undescribed(v)))
                .collect(),
            Value::Array(items) => items.iter().map(undescribed).collect(),
            other => other.clone(),
        }
    }

    /// The bounds the schemas give are those the server checks: the documented maximum of each
    /// integer option is accepted, one more is refused.
    #[test]
    fn documented_bounds_are_the_checked_ones() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let check = |options: Value| {
            let options: Options = serde_json::from_value(options).unwrap();
            let messages = vec![Message::new(Role::User, "hi")];
            api::build(
                messages,
                &options,
                Strategy::Tpo,
                Limits::default(),
                Instant::now(),
            )
        };
        let one = |field: &str, value: i64| {
            Value::Object([(field.to_string(), json!(value))].into_iter().collect())
        };
        for field in ["n", "rounds", "max_tokens"] {
            let max = schemas["Options"]["properties"][field]["maximum"]
                .as_i64()
                .unwrap_or_else(|| panic!("{field} has no maximum"));
            assert!(check(one(field, max)).is_ok(), "{field}");
            let err = check(one(field, max + 1)).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field));
        }
        let budget = &schemas["Budget"]["properties"];
        for field in ["compute", "deadline_ms"] {
            let max = budget[field]["maximum"]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} has no maximum")) as i64;
            assert!(check(json!({"budget": one(field, max)})).is_ok(), "{field}");
            let err = check(json!({"budget": one(field, max + 1)})).unwrap_err();
            assert_eq!(err.param, Some(format!("budget.{field}")));
        }
    }
}
