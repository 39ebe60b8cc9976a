//! `Bus`: the handle users publish, subscribe, request and serve through.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::broker::{Broker, ConnectionState, RawMessage};
use crate::headers::{self, Headers};
use crate::message::{Filter, Message, Request};
use crate::outbox::{DeadLetters, Outbox, OutboxStats};
use crate::{codec, msg_id, BusBuilder, Envelope, Error, LocalBroker, Result, Subscription};

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
    broker: Arc<dyn Broker>,
    outbox: Option<Outbox>,
    request_timeout: Duration,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("broker", &self.inner.broker.kind())
            .field("outbox", &self.inner.outbox.is_some())
            .field("state", &self.state())
            .finish()
    }
}

impl Bus {
    /// A bus on the embedded in-process broker, with no outbox: no server, nothing on disk.
    pub async fn local() -> Result<Bus> {
        Ok(Bus::from_parts(
            Arc::new(LocalBroker::new()),
            None,
            DEFAULT_REQUEST_TIMEOUT,
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
        broker: Arc<dyn Broker>,
        outbox: Option<Outbox>,
        request_timeout: Duration,
    ) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                broker,
                outbox,
                request_timeout,
            }),
        }
    }

    /// The broker underneath, for raw (untyped) use.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Whether the broker is reachable right now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.broker.state().borrow()
    }

    /// A watch of the connection state, to wait for a change or react to one.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.broker.state()
    }

    /// Publishes a typed message. Returns once it is committed to the outbox (when there is one)
    /// or handed to the broker (when there is none).
    pub async fn publish<M: Message>(&self, msg: &M) -> Result<()> {
        self.publish_with_headers(msg, Headers::new()).await
    }

    /// Publishes a typed message with extra headers of your own.
    pub async fn publish_with_headers<M: Message>(&self, msg: &M, headers: Headers) -> Result<()> {
        let raw = encode_message(msg, headers, None)?;
        self.publish_raw(raw).await
    }

    /// Publishes raw bytes to a concrete subject, through the outbox if there is one.
    ///
    /// Adds a `Bus-Msg-Id` (and `Nats-Msg-Id`) header if the message has none.
    pub async fn publish_raw(&self, mut msg: RawMessage) -> Result<()> {
        bus_subject::check_subject(&msg.subject).map_err(|e| Error::InvalidSubject {
            subject: msg.subject.clone(),
            reason: e.to_string(),
        })?;
        if msg.headers.get(headers::MSG_ID).is_none() {
            let id = msg_id::new_msg_id();
            msg.headers.append(headers::NATS_MSG_ID, id.clone());
            msg.headers.append(headers::MSG_ID, id);
        }
        let span = tracing::trace_span!("publish", subject = %msg.subject);
        match &self.inner.outbox {
            Some(outbox) => outbox.enqueue(msg).instrument(span).await,
            None => self.inner.broker.publish(msg).instrument(span).await,
        }
    }

    /// Subscribes to the messages of type `M` that `filter` selects.
    pub async fn subscribe<M: Message>(&self, filter: M::Filter) -> Result<Subscription<M>> {
        let pattern = filter.pattern()?;
        let raw = self
            .inner
            .broker
            .subscribe(&pattern, filter.queue_group())
            .await?;
        Ok(Subscription::new(raw))
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
        let id = msg_id::new_msg_id();
        let raw = encode_message(req, Headers::new(), Some(&id))?;
        let subject = raw.subject.clone();
        let reply = self
            .inner
            .broker
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
        let pattern = filter.pattern()?;
        let raw = self
            .inner
            .broker
            .subscribe(&pattern, filter.queue_group())
            .await?;
        let broker = self.inner.broker.clone();
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
                            .map(str::to_string);
                        let outcome = match codec::decode::<M>(&msg.payload) {
                            Ok(body) => {
                                let env = Envelope::new(body, msg.subject, msg.reply, msg.headers);
                                handler(env).await.map_err(|e| e.to_string())
                            }
                            Err(e) => {
                                Err(format!("cannot decode request as `{}`: {e}", M::TYPE_NAME))
                            }
                        };
                        let reply = build_reply::<M>(reply_to, correlation, outcome);
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
            None => self.inner.broker.confirm().await,
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
) -> RawMessage {
    let mut h = Headers::with_capacity(4);
    if let Some(c) = correlation {
        h.append(headers::CORRELATION_ID, c);
    }
    let payload = match outcome.and_then(|r| {
        codec::encode(&r, std::any::type_name::<M::Reply>()).map_err(|e| e.to_string())
    }) {
        Ok(bytes) => {
            h.append(headers::CONTENT_TYPE, headers::MSGPACK);
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

/// Encodes a typed message with the standard headers of the wire format.
pub(crate) fn encode_message<M: Message>(
    msg: &M,
    mut headers: Headers,
    correlation: Option<&str>,
) -> Result<RawMessage> {
    let subject = msg.subject()?;
    let payload = codec::encode(msg, M::TYPE_NAME)?;
    let id = msg_id::new_msg_id();
    headers.append(headers::NATS_MSG_ID, id.clone());
    headers.append(headers::MSG_ID, id);
    headers.append(headers::CONTENT_TYPE, headers::MSGPACK);
    headers.append(headers::TYPE, M::TYPE_NAME);
    if let Some(c) = correlation {
        headers.append(headers::CORRELATION_ID, c.to_string());
    }
    Ok(RawMessage {
        subject,
        reply: None,
        headers,
        payload,
    })
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
