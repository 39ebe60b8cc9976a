//! Shared test support for `bus`: the nats-server harness, the broker conformance
//! suite, a third broker implementation (`recording`), and the message types several test
//! files share.

pub mod conformance;
pub mod jetstream;
pub mod lanes;
pub mod msgs;
pub mod recording;
pub mod server;
pub mod support;
pub mod trace_chain;

/// The README's Rust examples, compiled and run as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of the other manuals (wire format, operator CLI, benchmark): each is marked
/// with its language (`text`, `sh`, `python`, `json`), so a Rust block added there is compiled too.
#[cfg(doctest)]
#[doc = include_str!("../../docs/wire-format.md")]
pub struct WireFormatDoctests;

/// See [`WireFormatDoctests`].
#[cfg(doctest)]
#[doc = include_str!("../../bus-cli/README.md")]
pub struct CliManualDoctests;

/// See [`WireFormatDoctests`].
#[cfg(doctest)]
#[doc = include_str!("../../benches/README.md")]
pub struct BenchManualDoctests;
