//! A harness for your own tests: a [`Bus`] that records everything, knows when nothing is in
//! flight, runs on tokio's paused clock, and injects faults on demand (feature `testing`, for
//! `[dev-dependencies]`).
//!
//! ```toml
//! [dev-dependencies]
//! bus = { version = "0.1", features = ["testing"] }
//! tokio = { version = "1", features = ["macros", "rt", "test-util"] }
//! ```
//!
//! [`TestBus::start`] gives an ordinary [`Bus`] on the embedded broker ([`TestBus::bus`]:
//! handlers, `serve`, requests, durable consumers) plus:
//!
//! - **a record** of every message published, consumed (taken by a handler, a responder or a
//!   subscription), requested and answered, in order, each with its subject, headers and msg
//!   id: [`published`](TestBus::published), [`consumed`](TestBus::consumed),
//!   [`requests`](TestBus::requests), [`records`](TestBus::records);
//!   [`dead_letters`](TestBus::dead_letters) lists what handlers (and the outbox) gave up on;
//! - **quiescence**: [`wait_idle`](TestBus::wait_idle) returns as soon as nothing is in flight
//!   anywhere (no outbox row queued, no message in a subscription's buffer or a handler, no
//!   retry waiting for its backoff, no request unanswered) and fails the test with what is
//!   still in flight after [`idle_timeout`](TestBusBuilder::idle_timeout) of wall time; no
//!   sleeps. [`wait_for`](TestBus::wait_for) waits for one matching record;
//! - **time under the test's control**: with `#[tokio::test(start_paused = true)]`, retry
//!   backoffs, request timeouts, ack waits and nak delays pass without real waiting (tokio
//!   jumps its clock whenever every task waits on a timer);
//! - **faults on demand**, through [`TestBus::broker`] (a [`TestBroker`]): deliver every message
//!   twice with the same msg id, fail the next N publishes or confirmations, disconnect and
//!   reconnect; and [`TestBus::fail_next_attempts`] makes a handler's next attempts fail;
//! - **the same test on NATS**: [`TestBus::nats`] records the same way against a real server.
//!
//! A handler that fails twice and then succeeds, on 100 messages, and one that always fails and
//! dead-letters after 3 attempts, with backoffs of one and two minutes: under the paused clock the
//! whole run takes milliseconds.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use bus::testing::TestBus;
//! use bus::{HandlerOptions, Message, RetryPolicy};
//!
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Message)]
//! #[subject("plugin.inbound.<shop>")]
//! struct OrderPlaced { shop: String, id: u64 }
//!
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! async fn main() -> Result<(), bus::Error> {
//!     let wall = std::time::Instant::now();
//!     let started = tokio::time::Instant::now();
//!     let t = TestBus::start().await?;
//!     let bus = t.bus();
//!     // One minute after the first failure, two after the second.
//!     let slow = RetryPolicy::default()
//!         .max_attempts(3)
//!         .base(Duration::from_secs(60))
//!         .multiplier(2.0)
//!         .cap(Duration::from_secs(600))
//!         .jitter(0.0);
//!
//!     let attempts = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
//!     let seen = Arc::clone(&attempts);
//!     let flaky = bus
//!         .handle_with(OrderPlaced::filter().shop("a"), HandlerOptions::named("flaky").retry(slow), move |o| {
//!             let n = {
//!                 let mut seen = seen.lock().unwrap();
//!                 let n = seen.entry(o.id).or_insert(0);
//!                 *n += 1;
//!                 *n
//!             };
//!             async move { if n < 3 { Err(format!("attempt {n} fails")) } else { Ok(()) } }
//!         })
//!         .await?;
//!     let broken = bus
//!         .handle_with(OrderPlaced::filter().shop("b"), HandlerOptions::named("broken").retry(slow), |_o| async {
//!             Err::<(), _>("always")
//!         })
//!         .await?;
//!
//!     for id in 0..100 {
//!         OrderPlaced { shop: "a".into(), id }.publish(bus).await?;
//!     }
//!     OrderPlaced { shop: "b".into(), id: 0 }.publish(bus).await?;
//!     t.wait_idle().await;
//!
//!     assert_eq!(t.published::<OrderPlaced>().len(), 101);
//!     assert_eq!(t.consumed::<OrderPlaced>().len(), 101);
//!     assert_eq!(flaky.stats().handled(), 100);
//!     assert_eq!(flaky.stats().failed_attempts(), 200);
//!     assert_eq!(broken.stats().failed_attempts(), 3);
//!     let dead = t.dead_letters().await?;
//!     assert_eq!(dead.len(), 1);
//!     assert_eq!((dead[0].attempts, dead[0].origin.as_str()), (3, "handler:broken"));
//!     // Three minutes of backoff on tokio's clock, milliseconds on the wall.
//!     assert!(started.elapsed() >= Duration::from_secs(180));
//!     assert!(wall.elapsed() < Duration::from_secs(1), "{:?}", wall.elapsed());
//!     Ok(())
//! }
//! ```
//!
//! # The outbox, and the paused clock
//!
//! By default the harness's bus has no outbox (publishes go straight to the broker, as
//! `Bus::local()`'s do). [`TestBusBuilder::outbox`] adds one in a temporary directory, sent
//! through the recording broker like NATS's: `wait_idle` then also waits for its queue to be
//! empty, and [`TestBroker::fail_publishes`] and [`TestBroker::fail_confirms`] exercise its
//! retries and dead letters. Its SQLite work runs on a thread of its own, which tokio cannot
//! see: under a paused clock, tokio jumps its clock while a task waits for that thread, so a
//! short request timeout or ack wait may expire early. Keep those generous in a paused test
//! with an outbox, or run it on the real clock (it is still sleep-free).
//!
//! # On NATS
//!
//! [`TestBus::nats`] runs the same bus, record and faults on a real nats-server (with an outbox
//! in a temporary directory, as every NATS bus has; [`TestBusBuilder::no_outbox`] goes without).
//! `wait_idle` first confirms with the server (a round trip, after which what the server had
//! received is in the subscriptions' buffers), then counts as on the embedded broker. Not
//! counted there: messages of other processes still on their way, and a JetStream consumer's
//! unacknowledged messages (a nak's redelivery is waited for only while its handler holds it).
//! A paused clock does not apply to the network.

mod broker;
mod idle;
mod record;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use self::broker::TestBroker;
pub use self::idle::InFlight;
pub use self::record::{Kind, Record, Recorded};
use crate::broker::Broker;
use crate::builder::BusBuilder;
use crate::dead_letter::DeadLetter;
use crate::error::Result;
use crate::handle::Bus;
use crate::message::Message;

/// The outbox file's name in the harness's temporary directory.
#[cfg_attr(not(feature = "outbox"), allow(dead_code))]
const OUTBOX_FILE: &str = "outbox.sqlite3";

/// How long [`TestBus::wait_idle`] waits, in wall time, before it fails the test.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Bus`] for tests, with a record of everything that happened on it (see the
/// [module](self)).
#[derive(Debug)]
pub struct TestBus {
    bus: Bus,
    broker: Arc<TestBroker>,
    idle_timeout: Duration,
    #[cfg(feature = "nats")]
    nats: Option<Arc<crate::nats::NatsBroker>>,
    /// The outbox's directory, removed when the harness is dropped.
    _dir: Option<tempfile::TempDir>,
}

impl TestBus {
    /// A harness on the embedded broker, without an outbox.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize, bus::Message)]
    /// #[subject("agent.events.<agent>")]
    /// struct Heartbeat { agent: String, seq: u64 }
    ///
    /// let t = bus::testing::TestBus::start().await?;
    /// Heartbeat { agent: "planner".into(), seq: 1 }.publish(t.bus()).await?;
    /// let sent = t.published::<Heartbeat>();
    /// assert_eq!(sent[0].record.subject, "agent.events.planner");
    /// assert_eq!(sent[0].seq, 1);
    /// # Ok(()) }
    /// ```
    pub async fn start() -> Result<TestBus> {
        TestBus::builder().start().await
    }

    /// A harness on the nats-server at `url`, with an outbox in a temporary directory; declare
    /// streams with [`TestBusBuilder::configure`].
    #[cfg(feature = "nats")]
    pub async fn nats(url: &str) -> Result<TestBus> {
        TestBus::builder().nats(url).start().await
    }

    /// A builder, to add an outbox, use NATS or set the bus's options.
    pub fn builder() -> TestBusBuilder {
        TestBusBuilder::default()
    }

    /// The bus: publish, subscribe, handle, serve and request on it as usual.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The recording broker under the bus: faults on demand.
    pub fn broker(&self) -> &TestBroker {
        &self.broker
    }

    /// The outbox's file, in its temporary directory (with [`TestBusBuilder::outbox`]).
    pub fn outbox_path(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join(OUTBOX_FILE))
    }

    /// Every entry of the record, in order.
    pub fn records(&self) -> Vec<Record> {
        self.broker.records()
    }

    /// The `M`s published so far, in order (once per publish, even when delivered twice).
    pub fn published<M: Message>(&self) -> Vec<Recorded<M>> {
        self.broker.recorder().of(Kind::Published)
    }

    /// The `M`s taken by subscribers so far (handlers, responders, subscriptions), in order:
    /// once per delivery, so a message delivered to two subscribers, or twice, counts twice.
    pub fn consumed<M: Message>(&self) -> Vec<Recorded<M>> {
        self.broker.recorder().of(Kind::Consumed)
    }

    /// The requests of type `M` sent so far, in order.
    pub fn requests<M: Message>(&self) -> Vec<Recorded<M>> {
        self.broker.recorder().of(Kind::Request)
    }

    /// The replies sent so far (by responders of this bus), in order.
    pub fn replies(&self) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.kind == Kind::Reply)
            .collect()
    }

    /// The dead letters: messages handlers gave up on (and, with an outbox, messages it could
    /// not send), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.bus.dead_letters().list().await
    }

    /// What is in flight now (all zero: idle).
    pub async fn in_flight(&self) -> InFlight {
        #[allow(unused_mut)]
        let mut outbox_queued = 0;
        #[cfg(feature = "outbox")]
        if let Ok(Some(stats)) = self.bus.outbox_stats().await {
            outbox_queued = stats.depth;
        }
        InFlight {
            outbox_queued,
            buffered: self.broker.buffered(),
            durables: self.broker.durables_unsettled(),
            handlers: self.bus.handlers_in_flight(),
            open_requests: self.broker.open_requests(),
        }
    }

    /// Waits until nothing is in flight anywhere (see [`InFlight`]); panics with what still is
    /// after the [idle timeout](TestBusBuilder::idle_timeout) of wall time.
    pub async fn wait_idle(&self) {
        if let Err(busy) = self.try_wait_idle(self.idle_timeout).await {
            panic!(
                "TestBus::wait_idle: not idle after {:?}: {busy}",
                self.idle_timeout
            );
        }
    }

    /// [`wait_idle`](TestBus::wait_idle) that returns what was in flight after `timeout` (wall
    /// time) instead of panicking.
    pub async fn try_wait_idle(&self, timeout: Duration) -> std::result::Result<(), InFlight> {
        #[cfg(feature = "nats")]
        if self.nats.is_some() {
            // What was published before is then at the server and pushed to its subscribers.
            let _ = self.broker.confirm().await;
        }
        idle::wait(timeout, || self.in_flight()).await
    }

    /// Waits for a record of an `M` for which `matches` holds (published, consumed or
    /// requested: see [`Recorded::record`]'s `kind`) and returns it; panics after the
    /// [idle timeout](TestBusBuilder::idle_timeout) of wall time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// use bus::testing::{Kind, TestBus};
    /// #[derive(serde::Serialize, serde::Deserialize, bus::Message)]
    /// #[subject("agent.events.<agent>")]
    /// struct Step { agent: String, seq: u64 }
    ///
    /// let t = TestBus::start().await?;
    /// let bus = t.bus().clone();
    /// tokio::spawn(async move { Step { agent: "a".into(), seq: 7 }.publish(&bus).await });
    /// let step = t.wait_for::<Step>(|s| s.seq == 7).await;
    /// assert_eq!((step.record.kind, step.record.subject.as_str()), (Kind::Published, "agent.events.a"));
    /// # Ok(()) }
    /// ```
    pub async fn wait_for<M: Message>(
        &self,
        matches: impl Fn(&Recorded<M>) -> bool,
    ) -> Recorded<M> {
        let deadline = std::time::Instant::now() + self.idle_timeout;
        loop {
            let poked = crate::settled::signal().notified();
            tokio::pin!(poked);
            poked.as_mut().enable();
            let found = self.records().into_iter().find_map(|record| {
                let body = record.decode::<M>()?;
                let r = Recorded { body, record };
                matches(&r).then_some(r)
            });
            if let Some(found) = found {
                return found;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "TestBus::wait_for: no matching {} after {:?}",
                    M::TYPE_NAME,
                    self.idle_timeout
                );
            }
            tokio::select! {
                _ = poked => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Makes the next `n` attempts of the handler named `name` fail (each handler of that
    /// name, if several): the handler runs, and its attempt counts as failed whatever it
    /// returned, as if it had failed after doing its work; the message is retried or
    /// dead-lettered by its policy. A handler is named by [`HandlerOptions::named`], else after
    /// its message type ([`fail_next_attempts_of`](TestBus::fail_next_attempts_of)). Panics
    /// when no handler has that name.
    ///
    /// [`HandlerOptions::named`]: crate::HandlerOptions::named
    pub fn fail_next_attempts(&self, name: &str, n: u64) {
        let handlers = self.bus.fail_next_attempts(name, n);
        assert!(
            handlers > 0,
            "TestBus::fail_next_attempts: no handler named {name:?}"
        );
    }

    /// [`fail_next_attempts`](TestBus::fail_next_attempts) of the handler of `M` (one started
    /// without a name of its own).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), bus::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize, bus::Message)]
    /// #[subject("plugin.inbound.<channel>")]
    /// struct Inbound { channel: String }
    ///
    /// let t = bus::testing::TestBus::start().await?;
    /// let h = Inbound::handle(t.bus(), Inbound::filter(), |_m| async { Ok::<_, bus::Error>(()) }).await?;
    /// t.fail_next_attempts_of::<Inbound>(1);
    /// Inbound { channel: "a".into() }.publish(t.bus()).await?;
    /// t.wait_idle().await;
    /// assert_eq!((h.stats().failed_attempts(), h.stats().handled()), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn fail_next_attempts_of<M: Message>(&self, n: u64) {
        self.fail_next_attempts(M::TYPE_NAME, n);
    }

    /// Waits until every stream declared with [`BusBuilder::stream`] is set up (on NATS; at once
    /// on the embedded broker).
    pub async fn streams_ready(&self, timeout: Duration) -> Result<()> {
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.nats {
            return nats.streams_ready(timeout).await;
        }
        let _ = timeout;
        Ok(())
    }
}

/// Builds a [`TestBus`]: [`TestBus::builder`].
#[derive(Debug)]
pub struct TestBusBuilder {
    bus: BusBuilder,
    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    outbox: bool,
    idle_timeout: Duration,
}

impl Default for TestBusBuilder {
    fn default() -> Self {
        TestBusBuilder {
            bus: Bus::builder(),
            outbox: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl TestBusBuilder {
    /// Runs on the nats-server at `url` (with an outbox).
    #[cfg(feature = "nats")]
    pub fn nats(mut self, url: &str) -> Self {
        self.bus = self.bus.nats([url]);
        self.outbox = true;
        self
    }

    setters! {
        /// Gives the bus an outbox, in a temporary directory removed with the harness (see the
        /// [module](self) about the paused clock).
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), bus::Error> {
        /// let t = bus::testing::TestBus::builder().outbox().start().await?;
        /// t.broker().fail_confirms(1); // the first batch is sent again
        /// t.bus().publish_raw(bus::RawMessage::new("a.b", "x")).await?;
        /// t.wait_idle().await;
        /// assert!(t.dead_letters().await?.is_empty());
        /// # Ok(()) }
        /// ```
        #[cfg(feature = "outbox")]
        fn outbox() => outbox = true;

        /// No outbox (the default on the embedded broker; on NATS, publishes then go straight to
        /// the server).
        fn no_outbox() => outbox = false;
        /// How long [`TestBus::wait_idle`] and [`TestBus::wait_for`] wait, in wall time, before they
        /// fail the test (default [`DEFAULT_IDLE_TIMEOUT`]).
        fn idle_timeout(timeout: Duration) => idle_timeout = timeout;
    }

    /// Sets anything else on the underlying [`BusBuilder`]: streams, request timeout, wire
    /// headers, the outbox's retry policy, …
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// use std::time::Duration;
    /// let t = bus::testing::TestBus::builder()
    ///     .configure(|b| b.request_timeout(Duration::from_millis(100)))
    ///     .start()
    ///     .await?;
    /// # drop(t);
    /// # Ok(()) }
    /// ```
    pub fn configure(mut self, f: impl FnOnce(BusBuilder) -> BusBuilder) -> Self {
        self.bus = f(self.bus);
        self
    }

    /// Connects the bus and starts recording.
    pub async fn start(self) -> Result<TestBus> {
        #[cfg(feature = "outbox")]
        let (builder, dir) = if self.outbox {
            let made = tempfile::tempdir().map_err(|e| {
                crate::Error::Config(format!("cannot make the outbox's temporary directory: {e}"))
            })?;
            let path = made.path().join(OUTBOX_FILE);
            (self.bus.outbox_path(path), Some(made))
        } else {
            (self.bus.no_outbox(), None)
        };
        #[cfg(not(feature = "outbox"))]
        let (builder, dir) = (self.bus, None);
        let mut wrapped = None;
        let mut inner = None;
        let bus = builder
            .connect_through(|broker: Arc<dyn Broker>| {
                inner = Some(Arc::clone(&broker));
                let test = Arc::new(TestBroker::new(broker));
                wrapped = Some(Arc::clone(&test));
                test
            })
            .await?;
        let broker = wrapped.expect("connect_through wraps the broker");
        #[cfg(feature = "nats")]
        let nats = inner.and_then(|b| {
            let any: Arc<dyn std::any::Any + Send + Sync> = b;
            any.downcast::<crate::nats::NatsBroker>().ok()
        });
        #[cfg(not(feature = "nats"))]
        drop(inner);
        Ok(TestBus {
            bus,
            broker,
            idle_timeout: self.idle_timeout,
            #[cfg(feature = "nats")]
            nats,
            _dir: dir,
        })
    }
}
