//! `bus::testing` on both backends: the same scenario, the same assertions, on the embedded
//! broker and on a real nats-server with JetStream (a declared stream, a durable handler, an
//! outbox in a temporary directory). No sleeps: `wait_for` and `wait_idle`.

use std::time::Duration;

use bus::stream::StreamConfig;
use bus::testing::{Kind, TestBus};
use bus::HandlerOptions;
use bus_tests::jetstream::JsServer;
use bus_tests::msgs::{outbound, Delegate, Outbound, RouteReply};

const GUARD: Duration = Duration::from_secs(30);

/// A durable handler takes five messages, a responder answers a request: the record has each
/// of them once, in order, with the msg ids the publisher gave them.
async fn scenario(t: &TestBus) {
    let bus = t.bus();
    let handler = bus
        .handle_with(
            Outbound::filter().channel("th"),
            HandlerOptions::named("durable").durable("th"),
            |_m| async { Ok::<_, bus::Error>(()) },
        )
        .await
        .unwrap();
    let _serve = Delegate::serve(bus, Delegate::filter(), |req| async move {
        Ok::<_, bus::Error>(RouteReply {
            accepted: req.task == "go",
        })
    })
    .await
    .unwrap();
    for i in 0..5 {
        outbound("th", &format!("i{i}"), "x")
            .publish(bus)
            .await
            .unwrap();
    }
    // On JetStream the message waits in the stream until the puller fetches it: wait for its
    // record first, then for the handler to finish.
    t.wait_for::<Outbound>(|o| o.record.kind == Kind::Consumed && o.instance == "i4")
        .await;
    t.wait_idle().await;
    let reply = Delegate {
        agent: "planner".into(),
        task: "go".into(),
    }
    .request(bus)
    .await
    .unwrap();
    assert!(reply.accepted);
    t.wait_idle().await;

    assert_eq!(handler.stats().handled(), 5);
    let published = t.published::<Outbound>();
    let consumed = t.consumed::<Outbound>();
    assert_eq!(published.len(), 5, "{}", bus.broker().kind());
    assert_eq!(consumed.len(), 5, "{}", bus.broker().kind());
    for (p, c) in published.iter().zip(&consumed) {
        assert_eq!(p.instance, c.instance, "in order");
        assert!(p.record.msg_id.is_some());
        assert_eq!(p.record.msg_id, c.record.msg_id);
    }
    assert_eq!(t.requests::<Delegate>().len(), 1);
    assert_eq!(t.consumed::<Delegate>().len(), 1);
    assert_eq!(t.replies().len(), 1);
    assert!(t.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_same_record_on_the_embedded_broker_and_on_jetstream() {
    let local = TestBus::builder()
        .configure(|b| b.wire_headers(bus::WireHeaders::Full))
        .start()
        .await
        .unwrap();
    scenario(&local).await;

    let server = JsServer::start();
    let nats = TestBus::builder()
        .nats(&server.url())
        .configure(|b| {
            b.reconnect_delay(Duration::from_millis(100))
                .wait_for_connection(GUARD)
                .stream(StreamConfig::new("TH", ["plugin.outbound.th.>"]))
        })
        .start()
        .await
        .unwrap();
    nats.streams_ready(GUARD).await.unwrap();
    scenario(&nats).await;
}
