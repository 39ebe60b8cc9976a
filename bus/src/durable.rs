//! Durable consumers: subscriptions that outlive their process (`docs/design.md`, "Consuming").
//!
//! A durable consumer is known by name. Messages published on its subjects while no puller is
//! attached are kept for it and delivered when one comes back; each delivery must be settled
//! (acknowledged, refused for redelivery, or terminated), and one that is not settled within the
//! ack wait is delivered again. Several pullers on one name share its messages (each goes to
//! one of them): that is how a queue group and a durable name work together.
//!
//! - On NATS it is a JetStream durable pull consumer (explicit ack) on the stream that covers
//!   its subjects: a stream declared with [`BusBuilder::stream`](crate::BusBuilder::stream), or
//!   one found on the server.
//! - On the local broker the same semantics hold within the process: the messages of a durable
//!   are kept in memory while no puller is attached, bounded and counted.
//!
//! The layers: [`Broker::consume`](crate::Broker::consume) gives a [`DurableSubscription`] of
//! raw [`Delivery`]s; a filter with `.durable(name)` makes `T::subscribe` a typed stream of
//! envelopes to settle ([`Envelope::ack`](crate::Envelope::ack), `nak`, `term`) and `T::handle`
//! (or [`HandlerOptions::durable`](crate::HandlerOptions::durable)) a handler that acks after
//! `Ok`, naks with backoff after `Err` and terminates and dead-letters after the last attempt.
//!
//! # Opting in
//!
//! Core NATS stays the default: no broker state unless you ask. Two opt-ins make the path from
//! publisher to handler lose nothing:
//!
//! - [`BusBuilder::stream`](crate::BusBuilder::stream) declares a JetStream stream
//!   ([`StreamConfig`](crate::StreamConfig): limits `max_age`, `max_messages`, `max_bytes`,
//!   `discard`, `replicas`, `storage`, `duplicate_window`), created or updated on every connect,
//!   or used as found with [`StreamConfig::existing`](crate::StreamConfig::existing). For a
//!   subject a stream covers, the outbox's confirmation is the stream's **PubAck** for each
//!   message (pipelined, not one round trip each): a message the stream refuses (limits with
//!   discard new, no stream, a cluster without a leader long enough) is a failed attempt and,
//!   after the last one, a dead letter with the server's reason, never a success. The outbox's
//!   `Nats-Msg-Id` makes a resend idempotent inside the duplicate window.
//! - `filter.durable("name")` on `handle` or `subscribe`: a JetStream durable pull consumer on
//!   the stream that covers the filter (explicit ack, ack wait 30 s, max deliver = the retry
//!   policy's attempts, its backoff between deliveries), resumed by name after a restart; with
//!   `.queue(..)` too, the instances share it. `subscribe` yields envelopes to settle by hand:
//!   `env.ack()`, `env.nak(delay)`, `env.term()`, `env.in_progress()`, `env.delivered()`. The
//!   local broker implements the same semantics in memory (bounded per durable, overflow
//!   counted as drops), and one conformance suite runs the durable cases on both.
//!
//! A durable plugin, whole:
//!
//! ```no_run
//! use bus::{Bus, Message, StreamConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! #[subject("plugin.outbound.<channel>.<instance>")]
//! pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), bus::Error> {
//!     let bus = Bus::builder()
//!         .nats(["nats://127.0.0.1:4222"])
//!         .stream(StreamConfig::new("PLUGIN_OUTBOUND", ["plugin.outbound.>"]))
//!         .connect()
//!         .await?;
//!     // Everything published on plugin.outbound.slack.* while this process was down arrives now.
//!     let filter = Outbound::filter().channel("slack").durable("slack-sender").queue("slack");
//!     let sender = Outbound::handle(&bus, filter, |msg| async move {
//!         send_to_slack(&msg.text).await // Err: redelivered with backoff, dead letter after 3
//!     })
//!     .await?;
//!     until_shutdown().await; // e.g. tokio::signal::ctrl_c()
//!     sender.stop().await; // what is in flight finishes; the rest stays in the stream
//!     bus.close().await?;
//!     Ok(())
//! }
//! # async fn send_to_slack(_: &str) -> Result<(), String> { Ok(()) }
//! # async fn until_shutdown() {}
//! ```
//!
//! # What each mode guarantees
//!
//! | mode | a message survives | delivery | order | a duplicate |
//! |---|---|---|---|---|
//! | core subscribe / handle | the publisher's crash and server outages (outbox), not a subscriber that is down | at most once per subscriber | per publisher and subject | only after an outbox resend whose first copy did arrive: same `Nats-Msg-Id` |
//! | stream + durable handle / subscribe | also a subscriber down, slow or failing, and a server restart with file storage | at least once end to end | per consumer (ordered mode: strictly, retries included; otherwise concurrency 64 interleaves) | a redelivery after a crash or an ack wait: same `Nats-Msg-Id`, `env.delivered() > 1` |
//!
//! The fault tests of the repository (`tests/tests/durable_faults.rs`, on both server lines)
//! count what each case lost, duplicated and reordered: the handler process SIGKILLed
//! mid-stream and restarted, the server SIGKILLed with file storage, a 3-node R3 cluster losing
//! the publisher's node, handlers that fail twice then succeed or always fail, and a stream at
//! its limit with discard new.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream};

use crate::error::{Error, Result};
use crate::raw::{RawMessage, SubscriptionStats};

/// Messages one durable consumer of the local broker keeps (waiting or unsettled) before it
/// drops new ones.
pub const LOCAL_DURABLE_CAPACITY: usize = 100_000;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckKind {
    /// Done: never delivered again.
    Ack,
    /// Not done: deliver it again after this delay (zero: at once).
    Nak(Duration),
    /// Still working on it: the ack wait starts again.
    Progress,
    /// Never deliver it again, although it was not done (the handler gave up).
    Term,
}

/// What a broker gives each [`Delivery`] to settle it with; implemented by brokers, called
/// through [`Acker`].
pub trait AckHandle: Send + Sync + 'static {
    /// Sends this settlement. [`AckKind::Progress`] may be sent any number of times before one
    /// of the others.
    fn send(&self, kind: AckKind) -> BoxFuture<'static, Result<()>>;
}

/// Settles one delivery: [`ack`](Acker::ack), [`nak`](Acker::nak) or [`term`](Acker::term),
/// once; [`in_progress`](Acker::in_progress) as often as needed before.
///
/// An `Acker` dropped without being settled naks its delivery (redelivery at once), so a
/// message taken but not handled (a stopped handler's prefetch) is not held for a whole ack
/// wait.
pub struct Acker {
    handle: Option<Box<dyn AckHandle>>,
    delivered: u32,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("delivered", &self.delivered)
            .field("settled", &self.handle.is_none())
            .finish()
    }
}

impl Acker {
    /// An acker for the `delivered`-th delivery of a message (1 the first time).
    pub fn new(delivered: u32, handle: impl AckHandle) -> Acker {
        Acker {
            handle: Some(Box::new(handle)),
            delivered,
        }
    }

    /// How many times this message was delivered, this delivery included (1 the first time).
    pub fn delivered(&self) -> u32 {
        self.delivered
    }

    async fn settle(mut self, kind: AckKind) -> Result<()> {
        match self.handle.take() {
            Some(h) => h.send(kind).await,
            None => Ok(()),
        }
    }

    /// Done: the message is never delivered again.
    pub async fn ack(self) -> Result<()> {
        self.settle(AckKind::Ack).await
    }

    /// Not done: deliver it again after `delay` (zero: at once), counting one more delivery.
    pub async fn nak(self, delay: Duration) -> Result<()> {
        self.settle(AckKind::Nak(delay)).await
    }

    /// Never deliver it again, although it was not done.
    pub async fn term(self) -> Result<()> {
        self.settle(AckKind::Term).await
    }

    /// Still working on it: the ack wait starts again.
    pub async fn in_progress(&self) -> Result<()> {
        match &self.handle {
            Some(h) => h.send(AckKind::Progress).await,
            None => Ok(()),
        }
    }
}

impl Acker {
    /// The in-progress signal, to await after letting go of a lock on this acker.
    pub(crate) fn progress(&self) -> Option<BoxFuture<'static, Result<()>>> {
        self.handle.as_ref().map(|h| h.send(AckKind::Progress))
    }

    /// Sends `kind` without waiting for it: at once where the broker settles synchronously
    /// (local), else on the runtime if there is one (without, the ack wait brings the message
    /// back).
    pub(crate) fn settle_detached(mut self, kind: AckKind) {
        self.detach(kind);
    }

    fn detach(&mut self, kind: AckKind) {
        let Some(mut sent) = self.handle.take().map(|h| h.send(kind)) else {
            return;
        };
        if (&mut sent).now_or_never().is_none() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(sent);
            }
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.detach(AckKind::Nak(Duration::ZERO));
    }
}

/// One delivery of a durable consumer: the message, and its [`Acker`] (how many times it was
/// delivered, and how to settle it: `delivery.acker.ack().await`).
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The message (its `reply` is `None`: settling goes through the methods).
    pub message: RawMessage,
    /// Settles it.
    pub acker: Acker,
}

impl Delivery {
    /// A delivery of `message` settled through `acker`.
    pub fn new(message: RawMessage, acker: Acker) -> Delivery {
        Delivery { message, acker }
    }

    /// How many times it was delivered, this delivery included (1 the first time).
    pub fn delivered(&self) -> u32 {
        self.acker.delivered
    }
}

/// What a durable consumer is: its name, its subjects, and how deliveries are retried.
///
/// ```
/// use std::time::Duration;
/// use bus::durable::DurableSpec;
///
/// let spec = DurableSpec::new("slack-sender", "plugin.outbound.slack.*")
///     .queue("senders")
///     .ack_wait(Duration::from_secs(10))
///     .max_deliver(5);
/// assert_eq!(spec.max_deliver, Some(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableSpec {
    /// The durable name: one token (letters, digits, `-`, `_`); pullers on the same name share
    /// its messages.
    pub name: String,
    /// The subjects, a NATS pattern (`*`, `>`).
    pub pattern: String,
    /// The queue group, if any: informational (all pullers of one name share its messages
    /// anyway); given with a durable name it means several instances work together.
    pub queue: Option<String>,
    /// How long a delivery may stay unsettled before it is delivered again (default 30 s).
    pub ack_wait: Duration,
    /// Deliveries of one message at most (`None`: unlimited, the default). After the last
    /// one the message is not delivered again, settled or not.
    pub max_deliver: Option<u32>,
    /// Waits before the redeliveries that follow an ack wait expiry: the n-th redelivery waits
    /// `backoff[n-1]` (the last value repeated), replacing `ack_wait`. Empty (the default):
    /// `ack_wait` every time.
    pub backoff: Vec<Duration>,
    /// Deliveries that may be unsettled at once across all pullers (default 1,000); further
    /// messages wait.
    pub max_ack_pending: usize,
    /// Messages a puller asks for ahead of use (default 256): more is faster, but each one
    /// waits its turn while its ack wait runs.
    pub prefetch: usize,
}

/// The default ack wait of a durable consumer.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

impl DurableSpec {
    /// A durable consumer called `name` on `pattern`, with the defaults.
    pub fn new(name: impl Into<String>, pattern: impl Into<String>) -> DurableSpec {
        DurableSpec {
            name: name.into(),
            pattern: pattern.into(),
            queue: None,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: None,
            backoff: Vec::new(),
            max_ack_pending: 1_000,
            prefetch: 256,
        }
    }

    setters! {
        /// Sets the queue group.
        fn queue(queue: impl Into<String>) => queue = Some(queue.into());
        /// Sets the ack wait (at least 1 ms).
        fn ack_wait(wait: Duration) => ack_wait = wait.max(Duration::from_millis(1));
        /// Sets the most deliveries of one message (0 counts as 1).
        fn max_deliver(n: u32) => max_deliver = Some(n.max(1));
        /// Sets the waits before redeliveries after ack wait expiries.
        fn backoff(waits: impl IntoIterator<Item = Duration>) =>
            backoff = waits.into_iter().collect();
        /// Sets the most unsettled deliveries at once (0 counts as 1).
        fn max_ack_pending(n: usize) => max_ack_pending = n.max(1);
        /// Sets how many messages a puller asks for ahead (0 counts as 1).
        fn prefetch(n: usize) => prefetch = n.max(1);
    }

    /// How long the `delivered`-th delivery may stay unsettled.
    pub(crate) fn wait_for(&self, delivered: u32) -> Duration {
        let i = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(self.ack_wait)
    }

    /// Refuses a name, pattern or queue group that is not valid NATS syntax.
    pub fn check(&self) -> Result<()> {
        crate::raw::check_subscription(&self.pattern, self.queue.as_deref())?;
        bus_subject::check_token(&self.name).map_err(|e| Error::Durable {
            name: self.name.clone(),
            reason: format!(
                "invalid durable name: {e}; use one token of letters, digits, `-` and `_`"
            ),
        })
    }
}

/// A durable consumer's deliveries, from [`Broker::consume`](crate::Broker::consume).
///
/// Dropping it detaches the puller; the consumer and its messages stay (by name).
pub struct DurableSubscription {
    /// The durable name.
    pub name: String,
    /// Its subject pattern.
    pub pattern: String,
    /// The deliveries, in the order the broker hands them out (redeliveries included).
    pub deliveries: BoxStream<'static, Delivery>,
    /// Delivered counts, and messages the broker could not keep for the durable (dropped).
    pub stats: Arc<SubscriptionStats>,
}

impl DurableSubscription {
    /// A durable subscription of a broker written outside this crate.
    pub fn new(
        name: impl Into<String>,
        pattern: impl Into<String>,
        deliveries: impl Stream<Item = Delivery> + Send + 'static,
    ) -> DurableSubscription {
        use futures::StreamExt;
        let stats = Arc::new(SubscriptionStats::default());
        let counted = Arc::clone(&stats);
        DurableSubscription {
            name: name.into(),
            pattern: pattern.into(),
            deliveries: deliveries
                .inspect(move |_| counted.add_delivered(1))
                .boxed(),
            stats,
        }
    }
}

impl fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
