//! `Bus`: the handle users publish, subscribe, request and serve through.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::broker::{check_subject, Broker, ConnectionState, RawMessage, RawSubscription};
use crate::headers::{self, Headers, WireHeaders};
use crate::message::{Filter, Message, Request};
use crate::outbox::{DeadLetters, Outbox, OutboxStats};
use crate::{
    codec, msg_id, BusBuilder, Envelope, Error, LocalBroker, NatsBroker, Result, Subscription,
};

/// The default time a request waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the event bus. Cheap to clone; every clone shares one broker connection and outbox.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// use bus::{Bus, Message};
/// use futures::StreamExt;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Message)]
/// #[subject("agent.events.<agent>")]
/// struct Heartbeat { agent: String, seq: u64 }
///
/// let bus = Bus::local().await?;
/// let mut sub = Heartbeat::subscribe(&bus, Heartbeat::filter()).await?;
/// Heartbeat { agent: "planner".into(), seq: 1 }.publish(&bus).await?;
/// let env = sub.next().await.unwrap()?;
/// assert_eq!(env.subject(), "agent.events.planner");
/// assert_eq!(env.seq, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The broker by its concrete type: a publish calls it directly, without the boxed future
    /// of the `Broker` trait.
    direct: DirectBroker,
    outbox: Option<Outbox>,
    request_timeout: Duration,
    wire: WireHeaders,
    /// Whether subscriptions start with the subject/body check on.
    check_subject_fields: bool,
}

/// The broker of a [`Bus`], by its concrete type.
#[derive(Clone)]
pub(crate) enum DirectBroker {
    Local(Arc<LocalBroker>),
    Nats(Arc<NatsBroker>),
}

impl DirectBroker {
    pub(crate) fn as_dyn(&self) -> Arc<dyn Broker> {
        match self {
            DirectBroker::Local(b) => b.clone(),
            DirectBroker::Nats(b) => b.clone(),
        }
    }

    /// The broker through the `Broker` trait, borrowed.
    fn as_broker(&self) -> &dyn Broker {
        match self {
            DirectBroker::Local(b) => &**b,
            DirectBroker::Nats(b) => &**b,
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("broker", &self.inner.direct.as_broker().kind())
            .field("outbox", &self.inner.outbox.is_some())
            .field("state", &self.state())
            .finish()
    }
}

impl Bus {
    /// A bus on the embedded in-process broker, with no outbox: no server, nothing on disk.
    pub async fn local() -> Result<Bus> {
        Ok(Bus::from_parts(
            DirectBroker::Local(Arc::new(LocalBroker::new())),
            None,
            DEFAULT_REQUEST_TIMEOUT,
            WireHeaders::default(),
            false,
        ))
    }

    /// A builder for every other setup: NATS, an outbox, timeouts, auth, TLS.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bus::Error> {
    /// let bus = bus::Bus::builder()
    ///     .nats(["nats://127.0.0.1:4222"])
    ///     .outbox_path("var/bus-outbox.sqlite3")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    pub(crate) fn from_parts(
        broker: DirectBroker,
        outbox: Option<Outbox>,
        request_timeout: Duration,
        wire: WireHeaders,
        check_subject_fields: bool,
    ) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                direct: broker,
                outbox,
                request_timeout,
                wire,
                check_subject_fields,
            }),
        }
    }

    /// Which headers typed messages carry on the wire (see [`WireHeaders`]).
    pub fn wire_headers(&self) -> WireHeaders {
        self.inner.wire
    }

    /// The broker underneath, for raw (untyped) use.
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.inner.direct.as_dyn()
    }

    /// Whether the broker is reachable right now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.direct.as_broker().state().borrow()
    }

    /// A watch of the connection state, to wait for a change or react to one.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.direct.as_broker().state()
    }

    /// Publishes a typed message. Returns once it is committed to the outbox (when there is one)
    /// or handed to the broker (when there is none).
    ///
    /// Its headers follow the bus's [`WireHeaders`]: by default a message through the outbox
    /// carries its `Bus-Msg-Id` (and `Nats-Msg-Id`), a direct one no header at all.
    pub async fn publish<M: Message>(&self, msg: &M) -> Result<()> {
        self.publish_with_headers(msg, Headers::new()).await
    }

    /// Publishes a typed message with extra headers of your own (always sent, in this order,
    /// before those of the [`WireHeaders`] policy). A `Bus-Msg-Id` among them is kept as the
    /// message's id.
    pub async fn publish_with_headers<M: Message>(&self, msg: &M, headers: Headers) -> Result<()> {
        // The derive builds the subject token by token and checks each placeholder value as it
        // is written (the template's literals were checked at compile time): it is not checked
        // again here. The broker, or the outbox before queueing, checks it once.
        let mut raw = RawMessage {
            subject: msg.subject()?,
            reply: None,
            headers,
            payload: codec::encode(msg, M::TYPE_NAME)?,
        };
        if self.inner.wire == WireHeaders::Full {
            full_headers::<M>(&mut raw.headers);
        }
        self.send(raw).await
    }

    /// Publishes raw bytes to a concrete subject, through the outbox if there is one.
    ///
    /// Through the outbox (or with [`WireHeaders::Full`]) it adds a `Bus-Msg-Id` and a
    /// `Nats-Msg-Id` header if the message has no `Bus-Msg-Id`.
    pub async fn publish_raw(&self, mut msg: RawMessage) -> Result<()> {
        if self.inner.wire == WireHeaders::Full {
            stamp_msg_id(&mut msg.headers);
        }
        self.send(msg).await
    }

    /// The one place a message leaves the bus: into the outbox, or straight to the broker.
    async fn send(&self, mut msg: RawMessage) -> Result<()> {
        match &self.inner.outbox {
            Some(outbox) => {
                // Checked before queueing: a bad subject must fail this call, not become a dead
                // letter later.
                check_subject(&msg.subject)?;
                // A message from the outbox may be sent more than once: the id lets consumers
                // (and JetStream, through `Nats-Msg-Id`) drop the duplicate.
                stamp_msg_id(&mut msg.headers);
                match publish_span(&msg.subject) {
                    Some(span) => outbox.enqueue(msg).instrument(span).await,
                    None => outbox.enqueue(msg).await,
                }
            }
            None => match &self.inner.direct {
                DirectBroker::Local(local) => {
                    let _entered = publish_span(&msg.subject).map(tracing::Span::entered);
                    local.publish_now(msg).map(drop)
                }
                DirectBroker::Nats(nats) => match publish_span(&msg.subject) {
                    Some(span) => nats.publish_checked(msg).instrument(span).await,
                    None => nats.publish_checked(msg).await,
                },
            },
        }
    }

    /// Subscribes to the messages of type `M` that `filter` selects.
    pub async fn subscribe<M: Message>(&self, filter: M::Filter) -> Result<Subscription<M>> {
        let check = self.inner.check_subject_fields;
        self.subscribe_raw(&filter)
            .await
            .map(|raw| Subscription::new(raw).check_subject_fields(check))
    }

    /// The raw subscription a filter stands for (its pattern and queue group).
    async fn subscribe_raw(&self, filter: &impl Filter) -> Result<RawSubscription> {
        let pattern = filter.pattern()?;
        self.inner
            .direct
            .as_broker()
            .subscribe(&pattern, filter.queue_group())
            .await
    }

    /// Sends a request and waits for its typed reply, up to the bus's request timeout.
    ///
    /// Requests bypass the outbox: a request is a conversation, not a message to deliver later.
    pub async fn request<M: Request>(&self, req: &M) -> Result<Envelope<M::Reply>> {
        self.request_with_timeout(req, self.inner.request_timeout)
            .await
    }

    /// [`request`](Bus::request) with a timeout of your own.
    pub async fn request_with_timeout<M: Request>(
        &self,
        req: &M,
        timeout: Duration,
    ) -> Result<Envelope<M::Reply>> {
        let mut headers = Headers::with_capacity(match self.inner.wire {
            WireHeaders::Full => 5,
            _ => 1,
        });
        if self.inner.wire == WireHeaders::Full {
            full_headers::<M>(&mut headers);
        }
        headers.append(headers::CORRELATION_ID, msg_id::new_msg_id());
        let raw = RawMessage {
            subject: req.subject()?,
            reply: None,
            headers,
            payload: codec::encode(req, M::TYPE_NAME)?,
        };
        let subject = raw.subject.clone();
        let reply = self
            .inner
            .direct
            .as_broker()
            .request(raw, timeout)
            .instrument(tracing::trace_span!("request", subject = %subject))
            .await?;
        if let Some(message) = reply.headers.get(headers::ERROR) {
            return Err(Error::Remote {
                subject,
                message: message.to_string(),
            });
        }
        match codec::decode::<M::Reply>(&reply.payload) {
            Ok(body) => Ok(Envelope::new(
                body,
                reply.subject,
                reply.reply,
                reply.headers,
            )),
            Err(source) => Err(Error::Decode {
                msg_id: reply.headers.get(headers::MSG_ID).map(str::to_string),
                subject: reply.subject,
                type_name: std::any::type_name::<M::Reply>(),
                source,
            }),
        }
    }

    /// Answers requests of type `M` that `filter` selects with `handler`, until the returned
    /// handle is stopped or the bus closes. Each request is handled on its own task.
    ///
    /// A handler error is sent back as a `Bus-Error` header and surfaces at the requester as
    /// [`Error::Remote`].
    pub async fn serve<M, F, Fut, E>(&self, filter: M::Filter, handler: F) -> Result<ServeHandle>
    where
        M: Request,
        F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<M::Reply, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let raw = self.subscribe_raw(&filter).await?;
        let broker = self.inner.direct.as_dyn();
        let wire = self.inner.wire;
        let check = self.inner.check_subject_fields;
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let mut messages = raw.messages;
            while let Some(msg) = messages.next().await {
                let Some(reply_to) = msg.reply.clone() else {
                    tracing::debug!(subject = %msg.subject, "request without reply subject ignored");
                    continue;
                };
                let broker = broker.clone();
                let handler = handler.clone();
                tokio::spawn(
                    async move {
                        let correlation = msg
                            .headers
                            .get(headers::CORRELATION_ID)
                            .or_else(|| msg.headers.get(headers::MSG_ID))
                            .map(str::to_owned);
                        let outcome = match codec::decode::<M>(&msg.payload) {
                            Ok(body) if check => {
                                match crate::subscription::check_subject_fields(&body, &msg.subject)
                                {
                                    Ok(()) => {
                                        let env = Envelope::new(
                                            body,
                                            msg.subject,
                                            msg.reply,
                                            msg.headers,
                                        );
                                        handler(env).await.map_err(|e| e.to_string())
                                    }
                                    Err(e) => Err(e.to_string()),
                                }
                            }
                            Ok(body) => {
                                let env = Envelope::new(body, msg.subject, msg.reply, msg.headers);
                                handler(env).await.map_err(|e| e.to_string())
                            }
                            Err(e) => {
                                Err(format!("cannot decode request as `{}`: {e}", M::TYPE_NAME))
                            }
                        };
                        let reply = build_reply::<M>(reply_to, correlation, outcome, wire);
                        if let Err(e) = broker.publish(reply).await {
                            tracing::warn!(error = %e, "cannot send reply");
                        }
                    }
                    .instrument(tracing::trace_span!("serve", type_name = M::TYPE_NAME)),
                );
            }
        });
        Ok(ServeHandle { task })
    }

    /// Returns once every message published before the call is confirmed by the broker or
    /// dead-lettered (with an outbox), or processed by the broker (without one).
    pub async fn flush(&self) -> Result<()> {
        match &self.inner.outbox {
            Some(outbox) => outbox.flush().await,
            None => self.inner.direct.as_broker().confirm().await,
        }
    }

    /// The dead letters of the outbox: messages that failed 3 send attempts.
    pub fn dead_letters(&self) -> DeadLetters {
        match &self.inner.outbox {
            Some(outbox) => outbox.dead_letters(),
            None => DeadLetters::none(),
        }
    }

    /// Depth and oldest age of the outbox, for health checks; `None` without an outbox.
    pub async fn outbox_stats(&self) -> Result<Option<OutboxStats>> {
        match &self.inner.outbox {
            Some(outbox) => outbox.stats().await.map(Some),
            None => Ok(None),
        }
    }
}

fn build_reply<M: Request>(
    reply_to: String,
    correlation: Option<String>,
    outcome: std::result::Result<M::Reply, String>,
    wire: WireHeaders,
) -> RawMessage {
    let mut h = Headers::with_capacity(2);
    if let Some(c) = correlation {
        h.append(headers::CORRELATION_ID, c);
    }
    let payload = match outcome.and_then(|r| {
        codec::encode(&r, std::any::type_name::<M::Reply>()).map_err(|e| e.to_string())
    }) {
        Ok(bytes) => {
            if wire == WireHeaders::Full {
                h.append(headers::CONTENT_TYPE, headers::MSGPACK);
            }
            bytes
        }
        Err(message) => {
            h.append(headers::ERROR, message);
            bytes::Bytes::new()
        }
    };
    RawMessage {
        subject: reply_to,
        reply: None,
        headers: h,
        payload,
    }
}

/// The headers [`WireHeaders::Full`] adds to a typed message, after the caller's.
fn full_headers<M: Message>(headers: &mut Headers) {
    stamp_msg_id(headers);
    headers.append(headers::CONTENT_TYPE, headers::MSGPACK);
    headers.append(headers::TYPE, M::TYPE_NAME);
}

/// Gives the message an id (as `Bus-Msg-Id` and `Nats-Msg-Id`) unless it has one.
fn stamp_msg_id(headers: &mut Headers) {
    if headers.get(headers::MSG_ID).is_none() {
        let id = msg_id::new_msg_id();
        headers.append(headers::NATS_MSG_ID, id.clone());
        headers.append(headers::MSG_ID, id);
    }
}

/// The `publish` span, made only when a subscriber wants TRACE: even a disabled span cost a
/// visible share of a local publish.
#[inline]
fn publish_span(subject: &str) -> Option<tracing::Span> {
    if tracing::enabled!(tracing::Level::TRACE) {
        Some(tracing::trace_span!("publish", subject))
    } else {
        None
    }
}

/// A running [`Bus::serve`] responder. Dropping the handle leaves it running; call
/// [`stop`](ServeHandle::stop) to end it.
#[derive(Debug)]
pub struct ServeHandle {
    task: tokio::task::JoinHandle<()>,
}

impl ServeHandle {
    /// Stops answering (unsubscribes).
    pub fn stop(self) {
        self.task.abort();
    }

    /// Whether the responder is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}
