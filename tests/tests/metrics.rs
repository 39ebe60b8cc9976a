//! The metrics of `docs/design.md`, "Operations" read back through a real `metrics` recorder
//! (`metrics-util`'s `DebuggingRecorder`), with exact counts, on the local bus and on a real
//! nats-server with an outbox.
//!
//! The recorder is global (one per process) and its snapshot resets what it returns, so every
//! snapshot is added into one running total ([`totals`]) and the tests of this file take turns
//! ([`LOCK`]); each uses message types and handler names of its own.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bus::{Bus, HandlerOptions, Message, RawMessage, RetryPolicy};
use bus_tests::server::NatsServer;
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};

const GUARD: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.mlocal.<channel>")]
struct LocalNote {
    channel: String,
    text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.inbound.mljob.<kind>")]
struct LocalJob {
    kind: String,
    fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.mlask.<agent>")]
#[reply(bool)]
struct LocalAsk {
    agent: String,
    fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.mnats.<channel>.<instance>")]
struct NatsNote {
    channel: String,
    instance: String,
    seq: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.mnask.<agent>")]
#[reply(u32)]
struct NatsAsk {
    agent: String,
    n: u32,
}

/// The tests of this file one at a time: they share the recorder and `bus_confirmed_total`.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What was recorded so far, by name and sorted labels.
type Key = (String, Vec<(String, String)>);

#[derive(Debug, Clone, PartialEq)]
enum Total {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// The recorder, installed before any bus of this process is made (a bus resolves its handles
/// when it starts).
fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("another metrics recorder is installed");
        snapshotter
    })
}

/// Everything recorded since the start: counters added up, histograms' values appended,
/// gauges at their last value.
fn totals() -> HashMap<Key, Total> {
    static TOTALS: OnceLock<Mutex<HashMap<Key, Total>>> = OnceLock::new();
    let mut totals = TOTALS.get_or_init(Default::default).lock().unwrap();
    for (ck, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = ck.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let entry = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(n) => {
                let t = totals.entry(entry).or_insert(Total::Counter(0));
                if let Total::Counter(c) = t {
                    *c += n;
                }
            }
            DebugValue::Gauge(v) => {
                totals.insert(entry, Total::Gauge(v.into_inner()));
            }
            DebugValue::Histogram(vs) => {
                let t = totals.entry(entry).or_insert(Total::Histogram(Vec::new()));
                if let Total::Histogram(all) = t {
                    all.extend(vs.into_iter().map(|v| v.into_inner()));
                }
            }
        }
    }
    totals.clone()
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    match totals().get(&key(name, labels)) {
        Some(Total::Counter(n)) => *n,
        None => 0,
        Some(other) => panic!("{name} is not a counter: {other:?}"),
    }
}

/// A gauge in `totals` (one snapshot for every gauge read together: the recorder resets a
/// gauge to 0 when it reports it).
fn gauge(totals: &HashMap<Key, Total>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match totals.get(&key(name, labels)) {
        Some(Total::Gauge(v)) => Some(*v),
        None => None,
        Some(other) => panic!("{name} is not a gauge: {other:?}"),
    }
}

fn histogram(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match totals().get(&key(name, labels)) {
        Some(Total::Histogram(v)) => v.clone(),
        None => Vec::new(),
        Some(other) => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// Waits until the counter reaches `want` (handlers run on their own tasks), then checks it
/// stays there.
async fn counter_becomes(name: &str, labels: &[(&str, &str)], want: u64) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while counter(name, labels) < want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counter(name, labels), want, "{name} {labels:?}");
}

#[tokio::test]
async fn local_bus_counts_publishes_deliveries_handlers_and_requests() {
    let _turn = LOCK.lock().await;
    snapshotter();
    let bus = Bus::local().await.unwrap();
    let note = [
        ("type", "LocalNote"),
        ("subject", "plugin.outbound.mlocal.<channel>"),
    ];

    // Typed subscription: three messages, then one that does not decode.
    let mut sub = LocalNote::subscribe(&bus, LocalNote::filter())
        .await
        .unwrap();
    for i in 0..3 {
        LocalNote {
            channel: "c1".into(),
            text: format!("n{i}"),
        }
        .publish(&bus)
        .await
        .unwrap();
    }
    bus.publish_raw(RawMessage::new("plugin.outbound.mlocal.c2", "not msgpack"))
        .await
        .unwrap();
    for _ in 0..3 {
        sub.next().await.unwrap().unwrap();
    }
    assert!(
        sub.next().await.unwrap().is_err(),
        "the raw payload must not decode"
    );
    assert_eq!(counter("bus_published_total", &note), 3);
    assert!(
        counter(
            "bus_published_total",
            &[("type", "raw"), ("subject", "raw")]
        ) >= 1
    );
    assert_eq!(counter("bus_delivered_total", &note), 4);
    assert_eq!(counter("bus_decode_errors_total", &note), 1);

    // A handler: two messages succeed, one fails both of its two attempts.
    let handler = bus
        .handle_with(
            LocalJob::filter(),
            HandlerOptions::named("metrics-jobs").retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .base(Duration::from_millis(1)),
            ),
            |job| async move {
                if job.fail {
                    Err("asked to fail")
                } else {
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    for fail in [false, true, false] {
        LocalJob {
            kind: "k".into(),
            fail,
        }
        .publish(&bus)
        .await
        .unwrap();
    }
    let by_handler = [("handler", "metrics-jobs"), ("type", "LocalJob")];
    counter_becomes(
        "bus_dead_lettered_total",
        &[("origin", "handler:metrics-jobs")],
        1,
    )
    .await;
    handler.stop().await;
    assert_eq!(counter("bus_handler_attempts_total", &by_handler), 4);
    assert_eq!(counter("bus_handler_failures_total", &by_handler), 2);
    let job = [
        ("type", "LocalJob"),
        ("subject", "plugin.inbound.mljob.<kind>"),
    ];
    assert_eq!(counter("bus_published_total", &job), 3);
    assert_eq!(counter("bus_delivered_total", &job), 3);

    // Requests: two answered, one answered with the handler's error.
    let server = LocalAsk::serve(&bus, LocalAsk::filter(), |ask| async move {
        if ask.fail {
            Err("no")
        } else {
            Ok(true)
        }
    })
    .await
    .unwrap();
    for fail in [false, false, true] {
        let _ = LocalAsk {
            agent: "a".into(),
            fail,
        }
        .request(&bus)
        .await;
    }
    server.stop().await;
    let ask = [
        ("type", "LocalAsk"),
        ("subject", "agent.route.mlask.<agent>"),
    ];
    let ok = histogram(
        "bus_request_duration_seconds",
        &[ask[0], ask[1], ("outcome", "ok")],
    );
    assert_eq!(ok.len(), 2, "{ok:?}");
    assert!(ok.iter().all(|s| *s > 0.0 && *s < GUARD.as_secs_f64()));
    let remote = histogram(
        "bus_request_duration_seconds",
        &[ask[0], ask[1], ("outcome", "remote_error")],
    );
    assert_eq!(remote.len(), 1);
    assert_eq!(counter("bus_delivered_total", &ask), 3);
    // Requests are not publishes.
    assert_eq!(counter("bus_published_total", &ask), 0);
}

#[tokio::test]
async fn nats_bus_counts_the_outbox_and_requests() {
    let _turn = LOCK.lock().await;
    snapshotter();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite3");
    let receiver = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let mut sub = NatsNote::subscribe(&receiver, NatsNote::filter().channel("m"))
        .await
        .unwrap();
    let served = NatsAsk::serve(&receiver, NatsAsk::filter(), |ask| async move {
        Ok::<_, bus::Error>(ask.n + 1)
    })
    .await
    .unwrap();
    let confirmed_before = counter("bus_confirmed_total", &[]);
    let sender = Bus::builder()
        .nats([server.url()])
        .outbox_path(&path)
        .connect()
        .await
        .unwrap();
    // The subscription and the responder are live at the server once a round trip went through.
    receiver.flush().await.unwrap();
    for seq in 0..5 {
        NatsNote {
            channel: "m".into(),
            instance: format!("i{seq}"),
            seq,
        }
        .publish(&sender)
        .await
        .unwrap();
    }
    tokio::time::timeout(GUARD, sender.flush())
        .await
        .unwrap()
        .unwrap();
    for _ in 0..5 {
        tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let note = [
        ("type", "NatsNote"),
        ("subject", "plugin.outbound.mnats.<channel>.<instance>"),
    ];
    assert_eq!(counter("bus_published_total", &note), 5);
    assert_eq!(counter("bus_confirmed_total", &[]) - confirmed_before, 5);
    assert_eq!(counter("bus_delivered_total", &note), 5);
    assert_eq!(counter("bus_decode_errors_total", &note), 0);
    assert_eq!(
        counter("bus_dead_lettered_total", &[("origin", "outbox")]),
        0
    );
    // The gauges: what `health` (and the timer) read from the file.
    assert_eq!(sender.health().await.outbox_depth, 0);
    let outbox = [("outbox", path.to_str().unwrap())];
    let now = totals();
    assert_eq!(gauge(&now, "bus_outbox_depth", &outbox), Some(0.0));
    assert_eq!(
        gauge(&now, "bus_outbox_oldest_age_seconds", &outbox),
        Some(0.0)
    );

    for n in 0..3 {
        let reply = NatsAsk {
            agent: "a".into(),
            n,
        }
        .request(&sender)
        .await
        .unwrap();
        assert_eq!(*reply.body(), n + 1);
    }
    let ask = [
        ("type", "NatsAsk"),
        ("subject", "agent.route.mnask.<agent>"),
    ];
    let ok = histogram(
        "bus_request_duration_seconds",
        &[ask[0], ask[1], ("outcome", "ok")],
    );
    assert_eq!(ok.len(), 3, "{ok:?}");
    assert_eq!(counter("bus_delivered_total", &ask), 3);
    served.stop().await;

    // With the server gone, what is published waits in the outbox, and the gauges say so.
    server.kill();
    let mut state = sender.watch_state();
    tokio::time::timeout(
        GUARD,
        state.wait_for(|s| *s != bus::ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    for seq in 0..2 {
        NatsNote {
            channel: "m".into(),
            instance: "down".into(),
            seq,
        }
        .publish(&sender)
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sender.health().await.outbox_depth, 2);
    let now = totals();
    assert_eq!(gauge(&now, "bus_outbox_depth", &outbox), Some(2.0));
    let age = gauge(&now, "bus_outbox_oldest_age_seconds", &outbox).unwrap();
    assert!(age > 0.0 && age < GUARD.as_secs_f64(), "{age}");
    assert_eq!(counter("bus_published_total", &note), 7);
    assert_eq!(counter("bus_confirmed_total", &[]) - confirmed_before, 5);
}
