//! Fault tests of the outbox on the real nats-server: publishing while the server is down, a
//! publisher killed with SIGKILL, a server killed mid-burst, an oversize message.
//!
//! (b) and (c) print their figures (acknowledged, lost, duplicates; and what raw async-nats loses
//! in the same kill) to stderr: run with `--nocapture` to read them.

#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::headers::MSG_ID;
use bus::{Bus, ConnectionState, Headers, RawMessage};
use bus_tests::server::{free_port, NatsServer};
use bus_tests::support::{collect, flush, publish_around};
use futures::StreamExt;

/// Guards against hangs; never a timing assertion.
const GUARD: Duration = Duration::from_secs(45);

async fn nats_bus(url: &str, outbox: &std::path::Path) -> Bus {
    Bus::builder()
        .nats([url])
        .outbox_path(outbox)
        .reconnect_delay(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect must succeed, even with the server down")
}

async fn wait_connected(bus: &Bus) {
    let mut rx = bus.watch_state();
    tokio::time::timeout(GUARD, rx.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("never connected")
        .expect("state watch closed");
}

fn seqs(msgs: &[RawMessage]) -> Vec<u64> {
    msgs.iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect()
}

/// (a) Publish while the server is down; start it; everything arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_while_down_arrive_in_order_once_the_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bus = nats_bus(
        &format!("nats://127.0.0.1:{port}"),
        &dir.path().join("o.db"),
    )
    .await;
    assert_eq!(bus.state(), ConnectionState::Disconnected);
    // Same connection as the drainer: the client re-subscribes before it sends anything else.
    let mut sub = bus.broker().subscribe("a.seq", None).await.unwrap();
    const N: u64 = 5_000;
    let mut ids = Vec::new();
    for i in 0..N {
        let mut h = Headers::new();
        let id = bus::new_msg_id();
        h.append(MSG_ID, id.clone());
        ids.push(id);
        bus.publish_raw(RawMessage::new("a.seq", i.to_string()).with_headers(h))
            .await
            .unwrap();
    }
    let stats = bus.outbox_stats().await.unwrap().unwrap();
    assert_eq!(stats.depth, N, "everything waits in the outbox");

    let _server = NatsServer::builder().port(port).start();
    flush(&bus, GUARD).await;
    let got = collect(&mut sub, N as usize, Duration::from_secs(5)).await;
    assert_eq!(
        seqs(&got),
        (0..N).collect::<Vec<_>>(),
        "all, once, in order"
    );
    let got_ids: Vec<&str> = got.iter().map(|m| m.headers.get(MSG_ID).unwrap()).collect();
    assert_eq!(got_ids, ids, "msg ids kept");
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
}

/// (b) A publisher process is SIGKILLed mid-stream while the server is down; a new process on
/// the same file drains everything it acknowledged, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_publisher_leaves_everything_acknowledged_to_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox_publisher"))
        .arg(&path)
        .arg(&url)
        .arg("1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start outbox_publisher");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx
                .send(line.trim().parse().expect("a sequence number"))
                .is_err()
            {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 3_000 {
        match rx.recv_timeout(GUARD) {
            Ok(seq) => acked.push(seq),
            Err(e) => panic!(
                "the publisher stopped acknowledging after {}: {e}",
                acked.len()
            ),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    assert_eq!(acked, (0..acked.len() as u64).collect::<Vec<_>>());
    let last_acked = *acked.last().unwrap();

    let server = NatsServer::builder().port(port).start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("b.seq").await.unwrap();
    client.flush().await.unwrap(); // the server has the subscription before anything drains
    let bus = nats_bus(&url, &path).await;
    flush(&bus, GUARD).await;
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        got.push(
            std::str::from_utf8(&m.payload)
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    eprintln!(
        "outbox (b): {} acknowledged before SIGKILL, {} drained by the next process",
        acked.len(),
        got.len()
    );
    // Committed-but-not-yet-printed messages may follow the last acknowledged one.
    assert!(
        got.len() as u64 > last_acked,
        "missing acknowledged messages"
    );
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
}

/// Kills the server once `received` reaches `at`, restarts it after a pause; returns how many
/// had been received when it was killed.
fn kill_and_restart_at(
    server: Arc<NatsServer>,
    received: Arc<Mutex<usize>>,
    at: usize,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + GUARD;
        while *received.lock().unwrap() < at {
            assert!(
                std::time::Instant::now() < deadline,
                "the burst never reached {at}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        server.kill();
        let at_kill = *received.lock().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        server.start_again();
        at_kill
    })
}

/// (c) The server is SIGKILLed mid-burst and restarted: every acknowledged message is received
/// (duplicates carry the same msg id). Also measures what raw async-nats loses in the same
/// situation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_burst_loses_nothing_acknowledged() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(NatsServer::start());

    // --- Through the outbox.
    let bus = nats_bus(&server.url(), &dir.path().join("o.db")).await;
    wait_connected(&bus).await;
    let mut sub = bus.broker().subscribe("c.seq", None).await.unwrap();
    let received = Arc::new(Mutex::new(0usize));
    let killer = kill_and_restart_at(server.clone(), received.clone(), N as usize / 4);
    // Several publishers, so that the queue runs ahead of the drain and full batches are in
    // flight when the server dies.
    let publishers: Vec<_> = (0..4u64)
        .map(|t| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut ids = BTreeMap::new();
                for i in (t..N).step_by(4) {
                    let id = bus::new_msg_id();
                    let mut h = Headers::new();
                    h.append(MSG_ID, id.clone());
                    bus.publish_raw(RawMessage::new("c.seq", i.to_string()).with_headers(h))
                        .await
                        .unwrap();
                    ids.insert(i, id); // acknowledged
                }
                ids
            })
        })
        .collect();
    let mut got: Vec<RawMessage> = Vec::new();
    let collector = {
        let received = received.clone();
        async move {
            let mut distinct = HashSet::new();
            while let Some(m) = sub.messages.next().await {
                distinct.insert(m.payload.clone());
                got.push(m);
                *received.lock().unwrap() = got.len();
                if distinct.len() == N as usize {
                    break;
                }
            }
            got
        }
    };
    let got = tokio::time::timeout(GUARD, collector)
        .await
        .expect("not every acknowledged message arrived");
    let mut acked = BTreeMap::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    let at_kill = killer.join().unwrap();
    assert!(at_kill < N as usize, "the kill did not land mid-burst");
    flush(&bus, GUARD).await;
    let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
    let mut duplicates = 0;
    for (seq, m) in seqs(&got).into_iter().zip(&got) {
        let id = m.headers.get(MSG_ID).unwrap();
        assert_eq!(id, acked[&seq], "seq {seq} arrived with another msg id");
        if seen.insert(seq, id).is_some() {
            duplicates += 1;
        }
    }
    let missing = acked.keys().filter(|s| !seen.contains_key(s)).count();
    assert_eq!(missing, 0, "acknowledged messages missing");
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);

    // --- The same burst and kill with raw async-nats: publish loop, then flush.
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(server.url())
        .await
        .unwrap();
    let mut raw_sub = client.subscribe("r.seq").await.unwrap();
    client.flush().await.unwrap();
    let raw_received = Arc::new(Mutex::new(0usize));
    let killer = kill_and_restart_at(server.clone(), raw_received.clone(), N as usize / 4);
    let raw_publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut reported_sent = 0u64;
            for i in 0..N {
                if client.publish("r.seq", i.to_string().into()).await.is_ok() {
                    reported_sent += 1;
                }
                if i % 100 == 99 {
                    tokio::task::yield_now().await;
                }
            }
            let flushed = client.flush().await.is_ok();
            (reported_sent, flushed)
        })
    };
    let mut raw_seen = HashSet::new();
    let _ = tokio::time::timeout(GUARD, async {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), raw_sub.next()).await {
            raw_seen.insert(m.payload.to_vec());
            *raw_received.lock().unwrap() = raw_seen.len();
        }
    })
    .await;
    let (reported_sent, flushed) = raw_publisher.await.unwrap();
    let raw_at_kill = killer.join().unwrap();
    let raw_lost = reported_sent - raw_seen.len() as u64;
    eprintln!(
        "outbox (c): server SIGKILLed mid-burst of {N}: outbox acknowledged {} and lost 0 \
         ({duplicates} duplicate deliveries, same msg id); raw async-nats reported {reported_sent} \
         sent (flush ok: {flushed}) and the server lost {raw_lost} (killed at {at_kill} and \
         {raw_at_kill} received)",
        acked.len()
    );
}

/// (d) An oversize message queued before the server's max_payload was known (the server was
/// down; once it is known, `publish` refuses such a message, see `outbox_hardening`) is
/// dead-lettered after exactly 3 attempts, without a reconnect, while the messages behind it
/// are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_dead_lettered_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bus = nats_bus(
        &format!("nats://127.0.0.1:{port}"),
        &dir.path().join("o.db"),
    )
    .await;
    let mut sub = bus.broker().subscribe("d.>", None).await.unwrap();
    let want = publish_around(&bus, "d", vec![7u8; 5000], 100).await;
    let server = NatsServer::builder().port(port).max_payload(4096).start();
    wait_connected(&bus).await;
    assert_eq!(bus.broker().max_payload(), 4096, "known once Connected");
    let mut state = bus.watch_state();
    state.mark_unchanged();
    flush(&bus, GUARD).await;
    let got = collect(&mut sub, 101, Duration::from_secs(5)).await;
    let got: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(got, want);
    let dead = bus.dead_letters().list().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subject, "d.big");
    assert_eq!(dead[0].attempts, 3, "exactly 3 attempts");
    assert!(
        dead[0].last_error.contains("max_payload"),
        "{}",
        dead[0].last_error
    );
    assert!(
        !state.has_changed().unwrap(),
        "the oversize message caused a reconnect"
    );
    assert_eq!(bus.state(), ConnectionState::Connected);

    // A server that accepts it takes the place of the old one: the replayed dead letter is
    // delivered, with its msg id.
    let port = server.port();
    drop(server);
    let _bigger = NatsServer::builder().port(port).start();
    tokio::time::timeout(GUARD, async {
        while bus.broker().max_payload() <= 5000 || bus.state() != ConnectionState::Connected {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("never reconnected to the bigger server");
    bus.dead_letters().replay(dead[0].id).await.unwrap();
    flush(&bus, GUARD).await;
    let got = collect(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject, "d.big");
    assert_eq!(got[0].payload.len(), 5000);
    assert_eq!(got[0].headers.get(MSG_ID), dead[0].headers.get(MSG_ID));
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
}

/// A v2 outbox file (`tests/data/outbox-v2.sqlite3`, written by the v2 code) is migrated on open
/// and drains to the real server completely, oldest first, its headers intact on the wire.
/// (`outbox_local` checks every field of the migrated rows and dead letters.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_file_migrates_and_drains_to_the_server_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/outbox-v2.sqlite3"),
        &path,
    )
    .unwrap();
    let port = free_port();
    // The server starts after the subscription, so nothing drains before it can be seen.
    let bus = nats_bus(&format!("nats://127.0.0.1:{port}"), &path).await;
    let mut sub = bus.broker().subscribe("fixture.>", None).await.unwrap();
    let stats = bus.outbox_stats().await.unwrap().unwrap();
    assert_eq!(
        (stats.depth, stats.dead_letters, stats.schema_version),
        (37, 4, 4)
    );
    let _server = NatsServer::builder().port(port).start();
    flush(&bus, GUARD).await;
    let got = collect(&mut sub, 38, Duration::from_secs(5)).await;
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    let want: Vec<String> = (2..40u32)
        .filter(|&i| i != 20)
        .map(|i| format!("fixture.q.{i}"))
        .collect();
    assert_eq!(subjects, want, "all 37, once, oldest first");
    for m in &got {
        let i: u32 = m.subject["fixture.q.".len()..].parse().unwrap();
        if i != 7 {
            assert_eq!(
                m.headers.get(MSG_ID),
                Some(format!("fixture-q-{i:02}").as_str())
            );
        }
        if i.is_multiple_of(3) {
            assert_eq!(m.headers.get("X-Tenant"), Some("café ☕ 日本"));
        }
        if i.is_multiple_of(5) {
            assert_eq!(
                m.headers.get_all("X-Multi").collect::<Vec<_>>(),
                ["a", "b: c"]
            );
        }
    }
    let stats = bus.outbox_stats().await.unwrap().unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 4));
}
