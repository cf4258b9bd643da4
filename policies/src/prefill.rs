//! Prefill in chunks that can be interrupted.
//!
//! One forward call over a long prompt cannot be stopped: on a 2-core CPU a 7,600-token prompt
//! held the model for minutes after its client had gone. So prompts are fed in calls of about
//! [`prefill_chunk`] tokens, and an [`Interrupt`] (a cancel flag, a deadline) is checked before
//! each call: a cancelled prefill stops within one chunk.
//!
//! Each call appends to the KV cache, so the cache ends up holding what one call would have
//! written. The logits are bit-identical too, on the CPU and with hone's CUDA kernels: a token's
//! logits do not depend on how its row was split into calls (see `policies/src/attention.rs`,
//! `kernels/decode.cu` and `tests/engine.rs`).

use crate::error::{PolicyError, Result};
use crate::kv_cache::KvCache;
use crate::model::{Logits, Transformer};
use candle_core::{Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Work per forward call on the CPU, in [`token_cost`] units (a token at position 0 is one):
/// about 0.4 s for the default model on 2 cores, which prefills about 117 tok/s at the start of
/// a prompt. Calls this size cost hardly more per token than one large call there, as the CPU
/// matmul is compute-bound.
pub const CPU_PREFILL_CHUNK: usize = 48;

/// Work per forward call on an accelerator, where larger calls are much cheaper per token and
/// a call this size still takes a fraction of a second.
pub const DEVICE_PREFILL_CHUNK: usize = 512;

/// Every this many positions of context add the cost of one more token at position 0 to a
/// token's cost: its attention reads every earlier key. Fitted to what the audit measured on 2
/// cores with the default model (780 tokens in 11 s, 7,600 in 490 s: a token at position p
/// took about 1 + p / 580 times as long as one at position 0), so that a call late in a long
/// prompt takes fewer tokens and about as long as an early one.
const ATTENTION_SPAN: f64 = 580.0;

/// Work per forward call on `device`, in [`token_cost`] units. Fixed per device rather than
/// timed, so that the same request is split the same way on every run (with candle's fallback
/// products on a GPU, the split changes the rounding).
pub fn prefill_chunk(device: &Device) -> usize {
    if device.is_cpu() {
        CPU_PREFILL_CHUNK
    } else {
        DEVICE_PREFILL_CHUNK
    }
}

/// The cost of prefilling the token at `position`, relative to one at position 0.
pub fn token_cost(position: usize) -> f64 {
    1.0 + position as f64 / ATTENTION_SPAN
}

/// When to give up on model work: a flag another thread sets (the client went away) and a
/// deadline. The default never interrupts.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    pub cancel: Option<Arc<AtomicBool>>,
    pub deadline: Option<Instant>,
}

impl Interrupt {
    /// [`PolicyError::Cancelled`] once the flag is set, [`PolicyError::DeadlinePassed`] once
    /// the deadline has passed, else `Ok`.
    pub fn check(&self) -> Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(PolicyError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(PolicyError::DeadlinePassed);
        }
        Ok(())
    }
}

/// What a prefill returns for each row's last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Logits, `[batch, vocab]`, as [`Transformer::forward`] gives them.
    Logits,
    /// Final normalized hidden states, `[batch, hidden]` (the input of a reward head), as
    /// [`Transformer::forward_hidden`] gives them.
    Hidden,
}

impl Transformer {
    /// Runs whole prompts (`rows[i]` continues row `i` of `cache`) through the model in calls
    /// of about [`prefill_chunk`] tokens, checking `interrupt` before each call, and returns
    /// `output` for every row's last token: what one [`Transformer::forward`] call with
    /// [`Logits::Last`] would return.
    pub fn prefill(
        &self,
        rows: &[&[u32]],
        cache: &mut KvCache,
        output: Output,
        interrupt: &Interrupt,
    ) -> Result<Tensor> {
        self.prefill_in_chunks(rows, cache, output, interrupt, prefill_chunk(self.device()))
    }

    /// [`Self::prefill`] with about `chunk` units of [`token_cost`] per call over all rows.
    ///
    /// Every call must advance every row by at least one token (the model refuses an empty
    /// row), and every row must end in the last call, whose output is the answer. So every row
    /// is split into the same number of calls, in pieces of about equal cost: the calls are
    /// the total cost over `chunk`, rounded up, but never more than the shortest row has
    /// tokens. A batch mixing a very short row with a very long one therefore takes fewer,
    /// larger calls.
    pub fn prefill_in_chunks(
        &self,
        rows: &[&[u32]],
        cache: &mut KvCache,
        output: Output,
        interrupt: &Interrupt,
        chunk: usize,
    ) -> Result<Tensor> {
        let starts: Vec<usize> = (0..rows.len())
            .map(|i| cache.next_position(i) as usize)
            .collect();
        let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let calls = calls(&starts, &lens, chunk);
        let ends: Vec<Vec<usize>> = starts
            .iter()
            .zip(&lens)
            .map(|(&start, &len)| piece_ends(start, len, calls))
            .collect();
        let pieces = |k: usize| -> Vec<&[u32]> {
            rows.iter()
                .zip(&ends)
                .map(|(row, ends)| {
                    let begin = if k == 0 { 0 } else { ends[k - 1] };
                    &row[begin..ends[k]]
                })
                .collect()
        };
        // Only the cache matters before the last call; hidden states skip the head.
        for k in 0..calls - 1 {
            interrupt.check()?;
            self.forward_hidden(&pieces(k), cache, Logits::Last)?;
        }
        interrupt.check()?;
        let last = pieces(calls - 1);
        match output {
            Output::Logits => self.forward(&last, cache, Logits::Last),
            Output::Hidden => self.forward_hidden(&last, cache, Logits::Last),
        }
    }
}

/// The cost of prefilling `len` tokens after the `start` a row already holds.
fn row_cost(start: usize, len: usize) -> f64 {
    (start..start + len).map(token_cost).sum()
}

/// How many forward calls a prefill takes (see [`Transformer::prefill_in_chunks`]): rows
/// starting at positions `starts`, with `lens` tokens to feed.
fn calls(starts: &[usize], lens: &[usize], chunk: usize) -> usize {
    let total: f64 = starts.iter().zip(lens).map(|(&s, &l)| row_cost(s, l)).sum();
    let shortest = lens.iter().copied().min().unwrap_or(0);
    let calls = (total / chunk.max(1) as f64).ceil() as usize;
    calls.clamp(1, shortest.max(1))
}

/// Where each of `calls` pieces of a row of `len` tokens (after `start` held ones) ends: about
/// equal in cost, each at least one token. The row needs at least `calls` tokens, else its
/// pieces past the last token come out empty (and the model refuses them).
fn piece_ends(start: usize, len: usize, calls: usize) -> Vec<usize> {
    let share = row_cost(start, len) / calls as f64;
    let mut ends = Vec::with_capacity(calls);
    let mut spent = 0.0;
    for i in 0..len {
        spent += token_cost(start + i);
        // After closing a piece at token i: pieces still to fill, and tokens left for them.
        let pieces_left = calls - ends.len() - 1;
        let tokens_left = len - i - 1;
        if pieces_left == 0 {
            break;
        }
        let due = spent >= share * (ends.len() + 1) as f64;
        if (due && tokens_left >= pieces_left) || tokens_left == pieces_left {
            ends.push(i + 1);
        }
    }
    ends.push(len);
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces of a row, from their ends.
    fn split(len: usize, ends: &[usize]) -> Vec<std::ops::Range<usize>> {
        let mut begin = 0;
        let pieces = ends
            .iter()
            .map(|&end| {
                let piece = begin..end;
                begin = end;
                piece
            })
            .collect();
        assert_eq!(begin, len);
        pieces
    }

    #[test]
    fn pieces_cover_every_row_once_and_are_never_empty() {
        for (start, len, calls) in [(0, 100, 5), (0, 37, 5), (0, 5, 5), (300, 9, 4), (0, 1, 1)] {
            let ends = piece_ends(start, len, calls);
            assert_eq!(ends.len(), calls, "{start} {len} {calls}");
            assert!(split(len, &ends).iter().all(|p| !p.is_empty()), "{ends:?}");
        }
    }

    #[test]
    fn pieces_cost_about_the_same_so_late_ones_are_shorter() {
        let (len, chunk) = (4096, CPU_PREFILL_CHUNK);
        let calls = calls(&[0], &[len], chunk);
        let pieces = split(len, &piece_ends(0, len, calls));
        let costs: Vec<f64> = pieces.iter().map(|p| row_cost(p.start, p.len())).collect();
        let most = costs.iter().copied().fold(0.0, f64::max);
        // Each piece costs at most a chunk plus one late token.
        assert!(most <= chunk as f64 + token_cost(len), "{most}");
        assert!(pieces[0].len() > 4 * pieces[calls - 1].len(), "{pieces:?}");
    }

    #[test]
    fn the_shortest_row_bounds_the_number_of_calls() {
        assert_eq!(calls(&[0, 0], &[1000, 3], 32), 3);
        assert_eq!(
            calls(&[0], &[32], 32),
            2,
            "32 tokens cost a little more than 32"
        );
        assert_eq!(calls(&[0], &[10], 32), 1);
        assert_eq!(calls(&[], &[], 32), 1);
    }

    #[test]
    fn an_interrupt_reports_why() {
        assert!(Interrupt::default().check().is_ok());
        let flag = Arc::new(AtomicBool::new(true));
        let cancelled = Interrupt {
            cancel: Some(flag),
            deadline: None,
        };
        assert!(matches!(cancelled.check(), Err(PolicyError::Cancelled)));
        let late = Interrupt {
            cancel: None,
            deadline: Some(Instant::now()),
        };
        assert!(matches!(late.check(), Err(PolicyError::DeadlinePassed)));
    }
}
