//! Messages and subscriptions as a broker carries them (bytes, not types), and the checks every
//! broker makes before it sends or subscribes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::headers::Headers;

/// A message as the broker carries it: subject, optional reply subject, headers, payload.
///
/// Build one with [`RawMessage::new`] and the `with_*` methods; fields are public to read and to
/// take apart, and the struct may gain fields (it is `#[non_exhaustive]`).
///
/// ```
/// let msg = bus::RawMessage::new("agent.events.planner", "hi").with_reply("_INBOX.x");
/// assert_eq!(msg.reply.as_deref(), Some("_INBOX.x"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawMessage {
    /// The concrete subject (never a wildcard).
    pub subject: String,
    /// Where a reply should go, for requests.
    pub reply: Option<String>,
    /// Headers, possibly empty.
    pub headers: Headers,
    /// The payload bytes.
    pub payload: Bytes,
}

impl RawMessage {
    /// A message with no reply subject and no headers.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        RawMessage {
            subject: subject.into(),
            reply: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the reply subject.
    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Payload plus encoded headers: what counts against a broker's max_payload.
    pub fn wire_size(&self) -> usize {
        self.payload.len() + self.headers.wire_len()
    }
}

/// Counters a subscription keeps; shared between the broker and the subscriber.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    /// Why the server ended this subscription (a permissions violation), once it did.
    failure: std::sync::OnceLock<String>,
}

impl SubscriptionStats {
    /// Messages handed to the subscriber.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    /// Messages dropped because the subscriber fell behind (a slow consumer).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Why the server ended this subscription (e.g. a permissions violation), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn fail(&self, reason: String) {
        let _ = self.failure.set(reason);
    }
    pub(crate) fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// The one handle that may count drops on a subscription: given to the broker implementation
/// that made it by [`RawSubscription::new`], so that only the broker, never a subscriber, moves
/// the counters a subscriber reads.
#[derive(Debug, Clone)]
pub struct DropCounter(Arc<SubscriptionStats>);

impl DropCounter {
    /// Counts `n` messages dropped because the subscriber fell behind (a slow consumer).
    pub fn add(&self, n: u64) {
        self.0.add_dropped(n);
    }
}

/// A live subscription on a broker: a stream of messages and its counters.
///
/// Dropping it unsubscribes.
pub struct RawSubscription {
    /// The pattern it was made with.
    pub pattern: String,
    /// The messages, in the order the broker delivered them.
    pub messages: BoxStream<'static, RawMessage>,
    /// Delivered and dropped counts.
    pub stats: Arc<SubscriptionStats>,
}

impl RawSubscription {
    /// A subscription of a [`Broker`](crate::Broker) written outside this crate: `messages` are counted as
    /// delivered as the subscriber takes them; the returned [`DropCounter`] counts what the
    /// broker had to drop for this subscriber (reported to it as [`Error::SlowConsumer`]).
    pub fn new(
        pattern: impl Into<String>,
        messages: impl futures::Stream<Item = RawMessage> + Send + 'static,
    ) -> (RawSubscription, DropCounter) {
        use futures::StreamExt;
        let stats = Arc::new(SubscriptionStats::default());
        let counted = Arc::clone(&stats);
        let messages = messages.inspect(move |_| counted.add_delivered(1)).boxed();
        let drops = DropCounter(Arc::clone(&stats));
        (
            RawSubscription {
                pattern: pattern.into(),
                messages,
                stats,
            },
            drops,
        )
    }
}

impl fmt::Debug for RawSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSubscription")
            .field("pattern", &self.pattern)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Everything a broker must refuse before it sends a message: an invalid subject, headers NATS
/// cannot carry, a size over `max_payload`. The same checks, with the same errors, for every
/// backend; a [`Broker`](crate::Broker) written outside this crate calls it first in its `publish`.
pub fn check_publish(msg: &RawMessage, max_payload: usize) -> Result<()> {
    check_subject(&msg.subject)?;
    msg.headers.check()?;
    check_size(msg, max_payload)
}

/// Refuses a message whose payload plus headers exceed `max`.
#[inline]
pub(crate) fn check_size(msg: &RawMessage, max: usize) -> Result<()> {
    let size = msg.wire_size();
    if size > max {
        return Err(Error::PayloadTooLarge {
            subject: msg.subject.clone(),
            size,
            max,
        });
    }
    Ok(())
}

/// Refuses a publish subject that is not valid NATS syntax, the same way for every backend.
pub(crate) fn check_subject(subject: &str) -> Result<()> {
    bus_subject::check_subject(subject).map_err(|e| Error::InvalidSubject {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })
}

/// Refuses a subscription pattern or queue group name that is not valid NATS syntax.
pub fn check_subscription(pattern: &str, queue: Option<&str>) -> Result<()> {
    bus_subject::check_pattern(pattern).map_err(|e| Error::InvalidSubject {
        subject: pattern.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(q) = queue {
        bus_subject::check_token(q).map_err(|e| Error::InvalidSubject {
            subject: q.to_owned(),
            reason: format!("invalid queue group name: {e}"),
        })?;
        // Both travel on one protocol line.
        if pattern.len() + q.len() > bus_subject::MAX_SUBJECT_LEN {
            return Err(Error::InvalidSubject {
                subject: pattern.to_owned(),
                reason: format!(
                    "pattern and queue group together are {} bytes, over the limit of {} (MAX_SUBJECT_LEN)",
                    pattern.len() + q.len(),
                    bus_subject::MAX_SUBJECT_LEN
                ),
            });
        }
    }
    Ok(())
}
