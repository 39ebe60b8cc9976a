//! Message headers and the header names `bus` puts on the wire.

use std::borrow::Cow;

/// Unique id of a message, stable across every retry (also sent as [`NATS_MSG_ID`]).
pub const MSG_ID: &str = "Bus-Msg-Id";
/// The same id under the name JetStream dedupes on.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// Always `application/msgpack` for typed messages.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The value of [`CONTENT_TYPE`].
pub const MSGPACK: &str = "application/msgpack";
/// The Rust type name of the payload.
pub const TYPE: &str = "Bus-Type";
/// Correlates a request and its reply.
pub const CORRELATION_ID: &str = "Bus-Correlation-Id";
/// Set on a reply when the responder's handler failed; the value is its error message.
pub const ERROR: &str = "Bus-Error";

/// Message headers: an ordered list of name/value pairs; a name may appear more than once.
///
/// Names compare case-sensitively, as in NATS.
///
/// ```
/// let mut h = bus::Headers::new();
/// h.insert("Tenant", "acme");
/// assert_eq!(h.get("Tenant"), Some("acme"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(Cow<'static, str>, String)>,
}

impl Headers {
    /// Empty headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty headers with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(n),
        }
    }

    /// Sets `name` to `value`, replacing any previous values.
    pub fn insert(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, value.into()));
    }

    /// Adds a value for `name`, keeping previous ones.
    pub fn append(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name);
    }

    /// All entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The size of these headers in the NATS wire encoding (`NATS/1.0\r\n` … `\r\n`), which counts
    /// against the server's max_payload.
    pub fn wire_len(&self) -> usize {
        if self.entries.is_empty() {
            return 0;
        }
        // "NATS/1.0\r\n" + "name: value\r\n"* + "\r\n"
        10 + self
            .entries
            .iter()
            .map(|(n, v)| n.len() + 2 + v.len() + 2)
            .sum::<usize>()
            + 2
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<N: Into<Cow<'static, str>>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers {
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}
