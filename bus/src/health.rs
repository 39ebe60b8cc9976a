//! The built-in heartbeat: a typed [`Health`] snapshot on `plugin.health.<instance>`
//! (`docs/design.md`, "Operations"), sent directly on an interval, never queued: a stale heartbeat
//! delivered after an outage would say the opposite of the truth.

use std::sync::{Mutex, Weak};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::broker::SubscriptionStats;
use crate::panic::lock;

/// One instance's health, as [`Bus::health`](crate::Bus::health) returns it and the heartbeat
/// sends it. Any plugin can watch every instance with `Health::subscribe(&bus, Health::filter())`.
///
/// `Bus::builder().instance("planner-1").heartbeat(Duration::from_secs(5))` sends one on
/// `plugin.health.planner-1` every 5 s: connection state, outbox depth and oldest age, dead
/// letters, slow-consumer drops, handler failures, version, uptime. It is sent straight to the
/// broker while connected and never queued (a stale heartbeat delivered after an outage would
/// say the opposite of the truth). `bus health` (the operator command) prints the latest one of
/// every instance.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// use std::time::Duration;
/// use bus::{Health, Message};
/// use futures::StreamExt;
///
/// let bus = bus::Bus::builder()
///     .instance("planner-1")
///     .heartbeat(Duration::from_millis(50))
///     .connect()
///     .await?;
/// let mut beats = Health::subscribe(&bus, Health::filter()).await?;
/// let beat = beats.next().await.unwrap()?;
/// assert_eq!(beat.subject(), "plugin.health.planner-1");
/// # Ok(()) }
/// ```
///
/// The snapshot in-process, without a heartbeat:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// let bus = bus::Bus::local().await?;
/// let health = bus.health().await;
/// assert_eq!(health.state, "connected");
/// assert_eq!(health.subject()?, format!("plugin.health.{}", health.instance));
/// # use bus::Message;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, crate::Message)]
#[subject("plugin.health.<instance>")]
#[non_exhaustive]
pub struct Health {
    /// The instance name ([`BusBuilder::instance`](crate::BusBuilder::instance); by default the
    /// host's name and the process id).
    pub instance: String,
    /// The connection state, as [`ConnectionState`](crate::ConnectionState) displays it.
    pub state: String,
    /// Messages in the outbox not yet confirmed (0 without an outbox).
    pub outbox_depth: u64,
    /// Age of the oldest of them, in milliseconds.
    pub outbox_oldest_ms: Option<u64>,
    /// Dead letters: the outbox's plus the handlers' kept in memory.
    pub dead_letters: u64,
    /// Messages the broker dropped for this instance's subscribers (slow consumers), over its
    /// live subscriptions.
    pub slow_consumer_drops: u64,
    /// Failed handler attempts since start.
    pub handler_failures: u64,
    /// The version of `bus`.
    pub version: String,
    /// Milliseconds since the bus was made.
    pub uptime_ms: u64,
    /// When the snapshot was taken, unix milliseconds.
    pub at_ms: u64,
}

/// What the bus tracks for its health snapshot.
#[derive(Debug)]
pub(crate) struct Tracker {
    pub(crate) instance: String,
    started: Instant,
    /// The live subscriptions' counters (dead ones are pruned as they are seen).
    subscriptions: Mutex<Vec<Weak<SubscriptionStats>>>,
    /// Every handler's counters (kept after it stops: failures count since start).
    handlers: Mutex<Vec<std::sync::Arc<crate::handler::HandlerStats>>>,
}

impl Tracker {
    pub(crate) fn new(instance: Option<String>) -> Tracker {
        Tracker {
            instance: instance.unwrap_or_else(default_instance),
            started: Instant::now(),
            subscriptions: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn track(&self, stats: &std::sync::Arc<SubscriptionStats>) {
        let mut subs = lock(&self.subscriptions);
        // Pruned only when the list is full (before it would grow): amortized O(1) per
        // subscribe, where pruning on every subscribe made many subscriptions quadratic.
        if subs.len() == subs.capacity() {
            subs.retain(|w| w.strong_count() > 0);
        }
        subs.push(std::sync::Arc::downgrade(stats));
    }

    pub(crate) fn track_handler(&self, stats: &std::sync::Arc<crate::handler::HandlerStats>) {
        lock(&self.handlers).push(std::sync::Arc::clone(stats));
    }

    pub(crate) fn handler_failures(&self) -> u64 {
        lock(&self.handlers)
            .iter()
            .map(|h| h.failed_attempts())
            .sum()
    }

    /// Messages every handler has taken and not finished (retries waiting included).
    #[cfg(feature = "testing")]
    pub(crate) fn handlers_in_flight(&self) -> u64 {
        lock(&self.handlers).iter().map(|h| h.in_flight()).sum()
    }

    /// Makes the next `n` attempts of the handlers named `name` fail; how many handlers that is.
    #[cfg(feature = "testing")]
    pub(crate) fn fail_next_attempts(&self, name: &str, n: u64) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        lock(&self.handlers)
            .iter()
            .filter(|h| h.faults.name.get().map(String::as_str) == Some(name))
            .map(|h| h.faults.fail_next.store(n, SeqCst))
            .count()
    }

    pub(crate) fn drops(&self) -> u64 {
        lock(&self.subscriptions)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.dropped())
            .sum()
    }

    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// `<host>-<pid>`, made a safe subject token.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let raw = format!("{host}-{}", std::process::id());
    let unsafe_char = |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_');
    raw.replace(unsafe_char, "_")
}
