//! `StreamConfig`: a JetStream stream the application declares (`docs/design.md`, "Consuming").
//!
//! Streams are the application's choice, declared once on the builder:
//!
//! ```no_run
//! # async fn run() -> Result<(), bus::Error> {
//! use std::time::Duration;
//! use bus::StreamConfig;
//!
//! let bus = bus::Bus::builder()
//!     .nats(["nats://127.0.0.1:4222"])
//!     .stream(
//!         StreamConfig::new("PLUGIN_OUTBOUND", ["plugin.outbound.>"])
//!             .max_age(Duration::from_secs(24 * 3600))
//!             .max_messages(1_000_000),
//!     )
//!     .stream(StreamConfig::existing("AGENT_EVENTS"))
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! On NATS each declared stream is created, or updated to this configuration, when the
//! connection is (re-)established; [`StreamConfig::existing`] uses one as the server has it. A
//! publish whose subject a declared stream covers is then confirmed by the stream's PubAck
//! instead of a round trip: a message the stream refuses is reported as
//! [`Error::Rejected`], never as a success. The local broker has no
//! streams; it keeps what durable consumers need in memory.

use std::time::Duration;

use crate::error::{Error, Result};

/// What a stream does with a new message once it is at one of its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscardPolicy {
    /// Delete the oldest messages to make room (the default).
    #[default]
    Old,
    /// Refuse the new message: its publisher gets a rejection (the outbox counts a failed
    /// attempt and dead-letters it after the last).
    New,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageType {
    /// On disk: survives a server restart (the default).
    #[default]
    File,
    /// In memory: faster, lost when the server stops.
    Memory,
}

/// A JetStream stream the application declares with
/// [`BusBuilder::stream`](crate::BusBuilder::stream).
///
/// Limits left unset are unlimited (the server's defaults); `duplicate_window` left unset is the
/// server's default (2 minutes), the window in which a resend with the same `Nats-Msg-Id` is
/// stored once.
///
/// ```
/// use std::time::Duration;
/// use bus::stream::{DiscardPolicy, StorageType, StreamConfig};
///
/// let cfg = StreamConfig::new("PLUGIN_OUTBOUND", ["plugin.outbound.>"])
///     .max_messages(10_000)
///     .discard(DiscardPolicy::New)
///     .storage(StorageType::Memory)
///     .duplicate_window(Duration::from_secs(60));
/// assert_eq!(cfg.name(), "PLUGIN_OUTBOUND");
/// assert_eq!(cfg.subjects(), ["plugin.outbound.>"]);
/// assert!(!cfg.is_existing());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StreamConfig {
    name: String,
    subjects: Vec<String>,
    existing: bool,
    max_age: Option<Duration>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    discard: DiscardPolicy,
    replicas: usize,
    storage: StorageType,
    duplicate_window: Option<Duration>,
}

impl StreamConfig {
    /// A stream called `name` on these subjects (patterns, `*` and `>` allowed), created or
    /// updated to this configuration on connect.
    pub fn new<I, S>(name: impl Into<String>, subjects: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StreamConfig {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            existing: false,
            max_age: None,
            max_messages: None,
            max_bytes: None,
            discard: DiscardPolicy::Old,
            replicas: 1,
            storage: StorageType::File,
            duplicate_window: None,
        }
    }

    /// A stream that already exists on the server, used as found: never created or changed.
    /// Its subjects are read from the server on connect.
    pub fn existing(name: impl Into<String>) -> Self {
        StreamConfig {
            existing: true,
            ..StreamConfig::new(name, Vec::<String>::new())
        }
    }

    setters! {
        /// Messages older than this are deleted.
        fn max_age(age: Duration) => max_age = Some(age);
        /// At most this many messages are kept.
        fn max_messages(n: u64) => max_messages = Some(n);
        /// At most this many bytes are kept.
        fn max_bytes(n: u64) => max_bytes = Some(n);
        /// What happens to a new message at a limit (default [`DiscardPolicy::Old`]).
        fn discard(discard: DiscardPolicy) => discard = discard;
        /// Copies kept in a cluster (default 1; 3 survives the loss of one node). 0 counts as 1.
        fn replicas(n: usize) => replicas = n.max(1);
        /// Disk or memory (default [`StorageType::File`]).
        fn storage(storage: StorageType) => storage = storage;
        /// How long the stream remembers a `Nats-Msg-Id` to drop a resend of the same message
        /// (default: the server's, 2 minutes).
        fn duplicate_window(window: Duration) => duplicate_window = Some(window);
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subjects declared (empty for [`existing`](StreamConfig::existing)).
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// Whether the stream is used as found ([`existing`](StreamConfig::existing)).
    pub fn is_existing(&self) -> bool {
        self.existing
    }
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
impl StreamConfig {
    pub(crate) fn max_age_value(&self) -> Option<Duration> {
        self.max_age
    }
    pub(crate) fn max_messages_value(&self) -> Option<u64> {
        self.max_messages
    }
    pub(crate) fn max_bytes_value(&self) -> Option<u64> {
        self.max_bytes
    }
    pub(crate) fn discard_value(&self) -> DiscardPolicy {
        self.discard
    }
    pub(crate) fn replicas_value(&self) -> usize {
        self.replicas
    }
    pub(crate) fn storage_value(&self) -> StorageType {
        self.storage
    }
    pub(crate) fn duplicate_window_value(&self) -> Option<Duration> {
        self.duplicate_window
    }

    /// Refuses a name JetStream cannot use, or subjects that are not valid patterns.
    pub(crate) fn validate(&self) -> Result<()> {
        let name = &self.name;
        let bad = |b: u8| b.is_ascii_whitespace() || b.is_ascii_control() || b"./\\*>".contains(&b);
        if name.is_empty() || name.bytes().any(bad) {
            return Err(Error::Config(format!(
                "invalid stream name {name:?}: it must be non-empty, without `.`, `*`, `>`, `/`, `\\` or white space"
            )));
        }
        if !self.existing && self.subjects.is_empty() {
            return Err(Error::Config(format!(
                "stream {name:?} has no subjects; name at least one, e.g. \"plugin.outbound.>\", or use StreamConfig::existing"
            )));
        }
        for s in &self.subjects {
            bus_subject::check_pattern(s).map_err(|e| {
                Error::Config(format!("stream {name:?}: invalid subject {s:?}: {e}"))
            })?;
        }
        Ok(())
    }
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
/// Whether every subject `pattern` matches is also matched by the stream subject `stream`
/// (both may hold `*` and `>`): then the stream covers a subscription on `pattern`.
///
/// ```text
/// covers("plugin.outbound.>", "plugin.outbound.slack.*") == true
/// covers("plugin.outbound.*", "plugin.outbound.>")       == false
/// ```
pub(crate) fn covers(stream: &str, pattern: &str) -> bool {
    let mut s = stream.split('.');
    let mut p = pattern.split('.');
    loop {
        match (s.next(), p.next()) {
            // `>` covers one or more tokens, whatever they are (a `>` too).
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_of_patterns() {
        assert!(covers("plugin.outbound.>", "plugin.outbound.slack.*"));
        assert!(covers("plugin.outbound.>", "plugin.outbound.>"));
        assert!(covers("plugin.outbound.*.*", "plugin.outbound.slack.a1"));
        assert!(covers("plugin.*.x", "plugin.*.x"));
        assert!(covers(">", "a"));
        assert!(!covers("plugin.outbound.*", "plugin.outbound.>"));
        assert!(!covers("plugin.outbound.slack", "plugin.outbound.*"));
        assert!(!covers("plugin.outbound.>", "plugin.outbound"));
        assert!(!covers("a.b", "a.b.c"));
        assert!(!covers("a.b.c", "a.b"));
    }

    #[test]
    fn validation() {
        assert!(StreamConfig::new("OK_1-x", ["a.>"]).validate().is_ok());
        assert!(StreamConfig::existing("OK").validate().is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert!(
                StreamConfig::new(bad, ["a.>"]).validate().is_err(),
                "{bad:?}"
            );
        }
        assert!(StreamConfig::new("S", Vec::<String>::new())
            .validate()
            .is_err());
        assert!(StreamConfig::new("S", ["a..b"]).validate().is_err());
    }
}
