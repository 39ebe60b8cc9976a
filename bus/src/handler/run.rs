//! The loop of a running handler and the attempts of each message: first inline on the loop,
//! then on a task of its own, retried with backoff, dead-lettered at the end; durable deliveries
//! acked, naked or terminated.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::{CatchUnwind, Fuse};
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use super::lanes::{hash_key, KeyOf, Lanes};
use super::options::HandlerOptions;
use super::slots::{Slot, Slots};
use super::stats::HandlerStats;
use crate::dead_letter::{DeadLetterSink, Failed};
use crate::durable::{Acker, Delivery};
use crate::envelope::{Delivered, Envelope, Outputs};
use crate::headers::Headers;
use crate::inbox::{Claim, Inbox};
use crate::incoming::Incoming;
use crate::raw::{RawMessage, SubscriptionStats};
use crate::retry::RetryPolicy;
use crate::stop::{InFlight, StopSignal};

/// How long a handler's loop works through messages that are already there before it yields to
/// the other tasks of its worker thread.
const TIME_SLICE: Duration = Duration::from_millis(2);

/// What every attempt of one handler shares.
pub(super) struct Run<M, F> {
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
    /// With [`HandlerOptions::dedupe`]: the completions, and where outputs go.
    inbox: Option<Arc<Inbox>>,
    /// The loop's work in flight, which deliveries settled after their commit count in.
    #[cfg(feature = "outbox")]
    in_flight: InFlight,
    /// Where deliveries go once their completion is committed (see [`Settle`]).
    #[cfg(feature = "outbox")]
    settler: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Settled<M, F>>>,
    _type: std::marker::PhantomData<fn() -> M>,
}

impl<M: Incoming, F> Run<M, F> {
    /// What the attempts of handler `name` share.
    pub(super) fn new(
        handler: F,
        options: &HandlerOptions,
        name: &str,
        stats: Arc<HandlerStats>,
        sink: DeadLetterSink,
        inbox: Option<Arc<Inbox>>,
    ) -> Self {
        let origin = format!("handler:{name}");
        Run {
            handler,
            retry: options.retry,
            metrics: crate::metrics::HandlerMetrics::of::<M>(name, &origin),
            origin: Arc::from(origin),
            stats,
            sink,
            progress_every: (options.ack_wait / 2).min(Duration::from_secs(1)),
            slots: Slots::new(options.effective_concurrency()),
            inbox,
            #[cfg(feature = "outbox")]
            in_flight: InFlight::default(),
            #[cfg(feature = "outbox")]
            settler: std::sync::OnceLock::new(),
            _type: std::marker::PhantomData,
        }
    }
}

impl<M, F, Fut, E> Run<M, F>
where
    M: Incoming,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    pub(super) async fn serve<T, P>(
        self,
        mut messages: futures::stream::BoxStream<'static, T>,
        sub_stats: Arc<SubscriptionStats>,
        pattern: String,
        bound: Bound<'_>,
        (stop, in_flight): (StopSignal, InFlight),
        mut process: P,
    ) where
        T: Send + 'static,
        P: FnMut(&Arc<Self>, T, bool) -> Option<Rest>,
    {
        #[cfg_attr(not(feature = "outbox"), allow(unused_mut))]
        let mut run = self;
        #[cfg(feature = "outbox")]
        {
            run.in_flight = in_flight.clone();
        }
        let run = Arc::new(run);
        let mut reported_drops = 0;
        let mut taken = 0u32;
        let mut slice = std::time::Instant::now();
        loop {
            // One flag for stop and close (no waiter registered per message).
            if stop.is_set() {
                break;
            }
            // A slot first, so a busy handler leaves messages in the subscription's buffer
            // (the attempt gives it back; with lanes, the end of the message's lane turn).
            let gate = match bound {
                Bound::Ordered => None,
                Bound::Slots => Some(&run.slots),
                Bound::Taken(taken) => Some(taken),
            };
            if let Some(gate) = gate {
                if !gate.try_take() && stop.or(gate.take()).await.is_none() {
                    break;
                }
            }
            let msg = match messages.next().now_or_never() {
                Some(Some(m)) => m,
                Some(None) => break,
                None => match stop.next(&mut messages).await {
                    Some(Some(m)) => m,
                    Some(None) | None => break,
                },
            };
            run.stats.took();
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
            let ordered = matches!(bound, Bound::Ordered);
            if let Some(rest) = process(&run, msg, matches!(bound, Bound::Slots)) {
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

    /// How the loop starts on a message with lanes (see [`lanes`](super::lanes)): the message
    /// is queued behind its key's running lane, or starts one, a task that handles the lane's
    /// messages one after the other with `one`, each holding a slot while it is attempted.
    pub(super) fn lane_starter<T: Send + 'static>(
        lanes: Arc<Lanes<T>>,
        message: fn(&T) -> &RawMessage,
        one: fn(Arc<Self>, T) -> Rest,
    ) -> impl FnMut(&Arc<Self>, T, bool) -> Option<Rest> {
        move |run, msg, _| {
            let key = run.key(&lanes.key, message(&msg));
            let first = lanes.admit(key, msg)?;
            let (run, lanes) = (Arc::clone(run), Arc::clone(&lanes));
            Some(Box::pin(async move {
                let mut msg = first;
                loop {
                    run.slots.take().await;
                    one(Arc::clone(&run), msg).await;
                    match lanes.finished(key) {
                        Some(next) => msg = next,
                        None => return,
                    }
                }
            }))
        }
    }

    /// The lane key of `msg`: its subject's hash, or the key function's of its decoded body
    /// (the subject's if it does not decode: its attempt dead-letters it).
    fn key(&self, key: &KeyOf, msg: &RawMessage) -> u64 {
        match key {
            KeyOf::Subject => hash_key(msg.subject.as_str()),
            KeyOf::Typed { key, .. } => M::decode_incoming(&msg.subject, &msg.payload)
                .ok()
                .and_then(|body| key(&body))
                .unwrap_or_else(|| hash_key(msg.subject.as_str())),
        }
    }

    /// One message of a plain subscription in a lane, holding a slot: its attempts, retried in
    /// place.
    pub(super) fn plain_one(run: Arc<Self>, msg: RawMessage) -> Rest {
        let mut running: Attempting<Fut> = Box::pin(Fuse::terminated());
        let mut subject = String::new();
        match run.start(msg, true, &mut running, &mut subject) {
            Some(rest) => rest,
            None => Box::pin(std::future::ready(())),
        }
    }

    /// One delivery of a durable consumer in a lane, holding a slot: retried in place, the
    /// broker told it is in progress meanwhile (as in ordered mode).
    pub(super) fn durable_one(run: Arc<Self>, delivery: Delivery) -> Rest {
        Box::pin(Run::deliver_durable(run, delivery, true, true))
    }

    /// How the loop starts on a message of a plain subscription (see [`start`](Self::start)):
    /// with the box the handler's future runs in and the buffer its subject is kept in, both
    /// reused while messages finish inline.
    pub(super) fn plain_starter() -> impl FnMut(&Arc<Self>, RawMessage, bool) -> Option<Rest> {
        let mut running: Attempting<Fut> = Box::pin(Fuse::terminated());
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
        running: &mut Attempting<Fut>,
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
        if self.inbox.is_some() {
            // The inbox is asked first: no inline attempt.
            let all = Arc::clone(self).attempts(msg, slot, Keep::default(), First::NotYet);
            return Some(Box::pin(all));
        }
        let mut keep = Keep::new(std::mem::take(subject));
        let env = match self.envelope(&mut msg, &mut keep, Delivered::Plain) {
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
        let claim = match self.claim(&msg.headers).await {
            Claimed::Run(claim) => claim,
            Claimed::Duplicate => return,
            Claimed::Failed(error) => return self.give_up(msg, 1, error),
        };
        let id = claim.as_ref().map(ClaimGuard::id);
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
                First::NotYet => match self
                    .attempt(&mut msg, &mut keep, Delivered::Plain, id)
                    .await
                {
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

    /// What the inbox says of a message before its first attempt (see [`Inbox::claim`]):
    /// a duplicate is counted here; `Run(None)`: no inbox, or no msg id (counted).
    async fn claim(&self, headers: &Headers) -> Claimed {
        let Some(inbox) = &self.inbox else {
            return Claimed::Run(None);
        };
        let Some(id) = crate::headers::msg_id(headers) else {
            self.stats.without_msg_id.fetch_add(1, Ordering::Relaxed);
            self.metrics.without_msg_id();
            return Claimed::Run(None);
        };
        match inbox.claim(id).await {
            Ok(Claim::Run) => Claimed::Run(Some(ClaimGuard {
                inbox: Arc::clone(inbox),
                id: id.to_owned(),
            })),
            Ok(Claim::Duplicate) => {
                self.stats.did_skip_duplicate();
                self.metrics.duplicate();
                tracing::debug!(msg_id = %id, handler = %self.origin, "duplicate skipped");
                Claimed::Duplicate
            }
            Err(e) => Claimed::Failed(format!("cannot read the handler's inbox: {e}")),
        }
    }

    /// One run of the handler on `msg`, counted (see [`envelope`](Self::envelope)). With an
    /// inbox, what the handler published through its envelope is committed with its completion
    /// of `id` after `Ok` (a commit that fails is a failed attempt that published nothing).
    async fn attempt(
        &self,
        msg: &mut RawMessage,
        keep: &mut Keep,
        delivered: Delivered,
        id: Option<&str>,
    ) -> Attempt {
        let env = match self.envelope(msg, keep, delivered) {
            Ok(env) => env,
            Err(error) => return Attempt::Undecodable(error),
        };
        self.metrics.attempt();
        let outcome = match &self.inbox {
            None => AssertUnwindSafe((self.handler)(env)).catch_unwind().await,
            Some(inbox) => {
                let (outcome, msgs) = self.run_collecting(env, id).await;
                if let Ok(Ok(())) = &outcome {
                    if let Err(e) = inbox.complete(id, msgs).await {
                        keep.restore(msg);
                        return Attempt::Failed(self.uncommitted(e));
                    }
                }
                outcome
            }
        };
        match self.failure(outcome) {
            None => Attempt::Done,
            Some(error) => {
                keep.restore(msg);
                Attempt::Failed(error)
            }
        }
    }

    /// Runs the handler on `env`, collecting what it publishes through it (their msg ids
    /// derive from `id`, the incoming message's); after `Ok`, the outputs, each with the trace
    /// context.
    async fn run_collecting(
        &self,
        env: Envelope<M>,
        id: Option<&str>,
    ) -> (std::thread::Result<Result<(), E>>, Vec<RawMessage>) {
        let outputs = Outputs::new(id);
        let env = env.with_outputs(Arc::clone(&outputs));
        let outcome = AssertUnwindSafe((self.handler)(env)).catch_unwind().await;
        let mut msgs = match &outcome {
            Ok(Ok(())) => outputs.take(),
            _ => Vec::new(),
        };
        for m in &mut msgs {
            crate::trace::inject(&mut m.headers);
        }
        (outcome, msgs)
    }

    /// The envelope of one attempt: `msg` decoded (again for each attempt: the handler owns
    /// its envelope), with `msg`'s subject, reply and headers, which `keep` keeps a copy of.
    /// `Err`: the payload does not decode, which no retry can fix.
    #[inline(always)]
    fn envelope(
        &self,
        msg: &mut RawMessage,
        keep: &mut Keep,
        delivered: Delivered,
    ) -> Result<Envelope<M>, String> {
        let body = match M::decode_incoming(&msg.subject, &msg.payload) {
            Ok(body) => body,
            Err(e) => {
                self.metrics.receive.decode_error();
                return Err(e.reason());
            }
        };
        let (subject, reply, headers) = keep.lend(msg);
        Ok(Envelope::received(
            body, subject, reply, headers, delivered, None,
        ))
    }

    /// Counts how an attempt ended: `None` after `Ok`, else the error's (or panic's) text.
    #[inline(always)]
    fn failure(&self, outcome: std::thread::Result<Result<(), E>>) -> Option<String> {
        let error = match outcome {
            Ok(Ok(())) => match self.stats.injected_failure() {
                None => {
                    self.stats.did_handle();
                    return None;
                }
                Some(injected) => injected,
            },
            Ok(Err(e)) => e.to_string(),
            Err(panic) => crate::panic::describe(&*panic),
        };
        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        self.metrics.failure();
        Some(error)
    }

    /// How the loop starts on a durable delivery: [`deliver_durable`](Self::deliver_durable)
    /// built in a box reused while deliveries finish inline, and polled once.
    pub(super) fn durable_starter(
        ordered: bool,
    ) -> impl FnMut(&Arc<Self>, Delivery, bool) -> Option<Rest> {
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
        let claim = match self.claim(&message.headers).await {
            Claimed::Run(claim) => claim,
            Claimed::Duplicate => {
                // Finished before (or a copy is being handled): done for this delivery.
                return settle(acker.ack().await, &message, &self.origin);
            }
            Claimed::Failed(error) => {
                tracing::warn!(subject = %message.subject, %error, handler = %self.origin, "cannot tell whether the message is a duplicate; it will be delivered again");
                drop(slot);
                return settle(
                    acker.nak(self.retry.backoff(attempts)).await,
                    &message,
                    &self.origin,
                );
            }
        };
        #[cfg(feature = "outbox")]
        if let Some(inbox) = self.inbox.as_ref().filter(|i| !ordered && i.pipelines()) {
            return self
                .attempt_committing(inbox, message, attempts, claim, acker, slot)
                .await;
        }
        let id = claim.as_ref().map(ClaimGuard::id);
        loop {
            let delivered = Delivered::Durable(attempts);
            let error = match self.attempt(&mut message, &mut keep, delivered, id).await {
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
            if !ordered {
                drop(slot);
                return self.failed_durable(message, acker, attempts, error).await;
            }
            if self.retry.exhausted(attempts) {
                settle(acker.term().await, &message, &self.origin);
                return self.give_up(message, attempts, error);
            }
            let wait = self.retry.backoff(attempts);
            tracing::debug!(subject = %message.subject, attempts, %error, handler = %self.origin, "handler attempt failed; will retry");
            in_progress_for(&acker, wait, self.progress_every).await;
            attempts += 1;
        }
    }

    /// A durable delivery (unordered) failed its attempt: the broker delivers it again after
    /// the retry policy's backoff, or, at the last attempt, it is terminated and dead-lettered.
    async fn failed_durable(
        &self,
        message: RawMessage,
        acker: Acker,
        attempts: u32,
        error: String,
    ) {
        if self.retry.exhausted(attempts) {
            settle(acker.term().await, &message, &self.origin);
            return self.give_up(message, attempts, error);
        }
        tracing::debug!(subject = %message.subject, attempts, %error, handler = %self.origin, "handler attempt failed; will retry");
        settle(
            acker.nak(self.retry.backoff(attempts)).await,
            &message,
            &self.origin,
        );
        self.stats.did_requeue();
    }

    /// The attempt of an unordered durable delivery whose inbox is in the outbox file: after
    /// `Ok`, the completion (with what the handler published) goes to the writer thread, and
    /// the delivery is acknowledged by the handler's settler once it is committed, so no task
    /// waits for the commit and one wake answers a whole group commit. The slot is free
    /// meanwhile; the delivery counts as in flight until it is settled.
    #[cfg(feature = "outbox")]
    async fn attempt_committing(
        self: &Arc<Self>,
        inbox: &Arc<Inbox>,
        mut message: RawMessage,
        attempts: u32,
        claim: Option<ClaimGuard>,
        acker: Acker,
        slot: Option<Slot<'_>>,
    ) {
        let mut keep = Keep::default();
        let env = match self.envelope(&mut message, &mut keep, Delivered::Durable(attempts)) {
            Ok(env) => env,
            Err(error) => {
                settle(acker.term().await, &message, &self.origin);
                return self.give_up(message, attempts, error);
            }
        };
        self.metrics.attempt();
        let id = claim.as_ref().map(ClaimGuard::id);
        let (outcome, msgs) = self.run_collecting(env, id).await;
        keep.restore(&mut message);
        drop(slot);
        if !matches!(outcome, Ok(Ok(()))) {
            let error = self.failure(outcome).unwrap_or_default();
            return self.failed_durable(message, acker, attempts, error).await;
        }
        let id = id.map(str::to_owned);
        let settler = self.settler();
        let settle = Settle {
            held: self.in_flight.hold(),
            run: Arc::clone(self),
            message,
            acker,
            attempts,
            claim,
        };
        inbox.complete_then(id.as_deref(), msgs, move |outcome| {
            let _ = settler.send((settle, outcome));
        });
    }

    /// The handler's settler: one task that acknowledges each delivery once its completion is
    /// committed (or hands it back when the commit failed), started at first use.
    #[cfg(feature = "outbox")]
    fn settler(&self) -> tokio::sync::mpsc::UnboundedSender<Settled<M, F>> {
        self.settler
            .get_or_init(|| {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Settled<M, F>>();
                tokio::spawn(async move {
                    while let Some((settle, outcome)) = rx.recv().await {
                        settle.settle(outcome).await;
                    }
                });
                tx
            })
            .clone()
    }

    /// Counts an attempt whose handler returned `Ok` but whose completion could not be
    /// committed; its error text.
    fn uncommitted(&self, e: crate::error::Error) -> String {
        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        self.metrics.failure();
        format!(
            "the handler returned Ok but its completion could not be committed \
             (nothing it published was queued): {e}"
        )
    }

    fn give_up(&self, msg: RawMessage, attempts: u32, last_error: String) {
        self.stats.did_dead_letter();
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

/// A [`Settle`] and the outcome of its commit.
#[cfg(feature = "outbox")]
type Settled<M, F> = (Settle<M, F>, crate::error::Result<()>);

/// A durable delivery whose handler returned `Ok`, waiting for its completion's commit.
#[cfg(feature = "outbox")]
struct Settle<M, F> {
    run: Arc<Run<M, F>>,
    message: RawMessage,
    acker: Acker,
    attempts: u32,
    /// Released after the commit (a copy arriving meanwhile is a duplicate).
    claim: Option<ClaimGuard>,
    /// Counts the delivery in the loop's work in flight.
    held: crate::stop::InFlightGuard,
}

#[cfg(feature = "outbox")]
impl<M, F, Fut, E> Settle<M, F>
where
    M: Incoming,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    /// Acknowledges the delivery after its commit (`outcome`), or hands it back.
    async fn settle(self, outcome: crate::error::Result<()>) {
        let Settle {
            run,
            message,
            acker,
            attempts,
            claim,
            held,
        } = self;
        let error = match outcome {
            Ok(()) => run.failure(Ok(Ok(()))),
            Err(e) => Some(run.uncommitted(e)),
        };
        drop(claim);
        match error {
            None => {
                if let Err(e) = acker.ack().await {
                    tracing::warn!(subject = %message.subject, error = %e, handler = %run.origin, "cannot acknowledge; the message will be delivered again");
                }
            }
            Some(error) => run.failed_durable(message, acker, attempts, error).await,
        }
        drop(held);
    }
}

/// What the inbox said of a message before its first attempt.
enum Claimed {
    /// Run it; with a claim to hold until it is finished, when the inbox dedupes it.
    Run(Option<ClaimGuard>),
    /// Skip it (counted).
    Duplicate,
    /// The inbox could not tell.
    Failed(String),
}

/// A message marked running in the inbox; released when dropped (after a completion that is a
/// no-op), so a copy that arrives after a failure or a handback may run.
struct ClaimGuard {
    inbox: Arc<Inbox>,
    id: String,
}

impl ClaimGuard {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.inbox.release(&self.id);
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

/// What a handler's loop waits for before it takes a message.
pub(super) enum Bound<'a> {
    /// Nothing: ordered mode awaits each message before the next.
    Ordered,
    /// A concurrency slot, which the message holds.
    Slots,
    /// Room among the messages lanes have taken (the lane takes the slot).
    Taken(&'a Slots),
}

/// What a handler's loop leaves to run on after starting on a message (awaited in ordered
/// mode, else on a task of its own).
type Rest = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The box the first attempt of a message runs the handler's future in.
type Attempting<Fut> = Pin<Box<Fuse<CatchUnwind<AssertUnwindSafe<Fut>>>>>;

/// Where a message's first attempt stands when [`Run::attempts`] takes over.
enum First<Fut> {
    /// The handler is still at it.
    Running(Attempting<Fut>),
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
    headers: crate::headers::Headers,
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
    fn lend(&mut self, msg: &mut RawMessage) -> (String, Option<String>, crate::headers::Headers) {
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
fn settle(outcome: crate::error::Result<()>, msg: &RawMessage, origin: &str) {
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
