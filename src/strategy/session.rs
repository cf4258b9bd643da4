//! What every loop shares: the meter, sampling and scoring under the budget, the cache of
//! scored candidates, and the trace being written.

use super::{
    CandidateTrace, Engine, Event, Execution, Learned, Request, Round, RoundKind, Stopped,
    Strategy, StrategyError, Trace,
};
use crate::budget::{self, Meter};
use policies::{
    FinishReason, GenerateParams, Generation, Interrupt, LanguageModel, PolicyError,
    SamplingParams, Speculation,
};
use reward_models::{Candidate, RewardError, RewardModel};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A candidate before scoring: its text, or why it cannot count as an answer.
pub struct Draft {
    pub text: String,
    pub dropped: Option<String>,
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
    reward: &'a dyn RewardModel,
    pub learned: &'a Learned,
    execution: Execution,
    speculation: Speculation,
    pub request: &'a Request,
    /// The most tokens of each response: the request's, or less where `auto` decides so.
    pub max_tokens: usize,
    pub meter: Meter,
    progress: Option<&'a mut dyn FnMut(Event)>,
    cancel: Option<Arc<AtomicBool>>,
    /// The conversation as the policy reads it, opened for the assistant's turn. Its length is
    /// also what a reward model reads besides the response, for the cost estimate.
    pub prompt: Vec<u32>,
    next_seed: u64,
    pub rounds: Vec<Round>,
    pub cache: Vec<Scored>,
    next_id: usize,
    dropped: usize,
    /// The round whose work has started: its kind, and the spending and best score before it.
    opened: Option<(RoundKind, u64, Option<f32>)>,
    /// What the first round cost, the unit of the costs [`Learned`] keeps.
    first_round_cost: Option<u64>,
    /// A model call gave up because the deadline passed inside it: the loop then stops on
    /// `Deadline`, whatever the step that saw nothing come back reports.
    deadline_hit: bool,
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
    fn interrupt(&self) -> Interrupt {
        Interrupt {
            cancel: self.cancel.clone(),
            deadline: self.meter.budget().deadline,
        }
    }

    /// `stopped`, unless a model call was cut short by the deadline.
    fn stopped(&self, stopped: Stopped) -> Stopped {
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

    /// Marks the start of a round's work, which for TPO begins with the critiques written
    /// before the round's own trace entry opens.
    pub fn start_round(&mut self, kind: RoundKind) {
        let best = self.best().map(|b| b.score);
        self.opened = Some((kind, self.meter.spent(), best));
    }

    /// Opens the round's entry in the trace (starting its work, as a first round, if
    /// [`Session::start_round`] did not).
    pub fn begin_round(&mut self) {
        if self.opened.is_none() {
            self.start_round(RoundKind::Sample);
        }
        let kind = self.opened.map_or(RoundKind::Sample, |(k, _, _)| k);
        self.rounds.push(Round {
            kind,
            ..Round::default()
        });
    }

    /// Scores the usable drafts in one reward call (one call each when sequential): in order,
    /// as many as the budget covers.
    /// Every draft goes into the current round of the trace. False when some usable draft could
    /// not be afforded.
    pub fn score(&mut self, drafts: Vec<Draft>) -> Result<bool, StrategyError> {
        let remaining = self.meter.remaining();
        let mut cost = 0;
        let mut afford = Vec::new();
        let mut costs = Vec::new();
        let usable: Vec<usize> = (0..drafts.len())
            .filter(|&i| drafts[i].dropped.is_none())
            .collect();
        for &i in &usable {
            let tokens = self.policy.count_tokens(&drafts[i].text)?;
            let c = self.reward_cost(tokens);
            if remaining.is_some_and(|r| cost + c > r) {
                break;
            }
            cost += c;
            afford.push(i);
            costs.push(c);
        }
        let mut scores = Vec::new();
        if !afford.is_empty() {
            let batch: Vec<Candidate<'_>> = afford
                .iter()
                .map(|&i| Candidate {
                    messages: &self.request.messages,
                    response: &drafts[i].text,
                })
                .collect();
            let size = match self.execution {
                Execution::Batched => batch.len(),
                Execution::Sequential => 1,
            };
            let interrupt = self.interrupt();
            for (call, call_costs) in batch.chunks(size).zip(costs.chunks(size)) {
                // A call the deadline cut short leaves its candidates and the rest unscored.
                let got = match self.reward.score_interruptible(call, &interrupt) {
                    Err(RewardError::DeadlinePassed) => {
                        self.deadline_hit = true;
                        break;
                    }
                    got => got?,
                };
                if got.len() != call.len() {
                    return Err(RewardError::Model(format!(
                        "{} scores for {} candidates",
                        got.len(),
                        call.len()
                    ))
                    .into());
                }
                scores.extend(got);
                self.meter.record_reward(call_costs.iter().sum());
            }
        }
        let round = self.rounds.len().saturating_sub(1);
        let mut scores = scores.into_iter();
        for (index, draft) in drafts.into_iter().enumerate() {
            let id = self.next_id;
            self.next_id += 1;
            let mut entry = CandidateTrace {
                id,
                text: draft.text,
                score: None,
                reasons: Vec::new(),
                dropped: draft.dropped,
            };
            if entry.dropped.is_some() {
                self.dropped += 1;
            } else if afford.contains(&index) {
                if let Some(s) = scores.next() {
                    entry.score = Some(s.value);
                    entry.reasons = s.reasons.clone();
                    self.cache.push(Scored {
                        id,
                        text: entry.text.clone(),
                        score: s.value,
                        reasons: s.reasons,
                    });
                    self.emit(Event::CandidateScored {
                        round,
                        index,
                        score: s.value,
                    });
                } else {
                    entry.dropped = Some("not scored: the deadline passed".to_string());
                }
            } else {
                entry.dropped = Some("not scored: the budget ran out".to_string());
            }
            if let Some(r) = self.rounds.last_mut() {
                r.candidates.push(entry);
            }
        }
        Ok(afford.len() == usable.len() && !self.deadline_hit)
    }

    /// Closes the current round: picks chosen and rejected over the whole cache, and tells
    /// [`Learned`] how the round's move did. `whole` is false when the budget cut the round
    /// short, so that its cost is not taken as typical.
    pub fn end_round(&mut self, whole: bool) {
        self.learn(whole);
        let pair = self.pair().map(|(c, r)| (c.id, r.map(|r| r.id)));
        if let Some(round) = self.rounds.last_mut() {
            round.chosen = pair.map(|(c, _)| c);
            round.rejected = pair.and_then(|(_, r)| r);
        }
        let round = self.rounds.len().saturating_sub(1);
        let best = self.best().map(|b| b.score);
        self.emit(Event::RoundDone { round, best });
    }

    fn learn(&mut self, whole: bool) {
        let Some((kind, spent_before, best_before)) = self.opened.take() else {
            return;
        };
        let cost = self.meter.spent().saturating_sub(spent_before);
        let Some(m) = kind.as_move() else {
            if whole {
                self.first_round_cost = Some(cost);
            }
            return;
        };
        let Some(round) = self.rounds.last() else {
            return;
        };
        let trials = round.candidates.len() as u64;
        let wins = round
            .candidates
            .iter()
            .filter_map(|c| c.score)
            .filter(|&s| best_before.is_none_or(|b| s > b))
            .count() as u64;
        let relative = self
            .first_round_cost
            .filter(|_| whole)
            .map(|first| cost as f64 / first.max(1) as f64);
        self.learned.record(m, trials, wins, relative);
    }

    /// Whether the best answer has the reward's highest score, which nothing can beat.
    pub fn reached_max(&self) -> bool {
        match (self.reward.max_score(), self.best()) {
            (Some(max), Some(best)) => best.score >= max,
            _ => false,
        }
    }

    /// TPO's chosen and rejected over the whole cache (see [`pick_pair`]).
    pub fn pair(&self) -> Option<(&Scored, Option<&Scored>)> {
        let cands: Vec<(f32, &str)> = self
            .cache
            .iter()
            .map(|s| (s.score, s.text.as_str()))
            .collect();
        pick_pair(&cands).map(|(c, r)| (&self.cache[c], r.map(|r| &self.cache[r])))
    }

    /// The best scored candidate so far (the earliest of equals).
    pub fn best(&self) -> Option<&Scored> {
        let scores: Vec<f32> = self.cache.iter().map(|s| s.score).collect();
        chosen_rejected(&scores).map(|(c, _)| &self.cache[c])
    }

    /// The trace with the best candidate of the cache as the answer.
    pub fn finish(self, strategy: Strategy, stopped: Stopped) -> Result<Trace, StrategyError> {
        match self.best() {
            Some(best) => {
                let (answer, score) = (best.text.clone(), best.score);
                Ok(self.into_trace(strategy, stopped, answer, Some(score)))
            }
            None => Err(self.no_answer(stopped)),
        }
    }

    /// Why there is nothing to answer with.
    pub fn no_answer(&self, stopped: Stopped) -> StrategyError {
        if self.stopped(stopped) == Stopped::Deadline {
            return StrategyError::DeadlineBeforeAnswer;
        }
        StrategyError::NoAnswer {
            dropped: self.dropped,
            usage: self.meter.usage(),
        }
    }

    /// The trace with a given answer.
    pub fn into_trace(
        self,
        strategy: Strategy,
        stopped: Stopped,
        answer: String,
        score: Option<f32>,
    ) -> Trace {
        Trace {
            strategy,
            answer,
            score,
            stopped: self.stopped(stopped),
            rounds: self.rounds,
            usage: self.meter.usage(),
            auto: None,
        }
    }

    fn emit(&mut self, event: Event) {
        if let Some(progress) = self.progress.as_mut() {
            progress(event);
        }
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

/// Chosen and rejected: the best candidate, and the worst of those whose text differs from the
/// chosen's (comparing a response with a copy of itself gives the loss nothing to say).
pub fn pick_pair(cands: &[(f32, &str)]) -> Option<(usize, Option<usize>)> {
    let scores: Vec<f32> = cands.iter().map(|c| c.0).collect();
    let (chosen, _) = chosen_rejected(&scores)?;
    let others: Vec<usize> = (0..cands.len())
        .filter(|&i| cands[i].1.trim() != cands[chosen].1.trim())
        .collect();
    let other_scores: Vec<f32> = others.iter().map(|&i| scores[i]).collect();
    let rejected =
        chosen_rejected(&other_scores).map(|(best, worst)| others[worst.unwrap_or(best)]);
    Some((chosen, rejected))
}

/// Indices of the best (the earliest of equals) and the worst (the latest of equals) scores;
/// the worst is `None` when it would be the best itself. NaN scores rank below everything.
pub fn chosen_rejected(scores: &[f32]) -> Option<(usize, Option<usize>)> {
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    let mut best: Option<usize> = None;
    let mut worst: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| key(s) > key(scores[b])) {
            best = Some(i);
        }
        if worst.is_none_or(|w| key(s) <= key(scores[w])) {
            worst = Some(i);
        }
    }
    let best = best?;
    Some((best, worst.filter(|&w| w != best)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_is_the_best_and_rejected_the_worst() {
        assert_eq!(chosen_rejected(&[]), None);
        assert_eq!(chosen_rejected(&[0.5]), Some((0, None)));
        assert_eq!(chosen_rejected(&[0.2, 0.9, 0.1, 0.5]), Some((1, Some(2))));
    }

    #[test]
    fn ties_keep_the_oldest_chosen_and_still_give_a_rejected() {
        assert_eq!(chosen_rejected(&[1.0, 1.0, 1.0]), Some((0, Some(2))));
        assert_eq!(chosen_rejected(&[0.3, 0.7, 0.7, 0.3]), Some((1, Some(3))));
    }

    #[test]
    fn rejected_differs_from_chosen_in_text() {
        let c = [
            (0.5, "Paris."),
            (0.2, "Paris. "),
            (0.3, "Lyon."),
            (0.4, "Nice."),
        ];
        assert_eq!(pick_pair(&c), Some((0, Some(2))));
        assert_eq!(pick_pair(&[(0.5, "a"), (0.1, "a")]), Some((0, None)));
        assert_eq!(pick_pair(&[(0.5, "a"), (0.5, "b")]), Some((0, Some(1))));
        assert_eq!(pick_pair(&[]), None);
    }

    #[test]
    fn nan_scores_rank_last() {
        assert_eq!(chosen_rejected(&[f32::NAN, 0.1, 0.4]), Some((2, Some(0))));
        assert_eq!(chosen_rejected(&[f32::NAN]), Some((0, None)));
    }
}
