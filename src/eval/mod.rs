//! Measuring answer quality: how well a judge ranks labelled pairs ([`judges`]).
//!
//! A reward that prefers worse answers makes every loop worse than plain decoding, so a judge
//! is measured before it is trusted.

pub mod judges;
