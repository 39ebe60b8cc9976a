//! The latency scenarios: publish -> delivery at a steady rate, per path, against raw
//! async-nats in the same run; and the first message after `connect()`.
//!
//! How a latency is taken: one process; the publisher stamps `Instant::now()` into a table by
//! sequence number right before it calls publish, the message carries its sequence number in
//! its text (same 128-byte body as every scenario), and the receiver stamps its arrival by that
//! number after decoding. p50, p99 and max come from the sorted samples of a round.
//!
//! The steady rate: a `tokio::time::interval` with `MissedTickBehavior::Delay` (a late tick
//! moves the schedule; there is never a catch-up burst). tokio's timer has 1 ms resolution, so
//! the period is `max(1 ms, 1 / rate)` and each tick starts `rate × period` publishes: 500 msg/s
//! is one message every 2 ms, 5,000 msg/s five every 1 ms. Publishes are not awaited one by
//! one: each is a future of its own, polled beside the ticks, so a slow publish (an fsync with
//! `Durability::PowerLoss`) delays only itself, as it would for a producer with many tasks.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bus::{Bus, ConnectionState};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use crate::msgs::{self, Outbound, CHANNEL, INSTANCE, PATTERN, SUBJECT, WARM};
use crate::runner::{fail, within, BenchResult, Rounds, Sample, SLACK, WAIT};
use crate::scenarios::jetstream::{durable_buses, DURABLE, STREAM};
use crate::scenarios::nats::{RawRequestShape, RawRequester};
use crate::sdk::BusRequester;

/// How long the first-message rows leave a fresh connection idle before publishing.
pub const IDLE_AFTER_CONNECT: Duration = Duration::from_millis(200);

/// The digits of the sequence number at the start of a message's text.
const SEQ_DIGITS: usize = 10;

/// Which bus path a steady-rate row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `.no_outbox()`: core NATS.
    Core,
    /// The outbox with the default durability.
    Outbox,
    /// The outbox with `Durability::PowerLoss`.
    PowerLoss,
    /// The outbox into a declared stream, received by a durable handler that acks.
    Durable,
    /// Typed request/reply (`Bus::serve` / `request`).
    Request,
}

impl Path {
    /// Every path, in report order, with its name in the scenario names.
    pub const ALL: [(Path, &'static str); 5] = [
        (Path::Core, "core"),
        (Path::Outbox, "outbox"),
        (Path::PowerLoss, "powerloss"),
        (Path::Durable, "durable"),
        (Path::Request, "request"),
    ];
}

/// A steady-rate latency row: the bus `path` against raw async-nats (core pub/sub, or raw
/// request/reply for [`Path::Request`]) at `rate` msg/s.
pub struct Steady {
    /// The server URL (JetStream on for [`Path::Durable`]).
    pub url: String,
    /// The bus side.
    pub path: Path,
    /// Messages per second.
    pub rate: u32,
}

impl Rounds for Steady {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        if self.path == Path::Request {
            let raw = RawRequester::start(&self.url, RawRequestShape::default()).await?;
            let lat = steady(n, self.rate, |i| {
                let raw = &raw;
                async move { raw.once(i).await.map(Some) }
            })
            .await?;
            return Ok(Sample::latencies(lat.requests));
        }
        raw_pubsub(&self.url, n, self.rate).await
    }

    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        match self.path {
            Path::Request => {
                let bus = BusRequester::start(&self.url).await?;
                let lat = steady(n, self.rate, |_| {
                    let bus = &bus;
                    async move { bus.once().await.map(Some) }
                })
                .await?;
                Ok(Sample::latencies(lat.requests))
            }
            Path::Durable => bus_durable(&self.url, n, self.rate).await,
            path => bus_pubsub(&self.url, path, n, self.rate).await,
        }
    }
}

/// `latency_first_message`: `n` fresh publishers per round, each connected, left idle for
/// [`IDLE_AFTER_CONNECT`] and then publishing one message, timed from that publish to its
/// delivery at a subscriber on another, long-lived connection. The bus side has its outbox on
/// (the default): the first message goes through the outbox drainer, which waits for the
/// connection. Raw: `async_nats::connect`, the same wait, one `publish`.
pub struct FirstMessage {
    /// The server URL.
    pub url: String,
}

impl Rounds for FirstMessage {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        let (_watcher, mut rx) = Receiver::raw(&self.url, n).await?;
        let mut lat = Vec::with_capacity(n);
        for seq in 0..n {
            let client = async_nats::connect(self.url.as_str()).await?;
            tokio::time::sleep(IDLE_AFTER_CONNECT).await;
            let payload = bytes::Bytes::from(rmp_serde::to_vec_named(&numbered(seq))?);
            let t = Instant::now();
            client.publish(SUBJECT, payload).await?;
            lat.push(rx.wait_for(seq, t).await?);
        }
        Ok(Sample::latencies(lat))
    }

    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        let (_watcher, mut rx) = Receiver::bus(&self.url, n).await?;
        let mut lat = Vec::with_capacity(n);
        for seq in 0..n {
            let dir = tempfile::tempdir()?;
            let bus = Bus::builder()
                .nats([self.url.as_str()])
                .outbox_path(dir.path().join("outbox.sqlite3"))
                .connect()
                .await?;
            tokio::time::sleep(IDLE_AFTER_CONNECT).await;
            let msg = numbered(seq);
            let t = Instant::now();
            msg.publish(&bus).await?;
            lat.push(rx.wait_for(seq, t).await?);
            bus.flush().await?;
        }
        Ok(Sample::latencies(lat))
    }
}

/// An [`Outbound`] of the measured size whose text starts with `seq`.
fn numbered(seq: usize) -> Outbound {
    let mut msg = msgs::outbound(INSTANCE);
    let digits = format!("{seq:0SEQ_DIGITS$}");
    msg.text.replace_range(..SEQ_DIGITS, &digits);
    msg
}

/// The sequence number a measured message carries.
fn seq_of(msg: &Outbound) -> Option<usize> {
    msg.text.get(..SEQ_DIGITS)?.parse().ok()
}

/// Arrival times by sequence number, and a wake-up for whoever waits for them.
#[derive(Default)]
struct Arrivals {
    at: Mutex<Vec<Option<Instant>>>,
    /// How many of `at` are set.
    received: AtomicUsize,
    warm: Notify,
    more: Notify,
}

impl Arrivals {
    fn new(n: usize) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            at: Mutex::new(vec![None; n]),
            ..Arrivals::default()
        })
    }

    /// Records one received message (a probe only wakes the prober).
    fn record(&self, msg: &Outbound) {
        let now = Instant::now();
        if msg.instance == WARM {
            self.warm.notify_one();
            return;
        }
        if let Some(seq) = seq_of(msg) {
            let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot @ None) = at.get_mut(seq) {
                *slot = Some(now);
                self.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.more.notify_one();
    }

    fn count(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    fn get(&self, seq: usize) -> Option<Instant> {
        self.at.lock().unwrap_or_else(PoisonError::into_inner)[seq]
    }

    /// Waits until all `n` arrived, then the latencies against `sent`.
    async fn all(&self, sent: &[Instant]) -> BenchResult<Vec<Duration>> {
        within(WAIT, "the measured messages", async {
            while self.count() < sent.len() {
                self.more.notified().await;
            }
        })
        .await?;
        let at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(sent
            .iter()
            .zip(at.iter())
            .map(|(s, a)| a.map_or(Duration::ZERO, |a| a.saturating_duration_since(*s)))
            .collect())
    }
}

/// The receiving side of a pub/sub row: keeps its connection (or bus) and task alive.
struct Receiver {
    arrivals: Arc<Arrivals>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// A raw async-nats subscriber on its own connection, decoding each message.
    async fn raw(url: &str, n: usize) -> BenchResult<(async_nats::Client, Receiver)> {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(n + SLACK)
            .connect(url)
            .await?;
        let mut sub = client.subscribe(PATTERN).await?;
        client.flush().await?;
        let arrivals = Arrivals::new(n);
        let a = Arc::clone(&arrivals);
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(msg) = rmp_serde::from_slice::<Outbound>(&m.payload) {
                    a.record(&msg);
                }
            }
        });
        Ok((client, Receiver { arrivals, task }))
    }

    /// A typed subscription on a bus of its own (outbox off).
    async fn bus(url: &str, n: usize) -> BenchResult<(Bus, Receiver)> {
        let bus = Bus::builder()
            .nats([url])
            .no_outbox()
            .subscription_capacity(n + SLACK)
            .connect()
            .await?;
        let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel(CHANNEL)).await?;
        let arrivals = Arrivals::new(n);
        let a = Arc::clone(&arrivals);
        let task = tokio::spawn(async move {
            while let Some(Ok(env)) = sub.next().await {
                a.record(&env);
            }
        });
        Ok((bus, Receiver { arrivals, task }))
    }

    /// Waits for message `seq`, published at `t`: its latency.
    async fn wait_for(&mut self, seq: usize, t: Instant) -> BenchResult<Duration> {
        within(WAIT, "the first message", async {
            loop {
                if let Some(at) = self.arrivals.get(seq) {
                    return at.saturating_duration_since(t);
                }
                self.arrivals.more.notified().await;
            }
        })
        .await
    }

    /// Sends probes with `probe` until one arrives, so the subscription is live and the
    /// publisher warmed up (connected, its outbox draining) before the clock starts.
    async fn warm<F, Fut>(&self, mut probe: F) -> BenchResult<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = BenchResult<()>>,
    {
        for _ in 0..200 {
            probe().await?;
            if tokio::time::timeout(Duration::from_millis(50), self.arrivals.warm.notified())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(fail("the receiver never saw a probe"))
    }
}

/// What a steady-rate run gives back: when each message was published, and the latencies the
/// publishes measured themselves (requests).
struct Run {
    sent: Vec<Instant>,
    requests: Vec<Duration>,
}

/// Calls `publish(seq)` for `n` sequence numbers at `rate` per second (see the module docs),
/// each stamped right before, all in flight at once as they come.
async fn steady<F, Fut>(n: usize, rate: u32, mut publish: F) -> BenchResult<Run>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = BenchResult<Option<Duration>>>,
{
    let rate = rate.max(1);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate)).max(Duration::from_millis(1));
    let per_tick = ((f64::from(rate) * period.as_secs_f64()).round() as usize).max(1);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut run = Run {
        sent: Vec::with_capacity(n),
        requests: Vec::with_capacity(n),
    };
    let mut in_flight = FuturesUnordered::new();
    while run.sent.len() < n || !in_flight.is_empty() {
        tokio::select! {
            _ = ticks.tick(), if run.sent.len() < n => {
                for _ in 0..per_tick.min(n - run.sent.len()) {
                    let seq = run.sent.len();
                    run.sent.push(Instant::now());
                    in_flight.push(publish(seq));
                }
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(lat) = r? {
                    run.requests.push(lat);
                }
            }
        }
    }
    Ok(run)
}

/// Raw async-nats: a publishing connection, a subscribing one, each message encoded with
/// `rmp_serde::to_vec_named` and decoded at the subscriber.
async fn raw_pubsub(url: &str, n: usize, rate: u32) -> BenchResult<Sample> {
    let (_sub_client, rx) = Receiver::raw(url, n).await?;
    let client = async_nats::connect(url).await?;
    let probe = bytes::Bytes::from(rmp_serde::to_vec_named(&msgs::outbound(WARM))?);
    rx.warm(|| {
        let (client, probe) = (&client, probe.clone());
        async move { Ok(client.publish(msgs::WARM_SUBJECT, probe).await?) }
    })
    .await?;
    let run = steady(n, rate, |seq| {
        let client = &client;
        async move {
            let payload = bytes::Bytes::from(rmp_serde::to_vec_named(&numbered(seq))?);
            client.publish(SUBJECT, payload).await?;
            Ok(None)
        }
    })
    .await?;
    Ok(Sample::latencies(rx.arrivals.all(&run.sent).await?))
}

/// The typed bus: a publishing bus on `path` (core, outbox, outbox with `PowerLoss`), a
/// subscribing bus with a typed subscription.
async fn bus_pubsub(url: &str, path: Path, n: usize, rate: u32) -> BenchResult<Sample> {
    let (_sub_bus, rx) = Receiver::bus(url, n).await?;
    let dir = tempfile::tempdir()?;
    let publisher = publisher(url, path, dir.path()).await?;
    publish_measured(&publisher, &rx, n, rate).await
}

/// The publishing bus of a pub/sub row on `path` (core, outbox, outbox with `PowerLoss`), its
/// outbox file in `dir`.
async fn publisher(url: &str, path: Path, dir: &std::path::Path) -> BenchResult<Bus> {
    let builder = Bus::builder().nats([url]);
    Ok(match path {
        Path::Core => builder.no_outbox(),
        Path::PowerLoss => builder
            .outbox_path(dir.join("outbox.sqlite3"))
            .durability(bus::Durability::PowerLoss),
        _ => builder.outbox_path(dir.join("outbox.sqlite3")),
    }
    .connect()
    .await?)
}

/// Probes through `publisher` until `rx` sees one, then publishes `n` numbered messages at
/// `rate` and reads their latencies.
async fn publish_measured(
    publisher: &Bus,
    rx: &Receiver,
    n: usize,
    rate: u32,
) -> BenchResult<Sample> {
    let (_, lat) = publish_timed(publisher, rx, n, rate, || {}).await?;
    Ok(Sample::latencies(lat))
}

/// [`publish_measured`]'s run: when each message was published and its latency; `before` is
/// called once the publisher is warm, right before the first measured publish.
async fn publish_timed(
    publisher: &Bus,
    rx: &Receiver,
    n: usize,
    rate: u32,
    before: impl FnOnce(),
) -> BenchResult<(Vec<Instant>, Vec<Duration>)> {
    let mut state = publisher.watch_state();
    within(
        WAIT,
        "the publisher to connect",
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await??;
    let probe = msgs::outbound(WARM);
    rx.warm(|| async { Ok(probe.publish(publisher).await?) })
        .await?;
    before();
    let run = steady(n, rate, |seq| async move {
        let msg = numbered(seq);
        msg.publish(publisher).await?;
        Ok(None)
    })
    .await?;
    let lat = rx.arrivals.all(&run.sent).await?;
    publisher.flush().await?;
    Ok((run.sent, lat))
}

/// The durable path: a publishing bus with its outbox on and the stream declared (each message
/// confirmed by its PubAck), a consuming bus whose durable handler (default options: ack after
/// `Ok`) stamps each arrival; as `jetstream_durable`'s bus side, at a steady rate.
async fn bus_durable(url: &str, n: usize, rate: u32) -> BenchResult<Sample> {
    let (publisher, consumer, raw, _dir) = durable_buses(url, false).await?;
    let arrivals = Arrivals::new(n);
    let a = Arc::clone(&arrivals);
    let handler = Outbound::handle(
        &consumer,
        Outbound::filter().channel(CHANNEL).durable(DURABLE),
        move |env| {
            let a = Arc::clone(&a);
            async move {
                a.record(&env);
                Ok::<(), String>(())
            }
        },
    )
    .await?;
    let rx = Receiver {
        arrivals,
        task: tokio::spawn(async {}),
    };
    let sample = publish_measured(&publisher, &rx, n, rate).await;
    handler.stop().await;
    let _ = raw.delete_stream(STREAM).await;
    sample
}

/// `diag_outbox_steps`: `latency_outbox_<rate>`'s bus side split into steps by the outbox's
/// own trace points (see [`crate::probe`]): publish -> writer thread (the group commit
/// starts), the commit, -> drainer (it takes the rows), the send, and sent -> arrived. The
/// headline is sent -> arrived against raw async-nats's publish -> arrived in the same round:
/// how the part after the outbox compares with a raw publish. Each round prints every step's
/// p50 / p99 on stderr.
pub struct OutboxSteps {
    /// The server URL.
    pub url: String,
    /// Messages per second.
    pub rate: u32,
}

impl Rounds for OutboxSteps {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_pubsub(&self.url, n, self.rate).await
    }

    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        let (_sub_bus, rx) = Receiver::bus(&self.url, n).await?;
        let dir = tempfile::tempdir()?;
        let publisher = publisher(&self.url, Path::Outbox, dir.path()).await?;
        let timed = publish_timed(&publisher, &rx, n, self.rate, crate::probe::start).await;
        let stamps = crate::probe::stop();
        let (sent, lat) = timed?;
        let steps = Steps::of(&sent, &lat, &stamps)?;
        eprintln!("{steps}");
        Ok(Sample::latencies(
            steps.0.last().map(|s| s.1.clone()).unwrap_or_default(),
        ))
    }
}

/// The steps of each message that passed every trace point: name and durations.
struct Steps(Vec<(&'static str, Vec<Duration>)>);

impl Steps {
    /// Pairs each message (sent at `sent[i]`, delivered `lat[i]` later) with the stamps of its
    /// row: the measured messages are the rows committed from the first publish on, in order.
    fn of(
        sent: &[Instant],
        lat: &[Duration],
        stamps: &[crate::probe::Stamp],
    ) -> BenchResult<Steps> {
        use crate::probe::Point;
        let first_sent = sent
            .first()
            .copied()
            .ok_or_else(|| fail("no message was sent"))?;
        let base = stamps
            .iter()
            .find(|s| s.point == Point::Committed && s.at >= first_sent)
            .map(|s| s.first_id)
            .ok_or_else(|| fail("the probe saw no commit (is the outbox on?)"))?;
        let names = [
            "publish->writer",
            "commit",
            "->drainer",
            "send",
            "sent->arrived",
        ];
        let mut steps: Vec<(&'static str, Vec<Duration>)> = names
            .iter()
            .map(|n| (*n, Vec::with_capacity(sent.len())))
            .collect();
        let find = |point: Point, id: i64| stamps.iter().find(|s| s.point == point && s.covers(id));
        for (i, (t0, l)) in sent.iter().zip(lat).enumerate() {
            let id = base + i as i64;
            let (Some(committed), Some(taken), Some(handed)) = (
                find(Point::Committed, id),
                find(Point::Taken, id),
                find(Point::Sent, id),
            ) else {
                continue;
            };
            let Some(group) = stamps
                .iter()
                .rfind(|s| s.point == Point::GroupStart && s.at <= committed.at)
            else {
                continue;
            };
            let times = [*t0, group.at, committed.at, taken.at, handed.at, *t0 + *l];
            for (step, w) in steps.iter_mut().zip(times.windows(2)) {
                step.1.push(w[1].saturating_duration_since(w[0]));
            }
        }
        if steps[0].1.is_empty() {
            return Err(fail("no measured message passed every trace point"));
        }
        Ok(Steps(steps))
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.first().map_or(0, |s| s.1.len());
        write!(f, "  diag_outbox_steps: {n} messages, p50 / p99 us:")?;
        for (name, d) in &self.0 {
            let s = Sample::latencies(d.clone());
            write!(f, "  {name} {:.0} / {:.0}", s.value, s.p99.unwrap_or(0.0))?;
        }
        Ok(())
    }
}
