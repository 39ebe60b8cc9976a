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
//! # Where the guides are
//!
//! - [`handler`]: handlers, their retries, concurrency, ordered mode, dead letters and stop.
//! - [`durable`] and [`stream`]: durable consumers on JetStream streams, and what each mode
//!   guarantees.
//! - `outbox` (feature `outbox`): the outbox's guarantees, its file, dead letters, recovery.
//! - [`Subscription`]: who receives a message, and the subject/body check.
//! - [`trace`], [`metrics`], [`Health`]: traces across processes, metrics, heartbeats.
//! - [`catalog`](mod@catalog): every message type of the binary, overlaps, AsyncAPI, discovery.
//! - [`Error`]: every failure and when it happens.
//! - [`broker`]: the contract of a broker, and writing one of your own.
//!
//! The wire format (for peers in other languages) is `docs/wire-format.md` in the repository,
//! the operator command `bus` is `bus-cli/README.md`.
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
//! - `testing`: `bus::testing`, a harness for your own tests (a recorded bus,
//!   quiescence, faults on demand, tokio's paused clock); for `[dev-dependencies]`.
//!
//! With neither (`default-features = false`) `bus` is a local-only bus with no network or
//! SQLite code in its dependency tree; any [`Broker`] can still be plugged in with
//! [`BusBuilder::broker`]. `cargo run -p bus-examples --example quickstart --no-default-features`
//! runs the tour on it, and `tests/run.sh` checks its dependency tree.
//!
//! # Backends
//!
//! A [`Bus`] runs on any `Arc<dyn Broker>`:
//! `Bus::builder().broker(Arc::new(MyBroker::new())).connect()`. The built-in [`LocalBroker`]
//! and `NatsBroker` are recognised there and called directly (no boxed future per publish); a
//! broker of your own goes through the trait. Its contract (NATS semantics, refusals before
//! delivery, order per subscriber) is written on the [`Broker`] trait, and
//! [`broker::check_publish`], [`broker::check_subscription`], [`RawSubscription::new`] and
//! [`broker::DropCounter`] give a third-party implementation the same checks and counters the
//! built-in ones use. The conformance suite of the repository (`tests/src/conformance.rs`) runs
//! unchanged on the local broker, on a real nats-server and on a broker written in the test
//! crate against the public API only.
//!
//! # Logging
//!
//! `bus` logs through `tracing` and installs no subscriber: your application chooses one, and
//! with `tracing-subscriber`'s `EnvFilter` the usual `RUST_LOG` applies. Targets are the module
//! paths, all under `bus`:
//!
//! | target | what it says |
//! | --- | --- |
//! | `bus::nats::events`, `bus::nats` | connected (`info`), disconnected and reconnecting, lame duck, slow consumer (`warn`), server and client errors (`error`) |
//! | `bus::outbox::drainer`, `bus::outbox::writer`, `bus::outbox` | send failures and retries (`debug`), messages dead-lettered, failed confirmations (`warn`), storage errors (`error`); a `debug` span per drained batch |
//! | `bus::outbox::dead_letters` | a dead letter replayed (`info`) |
//! | `bus::subscription` | undecodable payloads, slow-consumer drops, subject/body mismatches (`warn`) |
//! | `bus::local` | subscribe and unsubscribe (`debug`), each delivery (`trace`), slow consumers (`warn`) |
//! | `bus::handle` | `trace` spans `publish`, `request`, `serve`; a reply that cannot be sent (`warn`); `bus closed` (`info`) |
//! | `bus::trace` | `info` spans `handle`, `serve`, `receive`, `request` for messages that carry a `traceparent` (see [`trace`]) |
//! | `bus::handler` | a failed handler attempt (`debug`), a message dead-lettered by a handler, a slow handler (`warn`) |
//!
//! During an outage `bus` stays quiet: one `warn` when the connection is lost (`NATS
//! disconnected; reconnecting (publishes wait in the outbox)`), one `info` when it is back, with
//! the outage length and the outbox's depth (`NATS reconnected after 2.6s; sending the 3
//! messages queued in the outbox`, fields `outage_ms`, `queued`), and the reconnect attempts at
//! `debug`; a batch the lost connection interrupted is sent again at `debug` too. Only a refusal
//! (credentials, TLS) is an `error`, once per outage. async-nats itself logs each of its
//! connection events at `info` under the target `async_nats` (one line per reconnect attempt):
//! `RUST_LOG=info,async_nats=warn` hides them.
//!
//! `RUST_LOG=bus=info` shows the connection's life and every problem; `RUST_LOG=bus::outbox=debug`
//! follows the queue; `trace` is for debugging only (the `publish` span is made only when `trace`
//! is on, because even a disabled span costs a local publish a visible share). In your
//! application, with `tracing-subscriber`'s `fmt` and `env-filter` features:
//!
//! ```text
//! tracing_subscriber::fmt()
//!     .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
//!     .init();
//! ```
//!
//! # Shutdown and `Drop`
//!
//! [`Bus::close`] (or [`Bus::close_timeout`], default [`DEFAULT_CLOSE_TIMEOUT`], which says it
//! all) is the clean way out: handlers and responders finish what is in flight, the outbox is
//! flushed, and the returned [`CloseReport`] says whether that was in time and what is left.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! let bus = bus::Bus::local().await?;
//! let report = bus.close().await?;
//! assert!(report.stopped_in_time && report.flushed);
//! assert_eq!(report.left_queued, 0);
//! # Ok(()) }
//! ```
//!
//! Without `close`, a `Bus` shuts down when its last clone is dropped. What that does:
//!
//! - **Call [`Bus::flush`] first** (or [`Bus::flush_timeout`]). It returns once everything
//!   published before it is confirmed by the server (or dead-lettered). Without an outbox this is
//!   the only way to know: a publish that returned `Ok` may still sit in the client's buffer when
//!   the last handle goes, and is then lost.
//! - **With an outbox**, nothing committed is lost by a drop: the drainer stops, the writer
//!   finishes its current transaction and releases the file's lock (the drop waits for it,
//!   briefly, on the calling thread). What was not yet confirmed stays in the file and the next
//!   `Bus` on the same file sends it; a batch that was in flight may then arrive twice, with the
//!   same `Nats-Msg-Id`.
//! - **Subscriptions, handlers and responders outlive the `Bus` handle.** On NATS a live
//!   [`Subscription`] keeps the connection open and goes on receiving until it is dropped; on the
//!   local broker it yields what was already delivered to it, then ends once every handle on the
//!   broker is gone. Dropping a [`Handler`] or a [`ServeHandle`] leaves it running until the bus
//!   closes; call `stop()` ([`Handler::stop`] waits for its in-flight messages,
//!   [`ServeHandle::stop`] for its in-flight requests). Dropping a `Subscription`
//!   unsubscribes.
//! - Ending the tokio runtime ends every task of the bus; the outbox file is consistent at any
//!   point (SQLite WAL), so a killed process loses nothing it had committed.

#![forbid(unsafe_code)]

// The derive names `::bus::…`; inside this crate that is the crate itself (for `Health`).
extern crate self as bus;

/// Builder setters: each `fn name(arg: Type) => field = value;` is a `pub fn name(mut self,
/// arg: Type) -> Self` that sets `self.field` to `value` and returns `self`.
macro_rules! setters {
    ($($(#[$attr:meta])*
       fn $name:ident($($arg:ident: $ty:ty),*) => $($field:ident).+ = $value:expr;)*) => {$(
        $(#[$attr])*
        pub fn $name(mut self, $($arg: $ty),*) -> Self {
            self.$($field).+ = $value;
            self
        }
    )*};
}

// The modules from the bottom up: each imports only from modules above it in this list
// (ARCHITECTURE.md has the map).
pub mod broker;
mod clock;
mod codec;
mod connection;
mod dead_letter;
pub mod durable;
mod envelope;
mod error;
pub mod handler;
pub mod headers;
mod health;
mod inbox;
mod incoming;
mod local;
mod message;
pub mod metrics;
mod msg_id;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "outbox")]
pub mod outbox;
mod panic;
mod raw;
mod respond;
mod retry;
mod settled;
mod stop;
pub mod stream;
mod subscription;
pub mod trace;
// Named `handle` inside the crate: the root name `bus` is the crate itself (see above).
mod builder;
pub mod catalog;
mod fan_in;
#[path = "bus.rs"]
mod handle;
#[cfg(feature = "nats")]
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use crate::broker::DEFAULT_REQUEST_TIMEOUT;
pub use crate::broker::{
    Broker, ConnectionState, RawMessage, RawSubscription, Refusal, SubscriptionStats,
};
pub use crate::builder::BusBuilder;
#[cfg(feature = "outbox")]
pub use crate::builder::DEFAULT_OUTBOX_PATH;
pub use crate::catalog::catalog;
pub use crate::dead_letter::{DeadLetter, DeadLetters};
pub use crate::envelope::Envelope;
pub use crate::error::{Error, Result};
pub use crate::fan_in::FanIn;
pub use crate::handle::{Bus, CloseReport, DEFAULT_CLOSE_TIMEOUT};
pub use crate::handler::{Handler, HandlerOptions, HandlerStats};
pub use crate::headers::{Headers, WireHeaders};
pub use crate::health::Health;
pub use crate::incoming::Messages;
pub use crate::local::{LocalBroker, LocalOptions};
pub use crate::message::{Filter, FilterValue, Message, Request, SubjectToken};
pub use crate::msg_id::new_msg_id;
#[cfg(feature = "nats")]
pub use crate::nats::{redact_url, NatsAuth, NatsBroker, NatsOptions};
#[cfg(feature = "outbox")]
pub use crate::outbox::{Durability, OutboxOptions, OutboxStats};
pub use crate::respond::ServeHandle;
pub use crate::retry::RetryPolicy;
pub use crate::stream::StreamConfig;
pub use crate::subscription::Subscription;
/// The derive: `#[derive(Message)]` with `#[subject("…")]` and optional `#[reply(T)]`.
pub use bus_macros::Message;
/// The fan-in derive: `#[derive(Messages)]` on an enum whose variants each hold one message type.
pub use bus_macros::Messages;
