//! [`TestBroker`]: a [`Broker`] around another (the embedded one, or NATS) that writes the
//! [record](super::record), counts what is in flight, and injects faults on demand.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use super::record::{Kind, Recorder};
use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::durable::{DurableSpec, DurableSubscription};
use crate::error::{Error, Result};
use crate::local::LocalBroker;
use crate::panic::lock;
use crate::raw::{RawMessage, RawSubscription, SubscriptionStats};

/// Replies go to subjects under this prefix on both built-in brokers.
const INBOX: &str = "_INBOX.";

/// A [`Broker`] that records, counts and injects faults, around `inner`.
///
/// [`TestBus`](super::TestBus) builds its bus on one; you reach it through
/// [`TestBus::broker`](super::TestBus::broker) to inject faults. It is an ordinary `Broker`:
/// wrap a broker of your own with [`TestBroker::new`] and give it to
/// [`BusBuilder::broker`](crate::BusBuilder::broker).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// use std::sync::Arc;
/// use bus::testing::TestBroker;
/// let broker = Arc::new(TestBroker::new(Arc::new(bus::LocalBroker::new())));
/// let bus = bus::Bus::builder().broker(broker.clone()).connect().await?;
/// broker.fail_publishes(1);
/// assert!(bus.publish_raw(bus::RawMessage::new("a.b", "x")).await.is_err());
/// bus.publish_raw(bus::RawMessage::new("a.b", "x")).await?;
/// assert_eq!(broker.records().len(), 1);
/// # Ok(()) }
/// ```
pub struct TestBroker {
    inner: Arc<dyn Broker>,
    /// `inner` when it is the embedded broker: its durables' unsettled messages are counted.
    local: Option<Arc<LocalBroker>>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    record: Recorder,
    /// The live subscriptions, to count what waits in their buffers.
    subs: Mutex<Vec<Weak<Watched>>>,
    open_requests: AtomicU64,
    duplicate: AtomicBool,
    fail_publishes: AtomicU64,
    fail_confirms: AtomicU64,
    disconnected: AtomicBool,
    state: Option<watch::Sender<ConnectionState>>,
}

/// One subscription's counters: what the broker put in its buffer (its stats) against what the
/// subscriber took.
struct Watched {
    pattern: String,
    stats: Arc<SubscriptionStats>,
    taken: AtomicU64,
}

impl Watched {
    fn buffered(&self) -> u64 {
        (self.stats.buffered_total()).saturating_sub(self.taken.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("inner", &self.inner.kind())
            .field("open_requests", &self.open_requests())
            .finish_non_exhaustive()
    }
}

impl TestBroker {
    /// Wraps `inner`. Must be called inside a tokio runtime (it follows `inner`'s connection
    /// state on a task).
    pub fn new(inner: Arc<dyn Broker>) -> TestBroker {
        let mut upstream = inner.state();
        let state = watch::Sender::new(*upstream.borrow());
        let shared = Arc::new(Shared {
            state: Some(state),
            ..Shared::default()
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while upstream.changed().await.is_ok() {
                let Some(shared) = weak.upgrade() else { return };
                if !shared.disconnected.load(Ordering::SeqCst) {
                    let now = *upstream.borrow();
                    shared.state().send_replace(now);
                }
            }
        });
        let any: Arc<dyn std::any::Any + Send + Sync> = inner.clone();
        let local = any.downcast::<LocalBroker>().ok();
        TestBroker {
            inner,
            local,
            shared,
        }
    }

    /// Every entry recorded so far, in order.
    pub fn records(&self) -> Vec<super::Record> {
        self.shared.record.all()
    }

    pub(crate) fn recorder(&self) -> &Recorder {
        &self.shared.record
    }

    /// Delivers every message published from now on twice, with the same msg id, as a
    /// redelivery after a lost acknowledgement would (`false` turns it off).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// #[derive(serde::Serialize, serde::Deserialize, bus::Message)]
    /// #[subject("plugin.inbound.<channel>")]
    /// struct Inbound { channel: String }
    ///
    /// let t = bus::testing::TestBus::start().await?;
    /// let effects = Arc::new(AtomicU32::new(0));
    /// let counted = Arc::clone(&effects);
    /// let _h = Inbound::handle(t.bus(), Inbound::filter(), move |_m| {
    ///     counted.fetch_add(1, Ordering::SeqCst); // not idempotent
    ///     async { Ok::<_, bus::Error>(()) }
    /// })
    /// .await?;
    /// t.broker().duplicate_deliveries(true);
    /// Inbound { channel: "a".into() }.publish(t.bus()).await?;
    /// t.wait_idle().await;
    /// assert_eq!(t.published::<Inbound>().len(), 1);
    /// assert_eq!(effects.load(Ordering::SeqCst), 2); // the double effect, visible
    /// # Ok(()) }
    /// ```
    pub fn duplicate_deliveries(&self, on: bool) {
        self.shared.duplicate.store(on, Ordering::SeqCst);
    }

    /// Fails the next `n` publishes (requests and replies included) with
    /// [`Error::ConnectionLost`]: a direct publish returns it, the outbox retries.
    pub fn fail_publishes(&self, n: u64) {
        self.shared.fail_publishes.store(n, Ordering::SeqCst);
    }

    /// Fails the next `n` confirmations ([`Broker::confirm`], what the outbox waits on before
    /// it deletes a sent batch) with [`Error::ConnectionLost`]: the batch is sent again.
    pub fn fail_confirms(&self, n: u64) {
        self.shared.fail_confirms.store(n, Ordering::SeqCst);
    }

    /// Acts as if the connection were lost: the state becomes
    /// [`ConnectionState::Disconnected`] and publishes, requests and confirmations fail with
    /// [`Error::ConnectionLost`] until [`reconnect`](TestBroker::reconnect).
    pub fn disconnect(&self) {
        self.shared.disconnected.store(true, Ordering::SeqCst);
        self.shared
            .state()
            .send_replace(ConnectionState::Disconnected);
    }

    /// Ends a [`disconnect`](TestBroker::disconnect): the state is the inner broker's again.
    pub fn reconnect(&self) {
        self.shared.disconnected.store(false, Ordering::SeqCst);
        let now = *self.inner.state().borrow();
        self.shared.state().send_replace(now);
        crate::settled::poke();
    }

    /// Requests sent and not answered (nor failed) yet.
    pub fn open_requests(&self) -> u64 {
        self.shared.open_requests.load(Ordering::SeqCst)
    }

    /// Live subscriptions with messages waiting in their buffers: pattern and count.
    pub fn buffered(&self) -> Vec<(String, u64)> {
        let mut subs = lock(&self.shared.subs);
        subs.retain(|w| w.strong_count() > 0);
        subs.iter()
            .filter_map(Weak::upgrade)
            .map(|w| (w.pattern.clone(), w.buffered()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// On the embedded broker, each durable consumer with messages not settled yet (waiting,
    /// out with a puller, or waiting for a redelivery): name and count. Empty on NATS.
    pub fn durables_unsettled(&self) -> Vec<(String, u64)> {
        self.local
            .as_ref()
            .map_or_else(Vec::new, |local| local.durables_unsettled())
    }

    /// `Err` when a fault says this operation fails.
    fn fault(&self, op: &'static str, budget: Option<&AtomicU64>) -> Result<()> {
        // A failure budget is spent only while connected.
        let take = |b: &AtomicU64| {
            b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        };
        if self.shared.disconnected.load(Ordering::SeqCst)
            || budget.is_some_and(|b| take(b).is_ok())
        {
            return Err(Error::ConnectionLost { op });
        }
        Ok(())
    }

    fn watch(&self, pattern: &str, stats: &Arc<SubscriptionStats>) -> Arc<Watched> {
        let watched = Arc::new(Watched {
            pattern: pattern.to_owned(),
            stats: Arc::clone(stats),
            taken: AtomicU64::new(0),
        });
        lock(&self.shared.subs).push(Arc::downgrade(&watched));
        watched
    }
}

impl Shared {
    fn state(&self) -> &watch::Sender<ConnectionState> {
        self.state.as_ref().expect("set by TestBroker::new")
    }
}

impl Broker for TestBroker {
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        async move {
            self.fault("publish", Some(&self.shared.fail_publishes))?;
            let reply = msg.subject.starts_with(INBOX);
            let kind = if reply { Kind::Reply } else { Kind::Published };
            // Recorded before it is sent, so that it comes before its consumption in the record.
            let seq = self.shared.record.add(kind, &msg);
            let twice = self.shared.duplicate.load(Ordering::SeqCst) && kind == Kind::Published;
            let mut sent = Ok(());
            if twice {
                sent = self.inner.publish(msg.clone()).await;
            }
            if sent.is_ok() {
                sent = self.inner.publish(msg).await;
            }
            if sent.is_err() {
                self.shared.record.retract(seq);
            }
            crate::settled::poke();
            sent
        }
        .boxed()
    }

    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.fault("confirm", Some(&self.shared.fail_confirms))?;
            self.inner.confirm().await
        }
        .boxed()
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        let pattern = pattern.to_owned();
        let queue = queue.map(str::to_owned);
        async move {
            let raw = self.inner.subscribe(&pattern, queue.as_deref()).await?;
            let messages = Taken {
                inner: raw.messages,
                watched: self.watch(&raw.pattern, &raw.stats),
                shared: Arc::clone(&self.shared),
                take: |m| m,
            }
            .boxed();
            Ok(RawSubscription {
                pattern: raw.pattern,
                messages,
                stats: raw.stats,
            })
        }
        .boxed()
    }

    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        async move {
            self.fault("request", Some(&self.shared.fail_publishes))?;
            self.shared.record.add(Kind::Request, &msg);
            self.shared.open_requests.fetch_add(1, Ordering::SeqCst);
            let _open = OpenRequest(&self.shared);
            self.inner.request(msg, timeout).await
        }
        .boxed()
    }

    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state().subscribe()
    }

    fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn consume(&self, spec: &DurableSpec) -> BoxFuture<'_, Result<DurableSubscription>> {
        let spec = spec.clone();
        async move {
            let durable = self.inner.consume(&spec).await?;
            let watched = self.watch(&durable.pattern, &durable.stats);
            let deliveries = Taken {
                inner: durable.deliveries,
                watched,
                shared: Arc::clone(&self.shared),
                take: |d| &d.message,
            }
            .boxed();
            Ok(DurableSubscription {
                deliveries,
                ..durable
            })
        }
        .boxed()
    }
}

/// Counts a request open until it is answered, fails or is dropped.
struct OpenRequest<'a>(&'a Shared);

impl Drop for OpenRequest<'_> {
    fn drop(&mut self) {
        self.0.open_requests.fetch_sub(1, Ordering::SeqCst);
        crate::settled::poke();
    }
}

/// A subscription's stream, recording each item the subscriber takes.
struct Taken<S: Stream> {
    inner: S,
    watched: Arc<Watched>,
    shared: Arc<Shared>,
    take: fn(&S::Item) -> &RawMessage,
}

impl<S: Stream + Unpin> Stream for Taken<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(item)) = &polled {
            self.watched.taken.fetch_add(1, Ordering::Relaxed);
            self.shared.record.add(Kind::Consumed, (self.take)(item));
            crate::settled::poke();
        }
        polled
    }
}
