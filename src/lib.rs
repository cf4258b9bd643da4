//! hone: test-time compute scaling. A policy model writes candidates, a reward model scores
//! them, and a loop (best-of-N, TPO) spends a per-query compute budget to find a better answer.
//!
//! - [`budget`]: the compute unit, the per-query budget and the meter that spends it.
//! - [`strategy`]: the loops (plain decoding, best-of-N, weighted best-of-N, TPO) and their trace.
//! - [`server`]: the HTTP service (`hone serve`) around the loops.
//! - [`eval`]: measuring answer quality (judge accuracy on labelled pairs).
//!
//! The loops know nothing about HTTP; the binary's subcommands and the service call them.

pub mod budget;
pub mod eval;
pub mod server;
pub mod strategy;
