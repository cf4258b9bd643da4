//! The drafter: suffix lookup over everything a prompt's rows have seen, in the spirit of
//! SuffixDecoding (Oliaro et al. 2024).
//!
//! One [`SuffixIndex`] per prompt of a call holds the prompt (for a TPO update round: the
//! query, the chosen response being rewritten and the critique) and the text every row of that
//! prompt has written so far (the candidates of a round repeat each other). A row's draft is
//! what followed the longest suffix of its context that occurs in them: the continuations of
//! all occurrences of that suffix vote token by token, the most frequent wins, and the draft
//! ends where they disagree too much, so its length follows how sure the texts are. The index
//! costs a hash-map insertion per token; a lookup reads at most `MAX_CANDIDATES`
//! occurrences.

use crate::speculative::{Proposal, Source};
use std::collections::HashMap;

/// Tokens that must match before an occurrence counts (shorter matches are mostly chance).
const MIN_MATCH: usize = 2;
/// The longest suffix compared: among occurrences, the longer match ranks first. (16 drafted
/// no better in TPO: see docs/PERFORMANCE.md.)
const MAX_MATCH: usize = 4;
/// The most recent occurrences of a key read per lookup.
const MAX_CANDIDATES: usize = 64;
/// A draft goes on while its next token has at least this share of the votes.
const MIN_SHARE: f32 = 0.5;

/// Where the tokens after an occurrence of a key start: text `text`, offset `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Occurrence {
    text: usize,
    at: usize,
}

/// The texts one prompt's rows draft from, every position indexed by the `MIN_MATCH` tokens
/// that end there.
#[derive(Debug, Clone, Default)]
pub struct SuffixIndex {
    /// Text 0 is the prompt; text `1 + r` is row `r`'s tokens so far.
    texts: Vec<Vec<u32>>,
    /// For each key, the occurrences it ends, oldest first.
    after: HashMap<[u32; MIN_MATCH], Vec<Occurrence>>,
}

impl SuffixIndex {
    /// An index over `prompt` for `rows` rows that have written nothing yet.
    pub fn new(prompt: &[u32], rows: usize) -> Self {
        let mut index = Self {
            texts: vec![Vec::new(); 1 + rows],
            after: HashMap::new(),
        };
        for &token in prompt {
            index.push_text(0, token);
        }
        index
    }

    /// Row `row` has written `tokens` so far: the ones not indexed yet are added.
    pub fn extend(&mut self, row: usize, tokens: &[u32]) {
        let known = self.texts[1 + row].len().min(tokens.len());
        for &token in &tokens[known..] {
            self.push_text(1 + row, token);
        }
    }

    fn push_text(&mut self, text: usize, token: u32) {
        let t = &mut self.texts[text];
        t.push(token);
        if let Some(key) = t.last_chunk::<MIN_MATCH>() {
            let at = t.len();
            self.after
                .entry(*key)
                .or_default()
                .push(Occurrence { text, at });
        }
    }

    /// Up to `limit` tokens to draft for row `row`, whose context (prompt and tokens so far)
    /// is `context`; empty when its last tokens occur nowhere else.
    pub fn propose(&self, row: usize, context: &[u32], limit: usize) -> Proposal {
        let Some(key) = context.last_chunk::<MIN_MATCH>() else {
            return Proposal::default();
        };
        if limit == 0 {
            return Proposal::default();
        }
        let Some(all) = self.after.get(key) else {
            return Proposal::default();
        };
        // The most recent occurrences that have a token after them, with the length of their
        // match against the context's suffix; keep the longest.
        let recent = &all[all.len().saturating_sub(MAX_CANDIDATES)..];
        let scored: Vec<(Occurrence, usize)> = recent
            .iter()
            .filter(|o| o.at < self.texts[o.text].len())
            .map(|&o| (o, self.match_len(o, context)))
            .collect();
        let Some(best) = scored.iter().map(|&(_, len)| len).max() else {
            return Proposal::default();
        };
        let mut alive: Vec<Occurrence> = scored
            .into_iter()
            .filter(|&(_, len)| len == best)
            .map(|(o, _)| o)
            .collect();
        let mut tokens = Vec::new();
        while tokens.len() < limit {
            let i = tokens.len();
            // Votes for the next token, the latest occurrence first so that it wins ties.
            let mut votes: Vec<(u32, usize)> = Vec::new();
            let mut voters = 0;
            for o in alive.iter().rev() {
                let Some(&next) = self.texts[o.text].get(o.at + i) else {
                    continue;
                };
                voters += 1;
                match votes.iter_mut().find(|(t, _)| *t == next) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((next, 1)),
                }
            }
            let Some(&(top, n)) = votes.iter().reduce(|a, b| if b.1 > a.1 { b } else { a }) else {
                break;
            };
            if (n as f32) < MIN_SHARE * voters as f32 {
                break;
            }
            tokens.push(top);
            alive.retain(|o| self.texts[o.text].get(o.at + i) == Some(&top));
        }
        let own = 1 + row;
        // Counted apart, to show what the siblings are worth: drafts that neither the prompt
        // nor the row's own text supported.
        let source = if !tokens.is_empty() && alive.iter().all(|o| o.text != 0 && o.text != own) {
            Source::Siblings
        } else {
            Source::Text
        };
        Proposal { tokens, source }
    }

    /// How many tokens before `o` equal the context's last ones, up to `MAX_MATCH`.
    fn match_len(&self, o: Occurrence, context: &[u32]) -> usize {
        let before = &self.texts[o.text][..o.at];
        before
            .iter()
            .rev()
            .zip(context.iter().rev())
            .take(MAX_MATCH)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index over `prompt` and the rows' texts, and row 0's context.
    fn indexed(prompt: &[u32], rows: &[&[u32]]) -> (SuffixIndex, Vec<u32>) {
        let mut index = SuffixIndex::new(prompt, rows.len());
        for (r, text) in rows.iter().enumerate() {
            // In two parts, as decoding adds them.
            index.extend(r, &text[..text.len() / 2]);
            index.extend(r, text);
        }
        let context = [prompt, rows[0]].concat();
        (index, context)
    }

    #[test]
    fn proposes_what_followed_the_longest_match() {
        // "1 2 3" is followed by 4 5 6 in the prompt; "9 2 3" by 7 8. The context ends in
        // "1 2 3": the longer match wins over the more recent one.
        let prompt = [1, 2, 3, 4, 5, 6, 0, 9, 2, 3, 7, 8];
        let (index, context) = indexed(&prompt, &[&[1, 2, 3]]);
        let p = index.propose(0, &context, 8);
        assert_eq!(p.tokens, vec![4, 5, 6, 0, 9, 2, 3, 7]);
        assert_eq!(p.source, Source::Text);
        assert_eq!(index.propose(0, &context, 2).tokens, vec![4, 5]);
        assert_eq!(index.propose(0, &context, 0).tokens, Vec::<u32>::new());
    }

    #[test]
    fn a_draft_ends_where_its_sources_disagree() {
        // Three rows wrote "5 6 7" and went on with 8 8 9; the context ends in "5 6 7" too.
        // Two continue 8 then 1 and 2: no majority after 8.
        let rows: [&[u32]; 4] = [
            &[5, 6, 7],
            &[5, 6, 7, 8, 1],
            &[5, 6, 7, 8, 2],
            &[5, 6, 7, 9],
        ];
        let (index, context) = indexed(&[0], &rows);
        let p = index.propose(0, &context, 8);
        // 8 has two votes of three; after it, 1 and 2 have one each of two: a tie at half the
        // votes goes on, with the latest occurrence's token.
        assert_eq!(p.tokens, vec![8, 2]);
        assert_eq!(p.source, Source::Siblings, "only rows 1-3 wrote the draft");
        // With a third distinct continuation no token has half the votes.
        let rows: [&[u32]; 4] = [&[5, 6, 7], &[5, 6, 7, 1], &[5, 6, 7, 2], &[5, 6, 7, 3]];
        let (index, context) = indexed(&[0], &rows);
        assert_eq!(index.propose(0, &context, 8).tokens, Vec::<u32>::new());
    }

    #[test]
    fn nothing_is_proposed_without_an_earlier_occurrence() {
        let (index, context) = indexed(&[1, 2, 3], &[&[4, 5]]);
        assert_eq!(index.propose(0, &context, 4), Proposal::default());
        // The context's own last tokens have nothing after them.
        let (index, context) = indexed(&[1, 2], &[&[]]);
        assert_eq!(index.propose(0, &context, 4), Proposal::default());
    }
}
