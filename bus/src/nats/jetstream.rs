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

use std::sync::{Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::{ConnectionState, RawMessage, Rejection};
use crate::headers;
use crate::stream::{DiscardPolicy, StorageType, StreamConfig};
use crate::{Error, Result};

/// Pending acks kept before a publish settles the oldest ones itself: memory stays bounded for a
/// publisher that never confirms.
const MAX_PENDING_ACKS: usize = 65_536;

/// The longest wait between two attempts to set up the declared streams.
const SETUP_RETRY_CAP: Duration = Duration::from_secs(5);

/// A declared stream's name and the subjects it covers, as known so far.
#[derive(Debug, Clone)]
struct Route {
    stream: String,
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
        let mut context = jetstream::new(client);
        context.set_timeout(request_timeout);
        let routes = declared
            .iter()
            .filter(|s| !s.is_existing())
            .map(|s| Route {
                stream: s.name().to_owned(),
                subjects: s.subjects().to_vec(),
            })
            .collect();
        let setup = if declared.is_empty() {
            Setup::Ready
        } else {
            Setup::Pending
        };
        JetStream {
            context,
            declared,
            routes: RwLock::new(routes),
            setup: watch::Sender::new(setup),
            pending: Mutex::new(Vec::new()),
            settled: Mutex::new(Settled::default()),
            request_timeout,
        }
    }

    /// Whether any stream was declared: if not, nothing goes through JetStream.
    #[inline]
    pub(crate) fn routes_anything(&self) -> bool {
        !self.declared.is_empty()
    }

    #[allow(dead_code)] // STEP3
    pub(crate) fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// The declared stream covering the concrete `subject`, if one is known to.
    fn route(&self, subject: &str) -> Option<String> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.subjects.iter().any(|p| bus_subject::matches(p, subject)))
            .map(|r| r.stream.clone())
    }

    /// The declared stream whose subjects cover every subject of `pattern`.
    #[allow(dead_code)] // STEP3
    pub(crate) fn covering(&self, pattern: &str) -> Option<String> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.subjects.iter().any(|s| crate::stream::covers(s, pattern)))
            .map(|r| r.stream.clone())
    }

    /// Whether a declared stream may cover `subject` once set up: a declared subject matches
    /// it, or an `existing` stream's subjects are not known yet.
    fn may_cover(&self, subject: &str) -> bool {
        self.route(subject).is_some() || self.declared.iter().any(StreamConfig::is_existing)
    }

    /// The stream a publish to `subject` goes to, waiting (up to the request timeout) for the
    /// streams to be set up on this connection when one of them may cover it. `None`: a core
    /// NATS publish.
    pub(crate) async fn target(&self, subject: &str) -> Option<String> {
        if *self.setup.borrow() != Setup::Ready && self.may_cover(subject) {
            let mut rx = self.setup.subscribe();
            let _ = tokio::time::timeout(self.request_timeout, rx.wait_for(|s| *s == Setup::Ready))
                .await;
        }
        self.route(subject)
    }

    /// Sends `msg` through JetStream, keeping its ack future for the next confirmation.
    pub(crate) async fn publish(&self, msg: RawMessage, headers: Option<HeaderMap>) -> Result<()> {
        let msg_id = msg
            .headers
            .get(headers::NATS_MSG_ID)
            .or_else(|| msg.headers.get(headers::MSG_ID))
            .map(str::to_owned);
        let mut publish = jetstream::context::Publish::build().payload(msg.payload);
        if let Some(h) = headers {
            publish = publish.headers(h);
        }
        let ack = self
            .context
            .send_publish(msg.subject.clone(), publish)
            .await
            .map_err(|e| Error::nats("publish", e))?;
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.push(PendingAck {
                subject: msg.subject,
                msg_id,
                ack,
            });
            pending.len() >= MAX_PENDING_ACKS
        };
        if full {
            // Nobody confirms: settle the oldest half now, keep what it found for `confirm`.
            let oldest: Vec<PendingAck> = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let n = pending.len() / 2;
                pending.drain(..n).collect()
            };
            let (rejections, unproven) = settle(oldest).await;
            let mut s = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
            s.rejections.extend(rejections);
            s.unproven = s.unproven.or(unproven);
        }
        Ok(())
    }

    /// Awaits every ack pending now (all at once). `Ok(rejections)`: every message was either
    /// stored (a duplicate counts as stored) or refused for the reason given; `Err`: some acks
    /// are missing, nothing is proven.
    pub(crate) async fn confirm(&self) -> Result<Vec<Rejection>> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let (mut rejections, mut unproven) = settle(pending).await;
        {
            let mut s = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
            let mut earlier = std::mem::take(&mut s.rejections);
            earlier.append(&mut rejections);
            rejections = earlier;
            unproven = s.unproven.take().or(unproven);
        }
        match unproven {
            None => Ok(rejections),
            Some(Unproven::Timeout) => Err(Error::Timeout {
                subject: "JetStream PubAck".to_owned(),
                timeout: self.request_timeout,
            }),
            Some(Unproven::ConnectionLost) => Err(Error::ConnectionLost {
                op: "the JetStream PubAck",
            }),
        }
    }

    /// Creates or updates every declared stream (reads an `existing` one), then records their
    /// subjects. The first failure is returned; the others are still tried.
    async fn ensure_all(&self) -> std::result::Result<(), String> {
        let mut routes = Vec::with_capacity(self.declared.len());
        let mut failure = None;
        for cfg in &self.declared {
            match self.ensure(cfg).await {
                Ok(subjects) => routes.push(Route {
                    stream: cfg.name().to_owned(),
                    subjects,
                }),
                Err(e) => {
                    tracing::warn!(stream = cfg.name(), error = %e, "cannot set up the JetStream stream; will retry");
                    // Keep what is known, so that publishes still go to the stream.
                    if !cfg.is_existing() {
                        routes.push(Route {
                            stream: cfg.name().to_owned(),
                            subjects: cfg.subjects().to_vec(),
                        });
                    }
                    failure.get_or_insert(format!("stream {:?}: {e}", cfg.name()));
                }
            }
        }
        // Keep subjects of `existing` streams learnt on an earlier connection.
        {
            let mut known = self.routes.write().unwrap_or_else(PoisonError::into_inner);
            for old in known.drain(..) {
                if !routes.iter().any(|r| r.stream == old.stream) {
                    routes.push(old);
                }
            }
            *known = routes;
        }
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }

    /// One stream: its subjects once it exists as declared.
    async fn ensure(&self, cfg: &StreamConfig) -> std::result::Result<Vec<String>, String> {
        if cfg.is_existing() {
            let mut s = self
                .context
                .get_stream(cfg.name())
                .await
                .map_err(|e| format!("cannot find the existing stream: {e}"))?;
            let info = s.info().await.map_err(|e| e.to_string())?;
            return Ok(info.config.subjects.clone());
        }
        let config = to_nats_config(cfg);
        match self.context.create_stream(config.clone()).await {
            Ok(_) => {
                tracing::debug!(
                    stream = cfg.name(),
                    "JetStream stream created (or found as declared)"
                );
                Ok(cfg.subjects().to_vec())
            }
            Err(e) if is_name_in_use(&e) => {
                self.context
                    .update_stream(&config)
                    .await
                    .map_err(|e| format!("cannot update it to the declared configuration: {e}"))?;
                tracing::debug!(stream = cfg.name(), "JetStream stream updated");
                Ok(cfg.subjects().to_vec())
            }
            Err(e) => Err(format!("cannot create it: {e}")),
        }
    }

    /// Waits until the streams are set up on this connection; after `timeout`, the reason of
    /// the last failed attempt.
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.setup.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| *s == Setup::Ready)).await;
        if matches!(waited, Ok(Ok(_))) {
            return Ok(());
        }
        let reason = match &*self.setup.borrow() {
            Setup::Failed(reason) => reason.clone(),
            _ => format!(
                "not set up within {timeout:?}: is the server reachable, with JetStream enabled?"
            ),
        };
        Err(Error::Stream { reason })
    }
}

/// Sets the declared streams up whenever the connection comes up, retrying while it stays up;
/// ends once the broker is gone.
pub(crate) async fn keep_streams(js: Weak<JetStream>, mut state: watch::Receiver<ConnectionState>) {
    loop {
        let up = state
            .wait_for(|s| matches!(s, ConnectionState::Connected | ConnectionState::Closed))
            .await
            .map(|s| *s);
        if !matches!(up, Ok(ConnectionState::Connected)) {
            return;
        }
        let mut wait = Duration::from_millis(100);
        loop {
            let Some(strong) = js.upgrade() else { return };
            let outcome = strong.ensure_all().await;
            match outcome {
                Ok(()) => {
                    strong.setup.send_replace(Setup::Ready);
                    break;
                }
                Err(reason) => {
                    strong.setup.send_replace(Setup::Failed(reason));
                }
            }
            drop(strong);
            let down =
                tokio::time::timeout(wait, state.wait_for(|s| *s != ConnectionState::Connected))
                    .await;
            if down.is_ok() {
                break;
            }
            wait = (wait * 2).min(SETUP_RETRY_CAP);
        }
        // Set up (or the connection went down): wait for the next disconnect.
        let down = state
            .wait_for(|s| *s != ConnectionState::Connected)
            .await
            .map(|s| *s);
        let Some(strong) = js.upgrade() else { return };
        if *strong.setup.borrow() == Setup::Ready {
            strong.setup.send_replace(Setup::Pending);
        }
        if !matches!(
            down,
            Ok(ConnectionState::Disconnected | ConnectionState::LameDuck)
        ) {
            return;
        }
    }
}

/// Awaits `acks` together: the rejections, and whether some acks are missing.
async fn settle(acks: Vec<PendingAck>) -> (Vec<Rejection>, Option<Unproven>) {
    if acks.is_empty() {
        return (Vec::new(), None);
    }
    let outcomes = futures::future::join_all(acks.into_iter().map(|p| async move {
        let outcome = p.ack.await;
        (p.subject, p.msg_id, outcome)
    }))
    .await;
    let mut rejections = Vec::new();
    let mut unproven = None;
    for (subject, msg_id, outcome) in outcomes {
        let Err(e) = outcome else { continue };
        let reason = match e.kind() {
            PublishErrorKind::TimedOut => {
                unproven = unproven.or(Some(Unproven::Timeout));
                continue;
            }
            PublishErrorKind::BrokenPipe => {
                unproven = Some(Unproven::ConnectionLost);
                continue;
            }
            PublishErrorKind::StreamNotFound => format!(
                "no JetStream stream answered for {subject:?} (none covers it, or it has no leader right now)"
            ),
            _ => publish_error_text(&e),
        };
        rejections.push(Rejection::new(subject, reason).with_msg_id(msg_id));
    }
    (rejections, unproven)
}

/// The server's words for a refused publish: `maximum messages exceeded (JetStream error
/// 10077, status 503)`.
fn publish_error_text(e: &jetstream::context::PublishError) -> String {
    use std::error::Error as _;
    match e
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
    {
        Some(js) => js_error_text(js),
        None => e.to_string(),
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

fn is_name_in_use(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
    )
}

/// Our configuration as async-nats's. Fields left at their defaults are not sent (async-nats
/// skips them), so that servers of the 2.9 line, which do not know 2.10's fields, accept it.
fn to_nats_config(cfg: &StreamConfig) -> stream::Config {
    let limit = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    stream::Config {
        name: cfg.name().to_owned(),
        subjects: cfg.subjects().to_vec(),
        max_age: cfg.max_age_value().unwrap_or_default(),
        max_messages: limit(cfg.max_messages_value()),
        max_bytes: limit(cfg.max_bytes_value()),
        max_messages_per_subject: -1,
        max_consumers: -1,
        discard: match cfg.discard_value() {
            DiscardPolicy::Old => stream::DiscardPolicy::Old,
            DiscardPolicy::New => stream::DiscardPolicy::New,
        },
        storage: match cfg.storage_value() {
            StorageType::File => stream::StorageType::File,
            StorageType::Memory => stream::StorageType::Memory,
        },
        num_replicas: cfg.replicas_value(),
        duplicate_window: cfg.duplicate_window_value().unwrap_or_default(),
        ..Default::default()
    }
}

/// The `Bytes` of an ack kind JetStream understands.
#[allow(dead_code)] // STEP3
pub(crate) fn ack_payload(kind: crate::durable::AckKind) -> Bytes {
    use crate::durable::AckKind;
    match kind {
        AckKind::Ack => Bytes::from_static(b"+ACK"),
        AckKind::Nak(d) if d.is_zero() => Bytes::from_static(b"-NAK"),
        AckKind::Nak(d) => format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into(),
        AckKind::Progress => Bytes::from_static(b"+WPI"),
        AckKind::Term => Bytes::from_static(b"+TERM"),
    }
}
