//! `jetstream_durable` (issue 10's acceptance): outbox on, a stream on the subjects, a durable
//! handler acking, against raw async-nats JetStream publishing with PubAcks (pipelined) and a
//! durable pull consumer acking by hand, in the same run.
//!
//! The server is started with JetStream on when this scenario is selected.

use std::time::Instant;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::msgs;
use crate::runner::{fail, rate, within, BenchResult, Rounds, Sample};
use crate::scenarios::nats::WAIT;

/// The stream both sides use (created fresh per round, deleted after).
pub const STREAM: &str = "BENCH_OUTBOUND";
/// The subjects it covers.
pub const SUBJECTS: &str = "plugin.outbound.bench.>";
/// The durable consumer's name.
pub const DURABLE: &str = "bench-handler";

/// `jetstream_durable`.
pub struct Durable {
    /// The URL of a server with JetStream on.
    pub url: String,
    /// PubAcks in flight on the baseline, publishes in flight on the bus side.
    pub window: usize,
}

impl Rounds for Durable {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_durable(&self.url, n, self.window)
            .await
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        bus_round(&self.url, n, self.window)
            .await
            .map(Sample::value)
    }
}

/// The bus side: a publishing bus (outbox on, the stream declared: each message confirmed by
/// its PubAck) and a consuming bus (as the baseline, another connection) whose durable handler
/// (`filter.durable(..)`, default options: ack after `Ok`) decodes and counts. msg/s from the
/// first publish to the last message handled.
async fn bus_round(url: &str, n: usize, window: usize) -> BenchResult<f64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bus::{Bus, StreamConfig};
    use tokio::sync::Notify;

    use crate::msgs::Outbound;

    let raw = jetstream::new(async_nats::connect(url).await?);
    let _ = raw.delete_stream(STREAM).await;
    let dir = tempfile::tempdir()?;
    let declared = StreamConfig::new(STREAM, [SUBJECTS]).storage(bus::stream::StorageType::File);
    let publisher = Bus::builder()
        .nats([url])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .stream(declared.clone())
        .connect()
        .await?;
    let consumer = Bus::builder()
        .nats([url])
        .no_outbox()
        .stream(declared)
        .connect()
        .await?;
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
/// last ack sent.
async fn raw_durable(url: &str, n: usize, window: usize) -> BenchResult<f64> {
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
    for _ in 0..n {
        let ack = publisher
            .publish(msgs::outbound_subject(&msg), encoder.encode(&msg)?)
            .await?;
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
