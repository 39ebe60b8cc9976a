//! Shared test support for `bus`: the nats-server harness and the broker conformance suite.

pub mod conformance;
pub mod server;

/// The README's Rust examples, compiled and run as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
