//! `outbox_publish_rate`: how fast `publish().await` commits to the outbox with the server down,
//! against rusqlite inserting the same rows in batches by hand: the SQLite ceiling on this disk.

use std::time::Instant;

use bus::Bus;

use crate::hand_outbox::{insert_by_hand, now_ms, open_by_hand, INSERT};
use crate::msgs::{self, INSTANCE};
use crate::runner::{rate, BenchResult, Rounds, Sample};
use crate::sdk;
use crate::server::free_port;

/// `outbox_publish_rate`: the bus side publishes with `window` publishes in flight (what lets
/// group commit batch them) to a port nobody listens on; the baseline inserts the same rows in
/// transactions of `window` rows.
pub struct PublishRate {
    /// In-flight publishes on the bus side, and rows per transaction by hand.
    pub window: usize,
}

impl Rounds for PublishRate {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        let window = self.window;
        tokio::task::spawn_blocking(move || rusqlite_batches(n, window))
            .await?
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        bus_commits(n, self.window).await.map(Sample::value)
    }
}

/// Commits per second of `publish().await` on a bus whose server is down (a fresh file).
async fn bus_commits(n: usize, window: usize) -> BenchResult<f64> {
    let dir = tempfile::tempdir()?;
    let url = format!("nats://127.0.0.1:{}", free_port()?);
    let bus = Bus::builder()
        .nats([url.as_str()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .connect()
        .await?;
    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    sdk::publish_windowed(&bus, &msg, n, window).await?;
    Ok(rate(n, start, Instant::now()))
}

/// The hand-written outbox: one connection in WAL mode with `synchronous=NORMAL` (the SDK's
/// default durability), one transaction per `window` rows, one cached prepared statement, the
/// payload encoded once (the bytes are the same for every row) and each row's id header JSON
/// written into a reused `String`.
fn rusqlite_batches(n: usize, window: usize) -> BenchResult<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = open_by_hand(&dir.path().join("hand.sqlite3"))?;
    let payload = msgs::outbound_bytes();
    let mut headers = String::with_capacity(128);
    let subject = msgs::SUBJECT;
    let start = Instant::now();
    let mut id: i64 = 0;
    while (id as usize) < n {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for _ in 0..window.min(n - id as usize) {
                id += 1;
                insert_by_hand(&mut insert, &mut headers, id, subject, &payload, now)?;
            }
        }
        tx.commit()?;
    }
    Ok(rate(n, start, Instant::now()))
}
