//! `Bus`: the handle users publish, subscribe, request and serve through.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::broker::Broker;
use crate::codec;
use crate::connection::ConnectionState;
use crate::dead_letter::{DeadLetterSink, DeadLetters, MemoryDeadLetters};
use crate::durable::DurableSpec;
use crate::envelope::{Delivered, Envelope};
use crate::error::{Error, Result};
use crate::handler::{self, Handler, HandlerOptions, Source};
use crate::headers::{self, Headers, WireHeaders};
use crate::health::{Health, Tracker};
use crate::inbox::{Inbox, SendOutput};
use crate::incoming::{Incoming, Undecodable};
use crate::local::LocalBroker;
use crate::message::{Filter, Message, Request};
use crate::msg_id;
#[cfg(feature = "nats")]
use crate::nats::NatsBroker;
#[cfg(feature = "outbox")]
use crate::outbox::{Outbox, OutboxStats};
use crate::raw::{check_subject, RawMessage, RawSubscription};
use crate::respond::{Responder, ServeHandle};
use crate::subscription::Subscription;

/// How long [`Bus::close`] waits for handlers, responders and the outbox.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Bus::close`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Whether every handler and responder finished its in-flight messages before the deadline.
    pub stopped_in_time: bool,
    /// Whether everything published was confirmed (or dead-lettered) before the deadline.
    pub flushed: bool,
    /// Messages still queued in the outbox file: the next process on the file sends them.
    pub left_queued: u64,
}

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
    /// The same broker by its concrete type when it is a built-in one: a publish then calls it
    /// directly, without the boxed future of the `Broker` trait.
    direct: Direct,
    #[cfg(feature = "outbox")]
    outbox: Option<Outbox>,
    request_timeout: Duration,
    wire: WireHeaders,
    /// Messages handlers gave up on.
    handler_dead_letters: Arc<MemoryDeadLetters>,
    /// Set by [`Bus::close`]: handlers and responders stop taking messages.
    closing: watch::Sender<bool>,
    /// Every handler and responder loop holds a clone; `close` drops this one and waits for the
    /// channel to close, i.e. for every loop to have finished its in-flight work.
    running: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
    all_stopped: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
    health: Tracker,
    /// Whether subscriptions start with the subject/body check on.
    check_subject_fields: bool,
    metrics: crate::metrics::BusMetrics,
}

/// The built-in broker behind a [`Bus`]'s `dyn Broker`, found once by downcasting it.
enum Direct {
    Local(Arc<LocalBroker>),
    #[cfg(feature = "nats")]
    Nats(Arc<NatsBroker>),
    /// A broker written elsewhere: called through the trait.
    Other,
}

impl Direct {
    fn of(broker: &Arc<dyn Broker>) -> Direct {
        let any: Arc<dyn Any + Send + Sync> = broker.clone();
        match any.downcast::<LocalBroker>() {
            Ok(local) => Direct::Local(local),
            #[cfg(feature = "nats")]
            Err(any) => any.downcast().map_or(Direct::Other, Direct::Nats),
            #[cfg(not(feature = "nats"))]
            Err(_) => Direct::Other,
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bus");
        d.field("broker", &self.inner.broker.kind());
        #[cfg(feature = "outbox")]
        d.field("outbox", &self.inner.outbox.is_some());
        d.field("state", &self.state()).finish()
    }
}

/// Awaits `$fut` in `$span`, if any. A macro, not an `async fn`: a helper future would hold
/// the publish's future a second time (and copy it), in every publish.
macro_rules! in_span {
    ($span:expr, $fut:expr) => {
        match $span {
            Some(span) => $fut.instrument(span).await,
            None => $fut.await,
        }
    };
}

impl Bus {
    /// A bus on the embedded in-process broker, with no outbox: no server, nothing on disk.
    pub async fn local() -> Result<Bus> {
        Bus::builder().connect().await
    }

    /// Whether requests and subscriptions check that a body's placeholder fields agree with
    /// its subject ([`BusBuilder::check_subject_fields`](crate::BusBuilder::check_subject_fields)).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn checks_subject_fields(&self) -> bool {
        self.inner.check_subject_fields
    }

    pub(crate) fn from_parts(
        instance: Option<String>,
        broker: Arc<dyn Broker>,
        #[cfg(feature = "outbox")] outbox: Option<Outbox>,
        request_timeout: Duration,
        wire: WireHeaders,
        check_subject_fields: bool,
    ) -> Bus {
        let (running, all_stopped) = tokio::sync::mpsc::channel(1);
        let bus = Bus {
            inner: Arc::new(Inner {
                direct: Direct::of(&broker),
                broker,
                #[cfg(feature = "outbox")]
                outbox,
                request_timeout,
                wire,
                handler_dead_letters: Arc::default(),
                closing: watch::Sender::new(false),
                running: std::sync::Mutex::new(Some(running)),
                all_stopped: tokio::sync::Mutex::new(all_stopped),
                health: Tracker::new(instance),
                check_subject_fields,
                metrics: crate::metrics::BusMetrics::new(),
            }),
        };
        #[cfg(all(feature = "outbox", feature = "metrics"))]
        if bus.inner.outbox.is_some() {
            bus.start_outbox_gauges();
        }
        #[cfg(all(feature = "outbox", feature = "nats"))]
        bus.report_queue_depth();
        bus
    }

    /// On NATS with an outbox: the INFO of a reconnect says how many messages the outbox holds.
    #[cfg(all(feature = "outbox", feature = "nats"))]
    fn report_queue_depth(&self) {
        let (Direct::Nats(nats), Some(_)) = (&self.inner.direct, &self.inner.outbox) else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        nats.set_queue_depth(Box::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                let bus = Bus {
                    inner: weak.upgrade()?,
                };
                bus.outbox_stats().await.ok().flatten().map(|s| s.depth)
            })
        }));
    }

    /// Refreshes the outbox gauges every [`OUTBOX_GAUGE_INTERVAL`](crate::metrics::OUTBOX_GAUGE_INTERVAL)
    /// (through [`Bus::health`]) until the bus is closed or dropped.
    #[cfg(all(feature = "outbox", feature = "metrics"))]
    fn start_outbox_gauges(&self) {
        // Not at once: a bus dropped right after it is built must not wait for a first refresh
        // (that would keep the outbox file open past the drop).
        let every = crate::metrics::OUTBOX_GAUGE_INTERVAL;
        self.every(every, every, |bus| async move {
            bus.health().await;
        });
    }

    /// What a handler or responder loop holds while it runs, and the signal that stops it;
    /// `None` once the bus is closing.
    fn track(&self) -> Result<(tokio::sync::mpsc::Sender<()>, watch::Receiver<bool>)> {
        let running = crate::panic::lock(&self.inner.running);
        let tx = running.as_ref().ok_or(Error::Closed)?;
        Ok((tx.clone(), self.inner.closing.subscribe()))
    }

    /// Which headers typed messages carry on the wire (see [`WireHeaders`]).
    pub fn wire_headers(&self) -> WireHeaders {
        self.inner.wire
    }

    /// The broker underneath, for raw (untyped) use.
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.inner.broker.clone()
    }

    /// Whether the broker is reachable right now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.broker.state().borrow()
    }

    /// A watch of the connection state, to wait for a change or react to one.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.broker.state()
    }

    /// Why the broker cannot be reached, while it cannot: on NATS the server's refusal with
    /// what to check (the state is then [`ConnectionState::Refused`]), or why the server is
    /// unreachable (`Connection refused`, …). `None` while connected, before the first failed
    /// attempt, and on brokers that do not say (see `NatsBroker::connection_error`).
    pub fn connection_error(&self) -> Option<String> {
        match &self.inner.direct {
            #[cfg(feature = "nats")]
            Direct::Nats(nats) => nats.connection_error(),
            _ => None,
        }
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
    ///
    /// Refuses, before anything is queued or sent, a header NATS cannot carry
    /// ([`Error::InvalidHeader`], see [`Headers::check`]): the outbox checks before it queues,
    /// every broker before it sends.
    pub async fn publish_with_headers<M: Message>(&self, msg: &M, headers: Headers) -> Result<()> {
        self.send(self.encode(msg, headers)?, None).await?;
        self.inner.metrics.published::<M>();
        Ok(())
    }

    /// `msg` as the raw message a publish sends, with `headers` and the policy's. Not async (a
    /// publish's future stays small: it is moved on every publish). The subject is not checked
    /// here: the derive checked each placeholder value as it wrote it (the literals at compile
    /// time), and the broker, or the outbox before queueing, checks it.
    fn encode<M: Message>(&self, msg: &M, headers: Headers) -> Result<RawMessage> {
        let mut raw = RawMessage {
            subject: msg.subject()?,
            reply: None,
            headers,
            payload: codec::encode(msg, M::TYPE_NAME)?,
        };
        if self.inner.wire == WireHeaders::Full {
            full_headers::<M>(&mut raw.headers);
        }
        Ok(raw)
    }

    /// Publishes a typed message to be delivered `delay` from now: [`publish_at`](Bus::publish_at)
    /// `now + delay`.
    pub async fn publish_after<M: Message>(&self, msg: &M, delay: Duration) -> Result<()> {
        self.publish_at(msg, std::time::SystemTime::now() + delay)
            .await
    }

    /// Publishes a typed message to be delivered at `when` (at once if `when` has passed).
    ///
    /// With an outbox (every NATS bus by default) the message waits in the outbox file, not in
    /// memory, until it is due: it survives a restart of the process (the next `Bus` on the file
    /// sends it when due, or at once if it became due meanwhile), needs no server feature
    /// (nats-server 2.9 does), and is never sent before `when`. When due it joins the end of the
    /// queue, so due messages keep FIFO order: by due time, then in the order they were
    /// published; a message published for `when` goes after one published plainly before
    /// `when` and before one published plainly after it. Until then it shows in
    /// [`OutboxFile::scheduled`](crate::outbox::OutboxFile::scheduled), `bus outbox list` and
    /// [`OutboxStats::scheduled`]; [`flush`](Bus::flush) does not wait for it. Returns once it is
    /// committed to the file. It keeps one msg id from here to every delivery.
    ///
    /// Without an outbox (the local broker by default, or NATS with `.no_outbox()`) it waits in
    /// memory on a timer and is published then: it is **lost** if the process ends or the bus
    /// closes first, and an error at that time (e.g. disconnected) is only logged.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// # use bus::Message;
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
    /// # #[subject("plugin.outbound.<channel>.<instance>")]
    /// # pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// let bus = bus::Bus::local().await?;
    /// let mut sub = bus.subscribe(Outbound::filter().channel("slack")).await?;
    /// let reminder = Outbound { channel: "slack".into(), instance: "a".into(), text: "later".into() };
    /// reminder.publish_after(&bus, Duration::from_millis(20)).await?;
    /// assert_eq!(sub.next().await.unwrap()?.text, "later");
    /// # Ok(()) }
    /// ```
    pub async fn publish_at<M: Message>(&self, msg: &M, when: std::time::SystemTime) -> Result<()> {
        self.send(self.encode(msg, Headers::new())?, Some(when))
            .await?;
        self.inner.metrics.published::<M>();
        Ok(())
    }

    /// Publishes raw bytes to a concrete subject, through the outbox if there is one.
    ///
    /// Through the outbox (or with [`WireHeaders::Full`]) it adds a `Nats-Msg-Id` header if the
    /// message has no id, unless the bus sends none ([`WireHeaders::NoId`]).
    pub async fn publish_raw(&self, mut msg: RawMessage) -> Result<()> {
        if self.inner.wire == WireHeaders::Full {
            stamp_msg_id(&mut msg.headers);
        }
        self.send(msg, None).await?;
        self.inner.metrics.published_raw();
        Ok(())
    }

    /// The one place a message leaves the bus: into the outbox, or straight to the broker;
    /// `due`: not before then (kept in the outbox file, or without one on a timer in memory).
    async fn send(&self, mut msg: RawMessage, due: Option<std::time::SystemTime>) -> Result<()> {
        let due = due.filter(|&when| when > std::time::SystemTime::now());
        crate::trace::inject(&mut msg.headers);
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            // Checked before queueing: a bad subject or header must fail this call, not become
            // a dead letter later.
            check_subject(&msg.subject)?;
            msg.headers.check()?;
            // A message from the outbox may be sent more than once: the id lets consumers
            // (and JetStream, through `Nats-Msg-Id`) drop the duplicate.
            if self.inner.wire != WireHeaders::NoId {
                stamp_msg_id(&mut msg.headers);
            }
            if let Some(due) = due {
                self.inner.metrics.scheduled();
                // Boxed: its state stays out of every publish's future (which is moved, and
                // copied, on each publish).
                return Box::pin(outbox.schedule(msg, due)).await;
            }
            let span = publish_span(&msg.subject);
            return in_span!(span, outbox.enqueue(msg));
        }
        if let Some(due) = due {
            return self.send_later(msg, due);
        }
        let span = publish_span(&msg.subject);
        match &self.inner.direct {
            Direct::Local(local) => {
                let _entered = span.map(tracing::Span::entered);
                local.publish_now(msg).map(drop)
            }
            #[cfg(feature = "nats")]
            Direct::Nats(nats) => in_span!(span, nats.publish_checked(msg)),
            Direct::Other => in_span!(span, self.inner.broker.publish(msg)),
        }
    }

    /// Without an outbox: sends `msg` at `due` from a timer in memory (lost if the bus is gone
    /// by then; an error then is logged). The message is checked now, so that a bad subject or
    /// header fails the call.
    fn send_later(&self, mut msg: RawMessage, due: std::time::SystemTime) -> Result<()> {
        check_subject(&msg.subject)?;
        msg.headers.check()?;
        self.inner.metrics.scheduled();
        if self.inner.wire == WireHeaders::Full {
            // The id it is sent with, given now.
            stamp_msg_id(&mut msg.headers);
        }
        let bus = Arc::downgrade(&self.inner);
        let wait = due
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(inner) = bus.upgrade() else {
                tracing::warn!(subject = %msg.subject, "a message published for later was dropped: its bus was closed before it was due (without an outbox it waits in memory)");
                return;
            };
            let subject = msg.subject.clone();
            if let Err(e) = (Bus { inner }).send(msg, None).await {
                tracing::warn!(%subject, error = %e, "a message published for later could not be sent when it was due");
            }
        });
        Ok(())
    }

    /// Subscribes to the messages of type `M` that `filter` selects.
    pub async fn subscribe<M: Message>(
        &self,
        filter: impl Filter<Message = M>,
    ) -> Result<Subscription<M>> {
        let check = self.inner.check_subject_fields;
        let sub = match filter.durable_name() {
            Some(name) => {
                let mut spec = DurableSpec::new(name, filter.pattern()?);
                if let Some(q) = filter.queue_group() {
                    spec = spec.queue(q);
                }
                Subscription::durable(self.inner.broker.consume(&spec).await?)
            }
            None => Subscription::new(self.subscribe_raw(&filter).await?),
        };
        Ok(sub.check_subject_fields(check))
    }

    /// The raw subscription a filter stands for (its pattern and queue group).
    pub(crate) async fn subscribe_raw(&self, filter: &impl Filter) -> Result<RawSubscription> {
        let broker = &self.inner.broker;
        let raw = broker
            .subscribe(&filter.pattern()?, filter.queue_group())
            .await?;
        self.inner.health.track(&raw.stats);
        Ok(raw)
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
        let full = self.inner.wire == WireHeaders::Full;
        let mut headers = Headers::with_capacity(if full { 5 } else { 1 });
        if full {
            full_headers::<M>(&mut headers);
        }
        headers.append(headers::CORRELATION_ID, msg_id::new_msg_id());
        let subject = req.subject()?;
        let span = crate::trace::request_span(M::SUBJECT, &subject);
        span.in_scope(|| crate::trace::inject(&mut headers));
        let raw = RawMessage {
            subject: subject.clone(),
            reply: None,
            headers,
            payload: codec::encode(req, M::TYPE_NAME)?,
        };
        let started = std::time::Instant::now();
        let outcome = async {
            let reply = self
                .inner
                .broker
                .request(raw, timeout)
                .instrument(span)
                .await?;
            // `Nats-Service-Error`: the error of a NATS service API endpoint (`bus::service`).
            if let Some(message) = reply
                .headers
                .get(headers::ERROR)
                .or_else(|| reply.headers.get("Nats-Service-Error"))
            {
                let message = message.to_string();
                return Err(Error::Remote { subject, message });
            }
            match codec::decode::<M::Reply>(&reply.payload) {
                Ok(body) => Ok(Envelope::of_message(body, reply, Delivered::Plain, None)),
                Err(source) => {
                    let msg_id = headers::msg_id(&reply.headers).map(str::to_string);
                    let type_name = std::any::type_name::<M::Reply>();
                    Err(Undecodable::Payload(type_name, source).into_error(reply.subject, msg_id))
                }
            }
        }
        .await;
        // Recorded in `bus_request_duration_seconds` (see [`crate::metrics`]).
        let label = crate::metrics::request_outcome(&outcome);
        self.inner.metrics.request::<M>(started.elapsed(), label);
        outcome
    }

    /// Runs `handler` for every message of type `M` that `filter` selects, with the default
    /// [`HandlerOptions`]: up to [`DEFAULT_CONCURRENCY`](crate::handler::DEFAULT_CONCURRENCY)
    /// at once, an `Err` or a panic retried with backoff, dead-lettered after 3 attempts. What
    /// `T::handle(&bus, filter, handler)` calls.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// use bus::{Bus, Message};
    /// #[derive(serde::Serialize, serde::Deserialize, Message)]
    /// #[subject("plugin.inbound.<channel>")]
    /// struct Inbound { channel: String, text: String }
    ///
    /// let bus = Bus::local().await?;
    /// let handler = bus
    ///     .handle(Inbound::filter(), |msg| async move {
    ///         if msg.text.is_empty() {
    ///             return Err("empty message");
    ///         }
    ///         Ok(())
    ///     })
    ///     .await?;
    /// Inbound { channel: "slack".into(), text: "hi".into() }.publish(&bus).await?;
    /// handler.stop().await; // finishes what is in flight
    /// # Ok(()) }
    /// ```
    pub async fn handle<M, F, Fut, E>(
        &self,
        filter: impl Filter<Message = M>,
        handler: F,
    ) -> Result<Handler>
    where
        M: Message,
        F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.handle_with(filter, HandlerOptions::default(), handler)
            .await
    }

    /// Where handler dead letters go: the outbox file's dead-letter table when there is one,
    /// else memory.
    fn handler_sink(&self) -> DeadLetterSink {
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            return outbox.handler_sink();
        }
        let dead = Arc::clone(&self.inner.handler_dead_letters);
        Arc::new(move |failed| dead.push(failed))
    }

    /// The inbox of the deduplicating handler `name`: in the outbox file when there is one,
    /// else in memory, its outputs published through this bus (held weakly: a handler does not
    /// keep its bus alive).
    async fn inbox(&self, name: &str, window: std::time::Duration) -> Result<Inbox> {
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            return Inbox::in_file(window, outbox.inbox_table(name)).await;
        }
        let _ = name;
        let weak = Arc::downgrade(&self.inner);
        let send: SendOutput = Arc::new(move |msg| {
            let weak = weak.clone();
            Box::pin(async move {
                let inner = weak.upgrade().ok_or(Error::Closed)?;
                Bus { inner }.publish_raw(msg).await
            })
        });
        Ok(Inbox::in_memory(window, send))
    }

    /// `inbox` with the shared store of handler `name` (a JetStream key-value bucket).
    async fn shared_inbox(
        &self,
        inbox: Inbox,
        name: &str,
        window: std::time::Duration,
        options: &HandlerOptions,
    ) -> Result<Inbox> {
        #[cfg(feature = "nats")]
        if let Direct::Nats(nats) = &self.inner.direct {
            let js = nats.jetstream_context();
            let store =
                crate::inbox::SharedStore::open(&js, name, window, options.ack_wait_value())
                    .await?;
            return Ok(inbox.with_shared(store));
        }
        let _ = (inbox, name, window, options);
        Err(Error::Unsupported {
            broker: self.inner.broker.kind(),
            what: "a shared dedupe store (HandlerOptions::dedupe_shared needs JetStream key-value)",
        })
    }

    /// [`handle`](Bus::handle) with options: name, concurrency, ordered processing, retries.
    pub async fn handle_with<M, F, Fut, E>(
        &self,
        filter: impl Filter<Message = M>,
        options: HandlerOptions,
        handler: F,
    ) -> Result<Handler>
    where
        M: Message,
        F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.start_handler(&filter, options, handler).await
    }

    /// Starts a handler of anything it can decode (a message type, or a `#[derive(Messages)]`
    /// enum) on what `filter` selects: the durable consumer the options or the filter name, or
    /// a plain subscription. Every `handle` goes through here.
    pub(crate) async fn start_handler<M, F, Fut, E>(
        &self,
        filter: &impl Filter,
        options: HandlerOptions,
        handler: F,
    ) -> Result<Handler>
    where
        M: Incoming,
        F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        options.check_key::<M>()?;
        let tracked = self.track()?;
        let source = match options.durable_name().or(filter.durable_name()) {
            Some(name) => {
                let spec = options.durable_spec(name, filter.pattern()?, filter.queue_group());
                Source::Durable(self.inner.broker.consume(&spec).await?)
            }
            None => Source::Plain(self.subscribe_raw(filter).await?),
        };
        let inbox = match options.dedupe_window() {
            Some(window) => {
                let name = options.handler_name::<M>();
                let mut inbox = self.inbox(&name, window).await?;
                if options.is_dedupe_shared() {
                    inbox = self.shared_inbox(inbox, &name, window, &options).await?;
                }
                Some(Arc::new(inbox))
            }
            None => None,
        };
        let sink = self.handler_sink();
        let handler =
            handler::spawn::<M, F, Fut, E>(source, options, sink, inbox, tracked, handler);
        self.inner.health.track_handler(handler.stats());
        Ok(handler)
    }

    /// Answers requests of type `M` that `filter` selects with `handler`, until the returned
    /// handle is stopped or the bus closes. A handler that answers without waiting is answered
    /// on the responder's task; one that waits goes on on a task of its own.
    ///
    /// A handler error is sent back as a `Bus-Error` header and surfaces at the requester as
    /// [`Error::Remote`].
    pub async fn serve<M, F, Fut, E>(
        &self,
        filter: impl Filter<Message = M>,
        handler: F,
    ) -> Result<ServeHandle>
    where
        M: Request,
        F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<M::Reply, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let tracked = self.track()?;
        let raw = self.subscribe_raw(&filter).await?;
        let responder = Responder::new(handler, self.inner.check_subject_fields);
        Ok(crate::respond::serve(
            raw,
            self.inner.broker.clone(),
            self.inner.wire,
            responder,
            tracked,
        ))
    }

    /// Waits until every stream declared with [`BusBuilder::stream`](crate::BusBuilder::stream) is set up on the current
    /// NATS connection; after `timeout`, [`Error::Stream`] with the reason of the last failed
    /// attempt (they go on). At once on a broker without streams.
    pub async fn streams_ready(&self, timeout: Duration) -> Result<()> {
        match &self.inner.direct {
            #[cfg(feature = "nats")]
            Direct::Nats(nats) => nats.streams_ready(timeout).await,
            _ => {
                let _ = timeout;
                Ok(())
            }
        }
    }

    /// Returns once every message published before the call is confirmed by the broker or
    /// dead-lettered (with an outbox), or processed by the broker (without one).
    ///
    /// Messages published for later ([`publish_at`](Bus::publish_at)) that are not due when
    /// `flush` is called are not waited for (it would wait until they are due); one that became
    /// due before the call, and joined the queue, is.
    pub async fn flush(&self) -> Result<()> {
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            return outbox.flush().await;
        }
        self.inner.broker.confirm().await
    }

    /// [`flush`](Bus::flush) with a deadline: fails with [`Error::FlushTimeout`] (transient,
    /// naming the connection state and, when known, why the broker cannot be reached) if it
    /// did not complete within `timeout`.
    ///
    /// With an outbox, it waits until everything committed before the call is confirmed or
    /// dead-lettered; on expiry nothing is lost, the messages stay queued. Without one, it
    /// repeats the broker's confirmation round trip (each bounded by the request timeout)
    /// until one succeeds or the deadline passes; a connection lost meanwhile fails it with
    /// [`Error::ConnectionLost`] at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// let bus = bus::Bus::local().await?;
    /// bus.flush_timeout(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            let flushed = tokio::time::timeout_at(deadline, outbox.flush()).await;
            return flushed.unwrap_or_else(|_| Err(self.flush_timed_out(timeout)));
        }
        loop {
            match tokio::time::timeout_at(deadline, self.inner.broker.confirm()).await {
                Err(_) => return Err(self.flush_timed_out(timeout)),
                // One round trip got no answer in time: the broker is unreachable for now.
                Ok(Err(Error::Timeout { .. })) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(self.flush_timed_out(timeout));
                    }
                    // A broker that times out at once must not make this spin.
                    let pause = tokio::time::Instant::now() + Duration::from_millis(20);
                    tokio::time::sleep_until(pause.min(deadline)).await;
                }
                Ok(outcome) => return outcome,
            }
        }
    }

    fn flush_timed_out(&self, timeout: Duration) -> Error {
        Error::FlushTimeout {
            timeout,
            state: self.state(),
            detail: self.connection_error(),
        }
    }

    /// This instance's health now: connection state, outbox depth and age, dead letters,
    /// slow-consumer drops, handler failures, version, uptime. The heartbeat
    /// ([`BusBuilder::heartbeat`](crate::BusBuilder::heartbeat)) sends the same snapshot.
    pub async fn health(&self) -> Health {
        #[allow(unused_mut)]
        let (mut depth, mut oldest, mut dead) = (0, None, 0);
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            match outbox.stats().await {
                Ok(s) => {
                    crate::metrics::outbox_gauges(
                        &outbox.path().display().to_string(),
                        s.depth,
                        s.oldest_age,
                        s.scheduled,
                    );
                    depth = s.depth;
                    oldest = s.oldest_age.map(|a| a.as_millis() as u64);
                    dead = s.dead_letters;
                }
                Err(e) => tracing::warn!(error = %e, "health: cannot read the outbox stats"),
            }
        }
        let t = &self.inner.health;
        Health {
            instance: t.instance.clone(),
            state: self.state().to_string(),
            outbox_depth: depth,
            outbox_oldest_ms: oldest,
            dead_letters: dead + self.inner.handler_dead_letters.len(),
            slow_consumer_drops: t.drops(),
            handler_failures: t.handler_failures(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: t.uptime_ms(),
            at_ms: crate::clock::now_ms().max(0) as u64,
        }
    }

    /// Sends [`Bus::health`] on `plugin.health.<instance>` every `interval`, straight to the
    /// broker (never through the outbox), until the bus is closed or dropped.
    pub(crate) fn start_heartbeat(&self, interval: Duration) {
        self.every(Duration::ZERO, interval, |bus| async move {
            let health = bus.health().await;
            let payload = codec::encode(&health, <Health as Message>::TYPE_NAME);
            let raw = match health
                .subject()
                .and_then(|s| Ok(RawMessage::new(s, payload?)))
            {
                Ok(raw) => raw,
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat: cannot build the health message");
                    return;
                }
            };
            if bus.state() == ConnectionState::Connected {
                if let Err(e) = bus.inner.broker.publish(raw).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
        });
    }

    /// Runs `job` after `first`, then every `interval`, on its own task, until the bus is closed
    /// or dropped; the task holds the bus only while `job` runs.
    fn every<F, Fut>(&self, first: Duration, interval: Duration, job: F)
    where
        F: Fn(Bus) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(&self.inner);
        let mut closing = self.inner.closing.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    Ok(_) = closing.wait_for(|c| *c) => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                job(Bus { inner }).await;
            }
        });
    }

    /// Closes the bus cleanly within [`DEFAULT_CLOSE_TIMEOUT`]; see
    /// [`close_timeout`](Bus::close_timeout).
    pub async fn close(&self) -> Result<CloseReport> {
        self.close_timeout(DEFAULT_CLOSE_TIMEOUT).await
    }

    /// Closes the bus cleanly: every handler and responder stops taking messages and finishes
    /// the ones in flight (their retries included), then the outbox is flushed, all within
    /// `timeout`. Returns what is left: messages still queued in the outbox file (sent by the
    /// next process that opens it) and whether everything stopped in time. New handlers and
    /// responders are refused afterwards ([`Error::Closed`]); publishing still works (into the
    /// outbox, or to the broker) for as long as the `Bus` lives.
    ///
    /// Dropping the last `Bus` clone without `close` is safe but abrupt: handlers and
    /// responders keep running until their own handles are dropped or stopped, in-flight
    /// messages are not waited for, and whatever the outbox holds stays in its file.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// let bus = bus::Bus::local().await?;
    /// let report = bus.close().await?;
    /// assert!(report.stopped_in_time);
    /// assert_eq!(report.left_queued, 0);
    /// # Ok(()) }
    /// ```
    pub async fn close_timeout(&self, timeout: Duration) -> Result<CloseReport> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.inner.closing.send_replace(true);
        crate::panic::lock(&self.inner.running).take();
        let stopped_in_time = {
            let mut all = self.inner.all_stopped.lock().await;
            // `None`: every loop dropped its sender, i.e. finished.
            tokio::time::timeout_at(deadline, all.recv()).await.is_ok()
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let flushed = self.flush_timeout(remaining).await.is_ok();
        #[allow(unused_mut)]
        let mut left_queued = 0;
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            left_queued = outbox.stats().await.map(|s| s.depth).unwrap_or(0);
        }
        tracing::info!(stopped_in_time, flushed, left_queued, "bus closed");
        Ok(CloseReport {
            stopped_in_time,
            flushed,
            left_queued,
        })
    }

    /// The dead letters: messages the outbox failed to send and messages handlers gave up on,
    /// each saying where it died (`origin`). In the outbox file when there is one, else (handler
    /// dead letters only) in memory. On every build, with or without the `outbox` feature.
    pub fn dead_letters(&self) -> DeadLetters {
        #[cfg(feature = "outbox")]
        if let Some(outbox) = &self.inner.outbox {
            return outbox.dead_letters();
        }
        DeadLetters::in_memory(
            Arc::clone(&self.inner.handler_dead_letters),
            self.inner.broker.clone(),
        )
    }

    /// Messages the bus's handlers have taken and not finished (for `bus::testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn handlers_in_flight(&self) -> u64 {
        self.inner.health.handlers_in_flight()
    }

    /// Makes the next `n` attempts of the handlers named `name` fail (for `bus::testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn fail_next_attempts(&self, name: &str, n: u64) -> usize {
        self.inner.health.fail_next_attempts(name, n)
    }

    /// Depth and oldest age of the outbox, for health checks; `None` without an outbox.
    #[cfg(feature = "outbox")]
    pub async fn outbox_stats(&self) -> Result<Option<OutboxStats>> {
        match &self.inner.outbox {
            Some(outbox) => outbox.stats().await.map(Some),
            None => Ok(None),
        }
    }
}

/// The headers [`WireHeaders::Full`] adds to a typed message, after the caller's.
fn full_headers<M: Message>(headers: &mut Headers) {
    stamp_msg_id(headers);
    headers.append(headers::CONTENT_TYPE, headers::MSGPACK);
    headers.append(headers::TYPE, M::TYPE_NAME);
}

/// Gives the message an id (`Nats-Msg-Id`) unless it has one (an older peer's `Bus-Msg-Id`
/// counts).
fn stamp_msg_id(headers: &mut Headers) {
    if headers::msg_id(headers).is_none() {
        headers.append(headers::MSG_ID, msg_id::new_msg_id());
    }
}

/// The `publish` span, made only when a subscriber wants TRACE: even a disabled span cost a
/// visible share of a local publish.
#[inline]
fn publish_span(subject: &str) -> Option<tracing::Span> {
    tracing::enabled!(tracing::Level::TRACE).then(|| tracing::trace_span!("publish", subject))
}
