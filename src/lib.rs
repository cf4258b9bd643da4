//! hone: test-time compute scaling. A policy model writes candidates, a reward model scores
//! them, and a loop (best-of-N, TPO) spends a per-query compute budget to find a better answer.
//!
//! - [`budget`]: the compute unit, the per-query budget and the meter that spends it.
//! - [`strategy`]: the loops (plain decoding, best-of-N, weighted best-of-N, TPO) and their trace.
//!
//! The library knows nothing about HTTP; the binary's subcommands and the service call it.

pub mod budget;
pub mod strategy;
