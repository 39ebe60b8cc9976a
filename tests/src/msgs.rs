//! Message types that several test files use, declared once. A test whose shape differs (an
//! extra field, another reply type) keeps its own; `tests/hygiene.rs` keeps its own on purpose.

use bus::Message;
use serde::{Deserialize, Serialize};

/// The README's outbound message: two placeholders, one payload field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
pub struct Outbound {
    /// The channel placeholder.
    pub channel: String,
    /// The instance placeholder.
    pub instance: String,
    /// Payload only.
    pub text: String,
}

/// An [`Outbound`] from its three fields.
pub fn outbound(channel: &str, instance: &str, text: &str) -> Outbound {
    Outbound {
        channel: channel.into(),
        instance: instance.into(),
        text: text.into(),
    }
}

/// A request with one placeholder, answered by a [`RouteReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(RouteReply)]
pub struct Delegate {
    /// The agent placeholder.
    pub agent: String,
    /// Payload only.
    pub task: String,
}

/// The reply to a [`Delegate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReply {
    /// Whether the agent took the task.
    pub accepted: bool,
}
