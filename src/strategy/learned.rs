//! Where what the service learns about its policy lives: [`Learned`] shares the tallies `auto`
//! decides by (see [`super::tallies`]), and the lengths of responses that ended on their own,
//! among the queries that use the policy, and optionally keeps them in a file, rewritten after
//! every recorded round, so that a restart does not lose them.

use super::tallies::{Move, Tallies};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// How many natural response lengths [`Learned`] keeps (the most recent).
const LENGTHS_KEPT: usize = 256;

/// The tallies of one policy, shared by the queries that use it, and the lengths of its
/// responses that ended on their own. Optionally kept in a file, so that a restarted service,
/// or a new replica seeded with a copy, does not start from nothing.
#[derive(Debug, Default)]
pub struct Learned {
    tallies: Mutex<Tallies>,
    lengths: Mutex<VecDeque<usize>>,
    file: Option<Saving>,
}

/// Where [`Learned`] is kept and for which policy; the lock orders writers.
#[derive(Debug)]
struct Saving {
    path: PathBuf,
    policy: String,
    lock: Mutex<()>,
}

/// The file's contents.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// The policy the tallies were learned on: another policy's are no evidence for this one.
    policy: String,
    tallies: Tallies,
    lengths: Vec<usize>,
}

impl Learned {
    /// What is learned for `policy`, kept in `path`: read now if the file exists, written
    /// after every recorded round. A file that cannot be read, or that holds another policy's
    /// tallies, is an error (better than silently starting over).
    pub fn persistent(path: &Path, policy: &str) -> anyhow::Result<Self> {
        let learned = Self {
            file: Some(Saving {
                path: path.to_path_buf(),
                policy: policy.to_string(),
                lock: Mutex::new(()),
            }),
            ..Self::default()
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(learned),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let saved: Saved = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a file of learned tallies", path.display()))?;
        if saved.policy != policy {
            anyhow::bail!(
                "{} holds what was learned on policy `{}`, not `{policy}`; move it away or name \
                 another file",
                path.display(),
                saved.policy
            );
        }
        *lock(&learned.tallies) = saved.tallies;
        let kept = saved.lengths.len().saturating_sub(LENGTHS_KEPT);
        *lock(&learned.lengths) = saved.lengths.into_iter().skip(kept).collect();
        Ok(learned)
    }

    /// Writes the file, if there is one: to a temporary name, then renamed over the old one, so
    /// that a crash mid-write leaves the previous file whole. A failure is logged, not fatal:
    /// the service keeps answering with what it has in memory.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let _order = lock(&file.lock);
        let saved = Saved {
            policy: file.policy.clone(),
            tallies: self.snapshot(),
            lengths: lock(&self.lengths).iter().copied().collect(),
        };
        let tmp = file.path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &file.path));
        if let Err(e) = written {
            tracing::warn!(path = %file.path.display(), error = %e, "could not save auto's tallies");
        }
    }

    pub fn snapshot(&self) -> Tallies {
        *lock(&self.tallies)
    }

    /// Records the length in tokens of a response that ended on its own (not cut off).
    pub fn record_length(&self, tokens: usize) {
        let mut lengths = lock(&self.lengths);
        if lengths.len() == LENGTHS_KEPT {
            lengths.pop_front();
        }
        lengths.push_back(tokens);
    }

    /// The length that `share` of the recorded responses stay within, once `min_count` have
    /// been recorded.
    pub fn length_quantile(&self, share: f64, min_count: usize) -> Option<usize> {
        let mut lengths: Vec<usize> = lock(&self.lengths).iter().copied().collect();
        if lengths.is_empty() || lengths.len() < min_count {
            return None;
        }
        lengths.sort_unstable();
        let rank = (share.clamp(0.0, 1.0) * lengths.len() as f64).ceil() as usize;
        Some(lengths[rank.clamp(1, lengths.len()) - 1])
    }

    /// Records one round of `m`: its trials, how many won, and its cost relative to the
    /// query's first round (`None` when the round was cut short by the budget, which would
    /// make it look cheap).
    pub fn record(&self, m: Move, trials: u64, wins: u64, relative_cost: Option<f64>) {
        let mut tallies = lock(&self.tallies);
        let t = tallies.get_mut(m);
        t.trials += trials;
        t.wins += wins.min(trials);
        if let Some(c) = relative_cost.filter(|c| c.is_finite() && *c > 0.0) {
            t.rounds += 1;
            t.relative_cost += c;
        }
        drop(tallies);
        self.save();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere; keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temporary one, removed first if a past run left it.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hone-learned-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tallies_survive_a_restart_in_their_file() {
        let path = scratch("restart").join("auto.json");
        let first = Learned::persistent(&path, "smol").unwrap();
        assert_eq!(first.snapshot(), Tallies::default());
        assert!(
            !path.exists(),
            "nothing is written before anything is learned"
        );
        first.record_length(40);
        first.record(Move::Refine, 4, 1, Some(2.5));
        first.record(Move::Resample, 4, 3, None);
        let second = Learned::persistent(&path, "smol").unwrap();
        assert_eq!(second.snapshot(), first.snapshot());
        assert_eq!(second.snapshot().refine.trials, 4);
        assert_eq!(second.snapshot().resample.wins, 3);
        assert_eq!(second.length_quantile(1.0, 1), Some(40));
    }

    #[test]
    fn a_file_of_another_policy_or_of_garbage_is_refused() {
        let dir = scratch("refused");
        let path = dir.join("auto.json");
        Learned::persistent(&path, "smol")
            .unwrap()
            .record(Move::Refine, 4, 1, Some(2.0));
        let err = Learned::persistent(&path, "qwen").unwrap_err().to_string();
        assert!(err.contains("`smol`") && err.contains("`qwen`"), "{err}");
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "{\"refine\": 3").unwrap();
        let err = format!("{:#}", Learned::persistent(&garbage, "smol").unwrap_err());
        assert!(err.contains("garbage.json"), "{err}");
    }

    #[test]
    fn length_quantiles_need_enough_records_and_keep_the_recent_ones() {
        let learned = Learned::default();
        for t in 1..=10 {
            learned.record_length(t);
        }
        assert_eq!(learned.length_quantile(0.9, 11), None);
        assert_eq!(learned.length_quantile(0.9, 10), Some(9));
        assert_eq!(learned.length_quantile(1.0, 1), Some(10));
        assert_eq!(learned.length_quantile(0.0, 1), Some(1));
        for _ in 0..LENGTHS_KEPT {
            learned.record_length(3);
        }
        assert_eq!(learned.length_quantile(1.0, 1), Some(3));
    }

    #[test]
    fn unmeasured_costs_use_the_prior_and_cut_rounds_are_not_measured() {
        let learned = Learned::default();
        learned.record(Move::Refine, 4, 9, None);
        let t = learned.snapshot();
        assert_eq!(t.refine.wins, 4, "wins never exceed trials");
        assert_eq!(t.refine.rounds, 0);
        assert_eq!(t.refine.cost(Move::Refine), 2.5);
        assert_eq!(t.resample.cost(Move::Resample), 1.0);
    }
}
