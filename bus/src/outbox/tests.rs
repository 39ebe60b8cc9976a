//! Unit tests of the outbox against a small recording broker of our own (a test double of the
//! `Broker` trait, not of NATS; the real-server tests are in `tests/tests/outbox_faults.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::*;
use crate::broker::{ConnectionState, RawSubscription};
use crate::headers::Headers;
use crate::headers::MSG_ID;

const LIMIT: Duration = Duration::from_secs(30);

/// Records what it was sent; publish checks max_payload; confirm can be told to fail.
struct FakeBroker {
    state: watch::Sender<ConnectionState>,
    /// Published since the last confirm.
    unconfirmed: Mutex<Vec<RawMessage>>,
    confirmed: Mutex<Vec<RawMessage>>,
    /// Publish calls per subject.
    publish_calls: Mutex<HashMap<String, u32>>,
    /// Confirms that fail while the connection stays up.
    fail_confirms: AtomicU32,
    /// Confirms that time out (the connection looks up but is not).
    timeout_confirms: AtomicU32,
    /// Confirms that fail because the connection drops (it comes back shortly after).
    drop_on_confirms: AtomicU32,
    max_payload: usize,
    /// Keep confirmed messages (off for the memory test, which only counts them).
    keep: bool,
    confirmed_count: std::sync::atomic::AtomicU64,
    /// When each message was handed to `publish`, by payload (the scheduled-message tests).
    sent_at: Mutex<Vec<(String, std::time::SystemTime)>>,
}

impl FakeBroker {
    fn new(state: ConnectionState) -> Arc<FakeBroker> {
        Self::build(state, true)
    }
    fn build(state: ConnectionState, keep: bool) -> Arc<FakeBroker> {
        Arc::new(FakeBroker {
            state: watch::channel(state).0,
            unconfirmed: Mutex::default(),
            confirmed: Mutex::default(),
            publish_calls: Mutex::default(),
            fail_confirms: AtomicU32::new(0),
            timeout_confirms: AtomicU32::new(0),
            drop_on_confirms: AtomicU32::new(0),
            max_payload: 1024,
            keep,
            confirmed_count: Default::default(),
            sent_at: Mutex::default(),
        })
    }
    fn set_state(&self, s: ConnectionState) {
        self.state.send_replace(s);
    }
    fn confirmed(&self) -> Vec<RawMessage> {
        self.confirmed.lock().unwrap().clone()
    }
    fn payloads(&self) -> Vec<String> {
        self.confirmed()
            .iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect()
    }
    fn calls(&self, subject: &str) -> u32 {
        *self
            .publish_calls
            .lock()
            .unwrap()
            .get(subject)
            .unwrap_or(&0)
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Broker for FakeBroker {
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            *self
                .publish_calls
                .lock()
                .unwrap()
                .entry(msg.subject.clone())
                .or_default() += 1;
            if *self.state.borrow() != ConnectionState::Connected {
                return Err(Error::Closed);
            }
            if msg.wire_size() > self.max_payload {
                return Err(Error::PayloadTooLarge {
                    subject: msg.subject.clone(),
                    size: msg.wire_size(),
                    max: self.max_payload,
                });
            }
            if self.keep {
                let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                self.sent_at
                    .lock()
                    .unwrap()
                    .push((payload, std::time::SystemTime::now()));
            }
            self.unconfirmed.lock().unwrap().push(msg);
            Ok(())
        })
    }
    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let pending = std::mem::take(&mut *self.unconfirmed.lock().unwrap());
            if take_one(&self.drop_on_confirms) {
                // The connection died with the batch in it; it comes back a moment later.
                self.set_state(ConnectionState::Disconnected);
                let state = self.state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    state.send_replace(ConnectionState::Connected);
                });
                return Err(Error::Closed);
            }
            if take_one(&self.timeout_confirms) {
                return Err(Error::Timeout {
                    subject: "_bus.confirm".into(),
                    timeout: Duration::from_millis(1),
                });
            }
            if take_one(&self.fail_confirms) {
                return Err(Error::Config("confirm refused".into()));
            }
            if *self.state.borrow() != ConnectionState::Connected {
                return Err(Error::Closed);
            }
            self.confirmed_count
                .fetch_add(pending.len() as u64, Ordering::SeqCst);
            if self.keep {
                self.confirmed.lock().unwrap().extend(pending);
            }
            Ok(())
        })
    }
    fn subscribe(
        &self,
        _pattern: &str,
        _queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        Box::pin(async { Err(Error::Config("not supported by the fake".into())) })
    }
    fn request(&self, _msg: RawMessage, _timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        Box::pin(async { Err(Error::Config("not supported by the fake".into())) })
    }
    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }
    fn max_payload(&self) -> usize {
        self.max_payload
    }
    fn kind(&self) -> &'static str {
        "fake"
    }
}

fn msg(subject: &str, payload: impl Into<String>) -> RawMessage {
    let mut h = Headers::new();
    h.append(MSG_ID, crate::msg_id::new_msg_id());
    RawMessage::new(subject, payload.into()).with_headers(h)
}

async fn open(path: &Path, broker: &Arc<FakeBroker>) -> Result<Outbox> {
    open_with(path, broker, OutboxOptions::default()).await
}

async fn open_with(
    path: &Path,
    broker: &Arc<FakeBroker>,
    options: OutboxOptions,
) -> Result<Outbox> {
    Outbox::open(
        path.to_path_buf(),
        options,
        broker.clone() as Arc<dyn Broker>,
    )
    .await
}

async fn flush(outbox: &Outbox) {
    tokio::time::timeout(LIMIT, outbox.flush())
        .await
        .expect("flush hung")
        .expect("flush failed");
}

fn outbox_err(r: Result<Outbox>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(matches!(e, Error::Outbox { .. }), "{e:?}");
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_commit_and_drain_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = Arc::new(open(&dir.path().join("o.db"), &broker).await.unwrap());
    let mut tasks = Vec::new();
    for t in 0..10 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                outbox
                    .enqueue(msg(&format!("t.{t}"), format!("{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    flush(&outbox).await;
    let got = broker.confirmed();
    assert_eq!(got.len(), 1000);
    for t in 0..10 {
        let seq: Vec<String> = got
            .iter()
            .filter(|m| m.subject == format!("t.{t}"))
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(seq, want, "per-publisher FIFO order of t.{t}");
    }
    assert_eq!(outbox.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn waits_while_disconnected_then_drains_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Disconnected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    for i in 0..100 {
        outbox.enqueue(msg("a", format!("{i}"))).await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), outbox.flush())
            .await
            .is_err(),
        "flush cannot complete while disconnected"
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.depth, 100);
    assert!(stats.oldest_age.is_some());
    assert!(broker.confirmed().is_empty());
    broker.set_state(ConnectionState::Connected);
    flush(&outbox).await;
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(broker.payloads(), want);
    // Time spent disconnected is no attempt.
    assert_eq!(outbox.dead_letters().count().await.unwrap(), 0);
    assert_eq!(outbox.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn oversize_is_dead_lettered_after_exactly_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    let big = msg("big", "x".repeat(4096));
    let big_id = big.headers.get(MSG_ID).unwrap().to_string();
    outbox.enqueue(msg("a", "before")).await.unwrap();
    outbox.enqueue(big).await.unwrap();
    for i in 0..10 {
        outbox
            .enqueue(msg("a", format!("after {i}")))
            .await
            .unwrap();
    }
    flush(&outbox).await;
    assert_eq!(broker.calls("big"), 3);
    let mut want = vec!["before".to_string()];
    want.extend((0..10).map(|i| format!("after {i}")));
    assert_eq!(broker.payloads(), want);
    let dlq = outbox.dead_letters();
    let list = dlq.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].subject, "big");
    assert_eq!(list[0].attempts, 3);
    assert_eq!(list[0].payload.len(), 4096);
    assert_eq!(list[0].headers.get(MSG_ID), Some(big_id.as_str()));
    assert!(
        list[0].last_error.contains("max_payload"),
        "{}",
        list[0].last_error
    );
    assert_eq!(outbox.stats().await.unwrap().dead_letters, 1);
}

#[tokio::test]
async fn confirm_refused_while_connected_counts_dropped_connection_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    // Five dropped connections (more than 3) must not dead-letter good messages.
    broker.drop_on_confirms.store(5, Ordering::SeqCst);
    for i in 0..5 {
        outbox.enqueue(msg("a", format!("{i}"))).await.unwrap();
    }
    flush(&outbox).await;
    assert_eq!(outbox.dead_letters().count().await.unwrap(), 0);
    assert_eq!(broker.payloads(), ["0", "1", "2", "3", "4"]);
    // Nor do timeouts, which say nothing about the messages.
    broker.timeout_confirms.store(5, Ordering::SeqCst);
    outbox.enqueue(msg("a", "t")).await.unwrap();
    flush(&outbox).await;
    assert_eq!(outbox.dead_letters().count().await.unwrap(), 0);
    assert_eq!(broker.payloads().last().map(String::as_str), Some("t"));
    // Two refusals while connected count, the third attempt succeeds.
    broker.fail_confirms.store(2, Ordering::SeqCst);
    outbox.enqueue(msg("a", "5")).await.unwrap();
    flush(&outbox).await;
    assert_eq!(outbox.dead_letters().count().await.unwrap(), 0);
    assert_eq!(broker.payloads().last().map(String::as_str), Some("5"));
    // Three refusals while connected: dead-lettered.
    broker.fail_confirms.store(3, Ordering::SeqCst);
    outbox.enqueue(msg("a", "6")).await.unwrap();
    flush(&outbox).await;
    let list = outbox.dead_letters().list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(&list[0].payload[..], b"6");
    assert!(list[0].last_error.contains("confirm refused"));
}

#[tokio::test]
async fn restart_drains_what_the_previous_outbox_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let down = FakeBroker::new(ConnectionState::Disconnected);
    let mut ids = Vec::new();
    {
        let outbox = open(&path, &down).await.unwrap();
        for i in 0..50 {
            let m = msg("a", format!("{i}"));
            ids.push(m.headers.get(MSG_ID).unwrap().to_string());
            outbox.enqueue(m).await.unwrap();
        }
    }
    {
        let outbox = open(&path, &down).await.unwrap();
        let mut m = msg("a", "with reply");
        m.reply = Some("_INBOX.x".into());
        ids.push(m.headers.get(MSG_ID).unwrap().to_string());
        outbox.enqueue(m).await.unwrap();
    }
    let up = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&path, &up).await.unwrap();
    flush(&outbox).await;
    let got = up.confirmed();
    assert_eq!(got.last().unwrap().reply.as_deref(), Some("_INBOX.x"));
    assert!(got[..50].iter().all(|m| m.reply.is_none()));
    let got_ids: Vec<&str> = got.iter().map(|m| m.headers.get(MSG_ID).unwrap()).collect();
    assert_eq!(got_ids, ids, "same msg ids, same order");
    // The new outbox keeps numbering after the old rows.
    outbox.enqueue(msg("a", "new")).await.unwrap();
    flush(&outbox).await;
    assert_eq!(up.payloads().last().map(String::as_str), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_longer_than_the_handoff_is_paged_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Disconnected);
    let outbox = Arc::new(open(&dir.path().join("o.db"), &broker).await.unwrap());
    let n = writer::HANDOFF_MAX_ROWS + 6000;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(4) {
                outbox
                    .enqueue(msg(&format!("t.{t}"), format!("{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    // Connect once more is queued than the in-memory handoff holds (so the drainer must page
    // from SQLite) while publishes keep coming (so it must switch back to memory).
    tokio::time::timeout(LIMIT, async {
        while outbox.stats().await.unwrap().depth <= writer::HANDOFF_MAX_ROWS as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the queue never grew past the handoff");
    broker.set_state(ConnectionState::Connected);
    for t in tasks {
        t.await.unwrap();
    }
    flush(&outbox).await;
    let got = broker.confirmed();
    assert_eq!(got.len(), n, "every message exactly once");
    for t in 0..4 {
        let seq: Vec<usize> = got
            .iter()
            .filter(|m| m.subject == format!("t.{t}"))
            .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect();
        assert_eq!(seq, (t..n).step_by(4).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn replay_list_count_purge() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    outbox.enqueue(msg("big", "x".repeat(2000))).await.unwrap();
    outbox.enqueue(msg("big", "y".repeat(2000))).await.unwrap();
    flush(&outbox).await;
    let dlq = outbox.dead_letters();
    let list = dlq.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list[0].id < list[1].id && list[0].payload[0] == b'x',
        "oldest first"
    );
    assert!(matches!(
        dlq.replay(-5).await,
        Err(Error::DeadLetterNotFound(-5))
    ));
    // A replayed message goes to the end of the queue with fresh attempts and the same id.
    let first = list[0].clone();
    dlq.replay(first.id).await.unwrap();
    assert_eq!(dlq.count().await.unwrap(), 1);
    flush(&outbox).await;
    assert_eq!(broker.calls("big"), 9);
    let again = dlq.list().await.unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again[1].headers.get(MSG_ID), first.headers.get(MSG_ID));
    assert_eq!(again[1].attempts, 3);
    assert_eq!(dlq.purge().await.unwrap(), 2);
    assert_eq!(dlq.count().await.unwrap(), 0);
}

#[tokio::test]
async fn file_is_private_and_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&path, &broker).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = outbox_err(open(&path, &broker).await);
    assert!(err.contains("in use by another Bus"), "{err}");
    drop(outbox);
    // Dropping the outbox releases the lock at once.
    open(&path, &broker).await.unwrap();
}

#[tokio::test]
async fn bad_files_are_refused_never_reset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);

    let garbage = dir.path().join("garbage.db");
    let junk = vec![0x5au8; 8192];
    std::fs::write(&garbage, &junk).unwrap();
    let err = outbox_err(open(&garbage, &broker).await);
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&garbage).unwrap(), junk, "left untouched");

    let newer = dir.path().join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute_batch("CREATE TABLE outbox (id INTEGER); PRAGMA user_version = 99;")
            .unwrap();
    }
    let err = outbox_err(open(&newer, &broker).await);
    assert!(err.contains("unknown outbox schema version 99"), "{err}");

    let foreign = dir.path().join("foreign.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE customers (id INTEGER)")
            .unwrap();
    }
    let err = outbox_err(open(&foreign, &broker).await);
    assert!(err.contains("not a bus outbox"), "{err}");

    let err = outbox_err(open(&dir.path().join("missing/dir/o.db"), &broker).await);
    assert!(err.contains("create the directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    let all = (0..1000).map(|i| outbox.enqueue(msg("g", format!("{i}"))));
    for r in futures::future::join_all(all).await {
        r.unwrap();
    }
    let commits = outbox
        .writer
        .call("test", |ctx| Ok(ctx.commits))
        .await
        .unwrap();
    assert!(
        commits < 1000,
        "1000 concurrent enqueues took {commits} commits"
    );
    flush(&outbox).await;
    assert_eq!(broker.confirmed().len(), 1000);
}

#[tokio::test]
async fn a_full_disk_fails_the_publish_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Disconnected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    // The file may not grow past its current size: the same SQLITE_FULL a full disk gives.
    outbox
        .writer
        .call("test", |ctx| {
            let pages: i64 = ctx
                .store
                .conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            ctx.store
                .conn
                .pragma_update(None, "max_page_count", pages + 2)
                .unwrap();
            Ok(())
        })
        .await
        .unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..100 {
        match outbox.enqueue(msg("full", format!("{i:0>900}"))).await {
            Ok(()) => acked.push(format!("{i:0>900}")),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("the file never filled up").to_string();
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(outbox.stats().await.unwrap().depth, acked.len() as u64);
    broker.set_state(ConnectionState::Connected);
    flush(&outbox).await;
    assert_eq!(
        broker.payloads(),
        acked,
        "every acknowledged message, and only those"
    );
}

#[tokio::test]
async fn power_loss_durability_syncs_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let options = OutboxOptions {
        durability: Durability::PowerLoss,
        ..OutboxOptions::default()
    };
    let outbox = open_with(&dir.path().join("o.db"), &broker, options)
        .await
        .unwrap();
    assert_eq!(synchronous(&outbox).await, 2, "FULL");
    let default = open(&dir.path().join("p.db"), &broker).await.unwrap();
    assert_eq!(synchronous(&default).await, 1, "NORMAL");
}

/// The write-ahead log is copied back into the file by the checkpoint thread, not by the
/// writer's commits: after a burst of publishes the background has checkpointed, the log is
/// fully copied, and the writer's own automatic checkpoint is only the high backstop.
#[tokio::test]
async fn the_log_is_checkpointed_off_the_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    // About 2,000 pages of log (the fake broker's max_payload is 1 KiB): twice SQLite's default
    // threshold, half the backstop.
    let body = "x".repeat(900);
    let all = (0..8_000).map(|i| outbox.enqueue(msg(&format!("a.{i}"), body.clone())));
    for r in futures::future::join_all(all).await {
        r.unwrap();
    }
    let state = || {
        outbox.writer.call("test", |ctx| {
            let auto: i64 = ctx
                .store
                .conn
                .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?;
            let runs = ctx.checkpoint.as_ref().map_or(0, |c| c.runs());
            Ok((auto, runs))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (auto, runs) = loop {
        let (auto, runs) = state().await.unwrap();
        if runs > 0 || std::time::Instant::now() > deadline {
            break (auto, runs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(auto, i64::from(checkpoint::BACKSTOP_PAGES));
    assert!(runs > 0, "the checkpoint thread never ran");
    // Once writes stop, the log is copied whole: a passive checkpoint finds nothing left.
    flush(&outbox).await;
    tokio::time::sleep(checkpoint::INTERVAL * 3).await;
    let conn = rusqlite::Connection::open(dir.path().join("o.db")).unwrap();
    let (log, copied): (i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(copied, log, "frames left uncopied");
}

/// Under a sustained burst the background checkpoints may never find the log idle, so it is
/// never started over; the writer's own checkpoint then bounds it. The log file never grows
/// far past that bound, however much is written.
#[tokio::test]
async fn the_log_stays_bounded_under_a_sustained_burst() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::build(ConnectionState::Connected, false);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    let wal = dir.path().join("o.db-wal");
    let body = "x".repeat(900);
    let mut largest = 0;
    // 48 MiB of rows, in windows of 2,000 publishes in flight.
    for round in 0..24 {
        let all = (0..2_000).map(|i| outbox.enqueue(msg(&format!("a.{round}.{i}"), body.clone())));
        for r in futures::future::join_all(all).await {
            r.unwrap();
        }
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    flush(&outbox).await;
    let bound = u64::from(checkpoint::BACKSTOP_PAGES) * 4096;
    assert!(
        largest < bound * 2,
        "the log grew to {largest} bytes (the writer's backstop is {bound})"
    );
}

/// The connection's `PRAGMA synchronous` (1 = NORMAL, 2 = FULL).
async fn synchronous(outbox: &Outbox) -> i64 {
    outbox
        .writer
        .call("test", |ctx| {
            Ok(ctx
                .store
                .conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap())
        })
        .await
        .unwrap()
}

/// Peak resident memory of this process, from `/proc/self/status`.
#[cfg(target_os = "linux")]
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A queue far larger than the in-memory handoff drains without ever being loaded. (The bench's
/// `outbox_1m_rss_mib` scenario measures the same with 1,000,000 messages in a release build.)
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_queue_is_never_loaded_into_memory() {
    const N: usize = 200_000;
    const PAYLOAD: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::build(ConnectionState::Disconnected, false);
    let outbox = Arc::new(open(&dir.path().join("o.db"), &broker).await.unwrap());
    let before = peak_rss_kib();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for i in (t..N).step_by(64) {
                    let m = RawMessage::new("m", format!("{i:0>PAYLOAD$}"));
                    outbox.enqueue(m).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(outbox.stats().await.unwrap().depth, N as u64);
    broker.set_state(ConnectionState::Connected);
    tokio::time::timeout(Duration::from_secs(300), outbox.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broker.confirmed_count.load(Ordering::SeqCst), N as u64);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    // Loaded, the queue would take well over 200 MiB (payloads alone are 190 MiB); the in-memory
    // handoff is bounded at 32 MiB of payload.
    assert!(grown_mib < 100, "peak memory grew by {grown_mib} MiB");
}

#[test]
fn confirmed_rows_left_in_the_file_are_never_resent() {
    // The writer deletes confirmed rows lazily; the watermark alone must keep them from being
    // read as queued, also by a new process on the same file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    {
        let mut st = store::Store::open(&path, Durability::ProcessCrash).unwrap();
        let msgs: Vec<RawMessage> = (0..10).map(|i| msg("a", format!("{i}"))).collect();
        assert_eq!(st.insert_all(msgs.iter(), &[]).unwrap(), 1);
        st.mark_done(6).unwrap();
        assert_eq!(st.page(0, 100).unwrap().rows.first().map(|r| r.id), Some(7));
        assert_eq!(st.stats().unwrap().depth, 4);
    }
    let mut st = store::Store::open(&path, Durability::ProcessCrash).unwrap();
    let w = st.watermarks().unwrap();
    assert_eq!((w.committed, w.done), (10, 6));
    let ids: Vec<i64> = st.page(0, 100).unwrap().rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, [7, 8, 9, 10]);
    assert_eq!(st.stats().unwrap().depth, 4);
    // Tidying deletes only what is done; once all is done the table empties at once.
    let rows_in_file = |st: &store::Store| -> i64 {
        st.conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(rows_in_file(&st), 10);
    while st.tidy(2).unwrap() {}
    assert_eq!(rows_in_file(&st), 4);
    st.mark_done(10).unwrap();
    assert!(!st.tidy(2).unwrap());
    assert_eq!(rows_in_file(&st), 0);
    // Ids keep counting after the queue emptied.
    assert_eq!(st.insert_all([msg("a", "x")].iter(), &[]).unwrap(), 11);
}

#[test]
fn a_large_group_is_stored_in_order_and_intact() {
    // More rows than one multi-row statement holds, and a remainder: every row comes back in
    // order with its own id, subject, headers and payload.
    let dir = tempfile::tempdir().unwrap();
    let mut st = store::Store::open(&dir.path().join("o.db"), Durability::ProcessCrash).unwrap();
    let msgs: Vec<RawMessage> = (0..150)
        .map(|i| msg(&format!("s.{i}"), "x".repeat(i)))
        .collect();
    assert_eq!(st.insert_all(msgs.iter(), &[]).unwrap(), 1);
    assert_eq!(st.insert_all(msgs[..3].iter(), &[]).unwrap(), 151);
    let page = st.page(0, 1000).unwrap();
    assert_eq!(
        (page.rows.len(), page.scanned, page.last),
        (153, 153, Some(153))
    );
    for (i, row) in page.rows.iter().enumerate() {
        assert_eq!(row.id, i as i64 + 1);
        assert_eq!(row.msg, msgs[if i < 150 { i } else { i - 150 }]);
    }
}

/// The v2 file in `tests/data`, written by the v2 code (see `tests/tests/outbox_local.rs`).
const V2_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/outbox-v2.sqlite3"
);

/// A copy of the v2 fixture in `dir`.
fn v2_copy(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("v2.db");
    std::fs::copy(V2_FIXTURE, &path).unwrap();
    path
}

#[test]
fn rows_are_stored_in_columns_the_sqlite_shell_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = store::Store::open(&dir.path().join("o.db"), Durability::ProcessCrash).unwrap();
    let mut m = msg("a.b", "p");
    m.headers.append("X-Tenant", "café \"q\"");
    m.reply = Some("_INBOX.1".into());
    let id = st.insert_all([m.clone()].iter(), &[]).unwrap();
    let (subject, reply, tenant, payload_type, payload): (String, String, String, String, Vec<u8>) =
        st.conn
            .query_row(
                "SELECT subject, reply, json_extract(headers, '$[1][1]'), typeof(payload), payload
               FROM queued WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
    assert_eq!((subject.as_str(), reply.as_str()), ("a.b", "_INBOX.1"));
    assert_eq!(tenant, "café \"q\"");
    assert_eq!((payload_type.as_str(), &payload[..]), ("blob", &b"p"[..]));
    let stuck: i64 = st
        .conn
        .query_row("SELECT count(*) FROM stuck", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stuck, 0);
    let failure = store::Failure {
        id,
        attempts: 1,
        dead: false,
        msg_id: None,
    };
    st.fail(&[failure], "confirm refused").unwrap();
    let (attempts, error, msg_id): (u32, String, String) = st
        .conn
        .query_row("SELECT attempts, last_error, msg_id FROM stuck", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((attempts, error.as_str()), (1, "confirm refused"));
    assert_eq!(Some(msg_id.as_str()), m.headers.get(MSG_ID));
    // The queued view hides what the watermark covers.
    st.mark_done(id).unwrap();
    let queued: i64 = st
        .conn
        .query_row("SELECT count(*) FROM queued", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0);
}

#[test]
fn the_v2_decoder_reads_the_fixture_and_refuses_every_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let c = rusqlite::Connection::open(v2_copy(dir.path())).unwrap();
    let mut stmt = c
        .prepare("SELECT msg FROM outbox UNION ALL SELECT msg FROM dead_letters")
        .unwrap();
    let blobs: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(blobs.len(), 48);
    for blob in &blobs {
        let m = migrate::decode(blob).unwrap();
        assert!(m.subject.starts_with("fixture."), "{}", m.subject);
        // Every strict prefix that cuts into the length-prefixed part is refused, never misread.
        for n in 0..blob.len() - m.payload.len() {
            assert!(migrate::decode(&blob[..n]).is_err(), "prefix {n} accepted");
        }
    }
}

#[test]
fn a_v2_row_that_cannot_be_decoded_becomes_a_dead_letter_holding_the_raw_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = v2_copy(dir.path());
    let junk = b"\x05\x00\x00\x00ab".to_vec();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "INSERT INTO outbox (id, msg, created_at) VALUES (49, ?1, 7)",
            [&junk],
        )
        .unwrap();
        c.execute("UPDATE outbox_seq SET last = 49", []).unwrap();
    }
    let st = store::Store::open(&path, Durability::ProcessCrash).unwrap();
    let version: i64 = st
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4, "version 2 is migrated to 3, then to 4");
    let dead = st.dead_letters().unwrap();
    assert_eq!(dead.len(), 5, "4 from v2 and the undecodable row");
    let bad = dead.last().unwrap();
    assert_eq!((bad.queue_id, bad.origin.as_str()), (Some(49), "outbox"));
    assert_eq!(&bad.payload[..], &junk[..]);
    assert!(
        bad.last_error.contains("cannot be decoded (truncated)"),
        "{}",
        bad.last_error
    );
    assert_eq!(st.watermarks().unwrap().committed, 49);
    // The v2 dead letters keep their ids, and new ones are numbered after them.
    assert_eq!(
        dead.iter().map(|d| d.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn a_migration_that_fails_leaves_the_v2_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = v2_copy(dir.path());
    {
        // The name the migration renames to is taken: it fails half way through.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE dead_letters_v2 (x)").unwrap();
    }
    let err = match store::Store::open(&path, Durability::ProcessCrash) {
        Ok(_) => panic!("the migration must fail"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot migrate the outbox from schema version 2"),
        "{err}"
    );
    assert!(err.contains("left at version 2, unchanged"), "{err}");
    let c = rusqlite::Connection::open(&path).unwrap();
    let (version, rows, dead): (i64, i64, i64) = c
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM outbox), (SELECT count(*) FROM dead_letters)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((version, rows, dead), (2, 44, 4));
}

/// Makes queue row `id` undecodable the way `how` says, straight in SQLite.
fn corrupt(conn: &rusqlite::Connection, id: i64, how: &str) {
    let sql = match how {
        // A header name cut in the middle of a UTF-8 character (`é` is C3 A9).
        "cut name" => {
            "UPDATE outbox SET headers = CAST(X'5B5B22582DC3222C2276225D5D' AS TEXT) WHERE id = ?1"
        }
        "bad json" => "UPDATE outbox SET headers = '[[\"X-A\",' WHERE id = ?1",
        "bad subject" => "UPDATE outbox SET subject = CAST(X'612EFF' AS TEXT) WHERE id = ?1",
        "number" => "UPDATE outbox SET payload = 42 WHERE id = ?1",
        other => panic!("{other}"),
    };
    conn.execute(sql, [id]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_rows_are_dead_lettered_once_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    // More than three pages, so that bad rows sit in full pages, at a page's end and at the
    // very end of the queue (which a flush must still reach).
    let n = 3 * drainer::BATCH as i64 + 10;
    let bad = [
        (1, "cut name"),
        (2, "bad json"),
        (drainer::BATCH as i64, "bad subject"),
        (drainer::BATCH as i64 + 1, "number"),
        (2 * drainer::BATCH as i64 + 7, "cut name"),
        (n, "cut name"),
    ];
    {
        let mut st = store::Store::open(&path, Durability::ProcessCrash).unwrap();
        let msgs: Vec<RawMessage> = (1..=n).map(|i| msg("q", format!("{i}"))).collect();
        st.insert_all(msgs.iter(), &[]).unwrap();
        for (id, how) in bad {
            corrupt(&st.conn, id, how);
        }
    }
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&path, &broker).await.unwrap();
    flush(&outbox).await;
    let want: Vec<String> = (1..=n)
        .filter(|i| !bad.iter().any(|(b, _)| b == i))
        .map(|i| i.to_string())
        .collect();
    assert_eq!(broker.payloads(), want, "every good row once, in order");
    let dead = outbox.dead_letters().list().await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.queue_id.unwrap()).collect::<Vec<_>>(),
        bad.iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );
    for d in &dead {
        assert_eq!(d.attempts, 0, "never sent: {d:?}");
        assert!(
            d.last_error.contains("cannot be decoded"),
            "{}",
            d.last_error
        );
    }
    for (d, why) in dead.iter().zip([
        "headers are not valid UTF-8",
        "not a JSON array",
        "subject is not valid UTF-8",
        "payload is an integer",
    ]) {
        assert!(d.last_error.contains(why), "{}", d.last_error);
    }
    // The raw bytes are kept as they were.
    let raw: Vec<u8> = outbox
        .writer
        .call("test", move |ctx| {
            Ok(ctx
                .store
                .conn
                .query_row(
                    "SELECT CAST(headers AS BLOB) FROM dead_letters WHERE queue_id = 1",
                    [],
                    |r| r.get(0),
                )
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(raw, b"[[\"X-\xc3\",\"v\"]]");
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, bad.len() as u64));
    // A new process finds nothing left to send or to dead-letter again.
    drop(outbox);
    let again = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&path, &again).await.unwrap();
    flush(&outbox).await;
    assert!(again.confirmed().is_empty());
    assert_eq!(
        outbox.dead_letters().count().await.unwrap(),
        bad.len() as u64
    );
}

#[tokio::test]
async fn the_retry_policy_decides_the_attempts() {
    for max in [1, 5] {
        let dir = tempfile::tempdir().unwrap();
        let broker = FakeBroker::new(ConnectionState::Connected);
        let options = OutboxOptions {
            retry: crate::RetryPolicy::default()
                .max_attempts(max)
                .base(Duration::from_millis(1)),
            ..OutboxOptions::default()
        };
        let outbox = open_with(&dir.path().join("o.db"), &broker, options)
            .await
            .unwrap();
        outbox.enqueue(msg("big", "x".repeat(4096))).await.unwrap();
        outbox.enqueue(msg("a", "after")).await.unwrap();
        flush(&outbox).await;
        assert_eq!(broker.calls("big"), max);
        assert_eq!(broker.payloads(), ["after"]);
        let dead = outbox.dead_letters().list().await.unwrap();
        assert_eq!(dead[0].attempts, max);
    }
}

/// A version-3 file (no `scheduled` table) is migrated to version 4 on open, keeping its queue,
/// watermark and dead letters; the migrated file schedules and releases like a new one.
#[test]
fn a_v3_file_is_migrated_to_v4_keeping_its_queue_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "{} {} {} PRAGMA user_version = 3;",
            schema::TABLES,
            schema::SEQ,
            schema::VIEWS
        ))
        .unwrap();
        c.execute_batch(
            "INSERT INTO outbox (id, subject, headers, payload, created_at)
                 VALUES (1, 'a.done', '[]', X'00', 5), (2, 'a.one', '[]', X'01', 6),
                        (3, 'a.two', '[[\"Nats-Msg-Id\",\"m3\"]]', X'02', 7);
             UPDATE outbox_seq SET last = 3, done = 1;
             INSERT INTO dead_letters (origin, subject, headers, payload, created_at, attempts,
                                       last_error, failed_at)
                 VALUES ('outbox', 'a.dead', '[]', X'03', 8, 3, 'boom', 9);",
        )
        .unwrap();
    }
    let mut st = store::Store::open(&path, Durability::ProcessCrash).unwrap();
    let version: i64 = st
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    let page = st.page(0, 10).unwrap();
    let ids: Vec<i64> = page.rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, [2, 3], "the queue above the watermark, unchanged");
    assert_eq!(page.rows[1].msg.subject, "a.two");
    assert_eq!(
        crate::headers::msg_id(&page.rows[1].msg.headers),
        Some("m3")
    );
    let dead = st.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].subject.as_str(), dead[0].last_error.as_str()),
        ("a.dead", "boom")
    );
    // Scheduling works on the migrated file, and due messages join the end of the queue.
    st.schedule(&msg("a.later", "x"), 100).unwrap();
    assert_eq!(st.next_due().unwrap(), Some(100));
    assert_eq!(st.release_due(99).unwrap(), None, "not due yet");
    assert_eq!(st.release_due(100).unwrap(), Some(4));
    assert_eq!(st.next_due().unwrap(), None);
    drop(st);
    // Opened again: already version 4, nothing to migrate.
    let st = store::Store::open(&path, Durability::ProcessCrash).unwrap();
    assert_eq!(st.watermarks().unwrap().committed, 4);
}

/// Due scheduled messages join the queue by due time, then in the order they were scheduled,
/// after what was queued before they were due; none is released before its due time.
#[test]
fn due_messages_are_released_by_due_time_then_schedule_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = store::Store::open(&dir.path().join("o.db"), Durability::ProcessCrash).unwrap();
    st.schedule(&msg("s", "due-30-first"), 30).unwrap();
    st.schedule(&msg("s", "due-10"), 10).unwrap();
    st.schedule(&msg("s", "due-30-second"), 30).unwrap();
    st.schedule(&msg("s", "due-50"), 50).unwrap();
    st.insert_all([msg("s", "now")].iter(), &[]).unwrap();
    assert_eq!(st.release_due(9).unwrap(), None);
    assert_eq!(st.release_due(30).unwrap(), Some(4));
    assert_eq!(st.next_due().unwrap(), Some(50));
    let page = st.page(0, 10).unwrap();
    let got: Vec<String> = page
        .rows
        .iter()
        .map(|r| String::from_utf8(r.msg.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(got, ["now", "due-10", "due-30-first", "due-30-second"]);
    assert_eq!(st.stats().unwrap().scheduled, 1);
}

/// Through the outbox: a scheduled message is not sent before its due time, `flush` does not
/// wait for it, the stats count it until it is due, and it keeps its msg id.
#[tokio::test]
async fn scheduled_messages_wait_in_the_file_until_due_and_flush_does_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&dir.path().join("o.db"), &broker).await.unwrap();
    let soon = std::time::SystemTime::now() + Duration::from_millis(300);
    let late = std::time::SystemTime::now() + Duration::from_secs(3600);
    let (a, b) = (msg("s", "soon"), msg("s", "late"));
    let id = crate::headers::msg_id(&a.headers).unwrap().to_owned();
    outbox.schedule(a, soon).await.unwrap();
    outbox.schedule(b, late).await.unwrap();
    outbox.enqueue(msg("s", "now")).await.unwrap();
    flush(&outbox).await;
    let stats = outbox.stats().await.unwrap();
    assert!(stats.scheduled >= 1 && stats.scheduled <= 2, "{stats:?}");
    assert_eq!(stats.schema_version, 4);
    // Wait for the one due soon (not the one due in an hour).
    tokio::time::timeout(LIMIT, async {
        while broker.confirmed().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the due message was never sent");
    assert_eq!(broker.payloads(), ["now", "soon"]);
    let sent = broker.sent_at.lock().unwrap().clone();
    let (_, at) = sent.iter().find(|(p, _)| p == "soon").unwrap();
    assert!(*at >= soon, "sent before its due time");
    assert_eq!(
        crate::headers::msg_id(&broker.confirmed()[1].headers),
        Some(id.as_str())
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.scheduled, stats.depth), (1, 0));
    assert!(stats
        .next_due
        .is_some_and(|d| d >= late - Duration::from_millis(1)));
}

/// The inbox table, which has no index by time, is pruned past its handler's window by a scan
/// that waits for enough completions and a quarter of the window: completions past the window
/// go, those within it stay, and a prune at open removes what aged meanwhile.
#[tokio::test]
async fn inbox_completions_past_the_window_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let broker = FakeBroker::new(ConnectionState::Connected);
    let outbox = open(&path, &broker).await.unwrap();
    let window = Duration::from_secs(2);
    let inbox = crate::inbox::Inbox::in_file(window, outbox.inbox_table("h"))
        .await
        .unwrap();
    // Concurrent, so that they share group commits and take a small part of the window.
    let complete = |prefix: &'static str, n: usize| {
        let inbox = &inbox;
        async move {
            let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
            let all = ids.iter().map(|id| inbox.complete(Some(id), Vec::new()));
            for r in futures::future::join_all(all).await {
                r.unwrap();
            }
        }
    };
    let inbox_rows = || async { outbox.stats().await.unwrap().inbox };
    complete("old", 100).await;
    // Fewer completions than a prune waits for: nothing pruned yet.
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    complete("young", 3_000).await;
    assert_eq!(inbox_rows().await, 3_100);
    // The 4,096th completion prunes (a quarter of the window has passed since open).
    complete("more", 996).await;
    let after = inbox_rows().await;
    assert_eq!(
        after, 3_996,
        "the 100 past the window pruned, the young kept"
    );
    drop(inbox);
    // At open: everything aged past the window meanwhile.
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let again = crate::inbox::Inbox::in_file(window, outbox.inbox_table("h"))
        .await
        .unwrap();
    drop(again);
    assert_eq!(inbox_rows().await, 0);
}
