//! Test-time preference optimization (Li et al. 2025, arXiv 2501.12895).
//!
//! 1. Sample N responses and score them; every scored response stays in a cache.
//! 2. chosen = the best, rejected = the worst response of the whole cache (the worst whose text
//!    differs from the chosen's: a copy of the chosen gives the loss nothing to compare).
//! 3. Textual loss: the policy says why the chosen beats the rejected (the reward's reasons,
//!    such as a verifier's failed constraints, are quoted to it).
//! 4. Textual gradient: the policy turns that into suggestions for the chosen.
//! 5. Update: N new responses from the query, the chosen and the suggestions, sampled in one
//!    batched call over the update prompt; they are scored and added to the cache.
//! 6. Repeat D rounds; answer with the best response in the cache.
//!
//! The update asks for the response between `<response>` markers and opens the marker for the
//! model; only what parses counts, with echoes and meta text stripped (see [`super::response`]
//! and [`super::echoes`]). Like the paper's D, every round runs whether or not the one before
//! raised the best score: only the budget, the deadline and a best answer with the reward's
//! highest score (a verifier's "every constraint met", `Converged`) end the loop early.
//! Stopping at a round without gain is `auto`'s rule, not TPO's.

use super::best_of_n::sample_round;
use super::echoes::Echoes;
use super::prompts::{fill, Prompts};
use super::response::{parse_update, query_text, CLOSE, OPEN};
use super::session::{Draft, Scored, Session};
use super::{RoundKind, Stopped, Strategy, StrategyError, Trace};
use policies::{LanguageModel, Message, PolicyError, Role};
use std::ops::ControlFlow;

pub(super) fn run(mut s: Session<'_>) -> Result<Trace, StrategyError> {
    let prompts = Prompts::load(s.request.prompts_dir.as_deref())?;
    let stopped = optimize(&mut s, &prompts)?;
    s.finish(Strategy::Tpo, stopped)
}

fn optimize(s: &mut Session<'_>, prompts: &Prompts) -> Result<Stopped, StrategyError> {
    let first = sample_round(s)?;
    if first != Stopped::Done {
        return Ok(first);
    }
    let query = query_text(&s.request.messages);
    for _ in 0..s.depth() {
        if s.reached_max() {
            return Ok(Stopped::Converged);
        }
        if let Some(stopped) = s.check()? {
            return Ok(stopped);
        }
        if let ControlFlow::Break(stopped) = refine(s, prompts, &query)? {
            return Ok(stopped);
        }
    }
    Ok(if s.reached_max() {
        Stopped::Converged
    } else {
        Stopped::Done
    })
}

/// Steps 2 to 5, one round: pick chosen and rejected, write the loss and the gradient, sample
/// and score the update. Continues when the whole round ran.
pub(super) fn refine(
    s: &mut Session<'_>,
    prompts: &Prompts,
    query: &str,
) -> Result<ControlFlow<Stopped>, StrategyError> {
    let Some((chosen, rejected)) = pick(s) else {
        // Every response so far was dropped: there is nothing to improve on.
        return Ok(ControlFlow::Break(Stopped::Done));
    };
    s.start_round(RoundKind::Refine);
    let (loss, gradient) = match feedback(s, prompts, query, &chosen, rejected.as_ref())? {
        ControlFlow::Continue(critique) => critique,
        ControlFlow::Break(stopped) => return Ok(ControlFlow::Break(stopped)),
    };
    update(s, prompts, query, &chosen, [&loss, &gradient])
}

/// Steps 3 and 4: the textual loss, then the textual gradient, both written into the current
/// round of the trace. Continues with both.
fn feedback(
    s: &mut Session<'_>,
    prompts: &Prompts,
    query: &str,
    chosen: &Scored,
    rejected: Option<&Scored>,
) -> Result<ControlFlow<Stopped, (String, String)>, StrategyError> {
    let no_reasons: &[String] = &[];
    let loss_text = fill(
        &prompts.loss,
        &[
            ("query", query),
            ("chosen", &chosen.text),
            (
                "rejected",
                rejected.map_or("(no other response yet)", |r| r.text.as_str()),
            ),
            ("chosen_reasons", &reasons(&chosen.reasons)),
            (
                "rejected_reasons",
                &reasons(rejected.map_or(no_reasons, |r| &r.reasons)),
            ),
        ],
    );
    let Some(loss_prompt) = chat_prompt(s.policy, &loss_text, "")? else {
        return Ok(ControlFlow::Break(Stopped::Budget));
    };
    if !round_fits(s, loss_prompt.len()) {
        return Ok(ControlFlow::Break(Stopped::Budget));
    }
    let Some(loss) = critique(s, &loss_prompt)? else {
        return Ok(ControlFlow::Break(Stopped::Budget));
    };
    if let Some(round) = s.rounds.last_mut() {
        round.loss = Some(loss.clone());
    }
    if let Some(stopped) = s.check()? {
        return Ok(ControlFlow::Break(stopped));
    }
    let gradient_text = fill(
        &prompts.gradient,
        &[("query", query), ("chosen", &chosen.text), ("loss", &loss)],
    );
    let Some(gradient_prompt) = chat_prompt(s.policy, &gradient_text, "")? else {
        return Ok(ControlFlow::Break(Stopped::Budget));
    };
    let Some(gradient) = critique(s, &gradient_prompt)? else {
        return Ok(ControlFlow::Break(Stopped::Budget));
    };
    if let Some(round) = s.rounds.last_mut() {
        round.gradient = Some(gradient.clone());
    }
    match s.check()? {
        Some(stopped) => Ok(ControlFlow::Break(stopped)),
        None => Ok(ControlFlow::Continue((loss, gradient))),
    }
}

/// Step 5: N new responses in one batched call over the update prompt, parsed, scored and
/// added to the cache as a new round.
fn update(
    s: &mut Session<'_>,
    prompts: &Prompts,
    query: &str,
    chosen: &Scored,
    [loss, gradient]: [&str; 2],
) -> Result<ControlFlow<Stopped>, StrategyError> {
    let Some(update_prompt) = update_prompt(s.policy, prompts, query, &chosen.text, gradient)?
    else {
        return Ok(ControlFlow::Break(Stopped::Budget));
    };
    let Some(sampled) = s.sample(&update_prompt, s.request.n, true, &[UPDATE_STOP])? else {
        return Ok(ControlFlow::Break(Stopped::Budget));
    };
    let echoes = Echoes::new(
        &prompts.update_instructions(),
        query,
        &[loss, gradient],
        &chosen.text,
    );
    let drafts = sampled
        .generations
        .into_iter()
        .map(|g| match parse_update(&g.text, query, &echoes) {
            Ok(text) => Draft {
                text,
                dropped: None,
            },
            Err(why) => Draft {
                text: g.text,
                dropped: Some(why),
            },
        })
        .collect();
    let whole = s.score(drafts)? && !sampled.limited;
    s.end_round(whole);
    if !whole {
        return Ok(ControlFlow::Break(Stopped::Budget));
    }
    Ok(ControlFlow::Continue(()))
}

/// Chosen and rejected over the whole cache, owned.
fn pick(s: &Session<'_>) -> Option<(Scored, Option<Scored>)> {
    s.pair().map(|(c, r)| (c.clone(), r.cloned()))
}

fn reasons(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "none".to_string()
    } else {
        reasons.join("; ")
    }
}

/// Where an update round's responses end: the close of the marker its prompt opens.
pub const UPDATE_STOP: &str = CLOSE;

/// The update round's prompt: the query, the chosen response and the suggestions for
/// improving it, as one user message with the response marker opened. `None` when it does not
/// fit the model's context.
pub fn update_prompt(
    policy: &dyn LanguageModel,
    prompts: &Prompts,
    query: &str,
    chosen: &str,
    gradient: &str,
) -> Result<Option<Vec<u32>>, StrategyError> {
    let text = fill(
        &prompts.update,
        &[("query", query), ("chosen", chosen), ("gradient", gradient)],
    );
    chat_prompt(policy, &text, OPEN)
}

/// A feedback prompt as one user message, with `prefill` opening the assistant's turn. `None`
/// when it does not fit the model's context, which ends the loop like a spent budget.
fn chat_prompt(
    policy: &dyn LanguageModel,
    text: &str,
    prefill: &str,
) -> Result<Option<Vec<u32>>, StrategyError> {
    match policy.encode_chat_opened(&[Message::new(Role::User, text)], prefill) {
        Ok(ids) => Ok(Some(ids)),
        Err(PolicyError::PromptTooLong { tokens, context }) => {
            tracing::warn!(
                tokens,
                context,
                "TPO feedback prompt does not fit the context; stopping"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// One critique (loss or gradient): a single unscored generation.
fn critique(s: &mut Session<'_>, prompt: &[u32]) -> Result<Option<String>, StrategyError> {
    let sampled = s.sample(prompt, 1, false, &[])?;
    Ok(sampled
        .and_then(|o| o.generations.into_iter().next())
        .map(|g| g.text.trim().to_string()))
}

/// Whether a whole round can be afforded, judged before its first step so that the budget is
/// not spent on feedback that no update could use. The gradient and update prompts are not
/// written yet; each holds the chosen response plus at most `max_tokens` of feedback, which the
/// loss prompt (holding the chosen and the rejected) bounds roughly.
fn round_fits(s: &Session<'_>, loss_prompt: usize) -> bool {
    let Some(remaining) = s.meter.remaining() else {
        return true;
    };
    let t = s.max_tokens as u64;
    let prompt = loss_prompt as u64;
    let worst = (prompt + t) + (prompt + 2 * t) + (prompt + 2 * t) + s.reward_cost(s.max_tokens);
    worst <= remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_listed_or_none() {
        assert_eq!(reasons(&[]), "none");
        assert_eq!(
            reasons(&["too long".into(), "says sorry".into()]),
            "too long; says sorry"
        );
    }
}
