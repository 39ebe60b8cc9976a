//! The `Broker` trait: bytes in, bytes out, the contract both backends keep.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::durable::{DurableSpec, DurableSubscription};
use crate::{Error, Headers, Result};

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

/// A message the broker refused after it accepted it for sending, as a
/// [`confirm`](Broker::confirm) reports it in [`Error::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// The subject of the refused message (every message sent to it since the previous
    /// confirmation was refused).
    pub subject: String,
    /// The server's reason, e.g. `Permissions Violation for Publish to "plugin.outbound.x"`
    /// or `maximum messages exceeded (JetStream error 10077, status 503)`.
    pub reason: String,
    /// The `Nats-Msg-Id` of the refused message, when the broker refuses single messages (a
    /// JetStream stream does, in its PubAck) and the message had one: then only that message
    /// of the batch was refused. `None`: every message on `subject` since the previous
    /// confirmation was refused (a permissions violation).
    pub msg_id: Option<String>,
}

impl Rejection {
    /// A rejection of the messages on `subject`.
    pub fn new(subject: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            subject: subject.into(),
            reason: reason.into(),
            msg_id: None,
        }
    }

    /// The same rejection, naming the refused message by its `Nats-Msg-Id`.
    pub fn with_msg_id(mut self, msg_id: Option<String>) -> Self {
        self.msg_id = msg_id;
        self
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
    /// A subscription of a [`Broker`] written outside this crate: `messages` are counted as
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

/// Whether the broker can be reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet, or reconnecting after a disconnect (the server is down or
    /// unreachable, as far as the client can tell).
    Disconnected,
    /// Connected; publishes go through.
    Connected,
    /// The server announced it is shutting down (lame duck mode); a reconnect will follow.
    LameDuck,
    /// The server is reachable but refuses this client, for the reason given: retrying will
    /// not help until the configuration changes (on one side or the other). The client keeps
    /// trying, and the state becomes [`Connected`](ConnectionState::Connected) once it gets in.
    /// [`Bus::connection_error`](crate::Bus::connection_error) has the details.
    Refused(Refusal),
    /// Closed for good: the `Bus` was shut down.
    Closed,
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Disconnected => f.write_str("disconnected"),
            ConnectionState::Connected => f.write_str("connected"),
            ConnectionState::LameDuck => f.write_str("lame duck"),
            ConnectionState::Refused(why) => write!(f, "refused ({why})"),
            ConnectionState::Closed => f.write_str("closed"),
        }
    }
}

/// Why a reachable server refuses the connection ([`ConnectionState::Refused`]).
///
/// ```
/// use bus::{ConnectionState, Refusal};
/// let state = ConnectionState::Refused(Refusal::Authorization);
/// assert_eq!(state.to_string(), "refused (authorization violation)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The server refused the credentials (NATS's `Authorization Violation`): a wrong token or
    /// password, an unknown user, an NKey or `.creds` the server does not know, or none at all
    /// where the server requires them.
    Authorization,
    /// The server requires TLS and this client, configured without TLS, could not set it up
    /// (typically: the server's certificate is not signed by a CA the client trusts). Give the
    /// CA with `tls_root_certificate`, and `require_tls(true)` to never fall back to plain.
    TlsRequiredByServer,
    /// This client requires TLS (`require_tls(true)` or a `tls://` URL) but the server does
    /// not speak it.
    TlsRequiredByClient,
    /// The TLS handshake failed: the server's certificate is not trusted or does not match
    /// the host, or the server wants a client certificate it did not get or does not trust.
    Tls,
    /// The server answered the client's `CONNECT` with `-ERR 'Maximum Control Line
    /// Exceeded'`: the credentials (a long token or JWT) and the client name make that line
    /// longer than the server's `max_control_line` (4,096 bytes by default). Use shorter
    /// credentials, or raise `max_control_line` on the server.
    ControlLine,
    /// The server answered the client's `CONNECT` with another `-ERR` that every attempt will
    /// get again (a protocol or permissions error at connect); the connection error quotes it.
    ServerError,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Authorization => "authorization violation",
            Refusal::TlsRequiredByServer => "TLS required by server",
            Refusal::TlsRequiredByClient => "TLS required by client",
            Refusal::Tls => "TLS handshake failed",
            Refusal::ControlLine => "control line too long",
            Refusal::ServerError => "server error at connect",
        })
    }
}

/// The contract both backends ([`LocalBroker`](crate::LocalBroker) and
/// [`NatsBroker`](crate::NatsBroker)) keep, checked by one conformance suite.
///
/// Semantics are NATS's: subjects are dot-separated tokens; in a pattern `*` matches one token and
/// a final `>` one or more; subscribers in the same queue group share messages (each message goes to
/// one member); a request with no subscriber fails fast with [`Error::NoResponders`](crate::Error);
/// publishers are never blocked by a slow subscriber, whose overflow is counted in its
/// [`SubscriptionStats`]. The trait is object safe: a [`Bus`](crate::Bus) runs on any
/// `Arc<dyn Broker>` ([`BusBuilder::broker`](crate::BusBuilder::broker)); the built-in brokers are
/// recognised there and called without the boxed futures of this trait.
///
/// What a conforming broker must also do (the conformance suite of `bus-tests` checks each):
/// refuse an invalid subject or pattern with [`Error::InvalidSubject`](crate::Error), a header
/// NATS cannot carry with [`Error::InvalidHeader`](crate::Error), and a message over
/// [`max_payload`](Broker::max_payload) with [`Error::PayloadTooLarge`](crate::Error), all before
/// anything is delivered ([`check_publish`] does all three); and keep one publisher's messages in
/// order per subscriber.
pub trait Broker: Any + Send + Sync + 'static {
    /// Sends one message. `Ok` means the broker accepted it for sending, not that it was processed:
    /// use [`confirm`](Broker::confirm) for that. Refuses a message over [`max_payload`](Broker::max_payload).
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>>;

    /// A barrier: returns once the broker has processed every message this handle published
    /// before the call (on NATS, a round trip through the server).
    fn confirm(&self) -> BoxFuture<'_, Result<()>>;

    /// Subscribes to `pattern`, optionally as a member of queue group `queue`.
    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>>;

    /// Sends a request and waits up to `timeout` for the first reply.
    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>>;

    /// The connection state, as a watch that changes when it does.
    fn state(&self) -> watch::Receiver<ConnectionState>;

    /// The largest payload plus headers the broker accepts, in bytes.
    fn max_payload(&self) -> usize;

    /// A short name for logs: `"local"` or `"nats"`.
    fn kind(&self) -> &'static str;

    /// Attaches a puller to the durable consumer `spec.name`, creating it on first use (see
    /// [`durable`](crate::durable)): messages on `spec.pattern` published while no puller was
    /// attached are delivered, each delivery is settled by its [`Acker`](crate::durable::Acker),
    /// and pullers on one name share its messages.
    ///
    /// The default fails with [`Error::Unsupported`]: a broker
    /// written elsewhere keeps compiling, and offers durable consumers once it implements this.
    fn consume(&self, spec: &DurableSpec) -> BoxFuture<'_, Result<DurableSubscription>> {
        let _ = spec;
        let broker = self.kind();
        Box::pin(futures::future::ready(Err(Error::Unsupported {
            broker,
            what: "durable consumers",
        })))
    }
}

/// Everything a broker must refuse before it sends a message: an invalid subject, headers NATS
/// cannot carry, a size over `max_payload`. The same checks, with the same errors, for every
/// backend; a [`Broker`] written outside this crate calls it first in its `publish`.
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
