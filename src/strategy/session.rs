//! What every loop shares: the request checked, the meter, the policy's calls sized by the
//! budget, and the state the rounds (`round.rs`) write: the cache of scored candidates and the
//! trace.

use super::{
    Dropped, Engine, Event, Execution, Learned, Request, Round, RoundKind, Stopped, StrategyError,
};
use crate::budget::{self, Meter};
use policies::{
    FinishReason, GenerateParams, Generation, Interrupt, LanguageModel, PolicyError,
    SamplingParams, Speculation,
};
use reward_models::RewardModel;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A candidate before scoring: its text, or why it cannot count as an answer.
pub struct Draft {
    pub text: String,
    pub dropped: Option<Dropped>,
}

/// What one policy call produced.
pub struct Sampled {
    pub generations: Vec<Generation>,
    /// The budget cut the call down: fewer or shorter responses than asked for.
    pub limited: bool,
}

/// A scored candidate, kept for the whole query (TPO's cache).
#[derive(Debug, Clone)]
pub struct Scored {
    pub id: usize,
    pub text: String,
    pub score: f32,
    pub reasons: Vec<String>,
}

pub struct Session<'a> {
    pub policy: &'a dyn LanguageModel,
    pub(super) reward: &'a dyn RewardModel,
    pub learned: &'a Learned,
    pub(super) execution: Execution,
    speculation: Speculation,
    pub request: &'a Request,
    /// The most tokens of each response: the request's, or less where `auto` decides so.
    pub max_tokens: usize,
    pub meter: Meter,
    pub(super) progress: Option<&'a mut dyn FnMut(Event)>,
    pub(super) cancel: Option<Arc<AtomicBool>>,
    /// The conversation as the policy reads it, opened for the assistant's turn. Its length is
    /// also what a reward model reads besides the response, for the cost estimate.
    pub prompt: Vec<u32>,
    next_seed: u64,
    pub rounds: Vec<Round>,
    pub cache: Vec<Scored>,
    pub(super) next_id: usize,
    pub(super) dropped: usize,
    /// The round whose work has started: its kind, and the spending and best score before it.
    pub(super) opened: Option<(RoundKind, u64, Option<f32>)>,
    /// What the first round cost, the unit of the costs [`Learned`] keeps.
    pub(super) first_round_cost: Option<u64>,
    /// A model call gave up because the deadline passed inside it: the loop then stops on
    /// `Deadline`, whatever the step that saw nothing come back reports.
    pub(super) deadline_hit: bool,
    /// Where the policy's text goes as it is decoded; set by [`Session::stream_text`].
    on_text: Option<policies::TextSink>,
}

impl<'a> Session<'a> {
    /// Checks the request and that the budget covers at least one scored response.
    pub fn new<'p: 'a>(
        engine: &Engine<'a>,
        request: &'a Request,
        progress: Option<&'p mut (dyn FnMut(Event) + 'p)>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Self, StrategyError> {
        // The callback may live longer than the rest; shorten it to the session's lifetime.
        let progress = progress.map(|p| -> &'a mut (dyn FnMut(Event) + 'a) { p });
        let invalid = |m: &str| Err(StrategyError::Invalid(m.to_string()));
        if request.messages.is_empty() {
            return invalid("the conversation has no messages");
        }
        if request.n == 0 {
            return invalid("n must be at least 1");
        }
        if request.max_tokens == 0 {
            return invalid("max_tokens must be at least 1");
        }
        if !engine.reward_weight.is_finite() || engine.reward_weight < 0.0 {
            return invalid("the reward weight must be a finite number >= 0");
        }
        sampling(request, 0).validate()?;
        let prompt = engine.policy.encode_chat(&request.messages)?;
        let meter = Meter::new(request.budget, engine.reward_weight);
        let minimum = prompt.len() as u64 + 1 + meter.reward_cost(prompt.len() + 1);
        if let Some(budget) = request.budget.compute.filter(|&b| b < minimum) {
            return Err(StrategyError::BudgetTooSmall {
                budget,
                minimum,
                prompt_tokens: prompt.len(),
            });
        }
        Ok(Self {
            policy: engine.policy,
            reward: engine.reward,
            learned: engine.learned,
            execution: engine.execution,
            speculation: engine.speculation,
            request,
            max_tokens: request.max_tokens,
            meter,
            progress,
            cancel,
            prompt,
            next_seed: request.seed,
            rounds: Vec::new(),
            cache: Vec::new(),
            next_id: 0,
            dropped: 0,
            opened: None,
            first_round_cost: None,
            deadline_hit: false,
            on_text: None,
        })
    }

    /// Sends the text of every later policy call to the request's `on_text` as it is decoded:
    /// for a loop whose one call is its answer.
    pub fn stream_text(&mut self) {
        self.on_text = self.request.on_text.clone();
    }

    /// Whether the loop must stop before its next step: an error when cancelled, `Deadline`
    /// when the deadline has passed.
    pub fn check(&self) -> Result<Option<Stopped>, StrategyError> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(StrategyError::Cancelled);
        }
        Ok(self.meter.deadline_passed().then_some(Stopped::Deadline))
    }

    /// What interrupts a model call: the request's cancel flag and its deadline.
    pub(super) fn interrupt(&self) -> Interrupt {
        Interrupt {
            cancel: self.cancel.clone(),
            deadline: self.meter.budget().deadline,
        }
    }

    /// `stopped`, unless a model call was cut short by the deadline.
    pub(super) fn stopped(&self, stopped: Stopped) -> Stopped {
        if self.deadline_hit {
            Stopped::Deadline
        } else {
            stopped
        }
    }

    /// The most improvement rounds after the first: the request's, within the budget's limit.
    pub fn depth(&self) -> u32 {
        self.request
            .rounds
            .min(self.request.budget.max_rounds.unwrap_or(u32::MAX))
    }

    /// The reward's cost of scoring a response of `tokens` tokens to the query.
    pub fn reward_cost(&self, tokens: usize) -> u64 {
        self.meter.reward_cost(self.prompt.len() + tokens)
    }

    /// Samples up to `n` responses to `prompt`, as many and as long as the budget allows.
    /// `scored` reserves the cost of scoring them. `None` when not even one token fits.
    pub fn sample(
        &mut self,
        prompt: &[u32],
        n: usize,
        scored: bool,
        stop: &[&str],
    ) -> Result<Option<Sampled>, StrategyError> {
        let seed = self.next_seed;
        // Seeds advance by the n asked for, so a run's later calls do not depend on the plan.
        self.next_seed = self.next_seed.wrapping_add(n as u64);
        if self.execution == Execution::Batched {
            return self.generate(prompt, n, seed, scored, stop);
        }
        // One call per response; response i samples with seed + i, as row i of a batch does.
        let mut out: Option<Sampled> = None;
        for i in 0..n {
            let Some(one) = self.generate(prompt, 1, seed.wrapping_add(i as u64), scored, stop)?
            else {
                break;
            };
            let all = out.get_or_insert(Sampled {
                generations: Vec::new(),
                limited: false,
            });
            all.generations.extend(one.generations);
            all.limited |= one.limited;
        }
        if let Some(all) = out.as_mut() {
            all.limited |= all.generations.len() < n;
        }
        Ok(out)
    }

    /// One policy call: `n` responses over one prefill of `prompt`, sized by the budget.
    fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        seed: u64,
        scored: bool,
        stop: &[&str],
    ) -> Result<Option<Sampled>, StrategyError> {
        let reward = |t: usize| if scored { self.reward_cost(t) } else { 0 };
        let plan = budget::plan(
            self.meter.remaining(),
            prompt.len(),
            n,
            self.max_tokens,
            reward,
        );
        let Some(plan) = plan else { return Ok(None) };
        let params = GenerateParams {
            max_tokens: plan.max_tokens,
            sampling: sampling(self.request, seed),
            stop: stop.iter().map(|s| s.to_string()).collect(),
            max_positions: plan.max_positions,
            cancel: self.cancel.clone(),
            deadline: self.meter.budget().deadline,
            speculation: self.speculation,
            on_text: self.on_text.clone(),
            logprobs: None,
        };
        let (generations, stats) = match self.policy.generate(prompt, plan.n, &params) {
            Ok(out) => out,
            Err(PolicyError::OverBudget { .. }) => return Ok(None),
            // The prefill gave up at the deadline: nothing came of the call, and the loop
            // stops on `Deadline` (see `Session::stopped`).
            Err(PolicyError::DeadlinePassed) => {
                self.deadline_hit = true;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let tokens = generations.iter().map(|g| g.tokens.len()).sum();
        self.meter.record_generation(&stats, tokens);
        if scored {
            for g in generations
                .iter()
                .filter(|g| g.finish == FinishReason::Stop)
            {
                self.learned.record_length(g.tokens.len());
            }
        }
        let limited = plan.n < n
            || plan.max_tokens < self.max_tokens
            || generations.iter().any(|g| g.finish == FinishReason::Budget);
        Ok(Some(Sampled {
            generations,
            limited,
        }))
    }
}

fn sampling(request: &Request, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: request.temperature,
        top_k: 0,
        top_p: request.top_p,
        seed,
    }
}
