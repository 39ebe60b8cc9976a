//! Derive macros for `bus`. Use them through the `bus` crate (`bus::Message`), which re-exports them;
//! the generated code refers to `::bus::__private` only.
//!
//! The pipeline has one file per stage, after `serde_derive`:
//! `ast` reads the struct, `attr` reads `#[subject]` and `#[reply]`, `check` applies the rules
//! (the subject grammar itself lives in `bus-subject`), and `expand` writes the tokens, with the
//! rustdoc of every generated item written by `doc`. Every
//! problem is collected in a `ctxt::Ctxt` so the user sees all of them at once, and the expansion
//! still runs on what could be understood so call sites do not fail in turn.

mod ast;
mod attr;
mod check;
mod ctxt;
mod doc;
mod expand;
mod messages;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `bus::Message` for a struct with named fields.
///
/// ```text
/// #[derive(Serialize, Deserialize, Message)]
/// #[subject("plugin.outbound.<channel>.<instance>")]
/// #[reply(OutboundReply)] // optional: makes the type a request
/// pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
/// ```
///
/// Generates the `Message` impl, a filter type `OutboundFilter` (one method per placeholder, taking
/// the field's type, plus `queue`), and the inherent methods `filter`, `publish`, `subscribe` (and
/// `request`, `serve` for `#[reply]` types), each documented with the subject template. The
/// template is checked at compile time.
#[proc_macro_derive(Message, attributes(subject, reply))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}

/// Derives `bus::Messages` for an enum whose variants each hold one message type.
///
/// ```text
/// #[derive(Messages)]
/// enum AgentEvent { Started(Started), Stopped(Stopped) }
/// ```
///
/// Generates `AgentEvent::subscribe(&bus, "agent.events.>")` (a stream of
/// `Result<Envelope<AgentEvent>>`) and `AgentEvent::handle(&bus, pattern, handler)`, which decode
/// each message into the variant whose subject template matches its subject. Two variants
/// whose templates can match the same subject are refused at compile time.
#[proc_macro_derive(Messages)]
pub fn derive_messages(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    messages::derive(&input).into()
}
