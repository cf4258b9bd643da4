//! Measuring answer quality: how well a judge ranks labelled pairs ([`judges`]), and what each
//! strategy buys at equal compute on a prompt set (`hone eval run`: [`prompts`] read, [`run`]
//! through the [`service`], [`grade`]d, summed up in a [`report`] with [`stats`] and an [`svg`]
//! chart).
//!
//! A reward that prefers worse answers makes every loop worse than plain decoding, so a judge
//! is measured before it is trusted; and a loop is worth its compute only if its answers are
//! measurably better than plain decoding's at the same cost.

pub mod grade;
pub mod judges;
pub mod prompts;
pub mod report;
pub mod run;
pub mod service;
pub mod stats;
pub mod svg;
