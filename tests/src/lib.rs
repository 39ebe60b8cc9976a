//! Shared test support for `bus`: the nats-server harness and the broker conformance suite.

pub mod conformance;
pub mod server;
