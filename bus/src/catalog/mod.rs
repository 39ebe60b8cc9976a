//! The catalog: every message type of this binary, known at link time (`docs/design.md`, "The catalog").
//!
//! Each `#[derive(Message)]` registers one [`Descriptor`] with a static (through `inventory`,
//! no build script, nothing run before `main`). From them:
//! - [`catalog()`] lists every message type linked into the binary;
//! - [`overlaps`] finds two templates that can match the same subject, and
//!   [`assert_no_overlaps`] fails a test naming both types;
//! - [`asyncapi`] writes an AsyncAPI 3.0 document of them;
//! - [`serve`] answers catalog requests on [`CATALOG_SUBJECT`] for tools, and [`discover`]
//!   gathers the answers of every running service (what `bus catalog` prints).
//!
//! ```
//! use bus::Message;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[subject("agent.route.<agent>")]
//! #[reply(RouteReply)]
//! struct Delegate { agent: String, task: String }
//!
//! #[derive(Serialize, Deserialize)]
//! struct RouteReply { accepted: bool }
//!
//! let delegate = bus::catalog().into_iter().find(|d| d.type_name == "Delegate").unwrap();
//! assert_eq!(delegate.template, "agent.route.<agent>");
//! assert_eq!(delegate.placeholders, ["agent"]);
//! assert_eq!(delegate.reply.as_deref(), Some("RouteReply"));
//! bus::catalog::assert_no_overlaps();
//! ```
//!
//! # What a descriptor holds
//!
//! Template, placeholders, fields with their types as written, reply type. The stream is not
//! part of it: streams are declared on the builder at run time, so `Descriptor::stream` is
//! `None`.
//!
//! # Overlaps and typed fan-in
//!
//! [`overlaps`] lists pairs of types whose templates can match the same subject, each with an
//! example subject. Put [`assert_no_overlaps`] in a test of your crate: it fails naming both
//! types (`` `a::Ping` (`plugin.inbound.<channel>.ping`) and `a::SlackEvent`
//! (`plugin.inbound.slack.<kind>`) can both be sent on `plugin.inbound.slack.ping` ``). The rule
//! is `bus_subject::templates_overlap`, the same `const fn` the `Messages` derive checks with:
//! one subscription decoding each message into the variant whose template matches its subject.
//!
//! ```
//! use bus::{Bus, Message, Messages};
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! #[subject("agent.events.<agent>.started")]
//! pub struct Started { pub agent: String, pub pid: u32 }
//!
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! #[subject("agent.events.<agent>.stopped")]
//! pub struct Stopped { pub agent: String, pub code: i32 }
//!
//! // Two variants whose templates can match the same subject do not compile.
//! #[derive(Debug, Messages)]
//! pub enum AgentEvent { Started(Started), Stopped(Stopped) }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! let started = bus::catalog().into_iter().find(|d| d.type_name == "Started").unwrap();
//! assert_eq!(started.template, "agent.events.<agent>.started");
//! assert_eq!(started.placeholders, ["agent"]);
//!
//! let bus = Bus::local().await?;
//! let mut events = AgentEvent::subscribe(&bus, "agent.events.>").await?;
//! Stopped { agent: "planner".into(), code: 0 }.publish(&bus).await?;
//! let env = events.next().await.unwrap()?;
//! assert!(matches!(env.body(), AgentEvent::Stopped(s) if s.code == 0));
//! // `AgentEvent::handle(&bus, "agent.events.>", handler)` runs a handler the same way; a
//! // subject no variant fits is an `Err` item (a dead letter for `handle`) naming the subject.
//! # Ok(()) }
//! ```
//!
//! # AsyncAPI, discovery, services
//!
//! - [`asyncapi`] gives an AsyncAPI 3.0 document (`serde_json::Value`): one channel per type
//!   with its placeholders as parameters, `send`/`receive` operations (request types:
//!   `request<Type>`/`serve<Type>` with a reply), messages with content type
//!   `application/msgpack` and a JSON Schema of the payload. The repository's
//!   `tests/tests/catalog.rs` validates it against the AsyncAPI 3.0 JSON Schema of the npm
//!   package `@asyncapi/specs` (installed by `tests/run.sh`).
//! - [`serve`] answers catalog requests on [`CATALOG_SUBJECT`] (its own subscription, off the
//!   publish and delivery paths); [`discover`] gathers the answers of every running service
//!   ([`Discovered`]: `services`, `messages()`, `table()`, `asyncapi()`). That is what
//!   `bus catalog` and `bus catalog --asyncapi` print.
//! - `bus::service::Service::builder(name, version).start(&bus)` registers a NATS service
//!   (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`; `nats micro ls` lists it), and
//!   `service.serve(T::filter(), handler)` answers request type `T` as one of its
//!   endpoints, named after the type, counted by the service API (NATS only).
//!
//! `cargo run --example catalog` prints the table (from `discover`, one in-process service;
//! `-- --asyncapi` prints the document):
//!
//! ```text
//! TYPE      SUBJECT                               REPLY       SERVICES   FIELDS
//! Started   agent.events.<agent>.started          -           planner-1  agent: String, pid: u32
//! Stopped   agent.events.<agent>.stopped          -           planner-1  agent: String, code: i32
//! Delegate  agent.route.<agent>                   RouteReply  planner-1  agent: String, task: String
//! Outbound  plugin.outbound.<channel>.<instance>  -           planner-1  channel: String, instance: String, text: String
//! ```

mod asyncapi;
mod discover;
mod overlap;
mod registry;
mod schema;

pub use self::asyncapi::{asyncapi, asyncapi_of};
pub use self::discover::{
    discover, render_table, serve, Discovered, Responder, ServiceCatalog, CATALOG_SUBJECT,
};
pub use self::overlap::{assert_no_overlaps, overlaps, overlaps_of, Overlap};
#[doc(hidden)]
pub use self::registry::Registration;
pub use self::registry::{catalog, Descriptor, FieldDescriptor};
pub use self::schema::payload_schema;
