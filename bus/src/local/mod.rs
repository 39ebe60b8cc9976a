//! `LocalBroker`: the embedded in-process broker with NATS semantics.
//!
//! Subscriptions live in a trie (after nats-server's sublist) behind a `RwLock`; a small cache of
//! match results keyed by subject makes a repeated subject one hash lookup. Each subscription owns
//! a bounded queue (`queue.rs`, nothing allocated while idle): publishing is a synchronous
//! `try_push`, so a publisher never waits for a subscriber, and a full buffer drops the message
//! for that subscriber only and counts it.

mod durable;
mod queue;
mod trie;

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use rustc_hash::{FxBuildHasher, FxHasher};
use tokio::sync::{oneshot, watch};

use self::durable::Durable;
use self::queue::PushError;
use self::trie::{Entry, MatchResult, Trie};
use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::error::{Error, Result};
use crate::raw::{
    check_size, check_subject, check_subscription, RawMessage, RawSubscription, SubscriptionStats,
};

/// Distinct subjects whose match results are cached. When full, one entry makes room for each
/// new one; every subscribe and unsubscribe empties it.
const CACHE_CAPACITY: usize = 4096;

/// At most one slow-consumer warning per subscription per this many milliseconds.
const SLOW_WARN_INTERVAL_MS: u64 = 1000;

/// Options of the local broker.
///
/// Set with builder methods, like every options type of `bus`:
///
/// ```
/// let options = bus::LocalOptions::default().subscription_capacity(1_000);
/// let broker = bus::LocalBroker::with_options(options);
/// # let _ = broker;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LocalOptions {
    /// Messages a subscription buffers before it counts as a slow consumer (default 65,536).
    pub subscription_capacity: usize,
    /// Largest payload plus headers accepted (default 1 MiB, as NATS).
    pub max_payload: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            subscription_capacity: 65_536,
            max_payload: 1024 * 1024,
        }
    }
}

impl LocalOptions {
    /// Sets the messages a subscription buffers before it counts as a slow consumer.
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = capacity;
        self
    }

    /// Sets the largest payload plus headers accepted.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}

/// The embedded in-process broker: NATS semantics (`*`, `>`, queue groups, request/reply with
/// fast [`Error::NoResponders`]) over tokio channels, with no server and nothing on disk.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// use bus::{Broker, LocalBroker, RawMessage};
/// use futures::StreamExt;
///
/// let broker = LocalBroker::new();
/// let mut sub = broker.subscribe("agent.events.*", None).await?;
/// broker.publish(RawMessage::new("agent.events.planner", "hi")).await?;
/// let msg = sub.messages.next().await.unwrap();
/// assert_eq!(msg.subject, "agent.events.planner");
/// # Ok(()) }
/// ```
pub struct LocalBroker {
    shared: Arc<Shared>,
}

impl fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBroker")
            .field("options", &self.shared.options)
            .field("subscriptions", &self.shared.read_trie().len())
            .finish_non_exhaustive()
    }
}

/// One subscription as the broker holds it.
#[derive(Debug)]
struct Sub {
    id: u64,
    pattern: Box<str>,
    queue: Option<Box<str>>,
    tx: queue::Sender,
    stats: Arc<SubscriptionStats>,
    /// Milliseconds since the broker started before which no new slow-consumer warning is logged.
    next_warn_ms: AtomicU64,
}

impl Entry for Sub {
    fn id(&self) -> u64 {
        self.id
    }
}

/// What the broker, its subscription streams and its requests share.
#[derive(Debug)]
struct Shared {
    options: LocalOptions,
    trie: RwLock<Trie<Sub>>,
    /// Match results by subject. Lock order: `trie` before `cache`, so an entry computed under
    /// the trie's read lock cannot be inserted after a subscribe or unsubscribe emptied the cache.
    cache: RwLock<Cache>,
    next_id: AtomicU64,
    /// Round robin position for queue groups.
    round_robin: AtomicUsize,
    /// `_INBOX.<random>.`: reply subjects of this broker's requests.
    inbox_prefix: String,
    /// Requests waiting for their first reply, by the number ending their reply subject.
    pending: Mutex<HashMap<u64, oneshot::Sender<RawMessage>>>,
    state: watch::Sender<ConnectionState>,
    closed: AtomicBool,
    started: Instant,
    /// Durable consumers by name (few: a linear search), and whether there is any, so that a
    /// publish without durables does not take the lock.
    durables: RwLock<Vec<Arc<Durable>>>,
    has_durables: AtomicBool,
}

impl Default for LocalBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBroker {
    /// A broker with default options.
    pub fn new() -> Self {
        Self::with_options(LocalOptions::default())
    }

    /// A broker with these options. A `subscription_capacity` of 0 is taken as 1.
    pub fn with_options(options: LocalOptions) -> Self {
        let options = LocalOptions {
            subscription_capacity: options.subscription_capacity.max(1),
            ..options
        };
        LocalBroker {
            shared: Arc::new(Shared {
                options,
                trie: RwLock::new(Trie::default()),
                cache: RwLock::new(Cache::default()),
                next_id: AtomicU64::new(1),
                round_robin: AtomicUsize::new(0),
                inbox_prefix: format!("_INBOX.{}.", crate::msg_id::new_msg_id()),
                pending: Mutex::new(HashMap::new()),
                state: watch::Sender::new(ConnectionState::Connected),
                closed: AtomicBool::new(false),
                started: Instant::now(),
                durables: RwLock::new(Vec::new()),
                has_durables: AtomicBool::new(false),
            }),
        }
    }

    /// Number of live subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.shared.read_trie().len()
    }

    /// Each durable consumer with messages not settled yet: name and count (for
    /// `bus::testing`'s quiescence).
    #[cfg(feature = "testing")]
    pub(crate) fn durables_unsettled(&self) -> Vec<(String, u64)> {
        self.shared
            .durables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|d| (d.spec().name.clone(), d.unsettled()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Closes the broker: the state becomes [`ConnectionState::Closed`], every subscription
    /// stream ends, and publishes, subscribes and requests fail with [`Error::Closed`].
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.state.send_replace(ConnectionState::Closed);
        *self.shared.write_trie() = Trie::default();
        self.shared.write_cache().clear();
        self.shared.lock_pending().clear();
        for d in self
            .shared
            .durables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            d.close();
        }
    }

    fn check_open(&self) -> Result<()> {
        // An atomic, not the state watch: its `borrow` takes a lock on every publish.
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Delivers `msg` now; returns how many subscriptions matched. [`Broker::publish`] without
    /// the boxed future: what a [`Bus`](crate::Bus) calls.
    pub(crate) fn publish_now(&self, msg: RawMessage) -> Result<usize> {
        self.check_open()?;
        check_size(&msg, self.shared.options.max_payload)?;
        if !msg.headers.is_empty() {
            msg.headers.check()?;
        }
        // The subject is checked by the match lookup (only valid subjects enter its cache).
        self.shared.deliver(msg)
    }

    fn subscribe_now(&self, pattern: &str, queue: Option<&str>) -> Result<RawSubscription> {
        self.check_open()?;
        check_subscription(pattern, queue)?;
        let (tx, rx) = queue::queue(self.shared.options.subscription_capacity);
        let stats = Arc::new(SubscriptionStats::default());
        let sub = Arc::new(Sub {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            pattern: pattern.into(),
            queue: queue.map(Into::into),
            tx,
            stats: stats.clone(),
            next_warn_ms: AtomicU64::new(0),
        });
        {
            let mut trie = self.shared.write_trie();
            // Checked again under the lock: `close` empties the trie after setting the flag, so a
            // subscription can never be installed into a closed broker.
            self.check_open()?;
            trie.insert(pattern, queue, sub.clone());
            self.shared.write_cache().clear();
        }
        tracing::debug!(pattern, queue, id = sub.id, "local subscribe");
        Ok(RawSubscription {
            pattern: pattern.to_string(),
            messages: Box::pin(LocalStream {
                rx,
                // Holds no sender: the stream ends once the broker drops its `Sub`.
                _unsubscribe: Unsubscribe {
                    shared: Arc::downgrade(&self.shared),
                    id: sub.id,
                    pattern: sub.pattern.clone(),
                    queue: sub.queue.clone(),
                },
            }),
            stats,
        })
    }

    /// A puller on the durable `spec.name`, made on first use. A durable keeps the settings of
    /// its first `consume` (within one process there is nothing to update); another pattern
    /// under the same name is refused.
    fn consume_now(
        &self,
        spec: &crate::durable::DurableSpec,
    ) -> Result<crate::durable::DurableSubscription> {
        self.check_open()?;
        spec.check()?;
        let mut durables = self
            .shared
            .durables
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.check_open()?;
        if let Some(d) = durables.iter().find(|d| d.spec().name == spec.name) {
            if d.spec().pattern != spec.pattern {
                return Err(Error::Durable {
                    name: spec.name.clone(),
                    reason: format!(
                        "it exists on {:?}, not {:?}; use another name for other subjects",
                        d.spec().pattern,
                        spec.pattern
                    ),
                });
            }
            return Ok(d.attach());
        }
        let d = Durable::new(spec.clone());
        durables.push(Arc::clone(&d));
        self.shared.has_durables.store(true, Ordering::Relaxed);
        tracing::debug!(durable = %spec.name, pattern = %spec.pattern, "local durable consumer created");
        Ok(d.attach())
    }

    async fn request_inner(&self, mut msg: RawMessage, timeout: Duration) -> Result<RawMessage> {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.lock_pending().insert(n, tx);
        // Removes the pending entry however this future ends (reply, timeout, cancellation).
        let _pending = PendingGuard {
            shared: &self.shared,
            n,
        };
        msg.reply = Some(format!("{}{n}", self.shared.inbox_prefix));
        let subject = msg.subject.clone();
        if self.publish_now(msg)? == 0 {
            return Err(Error::NoResponders { subject });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            // The sender went away: the broker was closed.
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout { subject, timeout }),
        }
    }
}

/// Match results keyed by the FxHash of the subject; the entry keeps the subject to rule out
/// collisions (a colliding subject simply replaces the entry: it is a cache).
type Cache = HashMap<u64, (Box<str>, Arc<MatchResult<Sub>>), FxBuildHasher>;

/// FxHash (rustc's hasher): the cache is keyed by subjects, short strings for which SipHash's
/// DoS resistance costs more than the whole lookup. A flood of crafted subjects can at worst
/// slow the cache, which is emptied when full.
fn subject_hash(subject: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = FxHasher::default();
    h.write(subject.as_bytes());
    h.finish()
}

struct PendingGuard<'a> {
    shared: &'a Shared,
    n: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock_pending().remove(&self.n);
    }
}

impl Shared {
    fn read_trie(&self) -> std::sync::RwLockReadGuard<'_, Trie<Sub>> {
        self.trie.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_trie(&self) -> std::sync::RwLockWriteGuard<'_, Trie<Sub>> {
        self.trie.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<RawMessage>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subscriptions matching `subject`, from the cache when possible. Only valid subjects
    /// enter the cache, so a hit needs no validation: the hot path is one hash lookup.
    fn lookup(&self, subject: &str) -> Result<Arc<MatchResult<Sub>>> {
        let hash = subject_hash(subject);
        if let Some((cached, hit)) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
        {
            if **cached == *subject {
                return Ok(hit.clone());
            }
        }
        check_subject(subject)?;
        let trie = self.read_trie();
        let result = Arc::new(trie.matches(subject));
        // Reply subjects are used once: caching them would only evict useful entries.
        if CACHE_CAPACITY > 0 && !subject.starts_with("_INBOX.") {
            let mut cache = self.write_cache();
            if cache.len() >= CACHE_CAPACITY {
                // Evict an arbitrary eighth: emptying the whole cache would make a working set
                // slightly larger than it miss every time, and one entry at a time would rescan
                // the table on every miss.
                let mut i = 0u32;
                cache.retain(|_, _| {
                    i = i.wrapping_add(1);
                    !i.is_multiple_of(8)
                });
            }
            cache.insert(hash, (subject.into(), result.clone()));
        }
        drop(trie);
        Ok(result)
    }

    /// Hands `msg` to every matching subscription (one member per queue group) and to the
    /// request waiting on it, if `msg` is a reply. Returns how many subscriptions matched.
    fn deliver(&self, msg: RawMessage) -> Result<usize> {
        let matched = self.lookup(&msg.subject)?;
        if self.has_durables.load(Ordering::Relaxed) {
            for d in self
                .durables
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                if d.wants(&msg.subject) {
                    d.push(msg.clone());
                }
            }
        }
        let waiting = self
            .reply_number(&msg.subject)
            .and_then(|n| self.lock_pending().remove(&n));
        let msg = match waiting {
            // Later replies to the same request find no entry: the first reply wins.
            Some(tx) if matched.is_empty() => {
                let _ = tx.send(msg);
                return Ok(0);
            }
            Some(tx) => {
                let _ = tx.send(msg.clone());
                msg
            }
            None => msg,
        };
        if matched.is_empty() {
            tracing::trace!(subject = %msg.subject, "no subscribers");
            return Ok(0);
        }
        let receivers = matched.plain.len() + matched.groups.len();
        tracing::trace!(subject = %msg.subject, receivers, "deliver");
        // Clones for all receivers but the last, which takes the message itself.
        let mut remaining = receivers;
        let mut msg = Some(msg);
        let mut take = || {
            remaining -= 1;
            if remaining == 0 {
                msg.take().expect("one message per receiver")
            } else {
                msg.clone().expect("one message per receiver")
            }
        };
        for sub in &matched.plain {
            self.offer(sub, take());
        }
        for group in &matched.groups {
            self.offer_group(&group.members, take());
        }
        Ok(matched.plain.len()
            + matched
                .groups
                .iter()
                .map(|g| g.members.len())
                .sum::<usize>())
    }

    fn reply_number(&self, subject: &str) -> Option<u64> {
        subject.strip_prefix(&self.inbox_prefix)?.parse().ok()
    }

    fn offer(&self, sub: &Sub, msg: RawMessage) {
        match sub.tx.try_push(msg) {
            Ok(()) => sub.stats.add_delivered(1),
            Err(PushError::Full(msg)) => self.dropped(sub, &msg),
            // The stream was dropped and is being unsubscribed right now.
            Err(PushError::Closed(_)) => {}
        }
    }

    /// Gives `msg` to one member, starting at the round robin position and moving on past
    /// members whose buffer is full, so a queue group only drops when every member is full.
    fn offer_group(&self, members: &[Arc<Sub>], msg: RawMessage) {
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed) % members.len();
        let mut msg = msg;
        let mut first_full: Option<&Sub> = None;
        for i in 0..members.len() {
            let sub = &members[(start + i) % members.len()];
            match sub.tx.try_push(msg) {
                Ok(()) => {
                    sub.stats.add_delivered(1);
                    return;
                }
                Err(PushError::Full(m)) => {
                    first_full.get_or_insert(sub);
                    msg = m;
                }
                Err(PushError::Closed(m)) => msg = m,
            }
        }
        if let Some(sub) = first_full {
            self.dropped(sub, &msg);
        }
    }

    fn dropped(&self, sub: &Sub, msg: &RawMessage) {
        sub.stats.add_dropped(1);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = sub.next_warn_ms.load(Ordering::Relaxed);
        if now >= next
            && sub
                .next_warn_ms
                .compare_exchange(
                    next,
                    now + SLOW_WARN_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                pattern = %sub.pattern,
                queue = sub.queue.as_deref(),
                subject = %msg.subject,
                dropped_total = sub.stats.dropped(),
                capacity = self.options.subscription_capacity,
                "slow consumer: subscription buffer full, message dropped; read faster or raise subscription_capacity"
            );
        }
    }

    fn unsubscribe(&self, pattern: &str, queue: Option<&str>, id: u64) {
        let mut trie = self.write_trie();
        if trie.remove(pattern, queue, id) {
            self.write_cache().clear();
            tracing::debug!(pattern, queue, id, "local unsubscribe");
        }
    }
}

/// Removes its subscription from the trie when the stream is dropped.
struct Unsubscribe {
    shared: Weak<Shared>,
    id: u64,
    pattern: Box<str>,
    queue: Option<Box<str>>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.unsubscribe(&self.pattern, self.queue.as_deref(), self.id);
        }
    }
}

struct LocalStream {
    rx: queue::Receiver,
    _unsubscribe: Unsubscribe,
}

impl Stream for LocalStream {
    type Item = RawMessage;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawMessage>> {
        self.rx.poll_recv(cx)
    }
}

impl Broker for LocalBroker {
    /// Delivers synchronously: when the returned future resolves, the message is in the buffer
    /// of every matching subscription that had room.
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        futures::future::ready(self.publish_now(msg).map(drop)).boxed()
    }

    /// Publishing is synchronous, so everything published before is already delivered.
    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        futures::future::ready(self.check_open()).boxed()
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        futures::future::ready(self.subscribe_now(pattern, queue)).boxed()
    }

    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        self.request_inner(msg, timeout).boxed()
    }

    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    fn max_payload(&self) -> usize {
        self.shared.options.max_payload
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    /// A durable consumer kept in memory (see [`durable`](crate::durable)): it takes every
    /// message on its pattern from its first `consume` on, up to [`LOCAL_DURABLE_CAPACITY`](crate::durable::LOCAL_DURABLE_CAPACITY) kept
    /// (beyond, dropped and counted in each puller's stats), whether a puller is attached or
    /// not. It lives as long as the broker.
    fn consume(
        &self,
        spec: &crate::durable::DurableSpec,
    ) -> BoxFuture<'_, Result<crate::durable::DurableSubscription>> {
        futures::future::ready(self.consume_now(spec)).boxed()
    }
}
