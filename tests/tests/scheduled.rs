//! Delivery later (`publish_after` / `publish_at`) against a real nats-server (run it on both
//! lines with `NATS_SERVER_BIN`; it needs no server feature): 1,000 messages due over 5 s, the
//! publisher process SIGKILLed after it scheduled them and started again: every one delivered,
//! none before its due time; the lateness is printed (p50, p99, max), not asserted. Also: without
//! an outbox (local broker, NATS `.no_outbox()`) a message waits in memory, and with one it shows
//! in the stats and the read-only view until it is due.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus::outbox::OutboxFile;
use bus::Bus;
use bus_tests::msgs::{outbound, Outbound};
use bus_tests::server::NatsServer;
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(60);

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Starts the publisher in scheduled mode; returns it and a channel of its stdout lines.
fn publisher(
    path: &std::path::Path,
    url: &str,
    count: u64,
    (start, span): (u64, u64),
) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox_publisher"))
        .arg(path)
        .arg(url)
        .arg(count.to_string())
        .arg(start.to_string())
        .arg(span.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start outbox_publisher");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn expect_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(GUARD)
        .unwrap_or_else(|e| panic!("the publisher never said {what}: {e}"))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 1,000 messages scheduled over 5 s by a publisher process that is then SIGKILLed and started
/// again on the same outbox file: every one is delivered, none before its due time.
/// Duplicates (a batch sent but not confirmed when the process died) and lateness are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_survive_a_publisher_restart_and_none_is_early() {
    const N: u64 = 1_000;
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let client = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let mut sub = Outbound::subscribe(&client, Outbound::filter().channel("sched"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    // Due from 3 s to 8 s from now: the first process schedules them all and is killed, the
    // second sends them.
    let start = unix_ms(SystemTime::now()) + 3_000;
    let (mut first, rx) = publisher(&path, &server.url(), N, (start, 5_000));
    assert_eq!(expect_line(&rx, "ready"), "ready");
    for seq in 0..N {
        assert_eq!(expect_line(&rx, "an acknowledgement"), seq.to_string());
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let killed_at = unix_ms(SystemTime::now());
    let stats = OutboxFile::open_read_only(&path).unwrap().stats().unwrap();
    eprintln!(
        "scheduled: {} waiting in the file after the kill ({} ms before the first is due)",
        stats.scheduled,
        start as i64 - killed_at as i64
    );
    let (mut second, rx) = publisher(&path, &server.url(), 0, (start, 5_000));
    assert_eq!(expect_line(&rx, "ready"), "ready");
    let restarted_at = unix_ms(SystemTime::now());

    let mut got: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut duplicated = 0;
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + GUARD;
    while (got.len() as u64) < N {
        let env = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} delivered", got.len()))
            .unwrap()
            .unwrap();
        let at = unix_ms(SystemTime::now());
        let (seq, due) = env.text.split_once(':').unwrap();
        let (seq, due): (u64, u64) = (seq.parse().unwrap(), due.parse().unwrap());
        if at < due {
            early.push(seq);
        }
        if got.insert(seq, (due, at)).is_some() {
            duplicated += 1;
        }
    }
    second.kill().unwrap();
    second.wait().unwrap();
    // Lateness of the messages due after the second process was up (the others waited for it).
    let mut late: Vec<u64> = got
        .values()
        .filter(|(due, _)| *due > restarted_at)
        .map(|(due, at)| at - due)
        .collect();
    late.sort_unstable();
    let lost = N - got.len() as u64;
    if late.is_empty() {
        eprintln!("scheduled: the restart came after every due time; no lateness measured");
    } else {
        eprintln!(
            "scheduled: {N} due over 5 s, publisher killed and restarted: lost {lost}, \
             duplicated {duplicated}, early {}, lateness of the {} due after the restart: \
             p50 {} ms, p99 {} ms, max {} ms",
            early.len(),
            late.len(),
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            late.last().unwrap()
        );
    }
    assert_eq!(lost, 0);
    assert!(
        early.is_empty(),
        "delivered before their due time: {early:?}"
    );
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
}

/// Without an outbox the message waits in memory, on the local broker and on NATS; with one
/// (local broker with an outbox file) it waits in the file, counted in the stats and listed in
/// the read-only view with its due time until it is due. None is delivered before its due time.
#[tokio::test]
async fn publish_after_waits_in_memory_without_an_outbox_and_in_the_file_with_one() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let nats = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let with_file = Bus::builder()
        .local()
        .outbox_path(&path)
        .connect()
        .await
        .unwrap();
    for (what, bus) in [
        ("local", Bus::local().await.unwrap()),
        ("nats without an outbox", nats),
        ("local with an outbox", with_file),
    ] {
        let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel("later"))
            .await
            .unwrap();
        bus.flush().await.unwrap();
        let due = SystemTime::now() + Duration::from_millis(300);
        outbound("later", "a", "at")
            .publish_at(&bus, due)
            .await
            .unwrap();
        outbound("later", "a", "now").publish(&bus).await.unwrap();
        if what == "local with an outbox" {
            let stats = bus.outbox_stats().await.unwrap().unwrap();
            assert_eq!(stats.scheduled, 1, "{what}");
            let listed = OutboxFile::open_read_only(&path)
                .unwrap()
                .scheduled(10, None)
                .unwrap();
            assert_eq!(listed.len(), 1, "{what}");
            assert!(listed[0]
                .due_at
                .is_some_and(|d| d + Duration::from_millis(1) >= due));
        }
        // flush does not wait for the one not due yet.
        bus.flush().await.unwrap();
        let first = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.text, "now", "{what}");
        let later = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let at = SystemTime::now();
        assert_eq!(later.text, "at", "{what}");
        assert!(at >= due, "{what}: delivered before its due time");
        eprintln!(
            "publish_at ({what}): delivered {} ms after its due time",
            at.duration_since(due).unwrap().as_millis()
        );
        bus.close().await.unwrap();
    }
}
