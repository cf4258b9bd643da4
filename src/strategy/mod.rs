//! Test-time optimization loops: plain decoding, best-of-N and TPO, under a compute budget.
//!
//! Every loop runs on an [`Engine`] (the policy, a reward model, the reward's weight in compute
//! units per position it reads (see [`crate::budget`]), and what has been learned about the
//! policy), takes a [`Request`], an optional progress callback and an optional cancel flag, and
//! returns a [`Trace`]: the answer, its score, why the loop stopped, every round's candidates
//! and what the query spent.

pub mod auto;
pub mod best_of_n;
mod echoes;
mod error;
pub mod learned;
mod pick;
pub mod plain;
mod prompts;
mod response;
mod round;
mod session;
pub mod tallies;
pub mod tpo;

pub use error::StrategyError;
pub use learned::Learned;
pub use prompts::Prompts;
pub use tallies::Move;
// For `eval`, which counts final answers that restate the task the way the loops drop them.
pub(crate) use echoes::Echoes;
pub(crate) use response::{query_text, restates};

use crate::budget::{Budget, Usage};
use policies::{LanguageModel, Message, Speculation, TextSink};
use reward_models::RewardModel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Which loop spends the budget: `plain` (one decoding of the policy: the control arm of every
/// A/B comparison), `best_of_n` (sample N, score them, answer with the best),
/// `weighted_best_of_n` (best-of-N that sums the scores of candidates reaching the same final
/// answer), `tpo` (test-time preference optimization, Li et al. 2025) or `auto` (a first round,
/// then refine or resample round by round, whichever has been beating the best answer more
/// often per unit of compute on this server; stops once rounds stop improving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Plain,
    BestOfN,
    WeightedBestOfN,
    Tpo,
    Auto,
}

impl Strategy {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "plain" => Some(Self::Plain),
            "best_of_n" | "bon" => Some(Self::BestOfN),
            "weighted_best_of_n" | "weighted_bon" => Some(Self::WeightedBestOfN),
            "tpo" => Some(Self::Tpo),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::BestOfN => "best_of_n",
            Self::WeightedBestOfN => "weighted_best_of_n",
            Self::Tpo => "tpo",
            Self::Auto => "auto",
        }
    }

    /// Every name [`Strategy::parse`] knows, for error messages.
    pub const NAMES: &'static str = "tpo, auto, best_of_n, weighted_best_of_n, plain";

    /// Improvement rounds when the request names none: TPO's D = 2, and for `auto` enough that
    /// the budget and its stopping rule, not the count, end the search.
    pub fn default_rounds(self) -> u32 {
        match self {
            Self::Auto => auto::DEFAULT_ROUNDS,
            _ => Request::default().rounds,
        }
    }

    /// Runs this loop on one request.
    pub fn run(
        self,
        engine: &Engine<'_>,
        request: &Request,
        progress: Option<&mut dyn FnMut(Event)>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Trace, StrategyError> {
        let s = session::Session::new(engine, request, progress, cancel)?;
        match self {
            Self::Plain => plain::run(s),
            Self::BestOfN => best_of_n::run(s),
            Self::WeightedBestOfN => best_of_n::run_weighted(s),
            Self::Tpo => tpo::run(s),
            Self::Auto => auto::run(s),
        }
    }
}

/// What a loop runs on.
#[derive(Clone, Copy)]
pub struct Engine<'a> {
    pub policy: &'a dyn LanguageModel,
    pub reward: &'a dyn RewardModel,
    /// Compute units per position the reward reads (see [`crate::budget::reward_weight`]).
    pub reward_weight: f64,
    /// What the queries so far taught about the policy; every loop adds to it.
    pub learned: &'a Learned,
    pub execution: Execution,
    /// Speculative decoding of every policy call (lossless; see [`policies::speculative`]).
    pub speculation: Speculation,
}

/// How a round's responses are computed. Both give the same responses and scores (row `i` of
/// a batch samples with the seed a lone call `i` would use, and the engine's batches are
/// bit-identical to lone calls); they differ in what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Execution {
    /// One prefill of the prompt shared by a batch of N rows; one reward call per round.
    #[default]
    Batched,
    /// Each response its own prefill and decoding, each score its own reward call: how the
    /// reference TPO implementation runs, kept as the baseline `hone bench tpo` measures.
    Sequential,
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
    /// Hears plain decoding's answer as it is decoded. The other loops know their answer only
    /// at the end, so they never call it.
    pub on_text: Option<TextSink>,
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
            on_text: None,
        }
    }
}

/// Why a loop stopped: `budget` (the next step did not fit the compute budget), `deadline`,
/// `converged` (the best answer reached the reward's highest score, or `auto`'s rounds stopped
/// improving on it) or `done` (every planned round ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    Budget,
    Deadline,
    Converged,
    Done,
}

/// The result of one loop.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Trace {
    pub strategy: Strategy,
    /// The best answer found.
    pub answer: String,
    /// The reward of the answer; null only for plain decoding that could not afford scoring.
    pub score: Option<f32>,
    pub stopped: Stopped,
    pub rounds: Vec<Round>,
    pub usage: Usage,
    /// How `auto` decided, round by round; only for strategy `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub auto: Option<auto::AutoTrace>,
}

/// What a round did: `sample` (the first round: N responses to the query), `refine` (N
/// responses rewritten from the chosen response and the policy's critique of it) or `resample`
/// (N more fresh responses to the query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundKind {
    #[default]
    Sample,
    Refine,
    Resample,
}

impl From<Move> for RoundKind {
    fn from(m: Move) -> Self {
        match m {
            Move::Refine => Self::Refine,
            Move::Resample => Self::Resample,
        }
    }
}

impl RoundKind {
    /// The move this round tried, for the rounds after the first.
    pub fn as_move(self) -> Option<Move> {
        match self {
            Self::Sample => None,
            Self::Refine => Some(Move::Refine),
            Self::Resample => Some(Move::Resample),
        }
    }
}

/// One round: the candidates sampled and scored in it, then the choice over every candidate
/// scored so far and, in TPO, the feedback written from that choice for the next round.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Round {
    pub kind: RoundKind,
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Candidate)]
pub struct CandidateTrace {
    /// Numbers the candidates of a query in order, over all rounds.
    pub id: usize,
    pub text: String,
    /// Null when the candidate was dropped or the budget did not cover scoring it.
    pub score: Option<f32>,
    /// Why the score is what it is, in words (a verifier's failed constraints); empty when the
    /// reward gives none.
    pub reasons: Vec<String>,
    /// Why the candidate was not scored; absent when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub dropped: Option<Dropped>,
}

/// Why a candidate was not scored, as the trace says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Dropped {
    /// No letter, digit or other visible character.
    #[serde(rename = "empty")]
    Empty,
    /// Only words of the query, at least half of them.
    #[serde(rename = "restates the task")]
    RestatesTask,
    /// The budget could not cover its scoring.
    #[serde(rename = "not scored: the budget ran out")]
    BudgetRanOut,
    /// The deadline passed before its reward call answered.
    #[serde(rename = "not scored: the deadline passed")]
    DeadlinePassed,
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
