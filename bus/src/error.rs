//! The one error type of `bus`.

use std::path::PathBuf;
use std::time::Duration;

use crate::connection::{ConnectionState, Refusal};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `bus`. Each message says what to do next.
///
/// [`Error::is_transient`] says whether trying again later can succeed without changing
/// anything. What each failure looks like:
///
/// | what happened | what you see |
/// | --- | --- |
/// | a placeholder value that is not one token (`"a.b"`, `"*"`, white space, control characters, over 3,840 bytes) | [`Error::InvalidSubjectToken`] from `publish`/`filter`, before anything is queued or sent |
/// | a raw subject or pattern that is not NATS syntax, or longer than `MAX_SUBJECT_LEN` (3,840 bytes: nats-server closes the connection over its 4,096-byte protocol line) | [`Error::InvalidSubject`], before anything is queued, sent or subscribed |
/// | a header name or value NATS cannot carry (`:`, white space or non-ASCII in a name; CR, LF or NUL in a value) | [`Error::InvalidHeader`] from `publish_with_headers`/`publish_raw`, on every backend, before queueing |
/// | a payload over the server's max_payload | [`Error::PayloadTooLarge`] from `publish`, before anything is queued or sent (through the outbox: once the server's limit is known) |
/// | a payload over `.outbox_max_payload(..)` (8 MiB) before the first connection | [`Error::OutboxMessageTooLarge`] from `publish`, nothing queued; under the cap but over the server's limit found later: a dead letter after 3 attempts, the connection undisturbed |
/// | the server's permissions refuse a publish | without an outbox, `flush()` returns [`Error::Rejected`] naming each refused subject and the server's `Permissions Violation` text; through the outbox, each refused message is a dead letter after 3 attempts with that text; the allowed messages of the batch are delivered |
/// | the server's permissions refuse a subscription | on a connected bus `subscribe` fails with [`Error::PermissionDenied`] (and so do `handle` and `serve`); made while the connection is not up yet (right after `connect()` without `wait_for_connection`), it returns `Ok` and the stream's first item is that `PermissionDenied`, then it ends; the same when the server ends it later (after a reconnect) |
/// | no permission on the confirmation subject (`_bus.confirm.>`) | nothing is dead-lettered, the queue waits with a growing backoff, and `flush` fails naming the prefix to grant (not a bare timeout): with [`Error::PermissionDenied`] without an outbox, with [`Error::Outbox`] ("the queue is blocked: permission denied …") through the outbox |
/// | a second `Bus` on an outbox that is held (same path, a symlink, a hard link, another process) | `connect` fails with [`Error::Outbox`]: `the outbox is in use by another Bus` |
/// | an outbox file with several hard links | `connect` fails with [`Error::Outbox`] saying it has N names and to use a symlink |
/// | a damaged outbox file | `connect` fails with [`Error::Outbox`] naming the file, SQLite's finding and how to recover; a page damaged while running: its rows become dead letters (reason: the page is damaged), the queue goes on |
/// | an outbox schema that is not the outbox's (changed tables, a v2 file that cannot be migrated) | `connect` fails with [`Error::Outbox`] saying what differs; the file is left unchanged |
/// | the outbox's directory, file or `<path>.lock` cannot be used | [`Error::Outbox`] saying which: the directory must exist and be writable; the lock path is a directory; the file or lock file belongs to another uid (both uids named) or is read-only (`chmod u+w`) |
/// | wrong credentials, unknown user, unregistered NKey | [`ConnectionState::Refused`]`(`[`Refusal::Authorization`]`)` with the reason ([`Bus::connection_error`]), logged once per outage |
/// | a malformed NKey seed, an unreadable creds or TLS file | `connect()` fails with [`Error::Config`] |
/// | a plain client against a TLS server, `require_tls` against a plain one, an untrusted certificate | `ConnectionState::Refused(Refusal::TlsRequiredByServer / TlsRequiredByClient / Tls)` |
/// | credentials too long for the server's protocol line (`-ERR 'Maximum Control Line Exceeded'`, e.g. a 5,000-byte token), or another `-ERR` at connect that every attempt would get | `ConnectionState::Refused(Refusal::ControlLine / ServerError)` at the first attempt, the reason and the fix in `Bus::connection_error()`; `wait_for_connection` fails at once with [`Error::ConnectionRefused`]; one that may pass (`maximum connections exceeded`) keeps the reconnect loop |
/// | credentials in a server URL (`nats://alice:pw@host:4222`, `nats://token@host:4222`) | used to log in (not with `.user_password()`/`.token()` as well); URLs in logs, errors, `Debug` and the `bus` command's output are redacted (`nats://alice:***@host:4222`, `bus::redact_url`), and no token, password, seed or creds is printed |
/// | you want `connect` to fail instead of waiting in the background | `.wait_for_connection(d)`: [`Error::ConnectionRefused`] at the first refusal, [`Error::ConnectTimeout`] if nothing answers |
/// | a flush that must not wait forever | [`Bus::flush_timeout`]: [`Error::FlushTimeout`] with the state and the reason |
/// | the server enters lame duck mode (a rolling restart) | [`ConnectionState::LameDuck`]; publishing and draining go on until the server closes the connection, then the client fails over; no error |
/// | a lost connection under a batch | [`Error::ConnectionLost`] from `confirm`; the outbox sends the batch again |
/// | nobody serves a request's subject | [`Error::NoResponders`] at once, not a timeout |
/// | a handler error, a panic, a huge or multi-line error text in `serve` | the requester gets [`Error::Remote`] with the text (control characters replaced, at most 1,024 bytes), never a timeout |
/// | a payload that does not decode | an [`Error::Decode`] item on the typed stream (subject, msg id); a handler dead-letters it at once |
/// | a body whose placeholder fields contradict its subject, with the check on | an [`Error::SubjectMismatch`] item (see [`Subscription`](crate::Subscription)) |
/// | a handler or responder started after [`Bus::close`] | [`Error::Closed`] |
///
/// [`ConnectionState::Refused`]: crate::ConnectionState::Refused
/// [`ConnectionState::LameDuck`]: crate::ConnectionState::LameDuck
/// [`Refusal::Authorization`]: crate::Refusal::Authorization
/// [`Bus::connection_error`]: crate::Bus::connection_error
/// [`Bus::flush_timeout`]: crate::Bus::flush_timeout
/// [`Bus::close`]: crate::Bus::close
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A placeholder value is not exactly one safe subject token. Nothing was queued or sent.
    #[error("invalid value {value:?} for subject placeholder `<{field}>`: {reason}; a placeholder value must be exactly one token (no `.`, `*`, `>`, white space or control characters, not empty)")]
    InvalidSubjectToken {
        /// The placeholder (field) name.
        field: &'static str,
        /// The refused value.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A raw subject or subscription pattern is not valid NATS syntax.
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject or pattern.
        subject: String,
        /// Why it was refused.
        reason: String,
    },

    /// A header name or value cannot travel over NATS (see [`Headers::check`](crate::Headers::check)).
    /// Nothing was queued or sent.
    #[error("header {name:?} cannot be sent: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A message could not be encoded to MessagePack.
    #[error("cannot encode `{type_name}` as MessagePack: {source}")]
    Encode {
        /// The Rust type.
        type_name: &'static str,
        /// The encoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A payload did not decode into the expected type. The stream goes on after this item.
    #[error("cannot decode message on {subject:?} (msg id {msg_id:?}) as `{type_name}`: {source}; is the publisher sending a different type or format?")]
    Decode {
        /// The subject the message arrived on.
        subject: String,
        /// Its id (`Nats-Msg-Id`), if it had one.
        msg_id: Option<String>,
        /// The type it was decoded as.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Payload plus headers exceed what the broker accepts. Nothing was sent.
    #[error("message on {subject:?} is {size} bytes (payload and headers), over the broker's max_payload of {max} bytes; split it or raise max_payload on the server")]
    PayloadTooLarge {
        /// The subject.
        subject: String,
        /// Payload plus encoded headers, in bytes.
        size: usize,
        /// The broker's limit.
        max: usize,
    },

    /// A message bigger than the outbox queues while the server's limit is not known yet
    /// (before the first connection; see
    /// [`BusBuilder::outbox_max_payload`](crate::BusBuilder::outbox_max_payload)). Nothing was
    /// queued.
    #[error("message on {subject:?} is {size} bytes (payload and headers), over the outbox's limit of {max} bytes while the server's max_payload is not known yet (no connection so far); nothing was queued: split it, or raise BusBuilder::outbox_max_payload")]
    OutboxMessageTooLarge {
        /// The subject.
        subject: String,
        /// Payload plus encoded headers, in bytes.
        size: usize,
        /// The outbox's limit.
        max: usize,
    },

    /// A request found nobody subscribed to its subject.
    #[error("no responders for request on {subject:?}; is the service running and subscribed?")]
    NoResponders {
        /// The request subject.
        subject: String,
    },

    /// A request got no reply in time.
    #[error("request on {subject:?} timed out after {timeout:?}")]
    Timeout {
        /// The request subject.
        subject: String,
        /// How long it waited.
        timeout: Duration,
    },

    /// The responder's handler returned an error (carried in the `Bus-Error` reply header).
    #[error("responder for {subject:?} failed: {message}")]
    Remote {
        /// The request subject.
        subject: String,
        /// The handler's error message.
        message: String,
    },

    /// A subscriber was too slow and the broker dropped messages for it.
    #[error("slow consumer on {pattern:?}: {dropped} message(s) dropped; process faster, or raise the subscription capacity")]
    SlowConsumer {
        /// The subscription's pattern.
        pattern: String,
        /// How many were dropped since the last report.
        dropped: u64,
    },

    /// The connection to the broker was lost while messages were in flight, so the broker cannot
    /// confirm that it processed them: send them again (the outbox does, with the same msg ids).
    #[error("the connection to the broker was lost during {op}; messages published before it may not have reached the server and must be sent again")]
    ConnectionLost {
        /// What was being done.
        op: &'static str,
    },

    /// The server refused messages it had received (on NATS: a permissions violation for their
    /// subjects). They were not delivered; the outbox counts a failed attempt for each and
    /// dead-letters them after the last, with the server's reason.
    #[error("the server refused {} message(s), e.g. on {:?}: {}", rejections.len(), rejections.first().map_or("", |r| r.subject.as_str()), rejections.first().map_or("", |r| r.reason.as_str()))]
    Rejected {
        /// Each refused subject with the server's reason.
        rejections: Vec<Rejection>,
    },

    /// The server does not allow this connection to publish or subscribe to a subject: a
    /// configuration error (fix the account's permissions), never retried by itself.
    #[error("permission denied on {subject:?}: {reason}")]
    PermissionDenied {
        /// The subject or pattern.
        subject: String,
        /// The server's words, and what to grant.
        reason: String,
    },

    /// The broker is closed (the `Bus` was shut down).
    #[error("the broker connection is closed")]
    Closed,

    /// A background loop (a handler, a responder, a service endpoint) did not finish its
    /// in-flight work within the time its `stop_timeout` gave it: that work was abandoned
    /// (a durable delivery left unacknowledged is delivered again after its ack wait).
    #[error("{what} did not stop within {timeout:?}: {abandoned} message(s) in flight were abandoned; a handler that never returns needs a timeout of its own")]
    StopTimeout {
        /// What was stopped, e.g. `handler "slack-sender"`.
        what: String,
        /// The time it was given.
        timeout: Duration,
        /// Messages still in flight when the time ran out.
        abandoned: usize,
    },

    /// A NATS client error.
    #[error("NATS {op} failed: {source}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The configuration is inconsistent or incomplete.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The outbox file cannot be opened, created or written.
    #[error("outbox {path:?}: {detail}")]
    Outbox {
        /// The outbox file.
        path: PathBuf,
        /// What happened and what to do.
        detail: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// An operation needs an outbox but this `Bus` has none.
    #[error("this bus has no outbox; configure one with `Bus::builder().outbox_path(..)`")]
    NoOutbox,

    /// A dead letter with this id does not exist.
    #[error("no dead letter with id {0}")]
    DeadLetterNotFound(i64),

    /// A declared JetStream stream could not be created, updated or found (it is retried on
    /// every reconnect until it works).
    #[error("JetStream stream setup failed: {reason}")]
    Stream {
        /// The stream and the server's words.
        reason: String,
    },

    /// A durable consumer needs a JetStream stream covering its subjects, and none does.
    #[error("no JetStream stream covers {pattern:?}; declare one with Bus::builder().stream(StreamConfig::new(name, [\"{pattern}\"])) or create it on the server")]
    NoStream {
        /// The subscription pattern.
        pattern: String,
    },

    /// This broker cannot do what was asked (e.g. a durable consumer on a broker without one).
    #[error("the {broker} broker does not support {what}")]
    Unsupported {
        /// The broker's [`kind`](crate::Broker::kind).
        broker: &'static str,
        /// What it cannot do.
        what: &'static str,
    },

    /// A durable consumer exists under this name with another configuration that cannot be
    /// changed in place (e.g. another subject pattern).
    #[error("durable consumer {name:?}: {reason}")]
    Durable {
        /// The durable name.
        name: String,
        /// What is in the way, and what to do.
        reason: String,
    },

    /// The server is reachable but refuses this client (see [`Refusal`](crate::Refusal)):
    /// fix the credentials or the TLS setup, on the client or the server. Returned by
    /// [`BusBuilder::connect`](crate::BusBuilder::connect) when told to
    /// [wait for the connection](crate::BusBuilder::wait_for_connection).
    #[error("the NATS server refused the connection ({refusal}): {detail}")]
    ConnectionRefused {
        /// Why, in one word.
        refusal: Refusal,
        /// The client's and server's words, and what to check.
        detail: String,
    },

    /// No connection to the broker came up in time, and no server refused one: the server is
    /// down or unreachable (wrong host or port, a firewall). Returned by
    /// [`BusBuilder::connect`](crate::BusBuilder::connect) when told to
    /// [wait for the connection](crate::BusBuilder::wait_for_connection).
    #[error("no connection to the broker within {timeout:?}: the server is unreachable ({detail}); check the URL and that the server is running")]
    ConnectTimeout {
        /// How long it waited.
        timeout: Duration,
        /// The last connection error, or the state.
        detail: String,
    },

    /// [`Bus::flush_timeout`](crate::Bus::flush_timeout) ran out of time: what was published
    /// is not confirmed yet. With an outbox nothing is lost (it stays queued and drains once
    /// the broker is reachable); without one, messages may be lost if the connection is.
    #[error("flush did not complete within {timeout:?} (connection {state}){}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    FlushTimeout {
        /// The deadline given.
        timeout: Duration,
        /// The connection state when it ran out.
        state: ConnectionState,
        /// Why the broker cannot be reached, when known.
        detail: Option<String>,
    },

    /// A received message's subject disagrees with a placeholder field of its body, e.g. it
    /// arrived on `plugin.outbound.slack.a1` but its body says `channel: "email"`. Only with the
    /// subject/body check on ([`BusBuilder::check_subject_fields`](crate::BusBuilder::check_subject_fields),
    /// [`Subscription::check_subject_fields`](crate::Subscription::check_subject_fields)): the
    /// message is not delivered, and the stream goes on after this item.
    #[error("message on {subject:?} contradicts its body: the subject's `<{field}>` is {subject_value:?} but the body's field `{field}` is {body_value:?}; the publisher must put the body's placeholder fields in the subject")]
    SubjectMismatch {
        /// The subject the message arrived on.
        subject: String,
        /// The first placeholder (field) that disagrees.
        field: &'static str,
        /// That placeholder's token in the subject.
        subject_value: String,
        /// The body's field, written as a token.
        body_value: String,
    },
}

impl Error {
    /// Whether trying the same thing again later may succeed without changing anything: a
    /// timeout, a lost connection, nobody serving a request yet, a slow consumer, a client error
    /// of the NATS connection. `false` for mistakes that fail the same way every time (an invalid
    /// subject, header or size, a decode error, configuration, a closed bus).
    ///
    /// ```
    /// let e = bus::Error::Timeout { subject: "agent.route.x".into(), timeout: std::time::Duration::from_secs(1) };
    /// assert!(e.is_transient());
    /// let e = bus::Error::InvalidHeader { name: "a b".into(), reason: "white space" };
    /// assert!(!e.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::ConnectionLost { .. }
                | Error::NoResponders { .. }
                | Error::SlowConsumer { .. }
                | Error::Nats { .. }
                | Error::Stream { .. }
                | Error::ConnectTimeout { .. }
                | Error::FlushTimeout { .. }
        )
    }

    #[cfg(feature = "nats")]
    pub(crate) fn nats(
        op: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Nats {
            op,
            source: Box::new(e),
        }
    }

    #[cfg(feature = "outbox")]
    pub(crate) fn outbox(
        path: impl Into<PathBuf>,
        detail: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Outbox {
            path: path.into(),
            detail: detail.into(),
            source,
        }
    }
}

/// A message the broker refused after it accepted it for sending, as a
/// [`confirm`](crate::Broker::confirm) reports it in [`Error::Rejected`].
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

    setters! {
        /// The same rejection, naming the refused message by its `Nats-Msg-Id`.
        fn with_msg_id(msg_id: Option<String>) => msg_id = msg_id;
    }
}
