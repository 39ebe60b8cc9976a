//! # bus: a typed, durable event bus for plugins and agents
//!
//! Derive [`Message`] on a struct with a `#[subject("…")]` template, and `bus` generates typed
//! `publish`, `subscribe`, `filter` (and, with `#[reply(T)]`, `request` and `serve`) methods that
//! carry it as MessagePack over NATS or over an embedded in-process broker. A misspelled subject
//! fails at compile time; a placeholder value that would widen a subject fails at run time; on
//! NATS every publish goes through a SQLite outbox first, so a server restart loses nothing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! use bus::{Bus, Message};
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
//! #[subject("plugin.outbound.<channel>.<instance>")]
//! pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
//! #[subject("agent.route.<agent>")]
//! #[reply(RouteReply)]
//! pub struct Delegate { pub agent: String, pub task: String }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct RouteReply { pub accepted: bool }
//!
//! let bus = Bus::local().await?;
//!
//! // plugin.outbound.slack.*
//! let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel("slack")).await?;
//! Outbound { channel: "slack".into(), instance: "a1".into(), text: "hi".into() }
//!     .publish(&bus)
//!     .await?;
//! let env = sub.next().await.unwrap()?;
//! assert_eq!(env.subject(), "plugin.outbound.slack.a1");
//!
//! Delegate::serve(&bus, Delegate::filter(), |req| async move {
//!     Ok::<_, bus::Error>(RouteReply { accepted: req.task == "t" })
//! })
//! .await?;
//! let reply = Delegate { agent: "planner".into(), task: "t".into() }.request(&bus).await?;
//! assert!(reply.accepted);
//! # Ok(()) }
//! ```
//!
//! See the README for the subject rules, the wire format and the outbox guarantees.
//!
//! # Features
//!
//! - `nats` (default): the NATS backend ([`NatsBroker`], `BusBuilder::nats` and its connection
//!   options), on async-nats.
//! - `outbox` (default): the SQLite outbox (`BusBuilder::outbox_path`, `Bus::dead_letters`),
//!   on rusqlite.
//! - `metrics` (default): counters, gauges and a histogram through the `metrics` facade (see
//!   [`metrics`]); off, they compile to nothing.
//! - `opentelemetry`: trace contexts taken from and given to OpenTelemetry through
//!   `tracing-opentelemetry` (see [`trace`]); without it they travel in span extensions.
//!
//! With neither (`default-features = false`) `bus` is a local-only bus with no network or
//! SQLite code in its dependency tree; any [`Broker`] can still be plugged in with
//! [`BusBuilder::broker`].

#![forbid(unsafe_code)]

// The derive names `::bus::…`; inside this crate that is the crate itself (for `Health`).
extern crate self as bus;

pub mod broker;
mod builder;
pub mod catalog;
// Named `handle` inside the crate: the root name `bus` is the crate itself (see above).
mod codec;
pub mod durable;
mod envelope;
mod error;
mod fan_in;
#[path = "bus.rs"]
mod handle;
pub mod handler;
pub mod headers;
mod health;
mod local;
mod message;
pub mod metrics;
mod msg_id;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "outbox")]
pub mod outbox;
mod retry;
#[cfg(feature = "nats")]
pub mod service;
mod stop;
pub mod stream;
mod subscription;
pub mod trace;

#[doc(hidden)]
pub mod __private;

pub use crate::broker::{
    Broker, ConnectionState, RawMessage, RawSubscription, Refusal, SubscriptionStats,
};
pub use crate::builder::BusBuilder;
#[cfg(feature = "outbox")]
pub use crate::builder::DEFAULT_OUTBOX_PATH;
pub use crate::catalog::catalog;
pub use crate::envelope::Envelope;
pub use crate::error::{Error, Result};
pub use crate::fan_in::{FanIn, Messages};
pub use crate::handle::{
    Bus, CloseReport, ServeHandle, DEFAULT_CLOSE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
};
pub use crate::handler::{Handler, HandlerOptions, HandlerStats};
pub use crate::headers::{Headers, WireHeaders};
pub use crate::health::Health;
pub use crate::local::{LocalBroker, LocalOptions};
pub use crate::message::{Filter, FilterValue, Message, Request, SubjectToken};
pub use crate::msg_id::new_msg_id;
#[cfg(feature = "nats")]
pub use crate::nats::{redact_url, NatsAuth, NatsBroker, NatsOptions};
#[cfg(feature = "outbox")]
pub use crate::outbox::{DeadLetter, DeadLetters, Durability, OutboxOptions, OutboxStats};
pub use crate::retry::RetryPolicy;
pub use crate::stream::StreamConfig;
pub use crate::subscription::Subscription;
/// The derive: `#[derive(Message)]` with `#[subject("…")]` and optional `#[reply(T)]`.
pub use bus_macros::Message;
/// The fan-in derive: `#[derive(Messages)]` on an enum whose variants each hold one message type.
pub use bus_macros::Messages;
