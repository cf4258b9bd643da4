//! A reward computed by the user's own HTTP service.
//!
//! Protocol: `POST <url>` with
//! `{"items": [{"messages": [{"role": "user", "content": "..."}], "response": "..."}]}`;
//! the service answers `200` with `{"scores": [f32, ...]}` (one per item, in order) and
//! optionally `"reasons": [["...", ...], ...]`. Connection failures and 5xx answers are retried;
//! anything else is an error that names the cause. A failing scorer never yields a silent zero.

use crate::{Candidate, Interrupt, RewardError, RewardModel, Score};
use policies::Message;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub struct RemoteScorer {
    url: String,
    agent: ureq::Agent,
    retries: u32,
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
    pub fn new(url: String, timeout: Duration, retries: u32) -> Result<Self, RewardError> {
        // Plain HTTP only: scorers are expected beside hone (same host or private network).
        if !url.starts_with("http://") {
            return Err(RewardError::Config(format!(
                "remote scorer url must start with http://, got `{url}`"
            )));
        }
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Ok(Self {
            url,
            agent,
            retries,
        })
    }

    fn call(&self, body: &serde_json::Value) -> Result<Response, RewardError> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt.min(5)));
            }
            match self.agent.post(&self.url).send_json(body.clone()) {
                Ok(resp) => {
                    return resp.into_json::<Response>().map_err(|e| {
                        RewardError::Remote(format!("{}: invalid JSON answer: {e}", self.url))
                    });
                }
                Err(ureq::Error::Status(code, resp)) if code < 500 => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(RewardError::Remote(format!(
                        "{} answered {code}: {}",
                        self.url,
                        text.trim()
                    )));
                }
                Err(ureq::Error::Status(code, _)) => last = format!("{} answered {code}", self.url),
                Err(e) => last = format!("{}: {e}", self.url),
            }
        }
        Err(RewardError::Remote(format!(
            "{last} (after {} attempts)",
            self.retries + 1
        )))
    }
}

impl RewardModel for RemoteScorer {
    fn score_interruptible(
        &self,
        batch: &[Candidate<'_>],
        _interrupt: &Interrupt,
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
        let answer = self.call(&body)?;
        if answer.scores.len() != batch.len() {
            return Err(RewardError::Remote(format!(
                "{} returned {} scores for {} items",
                self.url,
                answer.scores.len(),
                batch.len()
            )));
        }
        if let Some(bad) = answer.scores.iter().find(|s| !s.is_finite()) {
            return Err(RewardError::Remote(format!(
                "{} returned a non-finite score {bad}",
                self.url
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
