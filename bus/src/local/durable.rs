//! Durable consumers of the local broker: JetStream's semantics within the process.
//!
//! A durable, known by name, takes every message on its pattern from the moment it is first
//! consumed, whether a puller is attached or not, up to [`LOCAL_DURABLE_CAPACITY`] kept messages
//! (beyond, a message is dropped for it and counted, as a slow consumer's). Each message is
//! handed to one puller at a time; it is delivered again after a nak (once its delay passed) or
//! when its ack wait expires, at most `max_deliver` times; at most `max_ack_pending` are out
//! unsettled at once. Redeliveries come before new messages, oldest first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::durable::{
    AckHandle, AckKind, Acker, Delivery, DurableSpec, DurableSubscription, LOCAL_DURABLE_CAPACITY,
};
use crate::error::{Error, Result};
use crate::raw::{RawMessage, SubscriptionStats};

/// One durable consumer of the local broker.
#[derive(Debug)]
pub(crate) struct Durable {
    spec: DurableSpec,
    inner: Mutex<Inner>,
    /// Wakes a puller when something may have become deliverable.
    notify: Notify,
    closed: AtomicBool,
    /// Messages dropped because the durable was full.
    dropped: AtomicU64,
    /// Messages given up on after `max_deliver` deliveries.
    exhausted: AtomicU64,
    /// The stats of attached pullers, to count drops where their subscribers look.
    pullers: Mutex<Vec<Weak<SubscriptionStats>>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    /// Never delivered yet, in publish order.
    waiting: VecDeque<(u64, RawMessage)>,
    /// Delivered at least once and not settled.
    unsettled: HashMap<u64, Entry>,
    /// When each unsettled message is due again: `(due, seq, generation)`; one that no longer
    /// matches its entry's generation and due time is stale and skipped.
    due: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// Unsettled messages out with a puller (not waiting for a redelivery).
    out: usize,
    next_gen: u64,
}

#[derive(Debug)]
struct Entry {
    msg: RawMessage,
    delivered: u32,
    /// Names the current delivery (or pending redelivery): settlements of older ones are
    /// ignored, but for acks.
    generation: u64,
    /// When it is delivered again (ack wait expiry, or the end of a nak's delay).
    due: Instant,
    /// Out with a puller (`true`) or waiting for its redelivery after a nak.
    out: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Durable {
    pub(crate) fn new(spec: DurableSpec) -> Arc<Durable> {
        Arc::new(Durable {
            spec,
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            pullers: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn spec(&self) -> &DurableSpec {
        &self.spec
    }

    /// Whether the durable takes messages on `subject`.
    pub(crate) fn wants(&self, subject: &str) -> bool {
        bus_subject::matches(&self.spec.pattern, subject)
    }

    /// Keeps `msg` for the durable, or drops and counts it when full.
    pub(crate) fn push(&self, msg: RawMessage) {
        {
            let mut inner = lock(&self.inner);
            if inner.waiting.len() + inner.unsettled.len() >= LOCAL_DURABLE_CAPACITY {
                drop(inner);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                lock(&self.pullers).retain(|w| match w.upgrade() {
                    Some(stats) => {
                        stats.add_dropped(1);
                        true
                    }
                    None => false,
                });
                tracing::warn!(durable = %self.spec.name, subject = %msg.subject, capacity = LOCAL_DURABLE_CAPACITY, "local durable consumer full: message dropped");
                return;
            }
            inner.next_seq += 1;
            let seq = inner.next_seq;
            inner.waiting.push_back((seq, msg));
        }
        self.notify.notify_one();
    }

    /// Messages kept and not settled yet (waiting, out with a puller, or waiting for a
    /// redelivery), for `bus::testing`'s quiescence.
    #[cfg(feature = "testing")]
    pub(crate) fn unsettled(&self) -> u64 {
        let inner = lock(&self.inner);
        (inner.waiting.len() + inner.unsettled.len()) as u64
    }

    /// Ends every puller's stream (the broker was closed).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    /// A new puller on this durable.
    pub(crate) fn attach(self: &Arc<Self>) -> DurableSubscription {
        let stats = Arc::new(SubscriptionStats::default());
        lock(&self.pullers).push(Arc::downgrade(&stats));
        let puller = Puller {
            durable: Arc::clone(self),
            stats: Arc::clone(&stats),
        };
        let deliveries = futures::stream::unfold(puller, |p| async move {
            let d = p.next().await?;
            Some((d, p))
        });
        DurableSubscription {
            name: self.spec.name.clone(),
            pattern: self.spec.pattern.clone(),
            deliveries: Box::pin(deliveries),
            stats,
        }
    }

    /// The next delivery due now, or when the next one will be (`None`: nothing scheduled).
    fn take(self: &Arc<Self>, now: Instant) -> std::result::Result<Delivery, Option<Instant>> {
        let max_deliver = self.spec.max_deliver.unwrap_or(u32::MAX);
        let max_out = self.spec.max_ack_pending.max(1);
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        // Redeliveries first: ack waits expired, naks whose delay passed.
        while let Some(Reverse((at, seq, generation))) = inner.due.peek().copied() {
            let current = inner
                .unsettled
                .get(&seq)
                .is_some_and(|e| e.generation == generation && e.due == at);
            if !current {
                inner.due.pop();
                continue;
            }
            if at > now {
                break;
            }
            let was_out = inner.unsettled.get(&seq).is_some_and(|e| e.out);
            if !was_out && inner.out >= max_out {
                break;
            }
            inner.due.pop();
            let Some(entry) = inner.unsettled.get_mut(&seq) else {
                continue;
            };
            if entry.delivered >= max_deliver {
                inner.unsettled.remove(&seq);
                if was_out {
                    inner.out -= 1;
                }
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(durable = %self.spec.name, seq, "local durable: max deliveries reached; not delivered again");
                continue;
            }
            entry.delivered += 1;
            entry.out = true;
            inner.next_gen += 1;
            entry.generation = inner.next_gen;
            let delivered = entry.delivered;
            let msg = entry.msg.clone();
            if !was_out {
                inner.out += 1;
            }
            entry.due = now + self.spec.wait_for(delivered);
            inner.due.push(Reverse((entry.due, seq, inner.next_gen)));
            return Ok(self.delivery(seq, inner.next_gen, delivered, msg));
        }
        if inner.out < max_out {
            if let Some((seq, msg)) = inner.waiting.pop_front() {
                inner.next_gen += 1;
                let generation = inner.next_gen;
                let due = now + self.spec.wait_for(1);
                inner.unsettled.insert(
                    seq,
                    Entry {
                        msg: msg.clone(),
                        delivered: 1,
                        generation,
                        due,
                        out: true,
                    },
                );
                inner.out += 1;
                inner.due.push(Reverse((due, seq, generation)));
                return Ok(self.delivery(seq, generation, 1, msg));
            }
        }
        Err(inner.due.peek().map(|Reverse((at, _, _))| *at))
    }

    fn delivery(
        self: &Arc<Self>,
        seq: u64,
        generation: u64,
        delivered: u32,
        msg: RawMessage,
    ) -> Delivery {
        Delivery::new(
            msg,
            Acker::new(
                delivered,
                LocalAck {
                    durable: Arc::downgrade(self),
                    seq,
                    generation,
                },
            ),
        )
    }

    /// Applies a settlement of delivery `generation` of message `seq`. An ack or term counts
    /// whatever delivery it came from (as in JetStream); a nak or progress only from the
    /// current one.
    fn settle(&self, seq: u64, generation: u64, kind: AckKind) {
        let now = Instant::now();
        let max_deliver = self.spec.max_deliver.unwrap_or(u32::MAX);
        {
            let mut inner = lock(&self.inner);
            let inner = &mut *inner;
            let Some(entry) = inner.unsettled.get_mut(&seq) else {
                return;
            };
            let current = entry.generation == generation && entry.out;
            match kind {
                AckKind::Ack | AckKind::Term => {
                    if entry.out {
                        inner.out -= 1;
                    }
                    inner.unsettled.remove(&seq);
                    crate::settled::poke();
                }
                AckKind::Nak(_) | AckKind::Progress if !current => return,
                AckKind::Nak(_) if entry.delivered >= max_deliver => {
                    inner.unsettled.remove(&seq);
                    inner.out -= 1;
                    self.exhausted.fetch_add(1, Ordering::Relaxed);
                }
                AckKind::Nak(delay) => {
                    entry.out = false;
                    inner.out -= 1;
                    inner.next_gen += 1;
                    entry.generation = inner.next_gen;
                    entry.due = now + delay;
                    inner.due.push(Reverse((entry.due, seq, entry.generation)));
                }
                AckKind::Progress => {
                    // The same delivery goes on (same generation), due later.
                    entry.due = now + self.spec.wait_for(entry.delivered);
                    inner.due.push(Reverse((entry.due, seq, generation)));
                    return;
                }
            }
        }
        // Room for another delivery, or a redelivery scheduled: let a puller look.
        self.notify.notify_one();
    }
}

/// One attached puller.
struct Puller {
    durable: Arc<Durable>,
    stats: Arc<SubscriptionStats>,
}

impl Puller {
    async fn next(&self) -> Option<Delivery> {
        loop {
            let notified = self.durable.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable.closed.load(Ordering::Relaxed) {
                return None;
            }
            match self.durable.take(Instant::now()) {
                Ok(d) => {
                    self.stats.add_delivered(1);
                    return Some(d);
                }
                Err(Some(at)) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }
}

/// Settles a local delivery.
struct LocalAck {
    durable: Weak<Durable>,
    seq: u64,
    generation: u64,
}

impl AckHandle for LocalAck {
    fn send(&self, kind: AckKind) -> BoxFuture<'static, Result<()>> {
        let outcome = match self.durable.upgrade() {
            Some(d) if !d.closed.load(Ordering::Relaxed) => {
                d.settle(self.seq, self.generation, kind);
                Ok(())
            }
            _ => Err(Error::Closed),
        };
        Box::pin(futures::future::ready(outcome))
    }
}
