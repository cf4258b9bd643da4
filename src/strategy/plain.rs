//! Plain decoding: one response, as the policy writes it. The control arm of every A/B
//! comparison, so it is scored with the same reward (when the budget covers it) but never
//! filtered or retried.

use super::session::{Draft, Session};
use super::{RoundKind, Stopped, Strategy, StrategyError, Trace};

pub(super) fn run(mut s: Session<'_>) -> Result<Trace, StrategyError> {
    if let Some(stopped) = s.check()? {
        return Err(s.no_answer(stopped));
    }
    s.start_round(RoundKind::Sample);
    s.stream_text();
    let prompt = s.prompt.clone();
    let Some(sampled) = s.sample(&prompt, 1, true, &[])? else {
        return Err(s.no_answer(Stopped::Budget));
    };
    let text = sampled
        .generations
        .into_iter()
        .next()
        .map(|g| g.text)
        .unwrap_or_default();
    let complete = s.score(vec![Draft {
        text: text.clone(),
        dropped: None,
    }])?;
    let whole = complete && !sampled.limited;
    s.end_round(whole);
    let score = s.best().map(|b| b.score);
    let stopped = if whole {
        Stopped::Done
    } else {
        Stopped::Budget
    };
    Ok(s.into_trace(Strategy::Plain, stopped, text, score))
}
