//! OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models`.
//!
//! A chat completion is plain decoding, so existing clients get what they expect. A client opts
//! into test-time compute with a strategy prefix on the model name (`tpo/<model>`, `auto/<model>`,
//! `best_of_n/<model>`, `weighted_best_of_n/<model>`) or an extra `hone` object carrying the
//! /optimize options. The common OpenAI fields are accepted; `temperature`, `top_p`,
//! `max_tokens` and `seed` are honoured, `user` counts toward the per-user rate limit, the rest
//! (`stop`, penalties...) are ignored, as are fields this server does not know. The
//! completion's `id` is the answer's id for `POST /feedback`.

use super::ab::Arm;
use super::api::{self, Options};
use super::error::ApiError;
use super::openapi as doc;
use super::record::{Record, Route};
use super::routes::parse;
use super::{body, AppState, CancelOnDrop, Outcome};
use crate::budget::Usage;
use crate::strategy::{Stopped, Strategy};
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use policies::{Message, Role, TextSink};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// The body of `POST /v1/chat/completions`. Unknown fields (`stop`, penalties...) are ignored,
/// as OpenAI clients send them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatBody {
    /// The served model (or `default`), optionally prefixed with a strategy: `tpo/`, `auto/`,
    /// `best_of_n/`, `weighted_best_of_n/` (default: the served model, plain decoding).
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// 0 is greedy; a positive temperature must be at least 0.001.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[schema(minimum = 1, maximum = 8192)]
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`; wins over it.
    #[schema(minimum = 1, maximum = 8192)]
    pub max_completion_tokens: Option<usize>,
    pub seed: Option<u64>,
    /// Answer with OpenAI's `chat.completion.chunk` events.
    pub stream: Option<bool>,
    /// Completions per request; only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// Who is asking: the key of the per-user rate limit (not of the A/B split, which chat
    /// traffic is not part of).
    pub user: Option<String>,
    /// hone's options: strategy, budget, n (candidates per round), rounds, reward... Its
    /// `temperature`, `top_p`, `max_tokens` and `seed` win over the OpenAI fields.
    pub hone: Option<Options>,
}

/// One message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer` (OpenAI's newer name for `system`), `user` or `assistant`; another
    /// role is a 422 naming it.
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or a list of parts of which the text ones are kept (joined by
/// newlines).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    /// `text` for a part that is kept; parts of other types (`image_url`...) are skipped.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// The conversation in the policy's terms. `developer` is OpenAI's newer name for `system`.
fn messages(body: &[ChatMessage]) -> Result<Vec<Message>, ApiError> {
    body.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("unsupported role `{other}` (supported: system, developer, user, assistant)"),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// The strategy a model name asks for, and the model name without the prefix.
pub fn split_model(name: &str) -> (Option<Strategy>, &str) {
    match name.split_once('/') {
        Some((prefix, rest)) => match Strategy::parse(prefix) {
            Some(s) => (Some(s), rest),
            None => (None, name),
        },
        None => (None, name),
    }
}

/// OpenAI-compatible chat completion
///
/// Plain decoding unless the model name has a strategy prefix (`tpo/`, `auto/`, `best_of_n/`,
/// `weighted_best_of_n/`) or the body's `hone` object names a strategy. Unknown fields are
/// ignored. With `stream: true` the answer is OpenAI-style `data:` chunks ending with
/// `data: [DONE]`: plain decoding token by token, a loop's answer as one chunk when it ends; a
/// full queue (429), shutting down (503) and a budget below one prefill (422) are answered
/// before the stream starts. The completion's `id` is the answer's id for `POST /feedback`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatBody,
    responses(
        (status = 200, description = "A `chat.completion` object, or `chat.completion.chunk` \
            events when streamed.",
            content(
                (ChatCompletion = "application/json"),
                (String = "text/event-stream"),
            )),
        doc::ModelErrors,
    )
)]
pub async fn chat_completions(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let body: ChatBody = parse(body::json(&req, payload, state.body_limits()).await?)?;
    state.check_rate(&req, body.user.as_deref())?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let requested = body
        .model
        .clone()
        .unwrap_or_else(|| state.model_id().to_string());
    let (prefix, name) = split_model(&requested);
    state.check_policy("model", name)?;
    let mut options = body.hone.clone().unwrap_or_default();
    options.temperature = options.temperature.or(body.temperature);
    options.top_p = options.top_p.or(body.top_p);
    options.max_tokens = options
        .max_tokens
        .or(body.max_completion_tokens)
        .or(body.max_tokens);
    options.seed = options.seed.or(body.seed);
    let job = api::build(
        messages(&body.messages)?,
        &options,
        prefix.unwrap_or(Strategy::Plain),
        state.limits(),
        arrived,
    )?;
    state.check_reward(job.reward.as_deref())?;
    state.check_prompt(&job)?;
    let arm = Arm::of(job.strategy);
    let state: Arc<AppState> = state.into_inner();
    // Chat traffic is not randomized between arms, so it stays out of the A/B comparison.
    let record = Record::new(&req, state.clone(), Route::ChatCompletions, &job, arm);
    let stream = body.stream.unwrap_or(false);
    let ticket = match state.admit(&job, stream) {
        Ok(ticket) => ticket,
        Err(e) => return Err(record.fail(e)),
    };
    let cancel = CancelOnDrop::new();
    if stream {
        // The loop runs in its own task; the response body holds the cancel guard and the
        // task, so a client that goes away drops both: the loop stops, a queued request
        // leaves the queue.
        let flag = cancel.flag();
        let (tx, rx) = mpsc::unbounded_channel();
        let chunks = Chunks {
            id: record.answer_id(),
            created: now(),
            model: requested,
        };
        let mut job = job;
        // Plain decoding's answer is its one generation: it goes out token by token.
        let opened = Arc::new(AtomicBool::new(false));
        if job.strategy == Strategy::Plain {
            let (tx, chunks, opened) = (tx.clone(), chunks.clone(), opened.clone());
            let (state, arrived) = (state.clone(), job.arrived);
            job.request.on_text = Some(TextSink::new(move |row, text| {
                if row != 0 {
                    return;
                }
                let mut delta = json!({"content": text});
                if !opened.swap(true, Ordering::Relaxed) {
                    delta["role"] = json!("assistant");
                    state.metrics.first_token(arrived.elapsed());
                }
                let _ = tx.send(chunks.event(delta, None, None));
            }));
        }
        let task = actix_web::rt::spawn(async move {
            let result = state.run(ticket, job, false, flag, None).await;
            record.finish(&result);
            let text = match result {
                Ok(o) => {
                    let c = completion(&o);
                    let mut out = String::new();
                    if !opened.load(Ordering::Relaxed) {
                        out = chunks.event(
                            json!({"role": "assistant", "content": c.answer}),
                            None,
                            None,
                        );
                    }
                    out + &chunks.event(json!({}), Some(c.finish_reason), Some(c.usage))
                        + "data: [DONE]\n\n"
                }
                Err(e) => format!("data: {}\n\ndata: [DONE]\n\n", e.body()),
            };
            let _ = tx.send(text);
        });
        return Ok(sse(rx, cancel, task));
    }
    let id = record.answer_id();
    let result = state
        .clone()
        .run(ticket, job, false, cancel.flag(), None)
        .await;
    record.finish(&result);
    let chunks = Chunks {
        id,
        created: now(),
        model: requested,
    };
    Ok(HttpResponse::Ok().json(chunks.body(completion(&result?))))
}

/// What a finished request answers, in the chat completion's terms.
fn completion(outcome: &Outcome) -> Completion {
    let trace = &outcome.trace;
    Completion {
        finish_reason: match trace.stopped {
            Stopped::Budget | Stopped::Deadline => Finish::Length,
            Stopped::Converged | Stopped::Done => Finish::Stop,
        },
        answer: trace.answer.clone(),
        usage: ChatUsage {
            prompt_tokens: outcome.prompt_tokens as u64,
            completion_tokens: trace.usage.tokens_generated,
            total_tokens: outcome.prompt_tokens as u64 + trace.usage.tokens_generated,
        },
        hone: Spent {
            strategy: trace.strategy,
            score: trace.score,
            stopped: trace.stopped,
            usage: trace.usage,
        },
    }
}

/// A `text/event-stream` response whose body is the text `rx` receives, with SSE comments
/// (`: keep-alive`) every second in between; it ends when every sender is gone. The body holds
/// `cancel` and the `task` that runs the request: a client that goes away (its connection ends,
/// or a keep-alive write fails) drops the body, which stops the loop and, if the request is
/// still queued, takes it out of the queue. Shared by the streamed chat completions and
/// `/optimize`.
pub fn sse(
    rx: mpsc::UnboundedReceiver<String>,
    cancel: CancelOnDrop,
    task: actix_web::rt::task::JoinHandle<()>,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .body(SseBody {
            rx,
            heartbeat: tokio::time::interval(Duration::from_secs(1)),
            _cancel: cancel,
            _task: AbortOnDrop(task),
        })
}

struct SseBody {
    rx: mpsc::UnboundedReceiver<String>,
    heartbeat: tokio::time::Interval,
    _cancel: CancelOnDrop,
    _task: AbortOnDrop,
}

/// Aborts a task when dropped (a no-op once it has finished).
struct AbortOnDrop(actix_web::rt::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MessageBody for SseBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(next) = this.rx.poll_recv(cx) {
            return Poll::Ready(next.map(|text| Ok(Bytes::from(text))));
        }
        if this.heartbeat.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(b": keep-alive\n\n"))));
        }
        Poll::Pending
    }
}

/// A finished completion.
struct Completion {
    finish_reason: Finish,
    answer: String,
    usage: ChatUsage,
    hone: Spent,
}

/// Why a completion ended: `stop` (the answer is whole) or `length` (a token, budget or
/// deadline limit cut it short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Stop,
    Length,
}

/// The body of a chat completion that is not streamed: OpenAI's `chat.completion` object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-` and 128 random bits in hex: the answer's id for `POST /feedback`.
    id: String,
    object: ChatCompletionObject,
    /// Unix seconds.
    created: u64,
    /// The model as the request named it.
    model: String,
    /// The one answer.
    choices: Vec<ChatChoice>,
    usage: ChatUsage,
    /// What the optimization spent, for clients that look (OpenAI clients ignore it).
    hone: Spent,
}

/// The `object` of a chat completion.
#[derive(Debug, Serialize, ToSchema)]
enum ChatCompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

/// One choice of a chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    index: usize,
    message: AnswerMessage,
    finish_reason: Finish,
}

/// The answer, as the assistant's message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnswerMessage {
    /// Always `assistant`.
    role: Role,
    content: String,
}

/// What the optimization spent, and how it ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Spent {
    strategy: Strategy,
    /// The reward of the answer; null only for plain decoding that could not afford scoring.
    score: Option<f32>,
    stopped: Stopped,
    usage: Usage,
}

/// What every object of one answer repeats: its id (the answer's id for `POST /feedback`),
/// when it was created, and the model asked for.
#[derive(Clone)]
struct Chunks {
    id: String,
    created: u64,
    model: String,
}

/// Tokens of a chat completion. `completion_tokens` counts every token the policy sampled for
/// the answer (all candidates and critiques), which is what the request cost; for plain
/// decoding it is the answer's length.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Chunks {
    /// The whole completion as one response.
    fn body(self, c: Completion) -> ChatCompletion {
        ChatCompletion {
            id: self.id,
            object: ChatCompletionObject::ChatCompletion,
            created: self.created,
            model: self.model,
            choices: vec![ChatChoice {
                index: 0,
                message: AnswerMessage {
                    role: Role::Assistant,
                    content: c.answer,
                },
                finish_reason: c.finish_reason,
            }],
            usage: c.usage,
            hone: c.hone,
        }
    }

    /// One server-sent `chat.completion.chunk` carrying `delta`.
    fn event(&self, delta: Value, finish: Option<Finish>, usage: Option<ChatUsage>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            c["usage"] = json!(u);
        }
        format!("data: {c}\n\n")
    }
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The body of `GET /v1/models`: OpenAI's model list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    object: ListObject,
    data: Vec<Model>,
}

/// The `object` of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum ListObject {
    List,
}

/// A model a chat completion may name.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    /// The served model's id, plain or with a strategy prefix (`tpo/<id>`).
    id: String,
    object: ModelObject,
    /// When the server started, in Unix seconds.
    created: u64,
    /// Always `hone`.
    owned_by: String,
}

/// The `object` of a model.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum ModelObject {
    Model,
}

/// The served model, plain and with each strategy prefix
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "An OpenAI model list.", body = ModelList),
        (status = 401, response = doc::Unauthorized),
    )
)]
pub async fn models(state: web::Data<AppState>) -> HttpResponse {
    let id = state.model_id();
    let ids = std::iter::once(id.to_string()).chain(
        [
            Strategy::Tpo,
            Strategy::Auto,
            Strategy::BestOfN,
            Strategy::WeightedBestOfN,
        ]
        .iter()
        .map(|s| format!("{}/{id}", s.name())),
    );
    let data = ids
        .map(|id| Model {
            id,
            object: ModelObject::Model,
            created: state.started,
            owned_by: "hone".to_string(),
        })
        .collect();
    HttpResponse::Ok().json(ModelList {
        object: ListObject::List,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_prefixes_pick_the_strategy() {
        assert_eq!(split_model("tpo/smol"), (Some(Strategy::Tpo), "smol"));
        assert_eq!(
            split_model("best_of_n/smol"),
            (Some(Strategy::BestOfN), "smol")
        );
        assert_eq!(split_model("smol"), (None, "smol"));
        assert_eq!(split_model("org/smol"), (None, "org/smol"));
    }

    #[test]
    fn content_parts_and_roles() {
        let body: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        ]))
        .unwrap();
        let m = messages(&body).unwrap();
        assert_eq!(m[0], Message::new(Role::System, "be brief"));
        assert_eq!(m[1], Message::new(Role::User, "hi"));
        let bad: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "tool", "content": "x"}])).unwrap();
        assert_eq!(
            messages(&bad).unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
    }

    #[test]
    fn chunks_are_openai_chunk_objects() {
        let chunks = Chunks {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
        };
        let usage = ChatUsage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        let event = chunks.event(
            json!({"content": "Paris."}),
            Some(Finish::Stop),
            Some(usage),
        );
        let data = event
            .strip_prefix("data: ")
            .and_then(|e| e.strip_suffix("\n\n"))
            .unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["choices"][0]["delta"]["content"], "Paris.");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 5);
    }
}
