//! Fault tests of the whole durable path, publisher (outbox, stream) to durable handler, on
//! real nats-servers with JetStream file storage (run on both lines with `NATS_SERVER_BIN`).
//! Each counts lost, duplicated and out-of-order messages and prints the counts
//! (`--nocapture`):
//!
//! - (a) the handler process is SIGKILLed mid-stream and started again: every message is
//!   handled; a duplicate only comes from a redelivery and carries the same msg id;
//! - (b) the server is SIGKILLed mid-stream and started again on the same store: nothing lost;
//! - (f) a 3-node cluster with an R3 stream: the node the publisher is connected to is killed
//!   mid-stream: nothing lost.
//!
//! Cases (c) and (d) (retries by redelivery, dead letter after exactly 3) are in
//! `durable_handlers.rs`, (e) (a stream at its limit with discard new) in `jetstream.rs`.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::stream::StreamConfig;
use bus::{Bus, Handler, HandlerOptions};
use bus_tests::jetstream::{raw_context, stream_messages, wait_until, JsCluster, JsServer};
use bus_tests::msgs::{outbound, Outbound};
use bus_tests::server::monitor_count;

const GUARD: Duration = Duration::from_secs(120);

/// What a consumer saw, in the order it saw it: `(index, msg id)` per handling.
#[derive(Debug, Default, Clone)]
struct Seen(Vec<(usize, String)>);

/// The counts of one run.
#[derive(Debug)]
struct Tally {
    published: usize,
    handled: usize,
    lost: usize,
    duplicated: usize,
    /// Duplicates whose msg id differs from the first handling's: never allowed.
    foreign_duplicates: usize,
    /// Adjacent pairs out of publish order among first handlings.
    out_of_order: usize,
}

impl Seen {
    fn unique(&self) -> usize {
        let mut ids: Vec<usize> = self.0.iter().map(|(i, _)| *i).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    fn tally(&self, published: usize) -> Tally {
        let mut first: HashMap<usize, &str> = HashMap::new();
        let mut order = Vec::new();
        let mut duplicated = 0;
        let mut foreign = 0;
        for (i, id) in &self.0 {
            match first.get(i) {
                Some(seen) => {
                    duplicated += 1;
                    if seen != id {
                        foreign += 1;
                    }
                }
                None => {
                    first.insert(*i, id);
                    order.push(*i);
                }
            }
        }
        Tally {
            published,
            handled: self.0.len(),
            lost: (0..published).filter(|i| !first.contains_key(i)).count(),
            duplicated,
            foreign_duplicates: foreign,
            out_of_order: order.windows(2).filter(|w| w[0] > w[1]).count(),
        }
    }
}

impl Tally {
    fn print(&self, case: &str) {
        eprintln!(
            "{case}: published {}, handled {} times: lost {}, duplicated {} (all by redelivery with the same msg id: {}), out of order {}",
            self.published,
            self.handled,
            self.lost,
            self.duplicated,
            self.foreign_duplicates == 0,
            self.out_of_order
        );
    }

    fn assert_nothing_lost(&self) {
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(
            self.foreign_duplicates, 0,
            "a duplicate must be a redelivery of the same message: {self:?}"
        );
    }
}

/// How many messages the stream holds, asked of the first node of `urls` that answers: every
/// published message exactly once (the outbox's resends were deduped by msg id).
async fn stored(urls: &[String]) -> u64 {
    for url in urls {
        let connected = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str())
            .await;
        if connected.is_ok() {
            return stream_messages(&raw_context(url).await, "FAULTS").await;
        }
    }
    panic!("no node of {urls:?} answers");
}

/// The stream every case uses.
fn faults_stream(replicas: usize) -> StreamConfig {
    StreamConfig::new("FAULTS", ["plugin.outbound.fault.>"]).replicas(replicas)
}

/// A publisher bus with an outbox in `dir`, declaring the stream.
async fn publisher(urls: Vec<String>, dir: &std::path::Path, replicas: usize) -> Bus {
    let bus = Bus::builder()
        .nats(urls)
        .name("faults-publisher")
        .outbox_path(dir.join("outbox.sqlite3"))
        .reconnect_delay(Duration::from_millis(100))
        .stream(faults_stream(replicas))
        .connect()
        .await
        .expect("publisher connect");
    bus.streams_ready(GUARD).await.expect("stream set up");
    bus
}

/// Publishes `n` messages `0..n` on the fault channel, paced so that faults land mid-stream.
fn publish_paced(bus: Bus, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            outbound("fault", "p", &i.to_string())
                .publish(&bus)
                .await
                .expect("publish (committed to the outbox)");
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::timeout(GUARD, bus.flush())
            .await
            .expect("flush in time")
            .expect("flush");
    })
}

/// An in-process durable handler recording what it handles.
async fn record(bus: &Bus, seen: Arc<Mutex<Seen>>) -> Handler {
    bus.handle_with(
        Outbound::filter().channel("fault"),
        HandlerOptions::named("recorder")
            .durable("recorder")
            .ordered(true)
            .ack_wait(Duration::from_secs(2)),
        move |msg| {
            seen.lock().unwrap().0.push((
                msg.text.parse().expect("index"),
                msg.msg_id()
                    .expect("outbox messages carry an id")
                    .to_owned(),
            ));
            async { Ok::<_, String>(()) }
        },
    )
    .await
    .expect("handle")
}

/// (a) The handler process is SIGKILLed mid-stream, then started again.
#[tokio::test]
async fn handler_process_killed_mid_stream() {
    let server = JsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = publisher(vec![server.url()], dir.path(), 1).await;
    let n = 3_000;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let spawn = |seen: Arc<Mutex<Seen>>| -> (Child, std::thread::JoinHandle<()>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable_handler"))
            .arg(server.url())
            .arg("killed")
            .arg("2000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start durable_handler");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (id, text) = line.split_once(' ').expect("`<msg id> <text>`");
                seen.lock()
                    .unwrap()
                    .0
                    .push((text.parse().expect("index"), id.to_owned()));
            }
        });
        (child, reader)
    };
    let (mut first, first_reader) = spawn(seen.clone());
    // The durable exists once the process attached: only then are messages kept for it.
    let js = raw_context(&server.url()).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while js
        .get_stream("FAULTS")
        .await
        .unwrap()
        .consumer_info("killed")
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler never attached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publishing = publish_paced(bus.clone(), n);
    let s = seen.clone();
    wait_until("a third handled", GUARD, || {
        s.lock().unwrap().unique() >= n / 3
    })
    .await;
    first.kill().expect("SIGKILL the handler process");
    first.wait().unwrap();
    first_reader.join().unwrap();
    let at_kill = seen.lock().unwrap().0.len();
    let (mut second, second_reader) = spawn(seen.clone());
    let s = seen.clone();
    wait_until("every message handled", GUARD, || {
        s.lock().unwrap().unique() >= n
    })
    .await;
    publishing.await.unwrap();
    // Redeliveries of what the killed process had not acknowledged may still be on their way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    second_reader.join().unwrap();
    let tally = seen.lock().unwrap().tally(n);
    tally.print(&format!(
        "(a) handler process SIGKILLed after {at_kill} handlings, restarted"
    ));
    tally.assert_nothing_lost();
    assert_eq!(stored(&[server.url()]).await, n as u64, "stored once each");
}

/// Publishes `n` messages through an outbox to an in-process durable handler, runs `fault` once
/// a third is handled (it returns what it did), waits for every message, and returns the
/// counts (printed) and the outbox's dead letters.
async fn in_process_case(
    urls: Vec<String>,
    replicas: usize,
    fault: impl FnOnce() -> String,
) -> (Tally, u64) {
    let dir = tempfile::tempdir().unwrap();
    let bus = publisher(urls.clone(), dir.path(), replicas).await;
    let consumer = Bus::builder()
        .nats(urls.clone())
        .no_outbox()
        .reconnect_delay(Duration::from_millis(100))
        .stream(StreamConfig::existing("FAULTS"))
        .connect()
        .await
        .unwrap();
    consumer.streams_ready(GUARD).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let handler = record(&consumer, seen.clone()).await;
    let n = 3_000;
    let publishing = publish_paced(bus.clone(), n);
    let s = seen.clone();
    wait_until("a third handled", GUARD, || {
        s.lock().unwrap().unique() >= n / 3
    })
    .await;
    let at_fault = seen.lock().unwrap().0.len();
    let what = fault();
    let s = seen.clone();
    wait_until("every message handled", GUARD, || {
        s.lock().unwrap().unique() >= n
    })
    .await;
    publishing.await.unwrap();
    // Redeliveries of deliveries whose acks were lost may still be on their way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    handler.stop().await;
    let dead = bus.dead_letters().count().await.unwrap();
    let tally = seen.lock().unwrap().tally(n);
    tally.print(&format!("{what} after {at_fault} handlings"));
    assert_eq!(stored(&urls).await, n as u64, "stored once each");
    (tally, dead)
}

/// (b) The server is SIGKILLed mid-stream and started again on the same file store.
#[tokio::test]
async fn server_killed_mid_stream_with_file_storage() {
    let server = JsServer::start();
    let (tally, dead) = in_process_case(vec![server.url()], 1, || {
        server.kill();
        std::thread::sleep(Duration::from_millis(500));
        server.start_again();
        "(b) server SIGKILLed and restarted on its file store".to_owned()
    })
    .await;
    tally.assert_nothing_lost();
    assert_eq!(dead, 0, "no outbox dead letters");
}

/// (f) A 3-node cluster with an R3 stream: the node the publisher is connected to is killed
/// mid-stream.
#[tokio::test]
async fn cluster_node_of_the_publisher_killed() {
    let cluster = JsCluster::start(3);
    let (tally, dead) = in_process_case(cluster.urls(), 3, || {
        let victim = (0..cluster.len())
            .find(|i| {
                cluster
                    .node(*i)
                    .monitor("/connz?subs=0")
                    .is_ok_and(|body| body.contains("faults-publisher"))
            })
            .expect("the publisher is connected to a node");
        let connections = cluster
            .node(victim)
            .monitor("/connz")
            .ok()
            .and_then(|b| monitor_count(&b, "num_connections"));
        cluster.node(victim).kill();
        format!(
            "(f) 3-node cluster, R3 stream: node{victim} (the publisher's; {connections:?} client connections) SIGKILLed"
        )
    })
    .await;
    tally.assert_nothing_lost();
    assert_eq!(dead, 0, "no outbox dead letters");
}

/// A durable consumer that has to be made again starts where its handler stopped, never at
/// "new": (1) the stream is deleted and made again, and messages are stored in it before the
/// handler's consumer is back; (2) the consumer alone is deleted, and messages are stored before
/// it is back. Every message the stream acknowledged is handled. (Before: the consumer was made
/// again with `DeliverPolicy::New`, so what the stream stored in the gap was never delivered.)
#[tokio::test]
async fn consumer_made_again_misses_nothing_stored_in_the_gap() {
    use async_nats::jetstream::stream;
    let server = JsServer::start();
    let js = raw_context(&server.url()).await;
    let config = || stream::Config {
        name: "REMADE".into(),
        subjects: vec!["plugin.outbound.remade.>".into()],
        ..Default::default()
    };
    js.create_stream(config()).await.unwrap();
    let consumer = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .reconnect_delay(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<usize>::new()));
    let record = seen.clone();
    let handler = consumer
        .handle_with::<Outbound, _, _, _>(
            Outbound::filter().channel("remade"),
            HandlerOptions::named("remade")
                .durable("remade")
                .ack_wait(Duration::from_secs(2)),
            move |msg| {
                record
                    .lock()
                    .unwrap()
                    .push(msg.text.parse().expect("index"));
                async { Ok::<_, String>(()) }
            },
        )
        .await
        .expect("handle");
    // Publishes `range` as one pipelined burst; returns once the stream acknowledged each.
    let publish = |range: std::ops::Range<usize>| {
        let js = js.clone();
        async move {
            let mut acks = Vec::new();
            for i in range {
                let payload =
                    rmp_serde::to_vec_named(&outbound("remade", "p", &i.to_string())).unwrap();
                acks.push(
                    js.publish("plugin.outbound.remade.p", payload.into())
                        .await
                        .unwrap(),
                );
            }
            for ack in acks {
                ack.await.expect("stored by the stream");
            }
        }
    };
    let handled = |n: usize| {
        let seen = seen.clone();
        move || {
            let mut got = seen.lock().unwrap().clone();
            got.sort_unstable();
            got.dedup();
            got.len() >= n
        }
    };
    let lost = |n: usize| {
        let got = seen.lock().unwrap().clone();
        (0..n).filter(|i| !got.contains(i)).collect::<Vec<_>>()
    };
    publish(0..5).await;
    wait_until("the first messages handled", GUARD, handled(5)).await;

    // (1) The stream deleted and made again. The pause lets the handler see its consumer go and
    // fail to make it again (no stream), so the burst lands while it waits to retry.
    js.delete_stream("REMADE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    js.create_stream(config()).await.unwrap();
    publish(5..25).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !handled(25)() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost_after_stream = lost(25);
    eprintln!("stream deleted and made again: 20 stored in the gap, lost {lost_after_stream:?}");
    assert!(lost_after_stream.is_empty(), "lost {lost_after_stream:?}");

    // (2) The consumer alone deleted. A stand-in holds its name for the time of the burst (an
    // incompatible one: acks off), so the handler cannot make it again before the messages
    // are stored; then the stand-in goes and the handler's consumer comes back.
    let remade = js.get_stream("REMADE").await.unwrap();
    let stand_in = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("remade".into()),
        filter_subject: "plugin.outbound.remade.>".into(),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
        ..Default::default()
    };
    let mut attempts = 0;
    loop {
        // The 2.9 line's file store sometimes answers a delete with "directory not empty"
        // (error 10051) while it flushes the consumer's state: ask again.
        for tries in 1.. {
            match remade.delete_consumer("remade").await {
                Ok(_) => break,
                // A refused delete that went through after all.
                Err(e) if e.to_string().contains("not found") => break,
                Err(_) if tries < 50 => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("cannot delete the consumer: {e}"),
            }
        }
        // The handler may have made its consumer again in between: then once more.
        match remade.create_consumer(stand_in.clone()).await {
            Ok(_) => break,
            Err(e) => {
                attempts += 1;
                assert!(attempts < 20, "cannot put the stand-in in place: {e}");
            }
        }
    }
    publish(25..75).await;
    remade.delete_consumer("remade").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !handled(75)() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost_after_consumer = lost(75);
    eprintln!("consumer deleted: 50 stored in the gap, lost {lost_after_consumer:?}");
    assert!(
        lost_after_consumer.is_empty(),
        "lost {lost_after_consumer:?}"
    );
    handler.stop().await;
}
