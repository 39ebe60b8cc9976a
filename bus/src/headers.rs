//! Message headers and the header names `bus` puts on the wire.

use std::borrow::Cow;

use crate::error::Error;

/// Unique id of a message, stable across every retry: the standard NATS header, which
/// JetStream dedupes on. The one id header `bus` sends.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The id header of older `bus` peers, which sent it beside [`MSG_ID`]: still read (by
/// [`Envelope::msg_id`](crate::Envelope::msg_id), the outbox, the dead letters), never sent.
pub const LEGACY_MSG_ID: &str = "Bus-Msg-Id";
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

/// The W3C trace context of the span a message was sent from (see [`crate::trace`]); sent only
/// from inside a span that carries one.
pub const TRACEPARENT: &str = "traceparent";

/// Every header name `bus` itself puts on the wire (received or read back from the outbox, they
/// are stored without a copy; the outbox's JSON view writes them without escaping).
#[cfg(any(feature = "nats", feature = "outbox"))]
pub(crate) const KNOWN_NAMES: [&str; 7] = [
    MSG_ID,
    LEGACY_MSG_ID,
    CONTENT_TYPE,
    TYPE,
    CORRELATION_ID,
    ERROR,
    TRACEPARENT,
];

/// The name as a `'static` string when it is one of [`KNOWN_NAMES`], so a name received or
/// read back is not allocated.
#[cfg(any(feature = "nats", feature = "outbox"))]
pub(crate) fn known_name(name: &str) -> Cow<'static, str> {
    match KNOWN_NAMES.into_iter().find(|k| *k == name) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.to_owned()),
    }
}

/// The message id in `headers`: [`MSG_ID`], or [`LEGACY_MSG_ID`] from an older peer.
pub(crate) fn msg_id(headers: &Headers) -> Option<&str> {
    headers.get(MSG_ID).or_else(|| headers.get(LEGACY_MSG_ID))
}

/// Why a header name cannot travel over NATS, or `None` when it can: printable ASCII
/// (`!` to `~`) without `:`, not empty. The one rule every backend and the outbox apply.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a header name cannot be empty")
    } else if name.bytes().any(|b| b == b':' || !(33..=126).contains(&b)) {
        Some("a header name must be printable ASCII without ':' or white space")
    } else {
        None
    }
}

/// Why a header value cannot travel over NATS, or `None` when it can: no CR, LF or NUL (CR and
/// LF would end the header line and let the value inject protocol; NUL is cut by peers written
/// in C). Any other UTF-8, including non-ASCII, is carried as is.
pub(crate) fn value_problem(value: &str) -> Option<&'static str> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        Some("a header value cannot contain CR, LF or NUL")
    } else {
        None
    }
}

/// Which headers a typed message carries on the wire; set with
/// [`BusBuilder::wire_headers`](crate::BusBuilder::wire_headers).
///
/// Why a choice: on async-nats 0.35 headers are the largest cost of a NATS message. The client
/// builds a SipHash `HashMap` of owned strings to send them and parses every header back into one
/// on receive. Measured here (`bus-bench`, 128-byte messages, end to end): raw async-nats sending
/// the four headers of [`Full`](WireHeaders::Full) by hand reached 0.18 of its own speed without
/// headers; with one header, 0.45. So the default sends only what a guarantee of the SDK needs.
///
/// Headers given to [`Bus::publish_with_headers`](crate::Bus::publish_with_headers) are always
/// sent, and a request always carries [`CORRELATION_ID`] (its reply copies it back).
///
/// ```no_run
/// # async fn run() -> Result<(), bus::Error> {
/// let bus = bus::Bus::builder()
///     .nats(["nats://127.0.0.1:4222"])
///     .wire_headers(bus::WireHeaders::Full)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireHeaders {
    /// Only the headers a guarantee needs (the default):
    /// - through the outbox, [`MSG_ID`] (`Nats-Msg-Id`): such a message may be sent more than
    ///   once (a retry after a lost confirmation), so consumers and JetStream dedupe on its id;
    /// - on a direct publish (no outbox), none: it is sent once, there is nothing to dedupe;
    ///   [`Envelope::msg_id`](crate::Envelope::msg_id) is then `None` at the receiver;
    /// - a request carries [`CORRELATION_ID`], and its reply copies it.
    ///
    /// Receivers identify the type by the subject, and the payload is always MessagePack.
    #[default]
    Minimal,
    /// Every typed message carries [`MSG_ID`], [`CONTENT_TYPE`] (`application/msgpack`) and
    /// [`TYPE`]; replies carry [`CONTENT_TYPE`]. For peers that route or dedupe on these
    /// headers, at the cost measured above.
    Full,
    /// No header of `bus`'s own, not even an id through the outbox (a request still carries
    /// [`CORRELATION_ID`]). For applications that take at-least-once delivery without dedupe:
    /// a message resent after a lost confirmation arrives twice, JetStream cannot drop the
    /// copy, and [`Envelope::msg_id`](crate::Envelope::msg_id) is `None`. What it buys is in
    /// `benches/README.md` (`--only diag_durable_noid` against `nats_pubsub_durable`).
    NoId,
}

/// Message headers: an ordered list of name/value pairs; a name may appear more than once.
///
/// Names compare case-sensitively, as in NATS.
///
/// ```
/// let mut h = bus::Headers::new();
/// h.insert("Tenant", "acme");
/// assert_eq!(h.get("Tenant"), Some("acme"));
/// ```
///
/// Names and values are `Cow<'static, str>`: the constant ones (`application/msgpack`, a type
/// name, your own literals) are never copied, which matters on a path that runs per message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(Cow<'static, str>, Cow<'static, str>)>,
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
    pub fn insert(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, value.into()));
    }

    /// Adds a value for `name`, keeping previous ones.
    pub fn append(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name);
    }

    /// All entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// All entries as stored, for conversions that avoid copying `'static` names and values.
    #[cfg(any(feature = "nats", test))]
    pub(crate) fn entries(&self) -> &[(Cow<'static, str>, Cow<'static, str>)] {
        &self.entries
    }

    /// Checks that every name and value can travel over NATS (see [`Error::InvalidHeader`]):
    /// names of printable ASCII without `:` or white space, values without CR, LF or NUL. Every
    /// backend, and the outbox before it queues a message, refuses headers that fail this.
    ///
    /// ```
    /// let mut h = bus::Headers::new();
    /// h.insert("Tenant", "acme");
    /// assert!(h.check().is_ok());
    /// h.insert("Bad Name", "x");
    /// assert!(matches!(h.check(), Err(bus::Error::InvalidHeader { .. })));
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        for (name, value) in &self.entries {
            if let Some(reason) = name_problem(name) {
                return Err(Error::InvalidHeader {
                    name: name.to_string(),
                    reason,
                });
            }
            if let Some(reason) = value_problem(value) {
                return Err(Error::InvalidHeader {
                    name: name.to_string(),
                    reason,
                });
            }
        }
        Ok(())
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

impl<N: Into<Cow<'static, str>>, V: Into<Cow<'static, str>>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers {
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}
