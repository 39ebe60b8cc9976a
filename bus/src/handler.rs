//! `Handler`: runs a function for every message of a subscription, with retries, bounded
//! concurrency, dead letters and a clean stop (`docs/design.md`, section 7).
//!
//! Each message is attempted at most `concurrency` at once: first inline on the handler's loop,
//! then, if it has to wait, on a task of its own (so a quick handler costs no task and no
//! allocation per message). An `Err` or a panic
//! is a failed attempt: the message waits its [`RetryPolicy`] backoff *without* holding a slot, so
//! a failing message never blocks the ones behind it, and after `max_attempts` it is
//! dead-lettered with its subject, headers, payload, attempts, last error and the handler's name.
//! A payload that does not decode is dead-lettered at once: retrying cannot fix it. In ordered
//! mode one message is finished (retries included) before the next starts.
//!
//! # A handler instead of a loop
//!
//! `T::handle(&bus, filter, handler)` (or [`Bus::handle`](crate::Bus::handle)) runs an async
//! function for every message instead of a loop you write over `subscribe`, on both backends;
//! [`Bus::handle_with`](crate::Bus::handle_with) takes [`HandlerOptions`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! # use bus::Message;
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
//! # #[subject("plugin.outbound.<channel>.<instance>")]
//! # pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
//! use bus::{HandlerOptions, RetryPolicy};
//! let bus = bus::Bus::local().await?;
//! let sender = Outbound::handle(&bus, Outbound::filter().channel("slack"), |msg| async move {
//!     if msg.text.is_empty() {
//!         return Err(format!("nothing to send for {}", msg.instance)); // a failed attempt
//!     }
//!     Ok(()) // done
//! }).await?;
//! // With options: a name (what dead letters say they died in), concurrency, ordered, retries.
//! let ordered = bus.handle_with::<Outbound, _, _, _>(
//!     Outbound::filter().channel("audit"),
//!     HandlerOptions::named("auditor").ordered(true).retry(RetryPolicy::default().max_attempts(5)),
//!     |_msg| async { Ok::<_, String>(()) },
//! ).await?;
//! sender.stop().await;   // stops taking messages, waits for the ones in flight
//! ordered.stop().await;
//! # Ok(()) }
//! ```
//!
//! - **Retries**: an `Err` or a panic is retried after the [`RetryPolicy`]'s backoff (default:
//!   3 attempts, 100 ms then 400 ms, 20 % jitter; the same type and default as the outbox's).
//!   After the last attempt the message is dead-lettered with `origin` `handler:<name>` and
//!   counted in [`Handler::stats`].
//! - **Concurrency** is bounded ([`HandlerOptions::concurrency`], default 64); a handler that
//!   completes without waiting runs inline, without a task. **Ordered** mode
//!   ([`HandlerOptions::ordered`]) handles one message at a time.
//! - **Where dead letters live**: in the outbox file's dead-letter table when the bus has one
//!   (every NATS bus by default; `bus dead-letters list FILE` and the `sqlite3` shell show them
//!   next to the outbox's), otherwise in memory in the `Bus` (the local broker without an
//!   outbox: the newest 10,000, older ones counted as evicted). Both are listed, replayed and
//!   purged through [`Bus::dead_letters`](crate::Bus::dead_letters) and counted in
//!   [`Health::dead_letters`](crate::Health::dead_letters).
//! - **Stopping**: [`Handler::stop`] stops taking messages and waits for those in flight, retries
//!   included; [`Bus::close`](crate::Bus::close) does it for every handler. Dropping a `Handler`
//!   leaves it running until the bus closes.
//! - **What a handler does not fix**: a core subscription still misses what is published while
//!   no handler runs (see [`Subscription`](crate::Subscription)), and the retries of a handler
//!   are in memory: a message being retried when the process dies is gone (at most once across
//!   a crash, as core NATS is). A durable handler (a filter with `.durable(name)`, see
//!   [`durable`](crate::durable)) fixes both.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::{CatchUnwind, Fuse};
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::broker::{RawMessage, RawSubscription, SubscriptionStats};
use crate::durable::{Acker, Delivery, DurableSubscription};
use crate::fan_in::Incoming;
use crate::stop::{InFlight, StopSignal};
use crate::{Envelope, RetryPolicy};

/// How a [`Handler`] runs: its name, concurrency, order and retry policy.
///
/// ```
/// use bus::{HandlerOptions, RetryPolicy};
/// let options = HandlerOptions::named("slack-sender")
///     .concurrency(8)
///     .retry(RetryPolicy::default().max_attempts(5));
/// assert_eq!(options.name(), Some("slack-sender"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    name: Option<String>,
    concurrency: usize,
    ordered: bool,
    retry: RetryPolicy,
    durable: Option<String>,
    ack_wait: Duration,
}

/// How long a handler's loop works through messages that are already there before it yields to
/// the other tasks of its worker thread.
const TIME_SLICE: Duration = Duration::from_millis(2);

/// Messages handled at once by default: enough to overlap I/O-bound handlers, few enough that
/// a burst does not start thousands of tasks.
pub const DEFAULT_CONCURRENCY: usize = 64;

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            name: None,
            concurrency: DEFAULT_CONCURRENCY,
            ordered: false,
            retry: RetryPolicy::default(),
            durable: None,
            ack_wait: crate::durable::DEFAULT_ACK_WAIT,
        }
    }
}

impl HandlerOptions {
    /// Options with this handler name (what dead letters say they died in; default: the type).
    pub fn named(name: impl Into<String>) -> Self {
        HandlerOptions {
            name: Some(name.into()),
            ..HandlerOptions::default()
        }
    }

    /// The handler's name, if one was set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// At most this many messages in the handler at once (default [`DEFAULT_CONCURRENCY`];
    /// 0 counts as 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Ordered processing: one message at a time, each finished (retries included) before the
    /// next starts. Implies a concurrency of 1.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// How failed attempts are retried (default: 3 attempts, 100 ms then 400 ms).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Durable mode: the handler takes its messages from the durable consumer `name` (see
    /// [`durable`](crate::durable)), so messages published while it was down are handled when
    /// it comes back, and with a queue group several instances share one consumer.
    ///
    /// A message is acknowledged after `Ok`; after `Err` (or a panic) it is refused with the
    /// retry policy's backoff and the broker delivers it again; the delivery count is the
    /// attempt count, so after `max_attempts` deliveries it is terminated and dead-lettered
    /// (`max_deliver` is `max_attempts`). A payload that does not decode is terminated and
    /// dead-lettered at once. In [ordered](HandlerOptions::ordered) mode the retries are made
    /// in place (telling the broker the message is in progress), so nothing overtakes it.
    ///
    /// ```
    /// use bus::HandlerOptions;
    /// let options = HandlerOptions::named("slack-sender").durable("slack-sender");
    /// assert_eq!(options.durable_name(), Some("slack-sender"));
    /// ```
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.durable = Some(name.into());
        self
    }

    /// The durable consumer's name, in durable mode.
    pub fn durable_name(&self) -> Option<&str> {
        self.durable.as_deref()
    }

    /// Durable mode: how long a delivery may stay unacknowledged before the broker delivers it
    /// again, e.g. after the process died (default 30 s). Keep it above the handler's longest
    /// run; a handler still working sends "in progress" only in ordered mode.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait.max(Duration::from_millis(1));
        self
    }

    /// The durable consumer this handler runs on: `durable` on `pattern`, max_deliver the
    /// retry policy's attempts (unlimited in ordered mode, which retries in place), a prefetch
    /// that keeps every slot busy without holding many messages while their ack wait runs.
    pub(crate) fn durable_spec(
        &self,
        durable: &str,
        pattern: String,
        queue: Option<&str>,
    ) -> crate::durable::DurableSpec {
        let mut spec = crate::durable::DurableSpec::new(durable, pattern)
            .ack_wait(self.ack_wait)
            .prefetch((self.effective_concurrency() * 4).clamp(8, 512));
        if !self.ordered {
            spec = spec.max_deliver(self.retry.max_attempts.max(1));
        }
        if let Some(q) = queue {
            spec = spec.queue(q);
        }
        spec
    }

    fn effective_concurrency(&self) -> usize {
        if self.ordered {
            1
        } else {
            self.concurrency
        }
    }
}

/// What a handler counted so far.
#[derive(Debug, Default)]
pub struct HandlerStats {
    handled: AtomicU64,
    failed_attempts: AtomicU64,
    dead_lettered: AtomicU64,
}

impl HandlerStats {
    /// Messages the handler finished with `Ok`.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }
    /// Attempts that returned `Err` or panicked.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }
    /// Messages given up on and dead-lettered.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}

// Without the `outbox` feature there is no `Bus::dead_letters` view (its `DeadLetters` type
// lives in the outbox module): handler dead letters are then kept and counted, not listed.
#[cfg_attr(not(feature = "outbox"), allow(dead_code))]
/// A message a handler gave up on, as handed to the bus's dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) msg: RawMessage,
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
    /// `handler:<name>`.
    pub(crate) origin: String,
    pub(crate) failed_at: SystemTime,
}

/// Where a handler puts what it gives up on.
pub(crate) type DeadLetterSink = Arc<dyn Fn(Failed) + Send + Sync>;

/// A running handler (from `T::handle` / [`Bus::handle`](crate::Bus::handle)).
///
/// Dropping it leaves it running until the bus closes; [`stop`](Handler::stop) ends it cleanly.
pub struct Handler {
    name: String,
    stats: Arc<HandlerStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// The handler's name (the type's name unless [`HandlerOptions::named`] set one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it counted so far.
    pub fn stats(&self) -> &Arc<HandlerStats> {
        &self.stats
    }

    /// Stops taking messages (unsubscribes) and waits for the ones in flight to finish, their
    /// pending retries included. Messages not yet taken stay with the broker (core NATS: gone
    /// for this subscriber; a durable consumer: kept for it, and what this handler had fetched
    /// but not started is handed back at once, to another instance or the next start).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// What a handler takes its messages from.
pub(crate) enum Source {
    /// A plain subscription: retries in memory.
    Plain(RawSubscription),
    /// A durable consumer: acked, naked for redelivery, terminated.
    Durable(DurableSubscription),
}

/// Starts a handler on `source`.
pub(crate) fn spawn<M, F, Fut, E>(
    source: Source,
    options: HandlerOptions,
    sink: DeadLetterSink,
    (running, closing): (tokio::sync::mpsc::Sender<()>, watch::Receiver<bool>),
    handler: F,
) -> Handler
where
    M: Incoming,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| M::TYPE_NAME.to_owned());
    let stats = Arc::new(HandlerStats::default());
    let (stop, stopped) = watch::channel(false);
    let origin = format!("handler:{name}");
    let concurrency = options.effective_concurrency();
    let run = Run {
        handler,
        retry: options.retry,
        metrics: crate::metrics::HandlerMetrics::of::<M>(&name, &origin),
        origin: Arc::from(origin),
        stats: Arc::clone(&stats),
        sink,
        progress_every: (options.ack_wait / 2).min(Duration::from_secs(1)),
        slots: Slots::new(concurrency),
        _type: std::marker::PhantomData,
    };
    let ordered = options.ordered;
    let task = match source {
        Source::Plain(raw) => tokio::spawn(async move {
            let _running = running;
            run.serve(
                raw.messages,
                raw.stats,
                raw.pattern,
                ordered,
                (stopped, closing),
                Run::plain_starter(),
            )
            .await
        }),
        Source::Durable(raw) => tokio::spawn(async move {
            let _running = running;
            run.serve(
                raw.deliveries,
                raw.stats,
                raw.pattern,
                ordered,
                (stopped, closing),
                Run::durable_starter(ordered),
            )
            .await
        }),
    };
    Handler {
        name,
        stats,
        stop,
        task,
    }
}

/// What every attempt of one handler shares.
struct Run<M, F> {
    handler: F,
    retry: RetryPolicy,
    origin: Arc<str>,
    stats: Arc<HandlerStats>,
    metrics: crate::metrics::HandlerMetrics,
    sink: DeadLetterSink,
    /// Durable, ordered: how often a message waiting for its retry is reported in progress.
    progress_every: Duration,
    /// The concurrency bound (unused in ordered mode).
    slots: Slots,
    _type: std::marker::PhantomData<fn() -> M>,
}

impl<M, F, Fut, E> Run<M, F>
where
    M: Incoming,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    async fn serve<T, P>(
        self,
        mut messages: futures::stream::BoxStream<'static, T>,
        sub_stats: Arc<SubscriptionStats>,
        pattern: String,
        ordered: bool,
        (stopped, closing): (watch::Receiver<bool>, watch::Receiver<bool>),
        mut process: P,
    ) where
        T: Send + 'static,
        P: FnMut(&Arc<Self>, T, bool) -> Option<Rest>,
    {
        let run = Arc::new(self);
        let stop = StopSignal::watch(stopped, closing);
        let in_flight = InFlight::default();
        let mut reported_drops = 0;
        let mut taken = 0u32;
        let mut slice = std::time::Instant::now();
        loop {
            // One flag for stop and close (no waiter registered per message).
            if stop.is_set() {
                break;
            }
            // A slot first, so a busy handler leaves messages in the subscription's buffer
            // (the attempt gives it back).
            if !ordered && !run.slots.try_take() && stop.or(run.slots.take()).await.is_none() {
                break;
            }
            let msg = match messages.next().now_or_never() {
                Some(Some(m)) => m,
                Some(None) => break,
                None => match stop.next(&mut messages).await {
                    Some(Some(m)) => m,
                    Some(None) | None => break,
                },
            };
            // A stream that is never empty must not keep this task from yielding: it yields
            // after a time slice of work (looked at every 16 messages). Not every 128 messages:
            // a yielded task is scheduled again only after the worker polled the driver, and
            // often on the other worker, which cost a quick handler a fifth of its throughput.
            taken = taken.wrapping_add(1);
            if taken.is_multiple_of(16) && slice.elapsed() >= TIME_SLICE {
                tokio::task::yield_now().await;
                slice = std::time::Instant::now();
            }
            let dropped = sub_stats.dropped();
            if dropped > reported_drops {
                tracing::warn!(%pattern, dropped = dropped - reported_drops, handler = %run.origin, "slow handler: the broker dropped messages");
                run.metrics.receive.dropped(dropped - reported_drops);
                reported_drops = dropped;
            }
            // What did not finish at once goes on here (ordered) or on a task of its own.
            if let Some(rest) = process(&run, msg, !ordered) {
                if ordered {
                    rest.await;
                } else {
                    in_flight.spawn(rest);
                }
            }
        }
        // Stop taking messages (unsubscribe), then let what is in flight finish.
        drop(messages);
        in_flight.wait().await;
    }

    /// How the loop starts on a message of a plain subscription (see [`start`](Self::start)):
    /// with the box the handler's future runs in and the buffer its subject is kept in, both
    /// reused while messages finish inline.
    fn plain_starter() -> impl FnMut(&Arc<Self>, RawMessage, bool) -> Option<Rest> {
        let mut running: Running<Fut> = Box::pin(Fuse::terminated());
        let mut subject = String::new();
        move |run, msg, slot| run.start(msg, slot, &mut running, &mut subject)
    }

    /// Starts on a message of a plain subscription, holding a slot if `slot`. The first attempt
    /// runs right here, the handler's future polled once in `running`: a handler that finishes
    /// without waiting (the common quick case) costs no task, no allocation and no future
    /// around its own. What remains (a handler still running, a retry, a message carrying a
    /// trace context) is returned as [`attempts`](Self::attempts) to run on.
    fn start(
        self: &Arc<Self>,
        mut msg: RawMessage,
        slot: bool,
        running: &mut Running<Fut>,
        subject: &mut String,
    ) -> Option<Rest> {
        self.metrics.receive.delivered();
        let span = crate::trace::receive_span(
            crate::trace::Receive::Handle,
            M::TYPE_NAME,
            M::SUBJECT,
            &msg.subject,
            &msg.headers,
        );
        if let Some(span) = span {
            let all = Arc::clone(self).attempts(msg, slot, Keep::default(), First::NotYet);
            return Some(Box::pin(all.instrument(span)));
        }
        let mut keep = Keep::new(std::mem::take(subject));
        let env = match self.envelope(&mut msg, &mut keep) {
            Ok(env) => env,
            Err(error) => {
                *subject = keep.subject;
                self.give_up(msg, 1, error);
                self.slots.give_back_if(slot);
                return None;
            }
        };
        self.metrics.attempt();
        running.set(AssertUnwindSafe((self.handler)(env)).catch_unwind().fuse());
        let first = match running.as_mut().now_or_never() {
            Some(outcome) => match self.failure(outcome) {
                None => {
                    *subject = keep.subject;
                    self.slots.give_back_if(slot);
                    return None;
                }
                Some(error) => {
                    keep.restore(&mut msg);
                    if self.retry.exhausted(1) {
                        // No retry: dead-lettered here, in the order the messages came.
                        self.give_up(msg, 1, error);
                        self.slots.give_back_if(slot);
                        return None;
                    }
                    First::Failed(error)
                }
            },
            // Its box goes with it; the next message gets a new one.
            None => First::Running(std::mem::replace(running, Box::pin(Fuse::terminated()))),
        };
        Some(Box::pin(Arc::clone(self).attempts(msg, slot, keep, first)))
    }

    /// The attempts of one message after `first`, until it succeeds or is dead-lettered.
    /// `slot`: it holds a slot taken for it; between attempts the slot is given back, so a
    /// message waiting for its retry does not hold up others.
    async fn attempts(
        self: Arc<Self>,
        mut msg: RawMessage,
        slot: bool,
        mut keep: Keep,
        mut first: First<Fut>,
    ) {
        let mut slot = slot.then(|| Slot(&self.slots));
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match std::mem::replace(&mut first, First::NotYet) {
                First::Running(running) => match self.failure(running.await) {
                    None => return,
                    Some(error) => {
                        keep.restore(&mut msg);
                        error
                    }
                },
                First::Failed(error) => error,
                First::NotYet => match self.attempt(&mut msg, &mut keep).await {
                    Attempt::Done => return,
                    Attempt::Undecodable(error) => return self.give_up(msg, attempts, error),
                    Attempt::Failed(error) => error,
                },
            };
            if self.retry.exhausted(attempts) {
                return self.give_up(msg, attempts, error);
            }
            tracing::debug!(subject = %msg.subject, attempts, %error, handler = %self.origin, "handler attempt failed; will retry");
            let wait = self.retry.backoff(attempts);
            match slot.take() {
                Some(held) => {
                    drop(held);
                    tokio::time::sleep(wait).await;
                    self.slots.take().await;
                    slot = Some(Slot(&self.slots));
                }
                None => tokio::time::sleep(wait).await,
            }
        }
    }

    /// One run of the handler on `msg`, counted (see [`envelope`](Self::envelope)).
    async fn attempt(&self, msg: &mut RawMessage, keep: &mut Keep) -> Attempt {
        let env = match self.envelope(msg, keep) {
            Ok(env) => env,
            Err(error) => return Attempt::Undecodable(error),
        };
        self.metrics.attempt();
        let outcome = AssertUnwindSafe((self.handler)(env)).catch_unwind().await;
        match self.failure(outcome) {
            None => Attempt::Done,
            Some(error) => {
                keep.restore(msg);
                Attempt::Failed(error)
            }
        }
    }

    /// The envelope of one attempt: `msg` decoded (again for each attempt: the handler owns
    /// its envelope), with `msg`'s subject, reply and headers, which `keep` keeps a copy of.
    /// `Err`: the payload does not decode, which no retry can fix.
    #[inline(always)]
    fn envelope(&self, msg: &mut RawMessage, keep: &mut Keep) -> Result<Envelope<M>, String> {
        let body = match M::decode_incoming(&msg.subject, &msg.payload) {
            Ok(body) => body,
            Err(e) => {
                self.metrics.receive.decode_error();
                return Err(e.reason());
            }
        };
        let (subject, reply, headers) = keep.lend(msg);
        Ok(Envelope::new(body, subject, reply, headers))
    }

    /// Counts how an attempt ended: `None` after `Ok`, else the error's (or panic's) text.
    #[inline(always)]
    fn failure(&self, outcome: std::thread::Result<Result<(), E>>) -> Option<String> {
        let error = match outcome {
            Ok(Ok(())) => {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!(
                "the handler panicked: {}",
                crate::handle::panic_message(&*panic)
            ),
        };
        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        self.metrics.failure();
        Some(error)
    }

    /// How the loop starts on a durable delivery: [`deliver_durable`](Self::deliver_durable)
    /// built in a box reused while deliveries finish inline, and polled once.
    fn durable_starter(ordered: bool) -> impl FnMut(&Arc<Self>, Delivery, bool) -> Option<Rest> {
        let mut next = Box::pin(Fuse::terminated());
        move |run, delivery, slot| {
            next.set(Run::deliver_durable(Arc::clone(run), delivery, slot, ordered).fuse());
            if next.as_mut().now_or_never().is_some() {
                return None;
            }
            let rest = std::mem::replace(&mut next, Box::pin(Fuse::terminated()));
            Some(rest as Rest)
        }
    }

    /// One delivery of a durable consumer: ack after `Ok`; after `Err` a nak with the retry
    /// policy's backoff (the broker delivers it again; the slot is free meanwhile), or, at the
    /// last attempt, term and a dead letter. Ordered: retries in place, the broker told that
    /// the message is in progress, so nothing overtakes it.
    async fn deliver_durable(self: Arc<Self>, delivery: Delivery, slot: bool, ordered: bool) {
        self.metrics.receive.delivered();
        let span = crate::trace::receive_span(
            crate::trace::Receive::Handle,
            M::TYPE_NAME,
            M::SUBJECT,
            &delivery.message.subject,
            &delivery.message.headers,
        );
        match span {
            Some(span) => {
                self.durable_attempts(delivery, slot, ordered)
                    .instrument(span)
                    .await
            }
            None => self.durable_attempts(delivery, slot, ordered).await,
        }
    }

    /// [`deliver_durable`](Self::deliver_durable), inside the message's span if it has one.
    async fn durable_attempts(self: Arc<Self>, delivery: Delivery, slot: bool, ordered: bool) {
        let slot = slot.then(|| Slot(&self.slots));
        let mut keep = Keep::default();
        let Delivery { mut message, acker } = delivery;
        let mut attempts = acker.delivered().max(1);
        loop {
            let error = match self.attempt(&mut message, &mut keep).await {
                Attempt::Done => {
                    if let Err(e) = acker.ack().await {
                        tracing::warn!(subject = %keep.subject, error = %e, handler = %self.origin, "cannot acknowledge; the message will be delivered again");
                    }
                    return;
                }
                Attempt::Undecodable(error) => {
                    settle(acker.term().await, &message, &self.origin);
                    return self.give_up(message, attempts, error);
                }
                Attempt::Failed(error) => error,
            };
            if self.retry.exhausted(attempts) {
                settle(acker.term().await, &message, &self.origin);
                return self.give_up(message, attempts, error);
            }
            let wait = self.retry.backoff(attempts);
            tracing::debug!(subject = %message.subject, attempts, %error, handler = %self.origin, "handler attempt failed; will retry");
            if !ordered {
                drop(slot);
                settle(acker.nak(wait).await, &message, &self.origin);
                return;
            }
            in_progress_for(&acker, wait, self.progress_every).await;
            attempts += 1;
        }
    }

    fn give_up(&self, msg: RawMessage, attempts: u32, last_error: String) {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.metrics.dead_lettered();
        tracing::warn!(subject = %msg.subject, attempts, error = %last_error, handler = %self.origin, "handler gave up on a message; dead-lettered");
        (self.sink)(Failed {
            msg,
            attempts,
            last_error,
            origin: self.origin.to_string(),
            failed_at: SystemTime::now(),
        });
    }
}

/// The concurrency bound of a handler: free slots, and the loop or a retry waiting for one.
///
/// A counter rather than a [`Semaphore`](tokio::sync::Semaphore): taking and giving back a
/// slot is one atomic operation each (a semaphore locks its waiter list on every release),
/// which matters when a quick handler takes and gives one per message.
struct Slots {
    free: AtomicUsize,
    /// Takers waiting in [`take`](Slots::take): a slot given back wakes one only if there are
    /// any (most of the time there are none, and a quick handler gives one back per message).
    waiting: AtomicUsize,
    given_back: Notify,
}

impl Slots {
    fn new(n: usize) -> Self {
        Slots {
            free: AtomicUsize::new(n),
            waiting: AtomicUsize::new(0),
            given_back: Notify::new(),
        }
    }

    // `SeqCst` on `free` and `waiting`: a taker counts itself waiting and then looks at `free`,
    // a giver adds to `free` and then looks at `waiting`, so one of them sees the other.
    fn try_take(&self) -> bool {
        self.free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Waits for a slot and takes it.
    async fn take(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted out also when this future is dropped (a stop while waiting).
        let _waiting = Waiting(&self.waiting);
        loop {
            let given_back = self.given_back.notified();
            let mut given_back = std::pin::pin!(given_back);
            given_back.as_mut().enable();
            if self.try_take() {
                return;
            }
            given_back.await;
        }
    }

    /// Gives a slot back if one was taken.
    #[inline]
    fn give_back_if(&self, taken: bool) {
        if taken {
            self.give_back();
        }
    }

    fn give_back(&self) {
        self.free.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            // A wake-up stored if the waiter is between counting itself and waiting; it
            // re-checks `free` either way.
            self.given_back.notify_one();
        }
    }
}

/// A taker counted in [`Slots::waiting`] until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A slot a message holds while it is attempted; given back when dropped.
struct Slot<'a>(&'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// How one run of the handler ended.
enum Attempt {
    Done,
    /// The payload is not an `M`: retrying cannot help.
    Undecodable(String),
    /// `Err` or a panic, with its text.
    Failed(String),
}

/// What a handler's loop leaves to run on after starting on a message (awaited in ordered
/// mode, else on a task of its own).
type Rest = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The box the first attempt of a message runs the handler's future in.
type Running<Fut> = Pin<Box<Fuse<CatchUnwind<AssertUnwindSafe<Fut>>>>>;

/// Where a message's first attempt stands when [`Run::attempts`] takes over.
enum First<Fut> {
    /// The handler is still at it.
    Running(Running<Fut>),
    /// It failed, with this text.
    Failed(String),
    /// Not made yet.
    NotYet,
}

/// What an attempt keeps of its message while the handler owns the envelope, to put back if
/// the attempt fails: the subject, in a buffer reused from message to message (no allocation
/// while attempts finish inline), and the reply and headers, copied only when there are any.
#[derive(Default)]
struct Keep {
    subject: String,
    reply: Option<String>,
    headers: crate::Headers,
}

impl Keep {
    fn new(scratch: String) -> Keep {
        Keep {
            subject: scratch,
            reply: None,
            headers: crate::Headers::new(),
        }
    }

    /// Keeps a copy of `msg`'s subject, reply and headers, and hands `msg`'s own over.
    #[inline(always)]
    fn lend(&mut self, msg: &mut RawMessage) -> (String, Option<String>, crate::Headers) {
        self.subject.clear();
        self.subject.push_str(&msg.subject);
        self.reply.clone_from(&msg.reply);
        if !msg.headers.is_empty() {
            self.headers = msg.headers.clone();
        } else if !self.headers.is_empty() {
            self.headers = crate::Headers::new();
        }
        (
            std::mem::take(&mut msg.subject),
            msg.reply.take(),
            std::mem::take(&mut msg.headers),
        )
    }

    /// Puts what [`lend`](Keep::lend) kept back into `msg`.
    fn restore(&mut self, msg: &mut RawMessage) {
        msg.subject = std::mem::take(&mut self.subject);
        msg.reply = self.reply.take();
        msg.headers = std::mem::take(&mut self.headers);
    }
}

/// Logs a settlement that could not be sent (the ack wait brings the message back).
fn settle(outcome: crate::Result<()>, msg: &RawMessage, origin: &str) {
    if let Err(e) = outcome {
        tracing::warn!(subject = %msg.subject, error = %e, handler = %origin, "cannot settle a durable delivery; the broker will deliver it again after the ack wait");
    }
}

/// Waits `wait`, telling the broker every `every` (and at the start) that the delivery is
/// still in progress, so that its ack wait does not expire meanwhile.
async fn in_progress_for(acker: &Acker, wait: Duration, every: Duration) {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let _ = acker.in_progress().await;
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep_until(until.min(now + every)).await;
    }
}

/// Handler dead letters of a bus without an outbox file: kept in memory, the newest
/// [`MEMORY_DEAD_LETTERS`], older ones counted as evicted.
pub(crate) const MEMORY_DEAD_LETTERS: usize = 10_000;

/// The in-memory dead letters of handlers.
#[derive(Debug, Default)]
pub(crate) struct MemoryDeadLetters {
    letters: std::sync::Mutex<std::collections::VecDeque<(i64, Failed)>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

#[cfg_attr(not(feature = "outbox"), allow(dead_code))]
impl MemoryDeadLetters {
    pub(crate) fn push(&self, failed: Failed) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        let mut l = self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.len() >= MEMORY_DEAD_LETTERS {
            l.pop_front();
            let evicted = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            if evicted.is_power_of_two() {
                tracing::warn!(evicted, kept = MEMORY_DEAD_LETTERS, "in-memory handler dead letters full: the oldest are dropped (configure an outbox to keep them all)");
            }
        }
        l.push_back((id, failed));
    }

    pub(crate) fn list(&self) -> Vec<(i64, Failed)> {
        self.letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn take(&self, id: i64) -> Option<Failed> {
        let mut l = self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = l.iter().position(|(i, _)| *i == id)?;
        l.remove(i).map(|(_, f)| f)
    }

    pub(crate) fn purge(&self) -> u64 {
        let mut l = self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = l.len() as u64;
        l.clear();
        n
    }

    pub(crate) fn len(&self) -> u64 {
        self.letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64
    }
}
