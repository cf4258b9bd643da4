//! Test-time optimization loops: plain decoding, best-of-N and TPO, under a compute budget.
//!
//! Every loop takes the policy, a reward model, the reward's weight in compute units per
//! position it reads (see [`crate::budget`]), a [`Request`], an optional progress callback and an
//! optional cancel flag, and returns a [`Trace`]: the answer, its score, why the loop stopped,
//! every round's candidates and what the query spent.

pub mod best_of_n;
mod error;
pub mod plain;
mod prompts;
mod response;
mod session;
pub mod tpo;

pub use error::StrategyError;
pub use prompts::Prompts;

use crate::budget::{Budget, Usage};
use policies::{Message, Policy};
use reward_models::RewardModel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Which loop spends the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One decoding of the policy: the control arm of every A/B comparison.
    Plain,
    /// Sample N, score them, answer with the best.
    BestOfN,
    /// Best-of-N that sums the scores of candidates reaching the same final answer.
    WeightedBestOfN,
    /// Test-time preference optimization (Li et al. 2025).
    Tpo,
}

impl Strategy {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "plain" => Some(Self::Plain),
            "best_of_n" | "bon" => Some(Self::BestOfN),
            "weighted_best_of_n" | "weighted_bon" => Some(Self::WeightedBestOfN),
            "tpo" => Some(Self::Tpo),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::BestOfN => "best_of_n",
            Self::WeightedBestOfN => "weighted_best_of_n",
            Self::Tpo => "tpo",
        }
    }

    /// Runs this loop on one request.
    pub fn run(
        self,
        policy: &Policy,
        reward: &dyn RewardModel,
        reward_weight: f64,
        request: &Request,
        progress: Option<&mut dyn FnMut(Event)>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Trace, StrategyError> {
        let s = session::Session::new(policy, reward, reward_weight, request, progress, cancel)?;
        match self {
            Self::Plain => plain::run(s),
            Self::BestOfN => best_of_n::run(s),
            Self::WeightedBestOfN => best_of_n::run_weighted(s),
            Self::Tpo => tpo::run(s),
        }
    }
}

/// One query and how to spend on it.
#[derive(Debug, Clone)]
pub struct Request {
    pub messages: Vec<Message>,
    /// Candidates per round (TPO's N).
    pub n: usize,
    /// Improvement rounds after the first sampling (TPO's D).
    pub rounds: u32,
    /// The most tokens of each candidate and each critique.
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Candidate `i` of the first round samples with `seed + i`, as `hone generate` does, so
    /// that plain decoding with the same seed is the first best-of-N candidate.
    pub seed: u64,
    pub budget: Budget,
    /// A folder whose `loss.txt`, `gradient.txt` or `update.txt` replace the built-in prompts.
    pub prompts_dir: Option<PathBuf>,
}

impl Default for Request {
    /// The paper's sampling (T = 0.7, top-p 0.95) and depth D = 2, with N = 4.
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            n: 4,
            rounds: 2,
            max_tokens: 128,
            temperature: 0.7,
            top_p: 0.95,
            seed: 0,
            budget: Budget::default(),
            prompts_dir: None,
        }
    }
}

/// Why a loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// The next step did not fit the compute budget.
    Budget,
    /// The deadline passed.
    Deadline,
    /// A TPO round did not improve the best score.
    Converged,
    /// Every planned round ran.
    Done,
}

/// The result of one loop.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub strategy: Strategy,
    pub answer: String,
    /// The reward of the answer; `None` only for plain decoding that could not afford scoring.
    pub score: Option<f32>,
    pub stopped: Stopped,
    pub rounds: Vec<Round>,
    pub usage: Usage,
}

/// One round: the candidates sampled and scored in it, then the choice over every candidate
/// scored so far and, in TPO, the feedback written from that choice for the next round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    pub candidates: Vec<CandidateTrace>,
    /// `id` of the best candidate scored so far, after this round.
    pub chosen: Option<usize>,
    /// `id` of the worst candidate scored so far, after this round, among those whose text
    /// differs from the chosen's.
    pub rejected: Option<usize>,
    /// TPO: the policy's comparison of chosen and rejected.
    pub loss: Option<String>,
    /// TPO: the policy's suggestions for improving the chosen, which the next round follows.
    pub gradient: Option<String>,
}

/// One candidate as the trace shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateTrace {
    /// Numbers the candidates of a query in order, over all rounds.
    pub id: usize,
    pub text: String,
    /// `None` when the candidate was dropped or the budget did not cover scoring it.
    pub score: Option<f32>,
    pub reasons: Vec<String>,
    /// Why the candidate was not scored (empty, a restatement of the task, no parsable response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// Progress of a running loop, for streaming.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    CandidateScored {
        round: usize,
        index: usize,
        score: f32,
    },
    RoundDone {
        round: usize,
        best: Option<f32>,
    },
}
