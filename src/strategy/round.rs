//! A session's rounds: scoring a round's candidates into the trace, closing it (chosen and
//! rejected, and what [`Learned`](super::Learned) hears about its move), and the answer at the
//! end. A loop runs each round as `start_round`, its policy calls, `score`, `end_round`.

use super::pick::{chosen_rejected, pick_pair};
use super::session::{Draft, Scored, Session};
use super::{
    CandidateTrace, Dropped, Event, Execution, Round, RoundKind, Stopped, Strategy, StrategyError,
    Trace,
};
use reward_models::{Candidate, RewardError};

impl Session<'_> {
    /// Marks the start of a round's work: what it spends from here on is its cost. For TPO
    /// the work begins with the critiques, which go into the trace entry of the round they
    /// judge; the round's own entry opens when its candidates are scored.
    pub fn start_round(&mut self, kind: RoundKind) {
        let best = self.best().map(|b| b.score);
        self.opened = Some((kind, self.meter.spent(), best));
    }

    /// Opens the round's entry in the trace and scores the usable drafts in one reward call
    /// (one call each when sequential): in order, as many as the budget covers. Every draft
    /// goes into the round's entry. False when some usable draft could not be afforded.
    pub fn score(&mut self, drafts: Vec<Draft>) -> Result<bool, StrategyError> {
        let kind = match self.opened {
            Some((kind, _, _)) => kind,
            None => {
                self.start_round(RoundKind::Sample);
                RoundKind::Sample
            }
        };
        self.rounds.push(Round {
            kind,
            ..Round::default()
        });
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
                    entry.dropped = Some(Dropped::DeadlinePassed);
                }
            } else {
                entry.dropped = Some(Dropped::BudgetRanOut);
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
            usage: Box::new(self.meter.usage()),
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
