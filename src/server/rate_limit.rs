//! Rate limits on the model routes: a token bucket per API key (when the server has keys) and
//! per `user` (when a request names one), `rate_limit` requests a minute each, with bursts of
//! up to `rate_limit_burst` (the per-minute rate unless set).
//!
//! Only requests that would run the model are counted (`/optimize`, chat completions): they
//! are what one client can take from the others. Feedback, listings and probes are cheap, and
//! an offline grader may send feedback by the thousand. A request counts once its body is read,
//! before its values are checked, so a stream of bad requests is limited too.
//!
//! A request must find a token in every bucket that applies, and takes one from each only when
//! it does: one refused by its user's limit does not spend its key's token. Buckets are keyed
//! by a hash of the key or user (SipHash with a key drawn at startup), never the text: a
//! `user` can be as long as a body, and an API key should not sit in one more place. At most
//! [`MAX_BUCKETS`] are kept; past that the least recently used goes, which costs its owner
//! nothing but a fresh, full bucket. A user who invents new names gets new buckets (`user` is
//! whatever the client says it is): the per-user limit shares a key among its users fairly, and
//! the per-key limit is what binds a client.

use super::lock;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept at most: about 80 bytes each (the bucket, its index entry and its place in the
/// recency order), so about 8 MB when full.
pub const MAX_BUCKETS: usize = 100_000;

/// Floating-point error allowed when a token is counted: a bucket refilled in steps may sum to
/// 0.999...9 where it holds one.
const SLACK: f64 = 1e-9;

/// Who a bucket limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum By {
    Key,
    User,
}

impl By {
    /// The value of `hone_rate_limited_total`'s `by` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::User => "user",
        }
    }
}

/// A refusal: which limit, and the whole seconds until it lets a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub by: By,
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Its place in the recency order.
    used: u64,
}

pub struct RateLimiter {
    per_minute: u32,
    burst: u32,
    hasher: RandomState,
    max_buckets: usize,
    inner: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_id: HashMap<u64, Bucket>,
    /// Recency order: `used` → bucket id, oldest first.
    order: BTreeMap<u64, u64>,
    clock: u64,
}

impl RateLimiter {
    /// `per_minute` requests a minute, bursts of `burst` (both at least 1), keeping at most
    /// `max_buckets` buckets (at least 2: one request may need a key's and a user's).
    pub fn new(per_minute: u32, burst: u32, max_buckets: usize) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
            hasher: RandomState::new(),
            max_buckets: max_buckets.max(2),
            inner: Mutex::new(Buckets::default()),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Tokens that come back in `secs` seconds (multiplied before dividing: 30 s at 2 a minute
    /// is exactly one token).
    fn refill(&self, secs: f64) -> f64 {
        secs * f64::from(self.per_minute) / 60.0
    }

    /// Whole seconds until `tokens` reach one, rounded up (a client that waits this long
    /// finds its token), at least one; a rounding error's worth early is on time.
    fn wait(&self, tokens: f64) -> u64 {
        let secs = (1.0 - tokens) * 60.0 / f64::from(self.per_minute);
        (secs - SLACK).ceil().max(1.0) as u64
    }

    /// Lets a request by `who` through at `now`, taking a token from each of their buckets, or
    /// refuses it, taking none, naming the limit that keeps it waiting longest.
    pub fn check(&self, who: &[(By, &str)], now: Instant) -> Result<(), Limited> {
        let ids: Vec<(By, u64)> = who
            .iter()
            .map(|&(by, name)| (by, self.hasher.hash_one((by, name))))
            .collect();
        let mut buckets = lock(&self.inner);
        // Each bucket as of now: refilled since its last use, or new and full.
        let refilled: Vec<(By, u64, f64)> = ids
            .iter()
            .map(|&(by, id)| {
                let tokens = buckets.by_id.get(&id).map_or(f64::from(self.burst), |b| {
                    let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
                    (b.tokens + self.refill(elapsed)).min(f64::from(self.burst))
                });
                (by, id, tokens)
            })
            .collect();
        let refusal = refilled
            .iter()
            .filter(|(_, _, tokens)| *tokens < 1.0 - SLACK)
            .map(|&(by, _, tokens)| Limited {
                by,
                retry_after_secs: self.wait(tokens),
            })
            .max_by_key(|l| l.retry_after_secs);
        let spend = if refusal.is_some() { 0.0 } else { 1.0 };
        for (_, id, tokens) in refilled {
            buckets.put(id, tokens - spend, now, self.max_buckets);
        }
        refusal.map_or(Ok(()), Err)
    }
}

impl Buckets {
    /// Stores a bucket as the most recently used, evicting the least recently used past `max`.
    fn put(&mut self, id: u64, tokens: f64, now: Instant, max: usize) {
        self.clock += 1;
        let used = self.clock;
        let bucket = Bucket {
            tokens,
            updated: now,
            used,
        };
        if let Some(old) = self.by_id.insert(id, bucket) {
            self.order.remove(&old.used);
        }
        self.order.insert(used, id);
        while self.by_id.len() > max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_id.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ALICE: [(By, &str); 1] = [(By::User, "alice")];

    #[test]
    fn a_burst_then_refusal_until_a_token_refills() {
        // 2 a minute: a token every 30 s.
        let limiter = RateLimiter::new(2, 2, 100);
        let t0 = Instant::now();
        assert_eq!(limiter.check(&ALICE, t0), Ok(()));
        assert_eq!(limiter.check(&ALICE, t0), Ok(()));
        let refused = limiter.check(&ALICE, t0).unwrap_err();
        assert_eq!(
            refused,
            Limited {
                by: By::User,
                retry_after_secs: 30
            }
        );
        // Another user has a bucket of their own.
        assert_eq!(limiter.check(&[(By::User, "bob")], t0), Ok(()));
        // 10 s later a third of a token has come back: 20 s to wait.
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(limiter.check(&ALICE, t10).unwrap_err().retry_after_secs, 20);
        // At 30 s a whole token is there, and only one.
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(limiter.check(&ALICE, t30), Ok(()));
        assert!(limiter.check(&ALICE, t30).is_err());
        // A long wait refills to the burst, not beyond it.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.check(&ALICE, later), Ok(()));
        assert_eq!(limiter.check(&ALICE, later), Ok(()));
        assert!(limiter.check(&ALICE, later).is_err());
    }

    #[test]
    fn the_burst_can_differ_from_the_rate() {
        let limiter = RateLimiter::new(60, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(&ALICE, t0), Ok(()));
        }
        assert_eq!(limiter.check(&ALICE, t0).unwrap_err().retry_after_secs, 1);
        assert_eq!(limiter.check(&ALICE, t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn a_request_spends_from_every_bucket_or_none() {
        let limiter = RateLimiter::new(2, 2, 100);
        let t0 = Instant::now();
        let both = |user| [(By::Key, "k1"), (By::User, user)];
        assert_eq!(limiter.check(&both("alice"), t0), Ok(()));
        assert_eq!(limiter.check(&[(By::User, "alice")], t0), Ok(()));
        // Alice is out; the refusal leaves the key's last token alone.
        let refused = limiter.check(&both("alice"), t0).unwrap_err();
        assert_eq!(refused.by, By::User);
        assert_eq!(limiter.check(&both("bob"), t0), Ok(()));
        // Now the key is out too, whoever asks.
        assert_eq!(limiter.check(&both("carol"), t0).unwrap_err().by, By::Key);
        assert_eq!(limiter.check(&[(By::Key, "k2")], t0), Ok(()));
        // A key and a user of the same name are different buckets.
        assert_eq!(limiter.check(&[(By::Key, "alice")], t0), Ok(()));
    }

    #[test]
    fn the_least_recently_used_bucket_is_dropped() {
        let limiter = RateLimiter::new(1, 1, 2);
        let t0 = Instant::now();
        assert_eq!(limiter.check(&[(By::User, "a")], t0), Ok(()));
        assert_eq!(limiter.check(&[(By::User, "b")], t0), Ok(()));
        // `a` used again (refused), so `b` is the oldest when `c` arrives.
        assert!(limiter.check(&[(By::User, "a")], t0).is_err());
        assert_eq!(limiter.check(&[(By::User, "c")], t0), Ok(()));
        assert_eq!(lock(&limiter.inner).len(), 2);
        assert!(limiter.check(&[(By::User, "a")], t0).is_err());
        // `b` was forgotten: a fresh, full bucket.
        assert_eq!(limiter.check(&[(By::User, "b")], t0), Ok(()));
    }
}
