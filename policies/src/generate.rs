//! Batched generation over one shared prompt or over several prompts.

use crate::draft::ModelDrafter;
use crate::error::{PolicyError, Result};
use crate::kv_cache::KvCache;
use crate::model::{read_scores, Logits};
use crate::pacing::{self, Pacing};
use crate::policy::Policy;
use crate::prefill::{Interrupt, Output};
use crate::sampling::{Readout, Sampler, SamplingParams, Scores, TokenLogprobs};
use crate::speculative::{self, Proposal, Source, Speculation};
use crate::suffix::SuffixIndex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains any of these; the text is cut before it.
    pub stop: Vec<String>,
    /// The most token positions this call may compute, prefill included. Decoding stops (with
    /// [`FinishReason::Budget`]) before a step would pass it; a prompt alone above it is an error.
    pub max_positions: Option<usize>,
    /// Set from another thread to abandon the call (e.g. the client went away): checked
    /// between prefill chunks and between decoding steps.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The prefill gives up ([`PolicyError::DeadlinePassed`]) when this passes between two of
    /// its chunks: a long prompt must not run on long after its answer stopped mattering.
    /// Decoding does not look at it; its length is bounded by `max_tokens` and the budget, and
    /// the loop checks the deadline between its steps.
    pub deadline: Option<Instant>,
    /// Draft tokens from the context and verify them in one pass (off by default).
    pub speculation: Speculation,
    /// Hears each row's text as it is decoded (see [`TextSink`]).
    pub on_text: Option<TextSink>,
    /// Record each generated token's log-probability and the `k` likeliest alternatives
    /// ([`Generation::logprobs`]) from the logits it was sampled from. Off by default: it
    /// costs a pass over the vocabulary per token.
    pub logprobs: Option<usize>,
}

/// Receives `(row, text)` as rows are decoded: pieces that, joined in order, are each row's
/// final text exactly. Text that could be the start of a stop string, or an unfinished
/// character, is held back until the next token settles it, so nothing sent is ever taken
/// back. Called on the decoding thread: it should hand the text on, not work on it.
#[derive(Clone)]
pub struct TextSink(Arc<OnText>);

type OnText = dyn Fn(usize, &str) + Send + Sync;

impl TextSink {
    pub fn new(f: impl Fn(usize, &str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn send(&self, row: usize, text: &str) {
        (self.0)(row, text)
    }
}

impl std::fmt::Debug for TextSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextSink")
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            max_positions: None,
            cancel: None,
            deadline: None,
            speculation: Speculation::OFF,
            on_text: None,
            logprobs: None,
        }
    }
}

impl GenerateParams {
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(PolicyError::InvalidParameter {
                param: "max_tokens",
                reason: "must be at least 1".into(),
            });
        }
        self.sampling.validate()
    }

    /// What each step reads back of its logits (see [`read_scores`]).
    fn readout(&self) -> Readout {
        Readout::of(&self.sampling, self.logprobs.is_some())
    }

    fn check_prefill(&self, tokens: usize) -> Result<()> {
        match self.max_positions {
            Some(limit) if tokens > limit => Err(PolicyError::OverBudget {
                needed: tokens,
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// What interrupts the prefill.
    fn interrupt(&self) -> Interrupt {
        Interrupt {
            cancel: self.cancel.clone(),
            deadline: self.deadline,
        }
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The compute limit (`max_positions`).
    Budget,
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// With [`GenerateParams::logprobs`]: one entry per token of `tokens`, then one for the
    /// end-of-sequence token that ended the row, if one did (it is not in `tokens` or the
    /// text, but how likely the model found stopping there is part of its answer). Empty
    /// otherwise.
    pub logprobs: Vec<TokenLogprobs>,
}

/// Work done by one generate call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens run through the model (a shared prompt counts once).
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    /// Token positions computed while decoding, over all rows: verified drafts included,
    /// rejected ones too (not the padding that aligns rows of different lengths).
    pub decode_tokens: usize,
    pub decode_secs: f64,
    /// Speculative decoding, as vLLM counts it: steps that verified at least one draft token,
    pub num_drafts: usize,
    /// the draft tokens verified,
    pub num_draft_tokens: usize,
    /// and those accepted.
    pub num_accepted_tokens: usize,
    /// Draft tokens proposed but not verified, because at the row's acceptance rate they
    /// would have cost more than they save (see [`crate::pacing`]).
    pub num_withheld_tokens: usize,
    /// Of the drafts, of the draft tokens verified and of those accepted: the ones found in
    /// sibling rows' text alone (see [`crate::suffix`]). With the totals above they give each
    /// drafter's acceptance rate and mean accepted length.
    pub num_sibling_drafts: usize,
    pub num_sibling_draft_tokens: usize,
    pub num_sibling_accepted_tokens: usize,
    /// The same for the draft model's guesses (see [`crate::draft`]),
    pub num_model_drafts: usize,
    pub num_model_draft_tokens: usize,
    pub num_model_accepted_tokens: usize,
    /// and the positions it computed (its prefill and every drafting step), which are not the
    /// policy's and not in [`Self::positions`].
    pub draft_positions: usize,
}

impl GenerationStats {
    /// Token positions computed in all.
    pub fn positions(&self) -> usize {
        self.prefill_tokens + self.decode_tokens
    }

    pub fn prefill_tps(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs.max(1e-9)
    }
}

/// A sequence being decoded.
struct Row {
    /// Its place in the call's output, as [`TextSink`] names it.
    index: usize,
    sampler: Sampler,
    /// The prompt and the tokens so far: what the drafter looks up.
    context: Vec<u32>,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
    /// The text so far, followed token by token (see [`Policy::extend_text`]); decoded whole
    /// once more when the row finishes.
    text: String,
    /// `tokens[text_from..text_to]` are the tokens of the text's last complete piece: the
    /// window decoded again with each new token, so that following a row costs O(n), not O(n²).
    text_from: usize,
    text_to: usize,
    /// Bytes of `text` sent to the [`TextSink`].
    sent: usize,
    logprobs: Vec<TokenLogprobs>,
    /// How many of the suffix drafter's tokens pay to verify (see [`crate::pacing`]),
    pacing: Pacing,
    /// and how many of the draft model's.
    model_pacing: Pacing,
}

/// One row's drafts for a step: the suffix drafter's proposal, or, where it has none, how many
/// tokens the draft model is to guess (filled in once the step's rows are settled).
struct StepDraft {
    proposal: Proposal,
    model_len: usize,
}

impl StepDraft {
    fn len(&self) -> usize {
        self.proposal.tokens.len() + self.model_len
    }

    fn clear(&mut self) {
        self.proposal.tokens.clear();
        self.model_len = 0;
    }
}

impl Policy {
    /// Generates `n` continuations of one prompt. The prompt is prefilled once and its cache
    /// forked into `n` rows that decode as one batch; row `i` samples with seed `seed + i`.
    pub fn generate(
        &self,
        prompt: &[u32],
        n: usize,
        params: &GenerateParams,
    ) -> Result<(Vec<Generation>, GenerationStats)> {
        params.validate()?;
        self.check_speculation(params)?;
        if prompt.is_empty() {
            return Err(PolicyError::EmptyPrompt);
        }
        params.check_prefill(prompt.len())?;
        let start = Instant::now();
        let mut cache = self.model().new_cache(1);
        let logits =
            self.model()
                .prefill(&[prompt], &mut cache, Output::Logits, &params.interrupt())?;
        let first = read_scores(&logits, params.readout())?
            .pop()
            .ok_or_else(|| {
                PolicyError::Candle(candle_core::Error::Msg("prefill: no logits".into()))
            })?;
        let drafter = self.model_drafter(&[prompt], n, params)?;
        let mut stats = GenerationStats {
            prefill_tokens: prompt.len(),
            prefill_secs: start.elapsed().as_secs_f64(),
            ..Default::default()
        };
        let cache = cache.select_rows(&vec![0; n])?;
        let first = vec![first; n];
        let prompts = vec![prompt.to_vec(); n];
        let out = self.decode(cache, drafter, first, &prompts, params, &mut stats)?;
        Ok((out, stats))
    }

    /// Generates one continuation for each prompt, all prompts in one batch (left-padded).
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
    ) -> Result<(Vec<Generation>, GenerationStats)> {
        params.validate()?;
        self.check_speculation(params)?;
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(PolicyError::EmptyPrompt);
        }
        params.check_prefill(prompts.iter().map(Vec::len).sum())?;
        let start = Instant::now();
        let mut cache = self.model().new_cache(prompts.len());
        let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let logits =
            self.model()
                .prefill(&rows, &mut cache, Output::Logits, &params.interrupt())?;
        let first = read_scores(&logits, params.readout())?;
        let drafter = self.model_drafter(&rows, rows.len(), params)?;
        let mut stats = GenerationStats {
            prefill_tokens: prompts.iter().map(Vec::len).sum(),
            prefill_secs: start.elapsed().as_secs_f64(),
            ..Default::default()
        };
        let out = self.decode(cache, drafter, first, prompts, params, &mut stats)?;
        Ok((out, stats))
    }

    /// The decode loop: sample from each row's last logits, feed the tokens back as one batch,
    /// and drop rows from the batch as they finish. With speculation, each row's token is fed
    /// together with the drafts that follow it, and the policy's verdict on them decides how
    /// many tokens the row gains this step (see [`speculative`]).
    fn decode(
        &self,
        mut cache: KvCache,
        mut drafter: Option<ModelDrafter>,
        first: Vec<Scores>,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        stats: &mut GenerationStats,
    ) -> Result<Vec<Generation>> {
        let start = Instant::now();
        let context = self.model().config().context_length;
        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let sampling = SamplingParams {
                    seed: params.sampling.seed.wrapping_add(i as u64),
                    ..params.sampling.clone()
                };
                Row {
                    index: i,
                    sampler: Sampler::new(sampling),
                    context: prompt.clone(),
                    tokens: Vec::new(),
                    finish: None,
                    text: String::new(),
                    text_from: 0,
                    text_to: 0,
                    sent: 0,
                    logprobs: Vec::new(),
                    pacing: Pacing::default(),
                    model_pacing: Pacing::default(),
                }
            })
            .collect();
        // What the drafter reads: one index per distinct prompt, over the prompt and the text
        // of the rows of that prompt (never another prompt's rows: in a server's batch they
        // are other requests).
        let (mut indexes, place) = if params.speculation.is_on() {
            suffix_indexes(prompts)
        } else {
            (Vec::new(), Vec::new())
        };
        // `active[j]` is the output row held in cache row `j`; `next[j]` is the token it feeds
        // next, already appended to the row.
        let mut active: Vec<usize> = (0..rows.len()).collect();
        let mut next = Vec::with_capacity(rows.len());
        for (j, scores) in first.iter().enumerate() {
            let token = rows[j].sampler.choose(scores);
            let position = cache.next_position(j) as usize;
            self.advance(&mut rows[j], token, scores, params, position + 1 >= context)?;
            next.push(token);
        }
        loop {
            let mut keep: Vec<usize> = (0..active.len())
                .filter(|&j| rows[active[j]].finish.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if params.cancelled() {
                return Err(PolicyError::Cancelled);
            }
            // Drafts for each live row, within its token and context limits, as many as pay.
            for (i, &(g, r)) in place.iter().enumerate() {
                indexes[g].extend(r, &rows[i].tokens);
            }
            let cost = pacing::Cost::verify(self.model().device(), keep.len(), params.readout());
            let mut drafts: Vec<StepDraft> = Vec::with_capacity(keep.len());
            for &j in &keep {
                let i = active[j];
                // The step gains the accepted drafts plus one token: keep within both limits.
                let room = (params.max_tokens - rows[i].tokens.len())
                    .saturating_sub(1)
                    .min(context.saturating_sub(cache.next_position(j) as usize + 2))
                    .min(params.speculation.max_draft);
                let mut draft = match place.get(i) {
                    Some(&(g, r)) => indexes[g].propose(r, &rows[i].context, room),
                    None => Proposal::default(),
                };
                let row = &mut rows[i];
                if params.speculation.paced {
                    let len = row.pacing.draft_len(draft.tokens.len(), cost);
                    stats.num_withheld_tokens += draft.tokens.len() - len;
                    draft.tokens.truncate(len);
                }
                // The draft model guesses where the text offers nothing; its own steps are
                // part of what a guess costs.
                let model_len = match (&drafter, draft.tokens.is_empty()) {
                    (Some(d), true) if params.speculation.paced => {
                        row.model_pacing.draft_len(room, cost.plus(d.cost()))
                    }
                    (Some(_), true) => room,
                    _ => 0,
                };
                drafts.push(StepDraft {
                    proposal: draft,
                    model_len,
                });
            }
            // The step computes one position per live row plus its drafts: drop drafts, then
            // rows, rather than pass the limit (the last rows of the batch first, so row order
            // stays seed order).
            if let Some(limit) = params.max_positions {
                let room = limit.saturating_sub(stats.positions());
                let mut drafted: usize = drafts.iter().map(StepDraft::len).sum();
                for d in drafts.iter_mut().rev() {
                    if keep.len() + drafted <= room {
                        break;
                    }
                    drafted -= d.len();
                    d.clear();
                }
                for &j in keep.iter().skip(room) {
                    rows[active[j]].finish = Some(FinishReason::Budget);
                }
                keep.truncate(room);
                drafts.truncate(room);
                if keep.is_empty() {
                    break;
                }
            }
            if keep.len() < active.len() {
                cache = cache.select_rows(&keep)?;
                if let Some(d) = &mut drafter {
                    d.select_rows(&keep)?;
                }
                active = keep.iter().map(|&j| active[j]).collect();
                next = keep.iter().map(|&j| next[j]).collect();
            }
            let drafts = match &mut drafter {
                Some(d) => {
                    let samplers = active.iter().map(|&i| rows[i].sampler.clone()).collect();
                    guess(d, &next, drafts, samplers)?
                }
                None => drafts.into_iter().map(|d| d.proposal).collect(),
            };
            let chunks: Vec<Vec<u32>> = next
                .iter()
                .zip(&drafts)
                .map(|(&t, d)| std::iter::once(t).chain(d.tokens.iter().copied()).collect())
                .collect();
            let refs: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
            let base: Vec<usize> = (0..active.len())
                .map(|j| cache.next_position(j) as usize)
                .collect();
            let drafted: usize = drafts.iter().map(|d| d.tokens.len()).sum();
            let per_row: Vec<Vec<Scores>> = if drafted == 0 {
                let out = self.model().forward(&refs, &mut cache, Logits::Last)?;
                read_scores(&out, params.readout())?
                    .into_iter()
                    .map(|l| vec![l])
                    .collect()
            } else {
                let out = self.model().forward(&refs, &mut cache, Logits::All)?;
                let mut packed = read_scores(&out, params.readout())?.into_iter();
                chunks
                    .iter()
                    .map(|chunk| packed.by_ref().take(chunk.len()).collect())
                    .collect()
            };
            stats.decode_tokens += active.len() + drafted;
            stats.num_drafts += drafts.iter().filter(|d| !d.tokens.is_empty()).count();
            stats.num_draft_tokens += drafted;
            for (j, scores) in per_row.iter().enumerate() {
                let row = &mut rows[active[j]];
                let draft = &drafts[j];
                let verdict = speculative::verify(&mut row.sampler, scores, &draft.tokens);
                stats.num_accepted_tokens += verdict.accepted;
                if draft.source == Source::Model {
                    row.model_pacing
                        .record(draft.tokens.len(), verdict.accepted);
                    stats.num_model_drafts += 1;
                    stats.num_model_draft_tokens += draft.tokens.len();
                    stats.num_model_accepted_tokens += verdict.accepted;
                } else {
                    row.pacing.record(draft.tokens.len(), verdict.accepted);
                }
                if draft.source == Source::Siblings {
                    stats.num_sibling_drafts += 1;
                    stats.num_sibling_draft_tokens += draft.tokens.len();
                    stats.num_sibling_accepted_tokens += verdict.accepted;
                }
                if let Some(d) = &mut drafter {
                    d.settle(j, &draft.tokens[..verdict.accepted]);
                }
                cache.rollback_row(j, draft.tokens.len() - verdict.accepted);
                // Accepted drafts sit at the positions after the fed token.
                let gained = draft.tokens[..verdict.accepted]
                    .iter()
                    .chain([&verdict.next]);
                for (i, &token) in gained.enumerate() {
                    if row.finish.is_some() {
                        break;
                    }
                    let position = base[j] + 1 + i;
                    self.advance(row, token, &scores[i], params, position + 1 >= context)?;
                }
                next[j] = verdict.next;
            }
        }
        stats.decode_secs += start.elapsed().as_secs_f64();
        stats.draft_positions += drafter.map_or(0, |d| d.positions);
        Ok(rows
            .into_iter()
            .map(|r| Generation {
                text: r.text,
                tokens: r.tokens,
                finish: r.finish.unwrap_or(FinishReason::Length),
                logprobs: r.logprobs,
            })
            .collect())
    }

    /// The draft model's state for this call, prefilled with the prompts, when speculation is
    /// on, the policy has a draft model, and its guesses could pay at this batch size (paced:
    /// see [`pacing::Cost::can_pay`]; on a GPU a small draft model's step costs about the
    /// policy's, so it never does there).
    fn model_drafter(
        &self,
        prompts: &[&[u32]],
        rows: usize,
        params: &GenerateParams,
    ) -> Result<Option<ModelDrafter<'_>>> {
        let s = params.speculation;
        let pays = |cost: f64| {
            let verify = pacing::Cost::verify(self.model().device(), rows, params.readout());
            !s.paced || verify.plus(cost).can_pay(s.max_draft)
        };
        match self.draft() {
            Some(draft) if s.is_on() && pays(draft.cost()) => Ok(Some(ModelDrafter::prefill(
                draft,
                prompts,
                rows,
                &params.interrupt(),
            )?)),
            _ => Ok(None),
        }
    }

    /// Speculation is exact only where a chunk of tokens computes bit for bit what lone
    /// steps compute (see [`crate::Transformer::exact_chunks`]); elsewhere it is refused
    /// rather than silently lossy.
    fn check_speculation(&self, params: &GenerateParams) -> Result<()> {
        if params.speculation.is_on() && !self.model().exact_chunks() {
            return Err(PolicyError::InvalidParameter {
                param: "speculation",
                reason: "speculative decoding needs hone's own kernels for every weight of the \
                         model on this device, and some weights are of a type without one; turn \
                         it off"
                    .into(),
            });
        }
        Ok(())
    }

    /// Appends a token chosen from `scores` to a row and decides whether the row is done.
    fn advance(
        &self,
        row: &mut Row,
        token: u32,
        scores: &Scores,
        params: &GenerateParams,
        context_full: bool,
    ) -> Result<()> {
        if let Some(k) = params.logprobs {
            // Steps read every logit when log-probabilities are asked for (`readout()`).
            let Scores::Logits(logits) = scores else {
                return Err(PolicyError::Candle(candle_core::Error::Msg(
                    "log-probabilities of a step that read only part of its logits".into(),
                )));
            };
            row.logprobs.push(TokenLogprobs::new(logits, token, k));
        }
        if self.tokenizer().is_stop(token) {
            return self.finish(row, FinishReason::Stop, params);
        }
        row.tokens.push(token);
        row.context.push(token);
        let (new, pending) = self.extend_text(row)?;
        if self.stops_in_new_text(row, new, &pending, params) {
            self.finish(row, FinishReason::Stop, params)
        } else if row.tokens.len() >= params.max_tokens || context_full {
            self.finish(row, FinishReason::Length, params)
        } else {
            send_settled(row, params);
            Ok(())
        }
    }

    /// Whether a stop string ends in the text added at `new` (or in the pending text of an
    /// unfinished character): such a string starts at most its length before `new`.
    fn stops_in_new_text(
        &self,
        row: &Row,
        new: usize,
        pending: &str,
        params: &GenerateParams,
    ) -> bool {
        let Some(longest) = params.stop.iter().map(String::len).max() else {
            return false;
        };
        let mut from = new.saturating_sub(longest);
        while !row.text.is_char_boundary(from) {
            from -= 1;
        }
        let tail = format!("{}{pending}", &row.text[from..]);
        params.stop.iter().any(|s| tail.contains(s.as_str()))
    }

    /// Appends the text of the row's newest token; returns where it starts, and the text of
    /// tokens that end inside a character (a byte of UTF-8), which waits for the next token
    /// but is searched for stop strings already. Only the window since the last complete piece
    /// is decoded: the piece before it is decoded again and cut off, which keeps the spaces
    /// tokenizers add or drop at word starts right.
    fn extend_text(&self, row: &mut Row) -> Result<(usize, String)> {
        let tokenizer = self.tokenizer();
        let start = row.text.len();
        let prefix = tokenizer.decode(&row.tokens[row.text_from..row.text_to], true)?;
        let window = tokenizer.decode(&row.tokens[row.text_from..], true)?;
        let Some(piece) = window.strip_prefix(prefix.as_str()) else {
            // A tokenizer whose pieces do not concatenate: take the whole text.
            row.text = tokenizer.decode(&row.tokens, true)?;
            (row.text_from, row.text_to) = (row.tokens.len(), row.tokens.len());
            return Ok((0, String::new()));
        };
        if piece.is_empty() || piece.ends_with('\u{FFFD}') {
            return Ok((start, piece.trim_end_matches('\u{FFFD}').to_string()));
        }
        row.text.push_str(piece);
        row.text_from = row.text_to;
        row.text_to = row.tokens.len();
        Ok((start, String::new()))
    }

    /// Ends a row: its text is decoded whole (the followed text may lack a last partial
    /// character) and cut before the first stop string.
    fn finish(&self, row: &mut Row, reason: FinishReason, params: &GenerateParams) -> Result<()> {
        let mut text = self.tokenizer().decode(&row.tokens, true)?;
        let cut = params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min();
        let reason = match cut {
            Some(cut) => {
                text.truncate(cut);
                FinishReason::Stop
            }
            None => reason,
        };
        // The whole text extends what was sent, except where a tokenizer's pieces do not
        // concatenate; then the rest cannot be sent without taking something back.
        if let Some(sink) = &params.on_text {
            if let Some(rest) = text
                .get(..row.sent)
                .filter(|sent| row.text.get(..row.sent) == Some(*sent))
                .and_then(|_| text.get(row.sent..))
                .filter(|rest| !rest.is_empty())
            {
                sink.send(row.index, rest);
            }
        }
        row.sent = text.len();
        row.text = text;
        row.finish = Some(reason);
        Ok(())
    }
}

/// Sends the row's text that no later token can change: all of it but the bytes that could
/// begin a stop string.
fn send_settled(row: &mut Row, params: &GenerateParams) {
    let Some(sink) = &params.on_text else { return };
    let hold = params
        .stop
        .iter()
        .map(|s| s.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut end = row.text.len().saturating_sub(hold);
    while !row.text.is_char_boundary(end) {
        end -= 1;
    }
    if let Some(settled) = row.text.get(row.sent..end).filter(|t| !t.is_empty()) {
        sink.send(row.index, settled);
        row.sent = end;
    }
}

/// The step's drafts, with the draft model's guesses filled in where rows asked for them.
fn guess(
    drafter: &mut ModelDrafter,
    next: &[u32],
    drafts: Vec<StepDraft>,
    samplers: Vec<Sampler>,
) -> Result<Vec<Proposal>> {
    let lens: Vec<usize> = drafts.iter().map(|d| d.model_len).collect();
    let mut guesses = drafter.propose(next, &lens, samplers)?.into_iter();
    Ok(drafts
        .into_iter()
        .map(|d| {
            let tokens = guesses.next().unwrap_or_default();
            if d.model_len == 0 {
                return d.proposal;
            }
            Proposal {
                tokens,
                source: Source::Model,
            }
        })
        .collect())
}

/// One [`SuffixIndex`] per distinct prompt, and for each row its index and its place among
/// that prompt's rows.
fn suffix_indexes(prompts: &[Vec<u32>]) -> (Vec<SuffixIndex>, Vec<(usize, usize)>) {
    // Each distinct prompt's first row and its number of rows.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut place = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let g = match groups.iter().position(|&(f, _)| prompts[f] == *prompt) {
            Some(g) => g,
            None => {
                groups.push((i, 0));
                groups.len() - 1
            }
        };
        place.push((g, groups[g].1));
        groups[g].1 += 1;
    }
    let indexes = groups
        .iter()
        .map(|&(f, rows)| SuffixIndex::new(&prompts[f], rows))
        .collect();
    (indexes, place)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_draft_from_their_own_prompts_index() {
        let (a, b) = (vec![1, 2, 3], vec![1, 2, 4]);
        let (mut indexes, place) = suffix_indexes(&[a.clone(), b, a]);
        assert_eq!(indexes.len(), 2);
        assert_eq!(place, vec![(0, 0), (1, 0), (0, 1)]);
        // Row 2 sees what row 0 (same prompt) wrote, not what row 1 (another prompt) wrote.
        indexes[0].extend(0, &[7, 8, 9]);
        indexes[1].extend(0, &[7, 8, 5]);
        let p = indexes[0].propose(1, &[1, 2, 3, 7, 8], 4);
        assert_eq!(p.tokens, vec![9]);
        assert_eq!(p.source, Source::Siblings);
    }
}
