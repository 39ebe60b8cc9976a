//! The scenarios, grouped by backend. Each implements [`Rounds`](crate::runner::Rounds): a
//! baseline round and a bus round of the same work.

pub mod dedupe;
pub mod jetstream;
pub mod keyed;
pub mod latency;
pub mod local;
pub mod nats;
pub mod outbox;
pub mod rss;
pub mod scaling;
