//! `jetstream_durable`: outbox on, a stream on the subjects, a durable
//! handler acking, against raw async-nats JetStream publishing with PubAcks (pipelined) and a
//! durable pull consumer acking by hand, in the same run.
//!
//! The server is started with JetStream on when this scenario or one of its diagnostics
//! (`diag_jetstream_msgid`, `diag_jetstream_ceiling`) is selected.

use std::time::Instant;

use bus::StreamConfig;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::msgs;
use crate::runner::{fail, rate, within, BenchResult, Rounds, Sample, WAIT};

/// The stream both sides use (created fresh per round, deleted after).
pub const STREAM: &str = "BENCH_OUTBOUND";
/// The subjects it covers.
pub const SUBJECTS: &str = "plugin.outbound.bench.>";
/// The durable consumer's name.
pub const DURABLE: &str = "bench-handler";

/// What one side of a JetStream round runs.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// Raw async-nats by hand ([`raw_durable`]).
    Raw,
    /// Raw async-nats by hand with a `Nats-Msg-Id` on every message.
    RawWithId,
    /// The SDK ([`bus_round`]).
    Bus,
}

/// `jetstream_durable` (`Raw` against `Bus`), and the diagnostics that explain it:
/// `diag_jetstream_msgid` (`Raw` against `RawWithId`: what the id the issue asks for costs by
/// itself, in async-nats's header map on both connections and in the stream's duplicate
/// tracking on the server, which shares the machine's cores with the client) and
/// `diag_jetstream_ceiling` (`RawWithId` against `Bus`: the SDK against the best hand-written
/// code that gives the same end-to-end dedupe).
pub struct Durable {
    /// The URL of a server with JetStream on.
    pub url: String,
    /// PubAcks in flight by hand, publishes in flight on the SDK.
    pub window: usize,
    /// The side the ratio divides by.
    pub baseline: Side,
    /// The side reported as "bus".
    pub measured: Side,
}

impl Durable {
    async fn round(&self, side: Side, n: usize) -> BenchResult<Sample> {
        match side {
            Side::Raw => raw_durable(&self.url, n, self.window, false).await,
            Side::RawWithId => raw_durable(&self.url, n, self.window, true).await,
            Side::Bus => bus_round(&self.url, n, self.window).await,
        }
        .map(Sample::value)
    }
}

impl Rounds for Durable {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        self.round(self.baseline, n).await
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        self.round(self.measured, n).await
    }
}

/// The bus side: a publishing bus (outbox on, the stream declared: each message confirmed by
/// its PubAck) and a consuming bus (as the baseline, another connection) whose durable handler
/// (`filter.durable(..)`, default options: ack after `Ok`) decodes and counts. msg/s from the
/// first publish to the last message handled.
async fn bus_round(url: &str, n: usize, window: usize) -> BenchResult<f64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::sync::Notify;

    use crate::msgs::Outbound;

    let (publisher, consumer, raw, _dir) = durable_buses(url, false).await?;
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (count.clone(), done.clone());
    let handler = Outbound::handle(
        &consumer,
        Outbound::filter().channel(msgs::CHANNEL).durable(DURABLE),
        move |env| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                if env.instance != msgs::INSTANCE {
                    return Err("decoded the wrong message".to_string());
                }
                if c.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    d.notify_one();
                }
                Ok(())
            }
        },
    )
    .await?;
    let msg = msgs::outbound(msgs::INSTANCE);
    let start = Instant::now();
    crate::sdk::publish_windowed(&publisher, &msg, n, window).await?;
    within(WAIT, "the durable handler", done.notified()).await?;
    let end = Instant::now();
    if handler.stats().dead_lettered() > 0 {
        return Err(fail("the durable handler dead-lettered messages"));
    }
    handler.stop().await;
    publisher.flush().await?;
    let _ = raw.delete_stream(STREAM).await;
    Ok(rate(n, start, end))
}

/// By hand: a file stream on [`SUBJECTS`], `n` JetStream publishes with up to `window` PubAcks
/// outstanding (every one awaited and checked), and a durable pull consumer with explicit ack on
/// another connection that decodes each message and acks it. msg/s from the first publish to the
/// last ack sent. With `msg_id`, each message carries a unique `Nats-Msg-Id` (32 hex digits; the
/// bus's are 22-character NUIDs) built by hand into a reused buffer.
async fn raw_durable(url: &str, n: usize, window: usize, msg_id: bool) -> BenchResult<f64> {
    let publisher = jetstream::new(async_nats::connect(url).await?);
    let _ = publisher.delete_stream(STREAM).await;
    let stream = publisher
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECTS.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer_conn = jetstream::new(async_nats::connect(url).await?);
    let consumer: consumer::PullConsumer = consumer_conn
        .get_stream(STREAM)
        .await?
        .get_or_create_consumer(
            DURABLE,
            consumer::pull::Config {
                durable_name: Some(DURABLE.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    drop(stream);
    let counter = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut count = 0usize;
        while let Some(m) = messages.next().await {
            let m = m?;
            let body: msgs::Outbound = rmp_serde::from_slice(&m.payload)?;
            if body.instance != msgs::INSTANCE {
                return Err(fail("decoded the wrong message"));
            }
            m.ack().await?;
            count += 1;
            if count == n {
                return Ok(Instant::now());
            }
        }
        Err::<Instant, crate::runner::BoxError>(fail(format!(
            "the pull consumer ended after {count} of {n}"
        )))
    });
    let msg = msgs::outbound(msgs::INSTANCE);
    let mut encoder = msgs::HandEncoder::new();
    let start = Instant::now();
    let mut acks = std::collections::VecDeque::with_capacity(window);
    let mut id = String::with_capacity(32);
    for i in 0..n {
        let subject = msgs::outbound_subject(&msg);
        let payload = encoder.encode(&msg)?;
        let ack = if msg_id {
            use std::fmt::Write as _;
            id.clear();
            write!(id, "{:016x}{i:016x}", 0x5eed_u64)?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            publisher
                .publish_with_headers(subject, headers, payload)
                .await?
        } else {
            publisher.publish(subject, payload).await?
        };
        acks.push_back(ack);
        if acks.len() >= window {
            if let Some(a) = acks.pop_front() {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    let end = within(WAIT, "the raw pull consumer", counter).await???;
    let _ = publisher.delete_stream(STREAM).await;
    Ok(rate(n, start, end))
}

/// The buses of a durable scenario, on a fresh stream `STREAM` (file storage) declared by both:
/// a publisher with its outbox on, and a consumer with an outbox of its own if `consumer_outbox`
/// (else none); the outboxes live in the returned directory.
/// The stream's JetStream context comes too, to delete the stream after the round.
pub async fn durable_buses(
    url: &str,
    consumer_outbox: bool,
) -> BenchResult<(
    bus::Bus,
    bus::Bus,
    async_nats::jetstream::Context,
    tempfile::TempDir,
)> {
    let raw = async_nats::jetstream::new(async_nats::connect(url).await?);
    let _ = raw.delete_stream(STREAM).await;
    let dir = tempfile::tempdir()?;
    let declared = StreamConfig::new(STREAM, [SUBJECTS]).storage(bus::stream::StorageType::File);
    let publisher = bus::Bus::builder()
        .nats([url])
        .outbox_path(dir.path().join("publisher.sqlite3"))
        .stream(declared.clone())
        .connect()
        .await?;
    let consumer = bus::Bus::builder().nats([url]).stream(declared);
    let consumer = if consumer_outbox {
        consumer.outbox_path(dir.path().join("consumer.sqlite3"))
    } else {
        consumer.no_outbox()
    };
    Ok((publisher, consumer.connect().await?, raw, dir))
}
