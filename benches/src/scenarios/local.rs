//! The in-process scenarios: `local_pubsub_typed`, `local_10k_subs` and `handler_local`.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::msgs::{self, Outbound};
use crate::runner::{fail, rate, within, BenchResult, Rounds, Sample, SLACK, WAIT};
use crate::sdk;

/// `local_pubsub_typed`: the local broker vs a hand-written tokio mpsc carrying the same struct
/// as MessagePack.
pub struct PubSub;

impl Rounds for PubSub {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        mpsc_rmp(n).await.map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::local_typed(n, 1).await.map(Sample::value)
    }
    async fn old_baseline(&mut self, n: usize) -> Option<BenchResult<Sample>> {
        Some(mpsc_rmp_old(n).await.map(Sample::value))
    }
}

/// The hand-written bus: encode with a [`msgs::HandEncoder`] (reused scratch buffer, one copy),
/// `try_send` the bytes through a bounded mpsc sized for the whole round (a bus publisher never
/// waits for a subscriber, and the local broker `try_send`s too), decode on the receiving task
/// and count.
async fn mpsc_rmp(n: usize) -> BenchResult<f64> {
    let msg = msgs::outbound(msgs::INSTANCE);
    let (tx, rx) = mpsc::channel::<Bytes>(n + SLACK);
    let counter = spawn_decoder(rx, n);
    let mut encoder = msgs::HandEncoder::new();
    let start = Instant::now();
    for _ in 0..n {
        tx.try_send(encoder.encode(&msg)?)
            .map_err(|e| fail(format!("the mpsc refused a message: {e}")))?;
    }
    let end = within(WAIT, "the mpsc receiver", counter).await???;
    Ok(rate(n, start, end))
}

/// The previous hand-written baseline (round 1), kept to report old and new ratios side by
/// side: `to_vec_named` into a fresh `Vec` per message, `send().await`.
async fn mpsc_rmp_old(n: usize) -> BenchResult<f64> {
    let msg = msgs::outbound(msgs::INSTANCE);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(n + SLACK);
    let counter = spawn_decoder(rx, n);
    let start = Instant::now();
    for _ in 0..n {
        tx.send(rmp_serde::to_vec_named(&msg)?)
            .await
            .map_err(|_| fail("receiver gone"))?;
    }
    let end = within(WAIT, "the mpsc receiver", counter).await???;
    Ok(rate(n, start, end))
}

/// The receiving task of the hand-written baselines: decodes each payload into an [`Outbound`],
/// checks it and returns when the `n`-th arrived.
fn spawn_decoder<B: AsRef<[u8]> + Send + 'static>(
    mut rx: mpsc::Receiver<B>,
    n: usize,
) -> tokio::task::JoinHandle<BenchResult<Instant>> {
    tokio::spawn(async move {
        let mut count = 0usize;
        while let Some(bytes) = rx.recv().await {
            let m: Outbound = rmp_serde::from_slice(bytes.as_ref())?;
            if m.instance != msgs::INSTANCE {
                return Err(fail("decoded the wrong message"));
            }
            count += 1;
            if count == n {
                return Ok(Instant::now());
            }
        }
        Err(fail(format!("channel closed after {count} of {n}")))
    })
}

/// `local_10k_subs`: publish throughput (end to end, at the one matching subscriber) with 10,000
/// distinct subscriptions installed vs with only that one.
pub struct ManySubs {
    /// Subscriptions installed on the bus side (the baseline has 1).
    pub subs: usize,
}

impl Rounds for ManySubs {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::local_typed(n, 1).await.map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::local_typed(n, self.subs).await.map(Sample::value)
    }
}

/// `handler_local`: `Bus::handle` on the local broker (default options: concurrent, with
/// retries and dead letters armed) vs the loop a user would write over `subscribe`, calling the
/// same async handler for each message in turn.
pub struct Handler;

impl Rounds for Handler {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::local_loop_handler(n).await.map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::local_handle(n).await.map(Sample::value)
    }
}
