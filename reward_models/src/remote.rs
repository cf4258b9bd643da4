//! A reward computed by the user's own HTTP service.
//!
//! Protocol: `POST <url>` with
//! `{"items": [{"messages": [{"role": "user", "content": "..."}], "response": "..."}]}`;
//! the service answers `200` with `{"scores": [f32, ...]}` (one per item, in order) and
//! optionally `"reasons": [["...", ...], ...]`. Connection failures, 429 (busy) and 5xx answers
//! are retried; anything else is an error that names the cause. A failing scorer never yields
//! a silent zero.

use crate::{Candidate, Interrupt, RewardError, RewardModel, Score};
use policies::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub struct RemoteScorer {
    endpoint: JsonEndpoint,
}

/// A service that scorers post JSON to, with the retries, timeouts and key that the remote
/// scorer and the OpenAI-compatible judge share.
pub(crate) struct JsonEndpoint {
    url: String,
    agent: ureq::Agent,
    timeout: Duration,
    retries: u32,
    api_key: Option<String>,
}

#[derive(Serialize)]
struct Item<'a> {
    messages: &'a [Message],
    response: &'a str,
}

#[derive(Serialize)]
struct Request<'a> {
    items: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Response {
    scores: Vec<f32>,
    #[serde(default)]
    reasons: Option<Vec<Vec<String>>>,
}

impl RemoteScorer {
    /// A scorer at `url` (`http://` or `https://`; certificates checked against the Mozilla
    /// roots); `api_key`, where given, goes in an `Authorization: Bearer` header.
    pub fn new(
        url: String,
        timeout: Duration,
        retries: u32,
        api_key: Option<String>,
    ) -> Result<Self, RewardError> {
        Ok(Self {
            endpoint: JsonEndpoint::new(url, timeout, retries, api_key)?,
        })
    }
}

/// The most of an error answer's body that goes into an error message: enough for a JSON
/// error, not a proxy's whole HTML page.
const BODY_SHOWN: usize = 500;

impl JsonEndpoint {
    pub(crate) fn new(
        url: String,
        timeout: Duration,
        retries: u32,
        api_key: Option<String>,
    ) -> Result<Self, RewardError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RewardError::Config(format!(
                "remote scorer url must start with http:// or https://, got `{url}`"
            )));
        }
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Ok(Self {
            url,
            agent,
            timeout,
            retries,
            api_key,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Posts `body`, retrying connection failures, 429 and 5xx answers with growing pauses. The
    /// request's cancellation and deadline hold throughout: no attempt starts, and no pause
    /// lasts, past them, and an attempt's timeout is cut to the time left. Errors name the
    /// url, and a refusal its status and body.
    pub(crate) fn post<T: DeserializeOwned>(
        &self,
        body: &serde_json::Value,
        interrupt: &Interrupt,
    ) -> Result<T, RewardError> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                pause(Duration::from_millis(100 << attempt.min(5)), interrupt)?;
            }
            interrupt.check().map_err(crate::policy_err)?;
            let mut request = self.agent.post(&self.url);
            if let Some(key) = &self.api_key {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            if let Some(deadline) = interrupt.deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                request = request.timeout(left.min(self.timeout));
            }
            match request.send_json(body.clone()) {
                Ok(resp) => {
                    return resp.into_json::<T>().map_err(|e| {
                        RewardError::Remote(format!("{}: invalid JSON answer: {e}", self.url))
                    });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let shown: String = text.trim().chars().take(BODY_SHOWN).collect();
                    last = format!("{} answered {code}: {shown}", self.url);
                    if code < 500 && code != 429 {
                        return Err(RewardError::Remote(last));
                    }
                }
                Err(e) => last = format!("{}: {e}", self.url),
            }
        }
        Err(RewardError::Remote(format!(
            "{last} (after {} attempts)",
            self.retries + 1
        )))
    }
}

/// Sleeps `total` in short slices, giving up as soon as `interrupt` says so.
fn pause(total: Duration, interrupt: &Interrupt) -> Result<(), RewardError> {
    const SLICE: Duration = Duration::from_millis(10);
    let end = Instant::now() + total;
    loop {
        interrupt.check().map_err(crate::policy_err)?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep(SLICE.min(end - now));
    }
}

impl RewardModel for RemoteScorer {
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Score>, RewardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let request = Request {
            items: batch
                .iter()
                .map(|c| Item {
                    messages: c.messages,
                    response: c.response,
                })
                .collect(),
        };
        let body =
            serde_json::to_value(&request).map_err(|e| RewardError::Remote(e.to_string()))?;
        let answer: Response = self.endpoint.post(&body, interrupt)?;
        let url = self.endpoint.url();
        if answer.scores.len() != batch.len() {
            return Err(RewardError::Remote(format!(
                "{url} returned {} scores for {} items",
                answer.scores.len(),
                batch.len()
            )));
        }
        if let Some(bad) = answer.scores.iter().find(|s| !s.is_finite()) {
            return Err(RewardError::Remote(format!(
                "{url} returned a non-finite score {bad}"
            )));
        }
        let mut reasons = answer.reasons.unwrap_or_default().into_iter();
        Ok(answer
            .scores
            .into_iter()
            .map(|value| Score {
                value,
                reasons: reasons.next().unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policies::Role;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A scorer that keeps failing gives up at the request's deadline or cancellation, not
    /// after its retries: five retries against a closed port would pause 6.2 s in all.
    #[test]
    fn retries_stop_at_the_deadline_and_on_cancel() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = RemoteScorer::new(
            format!("http://127.0.0.1:{port}/score"),
            Duration::from_secs(5),
            5,
            None,
        )
        .unwrap();
        let messages = [Message::new(Role::User, "Say hi.")];
        let batch = [Candidate {
            messages: &messages,
            response: "hi",
        }];
        let soon = Interrupt {
            cancel: None,
            deadline: Some(Instant::now() + Duration::from_millis(300)),
        };
        let e = down.score_interruptible(&batch, &soon).unwrap_err();
        assert!(matches!(e, RewardError::DeadlinePassed), "{e}");
        let cancelled = Interrupt {
            cancel: Some(Arc::new(AtomicBool::new(true))),
            deadline: None,
        };
        let e = down.score_interruptible(&batch, &cancelled).unwrap_err();
        assert!(matches!(e, RewardError::Cancelled), "{e}");
        // Without an interrupt the retries run out and name the cause.
        let once = RemoteScorer::new(
            format!("http://127.0.0.1:{port}/score"),
            Duration::from_secs(5),
            0,
            None,
        )
        .unwrap();
        let e = once.score(&batch).unwrap_err();
        assert!(matches!(e, RewardError::Remote(_)), "{e}");
    }
}
