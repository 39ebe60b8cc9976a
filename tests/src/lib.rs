//! Shared test support for `bus`: the nats-server harness, the broker conformance
//! suite, a third broker implementation (`recording`), and the message types several test
//! files share.

pub mod conformance;
pub mod jetstream;
pub mod msgs;
pub mod recording;
pub mod server;
pub mod support;

/// The README's Rust examples, compiled and run as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
