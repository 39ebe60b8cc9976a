//! The catalog: every message type of this binary, known at link time (DESIGN.md section 9).
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
