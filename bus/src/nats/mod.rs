//! `NatsBroker`: the NATS backend on async-nats 0.35.
//!
//! What async-nats 0.35 does not do and this module adds (`docs/design.md`, "async-nats 0.35 as measured here"):
//! - the size check on every publish (payload plus headers against the server's max_payload);
//!   only plain `publish` checks it there, and an oversize message makes the server close the
//!   connection;
//! - drop accounting: async-nats's full subscription buffer drops with only a lossy
//!   `Event::SlowConsumer(sid)`; the SDK keeps its own buffer per subscription, fed by a pump
//!   task, and counts every drop in that subscription's `SubscriptionStats`;
//! - `confirm`, an echo through the server proving it processed what was published before it.

pub(crate) mod convert;
mod events;
mod jetstream;
mod options;
mod subscriber;

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, RequestErrorKind, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

pub use self::options::{redact_url, NatsAuth, NatsOptions};

use self::events::{QueueDepth, Registered, Shared};
use self::subscriber::{forward_ready, lock_sub, next_message, SharedSubscriber};
use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::error::{Error, Rejection, Result};
use crate::raw::{
    check_size, check_subject, check_subscription, RawMessage, RawSubscription, SubscriptionStats,
};

/// The NATS backend: one async-nats connection, reconnecting forever.
///
/// Made by [`BusBuilder::nats`](crate::BusBuilder::nats), or directly with
/// [`NatsBroker::connect`].
///
/// # Confirmation subject
/// [`confirm`](Broker::confirm) publishes a small token to `<confirm_subject>.<unique id>`
/// (default prefix `_bus.confirm`, see [`NatsOptions::confirm_subject`]), a subject only this
/// connection subscribes to, and waits until the token comes back. NATS processes one
/// connection's messages in order, so the echo proves the server processed everything this
/// connection published before. The client therefore needs **publish and subscribe** permission
/// on `_bus.confirm.>` (or `<confirm_subject>.>`). Subscribers to `>` see these tokens, as they
/// see every `_INBOX` reply.
///
/// A confirmation fails if the connection was lost since the previous confirmation (or during
/// this one): messages published in between may be lost even if the echo came back after the
/// reconnect.
///
/// An echo rather than a request answered by "no responders": any `>` subscriber on the system
/// would receive such a request and, never answering, turn every confirmation into a timeout.
#[derive(Debug)]
pub struct NatsBroker {
    client: Client,
    shared: Arc<Shared>,
    request_timeout: Duration,
    /// `<confirm_subject>.<unique id>`: only this connection subscribes to it.
    confirm_echo_subject: String,
    /// The echo subscription, made on the first confirmation.
    confirm_echo: tokio::sync::Mutex<Option<async_nats::Subscriber>>,
    confirm_seq: AtomicU64,
    /// `Shared::disconnects` as of the last confirmation.
    confirmed_disconnects: AtomicU64,
    subscription_capacity: usize,
    /// Declared streams, PubAcks and durable consumers.
    js: Arc<self::jetstream::JetStream>,
    /// One confirmation at a time: each awaits the acks pending when it starts, so a later one
    /// must not return before an earlier one settled what it took.
    confirm_lock: tokio::sync::Mutex<()>,
}

impl NatsBroker {
    /// A JetStream context on this connection (the shared inbox's key-value bucket).
    pub(crate) fn jetstream_context(&self) -> async_nats::jetstream::Context {
        self.js.context()
    }

    /// The async-nats client, for the NATS service API (`bus::service`).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Connects (succeeds while the server is still down; reconnects forever).
    ///
    /// Fails only on configuration errors: no or unparsable URL, a malformed NKey seed, an
    /// unreadable or invalid credentials file or TLS file, an invalid confirm subject. Watch
    /// [`state`](Broker::state) to know when the server is reached, or whether it refuses this
    /// client ([`ConnectionState::Refused`], with [`connection_error`](NatsBroker::connection_error)).
    pub async fn connect(options: NatsOptions) -> Result<NatsBroker> {
        Self::connect_with_streams(options, Vec::new()).await
    }

    /// [`connect`](NatsBroker::connect), with JetStream streams declared (see
    /// [`StreamConfig`](crate::StreamConfig)): each is created or updated whenever the
    /// connection comes up, and a publish whose subject one of them covers is confirmed by its
    /// PubAck. Fails on an invalid stream configuration too.
    pub async fn connect_with_streams(
        options: NatsOptions,
        streams: Vec<crate::stream::StreamConfig>,
    ) -> Result<NatsBroker> {
        let options = options.with_url_credentials()?;
        options.validate()?;
        for s in &streams {
            s.validate()?;
        }
        let shared = Shared::new();
        let on_event = Arc::clone(&shared);
        let connect = options
            .to_connect_options()
            .await?
            .event_callback(move |event| {
                on_event.on_event(event);
                std::future::ready(())
            });
        let urls = options
            .urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    Error::Config(format!(
                        "invalid NATS server URL {:?}: {e}; expected e.g. nats://host:4222",
                        redact_url(u)
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        shared.set_probe(options.clone(), urls.clone());
        let client = connect
            .connect(urls)
            .await
            .map_err(|e| Error::nats("connect", e))?;
        *shared
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client.clone());
        shared.refresh_max_payload();
        // Credentials were taken out of the URLs above; redacted all the same.
        let shown: Vec<String> = options.urls.iter().map(|u| redact_url(u)).collect();
        tracing::debug!(urls = ?shown, "NATS client started");
        let js = Arc::new(self::jetstream::JetStream::new(
            client.clone(),
            streams,
            options.request_timeout,
        ));
        if js.routes_anything() {
            tokio::spawn(self::jetstream::streams::keep_streams(
                Arc::downgrade(&js),
                shared.state.subscribe(),
            ));
        }
        Ok(NatsBroker {
            js,
            confirm_lock: tokio::sync::Mutex::new(()),
            shared,
            request_timeout: options.request_timeout,
            subscription_capacity: options.effective_subscription_capacity(),
            confirm_echo_subject: confirm_echo_subject(&options.confirm_subject, &client),
            confirm_echo: tokio::sync::Mutex::new(None),
            confirm_seq: AtomicU64::new(0),
            confirmed_disconnects: AtomicU64::new(0),
            client,
        })
    }

    /// Refuses a message the server would answer by closing the connection.
    #[inline]
    fn check_size(&self, msg: &RawMessage) -> Result<()> {
        check_size(msg, self.shared.max_payload.load(Ordering::Relaxed))
    }

    /// [`Broker::publish`] without the boxed future: what a [`Bus`](crate::Bus) calls. The only
    /// subject check of a direct publish.
    pub(crate) async fn publish_checked(&self, msg: RawMessage) -> Result<()> {
        self.publish_from(Cow::Owned(msg)).await
    }

    /// [`publish_checked`](Self::publish_checked) of an owned message (its subject and reply
    /// become the client's without a copy) or of a borrowed one (the outbox's rows: no copy
    /// of the message to send it).
    async fn publish_from(&self, msg: Cow<'_, RawMessage>) -> Result<()> {
        check_subject(&msg.subject)?;
        self.check_size(&msg)?;
        let h = if msg.headers.is_empty() {
            None
        } else {
            Some(convert::to_header_map(&msg.headers)?)
        };
        if msg.reply.is_none() && self.js.routes_anything() {
            if let Some(stream) = self.js.target(&msg.subject).await {
                tracing::trace!(subject = %msg.subject, stream = &*stream, "publish through JetStream");
                // Boxed: its future is 2 KiB, which every publish's future (local and outbox
                // ones too) would otherwise carry and move on each call.
                return Box::pin(self.js.publish(msg, h)).await;
            }
        }
        let (subject, reply, payload): (Subject, Option<Subject>, _) = match msg {
            Cow::Owned(m) => (m.subject.into(), m.reply.map(Into::into), m.payload),
            Cow::Borrowed(m) => (
                m.subject.as_str().into(),
                m.reply.as_deref().map(Into::into),
                m.payload.clone(),
            ),
        };
        let result = match (reply, h) {
            (None, None) => self.client.publish(subject, payload).await,
            (None, Some(h)) => self.client.publish_with_headers(subject, h, payload).await,
            (Some(reply), None) => {
                self.client
                    .publish_with_reply(subject, reply, payload)
                    .await
            }
            (Some(reply), Some(h)) => {
                self.client
                    .publish_with_reply_and_headers(subject, reply, h, payload)
                    .await
            }
        };
        result.map_err(|e| Error::nats("publish", e))
    }

    async fn request_inner(&self, msg: RawMessage, timeout: Duration) -> Result<RawMessage> {
        check_subject(&msg.subject)?;
        self.check_size(&msg)?;
        let mut req = async_nats::Request::new()
            .payload(msg.payload)
            .timeout(Some(timeout));
        if !msg.headers.is_empty() {
            req = req.headers(convert::to_header_map(&msg.headers)?);
        }
        match self.client.send_request(msg.subject.clone(), req).await {
            Ok(reply) => Ok(convert::from_nats(reply)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => Error::NoResponders {
                    subject: msg.subject,
                },
                RequestErrorKind::TimedOut => Error::Timeout {
                    subject: msg.subject,
                    timeout,
                },
                RequestErrorKind::Other => Error::nats("request", e),
            }),
        }
    }

    /// A round trip through the server on the echo subject: once it returns, the server has
    /// processed everything this connection sent before (NATS keeps one connection's order), and
    /// has sent back whatever it answered to it, `-ERR`s included.
    async fn echo(&self, deadline: tokio::time::Instant) -> Result<()> {
        let timed_out = || self.echo_timed_out(deadline);
        // One round trip at a time: they share the echo subscription.
        let mut echo = tokio::time::timeout_at(deadline, self.confirm_echo.lock())
            .await
            .map_err(|_| timed_out())?;
        if echo.is_none() {
            let sub = tokio::time::timeout_at(
                deadline,
                self.client.subscribe(self.confirm_echo_subject.clone()),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| Error::nats("subscribe to the confirm subject", e))?;
            *echo = Some(sub);
        }
        let Some(sub) = echo.as_mut() else {
            unreachable!("set above")
        };
        let token = self.next_confirm_token();
        let wait = async {
            self.client
                .publish(
                    self.confirm_echo_subject.clone(),
                    Bytes::from(token.to_be_bytes().to_vec()),
                )
                .await
                .map_err(|e| Error::nats("confirm", e))?;
            // Tokens of earlier round trips that timed out may still arrive: skip them.
            loop {
                match sub.next().await {
                    Some(msg) if msg.payload.as_ref() == token.to_be_bytes() => return Ok(()),
                    Some(_) => {}
                    None => return Err(Error::Closed),
                }
            }
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .map_err(|_| timed_out())?
    }

    /// What a round trip that got no echo in time means: a timeout, or, when the server
    /// refused the echo subject itself, a permissions problem that waiting will not fix.
    fn echo_timed_out(&self, _deadline: tokio::time::Instant) -> Error {
        let prefix = &self.confirm_echo_subject;
        let v = self.shared.violations();
        let denied = v
            .publish
            .iter()
            .chain(&v.subscribe)
            .find(|(subject, _)| subject == prefix || bus_subject::matches(subject, prefix));
        match denied {
            Some((_, text)) => self.confirm_denied(text),
            None => Error::Timeout {
                subject: self.confirm_echo_subject.clone(),
                timeout: self.request_timeout,
            },
        }
    }

    fn confirm_denied(&self, text: &str) -> Error {
        let prefix = self
            .confirm_echo_subject
            .rsplit_once('.')
            .map_or(self.confirm_echo_subject.as_str(), |(p, _)| p);
        Error::PermissionDenied {
            subject: self.confirm_echo_subject.clone(),
            reason: format!(
                "{text}; the outbox confirms each batch by an echo through the server, so this \
                 user needs publish and subscribe permission on `{prefix}.>` (or set another \
                 prefix with BusBuilder::confirm_subject)"
            ),
        }
    }

    async fn confirm_inner(&self) -> Result<()> {
        let _one_at_a_time = self.confirm_lock.lock().await;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let seen = self.confirmed_disconnects.load(Ordering::Relaxed);
        // The PubAcks and the echo at once: the acks of messages sent through JetStream, the
        // echo for everything sent on core NATS.
        let (outcome, acked) = futures::join!(self.echo(deadline), self.js.confirm());
        if outcome.is_ok() {
            // async-nats handed every earlier message to its subscription buffers before the
            // echo; make each pump move them into the SDK's buffers, so that after `confirm`
            // they are ready to read (or counted as dropped).
            let waits: Vec<_> = self
                .shared
                .subscriptions()
                .values()
                .filter_map(|reg| {
                    let (done, wait) = oneshot::channel();
                    reg.sync.send(done).ok().map(|()| wait)
                })
                .collect();
            for wait in waits {
                // An error means the pump ended: nothing left to move.
                let _ = wait.await;
            }
            // The server's `-ERR`s for this batch were read before the echo; async-nats hands
            // them to its event task, which the pumps' round trips above gave time to run. Two
            // more turns of the scheduler make sure it did.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        // A connection lost since the last confirmation may have taken messages with it that
        // async-nats had already written or buffered, even if the echo made it after the
        // reconnect: then nothing is proven and the caller must send its batch again.
        let now = self.shared.disconnects.load(Ordering::Relaxed);
        self.confirmed_disconnects.store(now, Ordering::Relaxed);
        outcome?;
        if now != seen {
            return Err(Error::ConnectionLost { op: "confirm" });
        }
        let js_rejections = acked?;
        let refused = std::mem::take(&mut self.shared.violations().publish);
        if refused.is_empty() {
            if js_rejections.is_empty() {
                return Ok(());
            }
            return Err(Error::Rejected {
                rejections: js_rejections,
            });
        }
        if let Some((_, text)) = refused
            .iter()
            .find(|(subject, _)| *subject == self.confirm_echo_subject)
        {
            return Err(self.confirm_denied(text));
        }
        let mut rejections: Vec<Rejection> = Vec::with_capacity(refused.len());
        for (subject, reason) in refused {
            if !rejections.iter().any(|r| r.subject == subject) {
                rejections.push(Rejection::new(subject, reason));
            }
        }
        rejections.extend(js_rejections);
        Err(Error::Rejected { rejections })
    }

    /// Waits until every declared stream is set up on the current connection (at once when
    /// none was declared); after `timeout`, [`Error::Stream`] with the reason of the last failed
    /// attempt (attempts go on).
    pub async fn streams_ready(&self, timeout: Duration) -> Result<()> {
        self.js.ready(timeout).await
    }

    fn next_confirm_token(&self) -> u64 {
        self.confirm_seq.fetch_add(1, Ordering::Relaxed)
    }

    async fn subscribe_inner(&self, pattern: &str, queue: Option<&str>) -> Result<RawSubscription> {
        check_subscription(pattern, queue)?;
        let pattern_owned = pattern.to_owned();
        let sub = match queue {
            None => self.client.subscribe(pattern_owned.clone()).await,
            Some(q) => {
                self.client
                    .queue_subscribe(pattern_owned.clone(), q.to_owned())
                    .await
            }
        }
        .map_err(|e| Error::nats("subscribe", e))?;
        let stats = Arc::new(SubscriptionStats::default());
        let sid = subscriber_sid(&sub);
        if sid.is_none() {
            tracing::error!(
                pattern,
                "cannot read the async-nats subscription id; drops inside async-nats on this subscription will not be counted"
            );
        }
        // Without a sid (never seen with 0.35) the entry still serves `confirm`'s barrier, under
        // a key async-nats never uses (its sids count up from 1).
        let key =
            sid.unwrap_or_else(|| u64::MAX - self.confirm_seq.fetch_add(1, Ordering::Relaxed));
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        self.shared.subscriptions().insert(
            key,
            Registered {
                pattern: pattern_owned.clone(),
                stats: Arc::clone(&stats),
                sync: sync_tx,
            },
        );
        let (tx, rx) = mpsc::channel(self.subscription_capacity);
        let sub: SharedSubscriber = Arc::new(std::sync::Mutex::new(Some(sub)));
        tokio::spawn(pump(
            Arc::clone(&sub),
            tx,
            sync_rx,
            Arc::clone(&stats),
            pattern_owned.clone(),
        ));
        let stream = NatsStream {
            sub,
            rx,
            batch: Vec::new(),
            batch_limit: (self.subscription_capacity / 8).clamp(1, MAX_BATCH),
            stats: Arc::clone(&stats),
            key,
            shared: Arc::clone(&self.shared),
        };
        // A subscription the server refuses (permissions) would otherwise stay silent: while
        // connected, one round trip tells whether the server answered the SUB with an `-ERR`.
        if *self.shared.state.borrow() == ConnectionState::Connected {
            let deadline = tokio::time::Instant::now() + self.request_timeout;
            match self.echo(deadline).await {
                Ok(()) => {
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, pattern, "cannot check the subscription with a round trip")
                }
            }
            let refused = {
                let mut v = self.shared.violations();
                let found = v.subscribe.iter().position(|(p, _)| p == pattern);
                found.map(|i| v.subscribe.remove(i).1)
            };
            if let Some(text) = refused {
                return Err(Error::PermissionDenied {
                    subject: pattern_owned,
                    reason: format!("{text}; grant this user subscribe permission on it"),
                });
            }
        }
        Ok(RawSubscription {
            pattern: pattern_owned,
            messages: Box::pin(stream),
            stats,
        })
    }
}

/// `<prefix>.<unique token>`: the inbox async-nats makes is `_INBOX.<nuid>`; its nuid part is
/// unique across clients and processes.
fn confirm_echo_subject(prefix: &str, client: &Client) -> String {
    let inbox = client.new_inbox();
    let unique = inbox.rsplit('.').next().unwrap_or(&inbox);
    format!("{prefix}.{unique}")
}

/// The subscription id (sid) async-nats 0.35 gave `sub`, the key of its `Event::SlowConsumer`.
///
/// 0.35 keeps the field private but derives `Debug` (`Subscriber { sid: 7, .. }`), so the id is
/// read from there; exact, because the sid is the first field. A test in this module fails if
/// a future async-nats changes that.
fn subscriber_sid(sub: &async_nats::Subscriber) -> Option<u64> {
    let debug = format!("{sub:?}");
    let rest = debug.split_once("sid: ")?.1;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Moves one subscription's messages from async-nats's buffer into ours, counting every message
/// our full buffer refuses.
///
/// Why a task and not async-nats's buffer alone: async-nats reports each drop only as an
/// `Event::SlowConsumer` on an event channel of 128 that itself drops events, so a burst of drops
/// was undercounted by half in tests. Here every drop is counted exactly. async-nats's own buffer
/// is several times larger (see `options.rs`) and this loop never waits on the subscriber, so it
/// only overflows if this task is starved; those drops are still counted from the events.
async fn pump(
    sub: SharedSubscriber,
    tx: mpsc::Sender<async_nats::Message>,
    mut sync: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stats: Arc<SubscriptionStats>,
    pattern: String,
) {
    let mut dropped_in_burst = 0u64;
    let mut forward = |msg: async_nats::Message| -> bool {
        match tx.try_send(msg) {
            Ok(()) => {
                stats.add_received(1);
                if dropped_in_burst > 0 {
                    tracing::warn!(%pattern, dropped = dropped_in_burst, "NATS slow consumer: messages dropped");
                    dropped_in_burst = 0;
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.add_dropped(1);
                dropped_in_burst += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    };
    let closed = tx.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            // `false`: the client was dropped (the subscriber sees the end of its stream), or
            // the subscriber dropped its stream.
            more = forward_ready(&sub, &mut forward) => if !more {
                break;
            },
            Some(done) = sync.recv() => {
                // `confirm`'s barrier: move everything async-nats already holds. `unconstrained`
                // because tokio's cooperative budget would report an empty channel early.
                while let Some(Some(msg)) = tokio::task::unconstrained(next_message(&sub)).now_or_never() {
                    if !forward(msg) {
                        return;
                    }
                }
                let _ = done.send(());
            }
            // The subscriber dropped its stream: dropping `sub` unsubscribes.
            () = &mut closed => break,
        }
    }
}

/// The most messages a subscription stream takes from its channel at once.
const MAX_BATCH: usize = 64;

/// The message stream of one subscription; unregisters its sid when dropped (the pump then
/// ends and unsubscribes).
struct NatsStream {
    sub: SharedSubscriber,
    rx: mpsc::Receiver<async_nats::Message>,
    /// Messages taken from `rx` in one go, in reverse order (the next one is last): the
    /// channel's per-message cost (a lock to give back each slot) is paid once per batch.
    /// They count as delivered when handed out; a subscription therefore buffers up to
    /// `batch_limit` (at most an eighth of its capacity) beyond its capacity.
    batch: Vec<async_nats::Message>,
    batch_limit: usize,
    stats: Arc<SubscriptionStats>,
    key: u64,
    shared: Arc<Shared>,
}

impl Stream for NatsStream {
    type Item = RawMessage;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawMessage>> {
        let this = &mut *self;
        if this.batch.is_empty() {
            match this
                .rx
                .poll_recv_many(cx, &mut this.batch, this.batch_limit)
            {
                // 0: the channel is closed and empty.
                Poll::Ready(0) => return Poll::Ready(None),
                Poll::Ready(_) => this.batch.reverse(),
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.batch.pop() {
            Some(msg) => {
                this.stats.add_delivered(1);
                Poll::Ready(Some(convert::from_nats(msg)))
            }
            None => Poll::Ready(None),
        }
    }
}

impl Drop for NatsStream {
    fn drop(&mut self) {
        self.shared.subscriptions().remove(&self.key);
        // Queue the UNSUB now, ahead of anything this task sends next (a request to the same
        // subject must find no responder). async-nats's own `Drop` only spawns a task for it.
        // If its command channel is full this gives up and that spawned task does it.
        if let Some(mut sub) = lock_sub(&self.sub).take() {
            let _ = tokio::task::unconstrained(sub.unsubscribe()).now_or_never();
        }
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        // Break the cycle client -> event callback -> `Shared` -> client, so the connection
        // closes once the remaining handles (live subscriptions) are gone.
        self.shared
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.shared.state.send_replace(ConnectionState::Closed);
    }
}

impl Broker for NatsBroker {
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        self.publish_checked(msg).boxed()
    }

    fn publish_ref<'a>(&'a self, msg: &'a RawMessage) -> BoxFuture<'a, Result<()>> {
        self.publish_from(Cow::Borrowed(msg)).boxed()
    }

    /// An echo through the server on the confirm subject (see [`NatsBroker`]): proves it
    /// processed everything published before on this connection. Fails with
    /// [`Error::Timeout`] after the request timeout when the server is unreachable.
    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        self.confirm_inner().boxed()
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        let pattern = pattern.to_owned();
        let queue = queue.map(str::to_owned);
        async move { self.subscribe_inner(&pattern, queue.as_deref()).await }.boxed()
    }

    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        self.request_inner(msg, timeout).boxed()
    }

    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    fn max_payload(&self) -> usize {
        self.shared.max_payload.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    /// A JetStream durable pull consumer on the stream covering `spec.pattern` (a declared one,
    /// else one found on the server; [`Error::NoStream`] if none): created, or updated to
    /// `spec`, then pulled in batches of `spec.prefetch`. A new durable starts with messages
    /// published from then on; an existing one resumes where it stopped. The puller starts
    /// again by itself after a reconnect or a lost pull.
    fn consume(
        &self,
        spec: &crate::durable::DurableSpec,
    ) -> BoxFuture<'_, Result<crate::durable::DurableSubscription>> {
        let spec = spec.clone();
        async move { self.js.consume(spec, self.shared.state.subscribe()).await }.boxed()
    }
}

impl NatsBroker {
    /// Why the client cannot connect, while it cannot: the server's refusal with what to check
    /// (see [`ConnectionState::Refused`]), or why the server is unreachable (`Connection
    /// refused`, a timeout, …). `None` while connected, and before the first failed attempt.
    ///
    /// The reason behind a failure async-nats only calls "IO error" is learned from one extra
    /// connection attempt without retry, made at most every couple of seconds while the
    /// client keeps failing; so it may lag a change of the cause by that much.
    pub fn connection_error(&self) -> Option<String> {
        self.shared.connection_error()
    }

    /// Makes the INFO of a reconnect say how many messages wait in `depth`'s queue (the
    /// outbox of the bus on this connection).
    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    pub(crate) fn set_queue_depth(&self, depth: QueueDepth) {
        self.shared.set_queue_depth(depth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscriber_sid_is_readable() {
        // No server needed: with retry_on_initial_connect the client hands out subscribers
        // while it is still connecting, and sids count up from 1.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let a = client.subscribe("a").await.unwrap();
        let b = client.subscribe("b").await.unwrap();
        assert_eq!(subscriber_sid(&a), Some(1));
        assert_eq!(subscriber_sid(&b), Some(2));
    }
}
