//! `RecordingBroker`: a third, independent implementation of [`Broker`], written only against
//! `bus`'s public API, the way a user would plug in a backend of their own. It keeps a copy of
//! every message it accepted, so tests can see exactly what a [`Bus`](bus::Bus) sent.
//!
//! Running the conformance suite on it proves that the trait's contract can be met from outside
//! the crate (with [`check_publish`], [`check_subscription`] and [`RawSubscription::new`]), and
//! that the suite does not depend on either built-in broker's quirks.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bus::broker::{check_publish, check_subscription, DropCounter};
use bus::{Broker, ConnectionState, Error, RawMessage, RawSubscription, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::{mpsc, oneshot, watch};

/// Reply subjects of this broker's requests start with this.
const INBOX: &str = "_INBOX.recording.";

/// A broker that delivers in-process, like NATS (wildcards, queue groups, request/reply, slow
/// consumers counted), and records every message it accepted.
#[derive(Debug, Clone)]
pub struct RecordingBroker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    max_payload: usize,
    subs: Mutex<Vec<Entry>>,
    published: Mutex<Vec<RawMessage>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<RawMessage>>>,
    next: AtomicU64,
    state: watch::Sender<ConnectionState>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    pattern: String,
    queue: Option<String>,
    tx: mpsc::Sender<RawMessage>,
    drops: DropCounter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RecordingBroker {
    /// A broker whose subscriptions buffer `capacity` messages, with NATS's default max payload.
    pub fn new(capacity: usize) -> Self {
        RecordingBroker {
            shared: Arc::new(Shared {
                capacity: capacity.max(1),
                max_payload: 1024 * 1024,
                subs: Mutex::new(Vec::new()),
                published: Mutex::new(Vec::new()),
                pending: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                state: watch::Sender::new(ConnectionState::Connected),
            }),
        }
    }

    /// Every message accepted so far (replies included), in order.
    pub fn published(&self) -> Vec<RawMessage> {
        lock(&self.shared.published).clone()
    }

    /// Live subscriptions.
    pub fn subscription_count(&self) -> usize {
        lock(&self.shared.subs).len()
    }

    /// Delivers `msg` to its reply waiter or its subscribers; returns how many got it.
    fn deliver(&self, msg: RawMessage) -> usize {
        if let Some(n) = msg
            .subject
            .strip_prefix(INBOX)
            .and_then(|n| n.parse::<u64>().ok())
        {
            if let Some(waiter) = lock(&self.shared.pending).remove(&n) {
                let _ = waiter.send(msg);
                return 1;
            }
        }
        let subs = lock(&self.shared.subs);
        let matching: Vec<&Entry> = subs
            .iter()
            .filter(|e| bus_subject::matches(&e.pattern, &msg.subject))
            .collect();
        // Plain subscribers all get it; each queue group once, to a member picked in turn.
        let mut targets: Vec<&Entry> = matching
            .iter()
            .copied()
            .filter(|e| e.queue.is_none())
            .collect();
        let mut groups: Vec<&str> = matching.iter().filter_map(|e| e.queue.as_deref()).collect();
        groups.sort_unstable();
        groups.dedup();
        let turn = self.shared.next.fetch_add(1, Ordering::Relaxed) as usize;
        for group in groups {
            let members: Vec<&Entry> = matching
                .iter()
                .copied()
                .filter(|e| e.queue.as_deref() == Some(group))
                .collect();
            targets.push(members[turn % members.len()]);
        }
        for entry in &targets {
            match entry.tx.try_send(msg.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => entry.drops.add(1),
                // The subscriber is gone; its entry is removed when its stream drops.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        targets.len()
    }

    fn publish_now(&self, msg: RawMessage) -> Result<usize> {
        check_publish(&msg, self.shared.max_payload)?;
        lock(&self.shared.published).push(msg.clone());
        Ok(self.deliver(msg))
    }
}

impl Broker for RecordingBroker {
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        futures::future::ready(self.publish_now(msg).map(drop)).boxed()
    }

    /// Delivery is synchronous: everything published before is already delivered.
    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        let made = check_subscription(pattern, queue).map(|()| {
            let (tx, rx) = mpsc::channel(self.shared.capacity);
            let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
            let stream = RecordingStream {
                rx,
                id,
                shared: Arc::clone(&self.shared),
            };
            let (sub, drops) = RawSubscription::new(pattern, stream);
            lock(&self.shared.subs).push(Entry {
                id,
                pattern: pattern.to_owned(),
                queue: queue.map(str::to_owned),
                tx,
                drops,
            });
            sub
        });
        futures::future::ready(made).boxed()
    }

    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        async move {
            let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.shared.pending).insert(n, tx);
            let subject = msg.subject.clone();
            let sent = self.publish_now(msg.with_reply(format!("{INBOX}{n}")));
            let outcome = match sent {
                Ok(0) => Err(Error::NoResponders {
                    subject: subject.clone(),
                }),
                Ok(_) => match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(_)) => Err(Error::Closed),
                    Err(_) => Err(Error::Timeout { subject, timeout }),
                },
                Err(e) => Err(e),
            };
            lock(&self.shared.pending).remove(&n);
            outcome
        }
        .boxed()
    }

    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    fn kind(&self) -> &'static str {
        "recording"
    }
}

/// A subscription's messages; dropping it unsubscribes.
struct RecordingStream {
    rx: mpsc::Receiver<RawMessage>,
    id: u64,
    shared: Arc<Shared>,
}

impl Stream for RecordingStream {
    type Item = RawMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawMessage>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for RecordingStream {
    fn drop(&mut self) {
        lock(&self.shared.subs).retain(|e| e.id != self.id);
    }
}
