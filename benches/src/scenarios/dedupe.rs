//! `handler_dedupe`: a durable handler with `HandlerOptions::dedupe` (completions in the
//! consumer's outbox file) against the same durable handler without it, in the same run: the
//! inbox's whole cost (a lookup in memory per message, a completion committed to SQLite before
//! each ack, group-committed across the messages in flight).
//!
//! Each round declares a fresh file stream, makes the durable consumer (a handler started and
//! stopped at once), fills the stream with `n` messages through a publishing bus, then starts the
//! handler on a consuming bus that has an outbox file (on both sides, so
//! only `dedupe` differs) and times it from its start to the `n`th message handled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::HandlerOptions;
use tokio::sync::Notify;

use super::jetstream::{durable_buses, STREAM};
use crate::msgs::{self, Outbound};
use crate::runner::{fail, rate, within, BenchResult, Rounds, Sample, WAIT};

/// The durable consumer's (and the handler's) name.
const DURABLE: &str = "bench-dedupe";

/// `handler_dedupe` (see the module docs).
pub struct HandlerDedupe {
    /// The URL of a server with JetStream on.
    pub url: String,
    /// Publishes in flight while filling the stream.
    pub window: usize,
}

impl Rounds for HandlerDedupe {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        round(&self.url, n, self.window, false)
            .await
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        round(&self.url, n, self.window, true)
            .await
            .map(Sample::value)
    }
}

/// One round: msg/s of the durable handler over `n` stored messages, with or without `dedupe`.
async fn round(url: &str, n: usize, window: usize, dedupe: bool) -> BenchResult<f64> {
    let (publisher, consumer, raw, _dir) = durable_buses(url, true).await?;
    let mut options = HandlerOptions::named(DURABLE).durable(DURABLE);
    if dedupe {
        options = options.dedupe(Duration::from_secs(3600));
    }
    // The durable consumer takes what is published after it exists: make it, detach, fill.
    consumer
        .handle_with(
            Outbound::filter().channel(msgs::CHANNEL),
            options.clone(),
            |_env| async { Err::<(), _>("not yet".to_string()) },
        )
        .await?
        .stop()
        .await;
    crate::sdk::publish_windowed(&publisher, &msgs::outbound(msgs::INSTANCE), n, window).await?;
    publisher.flush().await?;
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (count.clone(), done.clone());
    let start = Instant::now();
    let handler = consumer
        .handle_with(
            Outbound::filter().channel(msgs::CHANNEL),
            options,
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
    within(WAIT, "the durable handler", done.notified()).await?;
    let end = Instant::now();
    let stats = handler.stats().clone();
    handler.stop().await;
    if stats.dead_lettered() > 0 || stats.duplicates_skipped() > 0 {
        return Err(fail("the handler dead-lettered or skipped messages"));
    }
    let _ = raw.delete_stream(STREAM).await;
    Ok(rate(n, start, end))
}
