//! Answer ids and `POST /feedback`: the product's own outcome for an answer, so that the A/B
//! comparison does not rest on the reward alone.
//!
//! The reward that chose the optimized answer also scores it, so its uplift is circular: a
//! judge that prefers the wrong answers reports gains that users never see. Feedback (a user's
//! thumbs, a score from an offline grader) is a measure the loop did not optimize; `/ab`
//! reports the uplift by it beside the reward's.
//!
//! Every answer gets an id of 128 random bits (from the thread's CSPRNG, seeded by the OS):
//! `ans-<32 hex>` for `/optimize`, `chatcmpl-<32 hex>` for chat completions. An id is not a
//! secret, but nobody can feed back on an answer they were not given. The server remembers
//! the last [`REMEMBERED`] answers in a ring ([`Answers`]): their arm, reward scale and
//! feedback; older ids are forgotten (404), and the feedback on them leaves `/ab` with them.

use super::ab::{Arm, Outcomes};
use super::error::{ApiError, ErrorBody};
use super::openapi as doc;
use super::record::Route;
use super::routes::parse;
use super::{body, lock, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use utoipa::ToSchema;

/// How many answers the server remembers for feedback. Each costs about 110 bytes (a 64-byte
/// slot in the ring and its entry in the id index, at the index's load factor), so a full
/// ring holds about 11 MB, whatever the traffic.
pub const REMEMBERED: usize = 100_000;

/// Scores beyond this are refused (422): outcomes are ratings, rates or amounts, and squares of
/// numbers this size still sum without overflow when the interval is computed.
const MAX_SCORE: f64 = 1e12;

/// A new answer id: 128 random bits.
pub fn new_id() -> u128 {
    rand::random()
}

/// The id as the route's response shows it.
pub fn show(route: Route, id: u128) -> String {
    format!("{}{id:032x}", prefix(route))
}

fn prefix(route: Route) -> &'static str {
    match route {
        Route::Optimize => "ans-",
        Route::ChatCompletions => "chatcmpl-",
    }
}

/// The route and bits of a shown id; `None` for anything this server never issued.
fn read(id: &str) -> Option<(Route, u128)> {
    [Route::Optimize, Route::ChatCompletions]
        .into_iter()
        .find_map(|route| {
            let hex = id.strip_prefix(prefix(route))?;
            // `from_str_radix` alone would take a sign or fewer digits.
            let exact = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            exact
                .then(|| u128::from_str_radix(hex, 16).ok())
                .flatten()
                .map(|bits| (route, bits))
        })
}

/// One remembered answer.
#[derive(Debug, Clone)]
struct Slot {
    id: u128,
    route: Route,
    arm: Arm,
    /// The reward scale it was scored on ([`super::ab::scale`]), shared between answers.
    scale: Arc<str>,
    outcome: Option<f64>,
}

/// The last [`REMEMBERED`] answers: a ring of slots, the oldest overwritten first, and an
/// index from id to slot.
pub struct Answers {
    inner: Mutex<Ring>,
}

struct Ring {
    capacity: usize,
    slots: Vec<Slot>,
    /// The slot the next answer takes once the ring is full.
    next: usize,
    index: HashMap<u128, usize>,
    /// Scale names, interned: there are few (the reward manifests, with and without
    /// constraints), and answers are many.
    scales: HashSet<Arc<str>>,
}

/// What feedback was recorded on.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub arm: Arm,
    pub scale: String,
    /// Whether it replaced earlier feedback on the same answer.
    pub replaced: bool,
}

impl Default for Answers {
    fn default() -> Self {
        Self::with_capacity(REMEMBERED)
    }
}

impl Answers {
    /// A ring of `capacity` answers (at least one). Slots are allocated as answers come.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Ring {
                capacity: capacity.max(1),
                slots: Vec::new(),
                next: 0,
                index: HashMap::new(),
                scales: HashSet::new(),
            }),
        }
    }

    /// Remembers an answer, forgetting the oldest when the ring is full.
    pub fn remember(&self, route: Route, id: u128, arm: Arm, scale: &str) {
        let mut ring = lock(&self.inner);
        let scale = match ring.scales.get(scale) {
            Some(s) => s.clone(),
            None => {
                let s: Arc<str> = Arc::from(scale);
                ring.scales.insert(s.clone());
                s
            }
        };
        let slot = Slot {
            id,
            route,
            arm,
            scale,
            outcome: None,
        };
        let at = if ring.slots.len() < ring.capacity {
            // Doubling, but never past the ring's size: the memory stated above is the bound.
            let len = ring.slots.len();
            if len == ring.slots.capacity() {
                let more = len.max(16).min(ring.capacity - len);
                ring.slots.reserve_exact(more);
            }
            ring.slots.push(slot);
            ring.slots.len() - 1
        } else {
            let at = ring.next;
            ring.next = (at + 1) % ring.capacity;
            let old = std::mem::replace(&mut ring.slots[at], slot);
            // Unless the id was issued twice (128 random bits: never in practice), its entry
            // points here.
            if ring.index.get(&old.id) == Some(&at) {
                ring.index.remove(&old.id);
            }
            at
        };
        ring.index.insert(id, at);
    }

    /// Records `outcome` for the answer `id` (as shown), replacing earlier feedback on it;
    /// `None` when the id is unknown or forgotten.
    pub fn feedback(&self, id: &str, outcome: f64) -> Option<Recorded> {
        let (route, bits) = read(id)?;
        let mut ring = lock(&self.inner);
        let at = *ring.index.get(&bits)?;
        let slot = ring.slots.get_mut(at)?;
        // The bits of a chat id under the /optimize prefix are not that answer's id.
        if slot.route != route || slot.id != bits {
            return None;
        }
        let replaced = slot.outcome.replace(outcome).is_some();
        Some(Recorded {
            arm: slot.arm,
            scale: slot.scale.to_string(),
            replaced,
        })
    }

    /// The outcomes of remembered answers with feedback, of `/optimize` and of chat, per scale
    /// and arm. One pass over the ring under the lock, no sorting; the statistics are computed
    /// by the caller after it is released.
    pub fn outcomes(&self) -> (Outcomes, Outcomes) {
        let (mut optimize, mut chat) = (Outcomes::new(), Outcomes::new());
        let ring = lock(&self.inner);
        for slot in &ring.slots {
            let Some(outcome) = slot.outcome else {
                continue;
            };
            let map = match slot.route {
                Route::Optimize => &mut optimize,
                Route::ChatCompletions => &mut chat,
            };
            if !map.contains_key(&*slot.scale) {
                map.insert(slot.scale.to_string(), Default::default());
            }
            if let Some(arms) = map.get_mut(&*slot.scale) {
                arms[slot.arm as usize].push(outcome);
            }
        }
        (optimize, chat)
    }
}

/// The body of `POST /feedback`: the answer's `id` and exactly one of `score` and `thumbs`.
/// Unknown fields are refused (400).
// Fields are optional here so that a missing one is a 422 naming it, not serde's unnamed 400.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    /// An answer's `id`: `ans-` or `chatcmpl-` and 32 hex digits.
    #[schema(required, nullable = false)]
    id: Option<String>,
    /// The outcome as a number: a rating, a rate, an amount.
    #[schema(minimum = -1e12, maximum = 1e12)]
    score: Option<f64>,
    /// `up` is an outcome of 1, `down` of 0.
    #[schema(value_type = Option<Thumbs>)]
    thumbs: Option<String>,
}

/// A thumbs up or down; any other value is a 422 naming `thumbs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Thumbs {
    Up,
    Down,
}

/// What `POST /feedback` recorded.
#[derive(Debug, Serialize, ToSchema)]
struct FeedbackRecorded {
    /// The answer's id, as sent.
    id: String,
    /// The arm that gave the answer.
    arm: Arm,
    /// The reward scale the answer was scored on, as `GET /ab` names it.
    reward: String,
    /// The outcome recorded: the score, or 1 for thumbs up and 0 for down.
    outcome: f64,
    /// Whether it replaced earlier feedback on the same answer.
    replaced: bool,
}

/// The outcome the body gives: the score, or thumbs up as 1 and down as 0.
fn outcome(body: &FeedbackBody) -> Result<f64, ApiError> {
    match (body.score, body.thumbs.as_deref()) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "thumbs",
            "send either `score` or `thumbs`, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "score",
            "feedback needs a `score` (a number) or `thumbs` (\"up\" or \"down\")",
        )),
        (Some(score), None) if !(score.is_finite() && score.abs() <= MAX_SCORE) => {
            Err(ApiError::invalid(
                "score",
                format!("score must be a number between -{MAX_SCORE:e} and {MAX_SCORE:e}"),
            ))
        }
        (Some(score), None) => Ok(score),
        (None, Some(thumbs)) => {
            let read: Result<Thumbs, serde::de::value::Error> =
                Thumbs::deserialize(thumbs.into_deserializer());
            match read {
                Ok(Thumbs::Up) => Ok(1.0),
                Ok(Thumbs::Down) => Ok(0.0),
                Err(_) => Err(ApiError::invalid(
                    "thumbs",
                    format!("thumbs must be \"up\" or \"down\", not {thumbs:?}"),
                )),
            }
        }
    }
}

/// Record the outcome of an answer
///
/// The product's own outcome for an answer this server gave (from users or an offline grader):
/// a `score`, or `thumbs` (`up` is 1, `down` is 0). `id` is the answer's `id` (an /optimize
/// answer, its streamed `result`, or a chat completion). The server remembers the last 100000
/// answers; an older or unknown id is a 404 naming `id`. A second feedback on the same answer
/// replaces the first. /optimize answers with feedback are compared by arm in `GET /ab`
/// (`feedback_uplift`); chat answers, whose arm the client chose, are reported apart
/// (`chat_feedback`). Not counted by the rate limit.
#[utoipa::path(
    post,
    path = "/feedback",
    operation_id = "feedback",
    tag = "hone",
    request_body = FeedbackBody,
    responses(
        (status = 200, description = "Recorded: the answer's arm and reward scale, the outcome, \
            and whether it replaced earlier feedback.", body = FeedbackRecorded),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, description = "No remembered answer has this id (`not_found_error`, \
            `param` is `id`).", body = ErrorBody),
        (status = 408, response = doc::Timeout),
        (status = 413, response = doc::TooLarge),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, description = "No `id`, neither or both of `score` and `thumbs`, thumbs \
            other than up or down, a score beyond ±1e12 (`validation_error`, `param` names the \
            field).", body = ErrorBody),
    )
)]
pub async fn post(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: FeedbackBody = parse(body::json(&req, payload, state.body_limits()).await?)?;
    let Some(id) = body.id.as_deref() else {
        return Err(ApiError::invalid(
            "id",
            "feedback needs the `id` of the answer",
        ));
    };
    let outcome = outcome(&body)?;
    let recorded = state.answers.feedback(id, outcome).ok_or_else(|| {
        ApiError::not_found(
            "id",
            format!(
                "no answer with this id: unknown, or older than the last {REMEMBERED} answers \
                 this server remembers"
            ),
        )
    })?;
    state.metrics.feedback(recorded.arm);
    Ok(HttpResponse::Ok().json(FeedbackRecorded {
        id: id.to_string(),
        arm: recorded.arm,
        reward: recorded.scale,
        outcome,
        replaced: recorded.replaced,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_read_back_only_as_issued() {
        let id = new_id();
        let shown = show(Route::Optimize, id);
        assert_eq!(shown.len(), 4 + 32);
        assert_eq!(read(&shown), Some((Route::Optimize, id)));
        let chat = show(Route::ChatCompletions, 7);
        assert_eq!(chat, format!("chatcmpl-{}7", "0".repeat(31)));
        assert_eq!(read(&chat), Some((Route::ChatCompletions, 7)));
        for bad in [
            "",
            "ans-",
            "ans-123",
            "nope-00000000000000000000000000000001",
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
        // A sign, or a digit too many, is not an id.
        assert_eq!(read(&format!("ans-+{}", "0".repeat(31))), None);
        assert_eq!(read(&format!("ans-{}", "0".repeat(33))), None);
        // Two ids are not the same id.
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn feedback_lands_on_its_answer_and_replaces() {
        let answers = Answers::default();
        answers.remember(Route::Optimize, 1, Arm::Plain, "check");
        answers.remember(Route::Optimize, 2, Arm::Optimized, "check");
        answers.remember(Route::ChatCompletions, 3, Arm::Optimized, "check");
        let first = answers.feedback(&show(Route::Optimize, 1), 0.0).unwrap();
        assert_eq!(
            first,
            Recorded {
                arm: Arm::Plain,
                scale: "check".into(),
                replaced: false
            }
        );
        let again = answers.feedback(&show(Route::Optimize, 1), 0.25).unwrap();
        assert!(again.replaced);
        answers.feedback(&show(Route::Optimize, 2), 1.0).unwrap();
        answers
            .feedback(&show(Route::ChatCompletions, 3), 1.0)
            .unwrap();
        // A chat answer's bits under the /optimize prefix name no answer.
        assert_eq!(answers.feedback(&show(Route::Optimize, 3), 1.0), None);
        assert_eq!(answers.feedback(&show(Route::Optimize, 9), 1.0), None);
        let (optimize, chat) = answers.outcomes();
        assert_eq!(optimize["check"], [vec![1.0], vec![0.25]]);
        assert_eq!(chat["check"], [vec![1.0], vec![]]);
    }

    #[test]
    fn the_oldest_answers_are_forgotten() {
        let answers = Answers::with_capacity(2);
        for id in 1..=3 {
            answers.remember(Route::Optimize, id, Arm::Optimized, "check");
        }
        assert_eq!(answers.feedback(&show(Route::Optimize, 1), 1.0), None);
        assert!(answers.feedback(&show(Route::Optimize, 2), 1.0).is_some());
        assert!(answers.feedback(&show(Route::Optimize, 3), 0.0).is_some());
        // The fourth takes the slot of the second, and its feedback goes with it.
        answers.remember(Route::Optimize, 4, Arm::Optimized, "check");
        assert_eq!(answers.feedback(&show(Route::Optimize, 2), 1.0), None);
        let (optimize, _) = answers.outcomes();
        assert_eq!(optimize["check"][Arm::Optimized as usize], [0.0]);
        let ring = lock(&answers.inner);
        assert_eq!((ring.index.len(), ring.slots.capacity()), (2, 2));
    }

    #[test]
    fn a_slot_is_as_small_as_documented() {
        // REMEMBERED's doc counts 64 bytes a slot.
        assert!(std::mem::size_of::<Slot>() <= 64);
    }

    #[test]
    fn bodies_give_one_outcome() {
        let body = |v: serde_json::Value| serde_json::from_value::<FeedbackBody>(v).unwrap();
        let param = |v: serde_json::Value| outcome(&body(v)).unwrap_err().param;
        assert_eq!(outcome(&body(json!({"thumbs": "up"}))), Ok(1.0));
        assert_eq!(outcome(&body(json!({"thumbs": "down"}))), Ok(0.0));
        assert_eq!(outcome(&body(json!({"score": 3.5}))), Ok(3.5));
        assert_eq!(
            param(json!({"thumbs": "sideways"})).as_deref(),
            Some("thumbs")
        );
        assert_eq!(
            param(json!({"score": 1, "thumbs": "up"})).as_deref(),
            Some("thumbs")
        );
        assert_eq!(param(json!({})).as_deref(), Some("score"));
        assert_eq!(param(json!({"score": 1e13})).as_deref(), Some("score"));
    }
}
