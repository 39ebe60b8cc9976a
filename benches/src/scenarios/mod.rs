//! The scenarios, grouped by backend. Each implements [`Rounds`](crate::runner::Rounds): a
//! baseline round and a bus round of the same work.

pub mod local;
pub mod nats;
pub mod rss;
