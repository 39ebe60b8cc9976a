//! JetStream on the NATS backend: declared streams (created or updated on every connect),
//! publishes confirmed by PubAcks, and durable pull consumers.
//!
//! - **Streams.** Each [`StreamConfig`] is created, or updated to its configuration, whenever
//!   the connection comes up (the server may be down at `connect()`, or restart with an empty
//!   memory store); [`StreamConfig::existing`] is looked up and its subjects read. Until that
//!   has happened once per connection, a publish that may go to a declared stream waits for it
//!   (at most the request timeout), so that it is not refused for want of a stream.
//! - **PubAcks.** A publish whose subject a declared stream covers goes through JetStream;
//!   its ack future is kept, and [`confirm`](crate::Broker::confirm) awaits every pending one at
//!   once (all sent, then all awaited: pipelined). A refused message (a limit with discard new,
//!   no stream, a wrong expected sequence) is reported as a [`Rejection`] naming its
//!   `Nats-Msg-Id`; a missing ack (timeout) or a lost connection fails the confirmation as a
//!   whole, and the batch is sent again (the stream drops the resends by msg id).
//! - **Durable consumers.** Pull consumers made or updated on demand, pulled in batches, made
//!   again where their handler stopped when they (or their stream) are lost.
//!
//! One file per part: `streams` (the declared streams), `publish` (PubAcks), `consumer`
//! (durable pull consumers); this one holds the state they share.

mod consumer;
mod publish;
pub(super) mod streams;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use tokio::sync::watch;

use crate::error::Rejection;
use crate::stream::StreamConfig;

/// A declared stream's name and the subjects it covers, as known so far.
#[derive(Debug, Clone)]
struct Route {
    /// Shared: a publish learns its stream per message (no copy of the name).
    stream: Arc<str>,
    subjects: Vec<String>,
}

/// A publish sent through JetStream whose ack has not been awaited yet.
struct PendingAck {
    subject: String,
    msg_id: Option<String>,
    ack: jetstream::context::PublishAckFuture,
}

/// What settling acks found that fails a confirmation as a whole (nothing about the messages:
/// send them again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unproven {
    /// No ack in time.
    Timeout,
    /// The connection was lost before the ack came.
    ConnectionLost,
}

/// Outcomes of acks already awaited (by a publish at [`MAX_PENDING_ACKS`]) for the next
/// confirmation to report.
#[derive(Default)]
struct Settled {
    rejections: Vec<Rejection>,
    unproven: Option<Unproven>,
}

/// Whether the declared streams were set up on the current connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Setup {
    /// Not yet (not connected, or the server did not answer yet).
    Pending,
    /// Every declared stream exists as configured.
    Ready,
    /// The last attempt failed, with this reason; it is retried.
    Failed(String),
}

/// The JetStream side of one `NatsBroker`.
pub(crate) struct JetStream {
    client: Client,
    context: jetstream::Context,
    declared: Vec<StreamConfig>,
    /// The declared streams' subjects (an `existing` one's once read from the server).
    routes: RwLock<Vec<Route>>,
    setup: watch::Sender<Setup>,
    pending: Mutex<Vec<PendingAck>>,
    settled: Mutex<Settled>,
    request_timeout: Duration,
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream")
            .field("declared", &self.declared)
            .field("setup", &*self.setup.borrow())
            .finish_non_exhaustive()
    }
}

impl JetStream {
    pub(crate) fn new(
        client: Client,
        declared: Vec<StreamConfig>,
        request_timeout: Duration,
    ) -> JetStream {
        let mut context = jetstream::new(client.clone());
        context.set_timeout(request_timeout);
        let routes = declared
            .iter()
            .filter(|s| !s.is_existing())
            .map(|s| Route {
                stream: Arc::from(s.name()),
                subjects: s.subjects().to_vec(),
            })
            .collect();
        let setup = if declared.is_empty() {
            Setup::Ready
        } else {
            Setup::Pending
        };
        JetStream {
            client,
            context,
            declared,
            routes: RwLock::new(routes),
            setup: watch::Sender::new(setup),
            pending: Mutex::new(Vec::new()),
            settled: Mutex::new(Settled::default()),
            request_timeout,
        }
    }

    /// The JetStream context (what the shared inbox makes its key-value bucket with).
    pub(crate) fn context(&self) -> jetstream::Context {
        self.context.clone()
    }

    /// Whether any stream was declared: if not, nothing goes through JetStream.
    #[inline]
    pub(crate) fn routes_anything(&self) -> bool {
        !self.declared.is_empty()
    }

    /// The declared stream covering the concrete `subject`, if one is known to.
    fn route(&self, subject: &str) -> Option<Arc<str>> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.subjects.iter().any(|p| bus_subject::matches(p, subject)))
            .map(|r| r.stream.clone())
    }

    /// The declared stream whose subjects cover every subject of `pattern`.
    pub(crate) fn covering(&self, pattern: &str) -> Option<String> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.subjects.iter().any(|s| crate::stream::covers(s, pattern)))
            .map(|r| r.stream.to_string())
    }

    /// Whether a declared stream may cover `subject` once set up: a declared subject matches
    /// it, or an `existing` stream's subjects are not known yet.
    fn may_cover(&self, subject: &str) -> bool {
        self.route(subject).is_some() || self.declared.iter().any(StreamConfig::is_existing)
    }

    /// The stream a publish to `subject` goes to, waiting (up to the request timeout) for the
    /// streams to be set up on this connection when one of them may cover it. `None`: a core
    /// NATS publish.
    pub(crate) async fn target(&self, subject: &str) -> Option<Arc<str>> {
        if *self.setup.borrow() != Setup::Ready && self.may_cover(subject) {
            let mut rx = self.setup.subscribe();
            let _ = tokio::time::timeout(self.request_timeout, rx.wait_for(|s| *s == Setup::Ready))
                .await;
        }
        self.route(subject)
    }
}

/// async-nats 0.35 prints a JetStream error as `{status} (code {description}, error code
/// {code})` and has no accessor for the description: read it from there.
pub(crate) fn js_error_text(e: &jetstream::Error) -> String {
    let text = e.to_string();
    let status = e.code();
    let parsed = text
        .strip_prefix(&format!("{status} (code "))
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.rsplit_once(", error code "));
    match parsed {
        Some((description, code)) => {
            format!("{description} (JetStream error {code}, status {status})")
        }
        None => text,
    }
}
