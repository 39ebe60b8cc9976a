//! `NatsBroker` on a real nats-server: the behaviours the conformance suite does not cover
//! (oversize against a small server limit, slow consumers, confirm, state, options).

use std::time::Duration;

use bus::{Broker, ConnectionState, Error, Headers, NatsBroker, NatsOptions, RawMessage};
use bus_tests::server::{monitor_count, NatsServer};
use bus_tests::support::{nats_options, wait_state};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(20);

fn options(url: &str) -> NatsOptions {
    nats_options(url, Duration::from_secs(5))
}

async fn connected(o: NatsOptions) -> NatsBroker {
    let broker = NatsBroker::connect(o).await.expect("connect");
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    broker
}

async fn next(sub: &mut bus::RawSubscription) -> RawMessage {
    tokio::time::timeout(GUARD, sub.messages.next())
        .await
        .expect("no message in time")
        .expect("subscription ended")
}

#[tokio::test]
async fn publish_subscribe_with_headers_and_wildcards() {
    let server = NatsServer::start();
    let broker = connected(options(&server.url())).await;
    assert_eq!(broker.kind(), "nats");
    let mut star = broker
        .subscribe("plugin.outbound.*.a1", None)
        .await
        .unwrap();
    let mut tail = broker.subscribe("plugin.>", None).await.unwrap();
    let mut headers = Headers::new();
    headers.insert("Bus-Msg-Id", "m1");
    headers.append("Tag", "x");
    headers.append("Tag", "y");
    let msg = RawMessage::new("plugin.outbound.slack.a1", &b"payload"[..]).with_headers(headers);
    broker.publish(msg.clone()).await.unwrap();
    broker.confirm().await.unwrap();
    for sub in [&mut star, &mut tail] {
        let got = next(sub).await;
        assert_eq!(got.subject, msg.subject);
        assert_eq!(got.payload, msg.payload);
        assert_eq!(got.headers.get("Bus-Msg-Id"), Some("m1"));
        assert_eq!(got.headers.get_all("Tag").collect::<Vec<_>>(), ["x", "y"]);
    }
    assert_eq!(star.stats.delivered(), 1);
    assert_eq!(star.stats.dropped(), 0);
}

#[tokio::test]
async fn invalid_subjects_are_refused_before_sending() {
    let server = NatsServer::start();
    let broker = connected(options(&server.url())).await;
    let err = broker
        .publish(RawMessage::new("a.*", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err}");
    let err = broker.subscribe("a..b", None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err}");
    assert_eq!(*broker.state().borrow(), ConnectionState::Connected);
}

#[tokio::test]
async fn request_reply_no_responders_and_timeout() {
    let server = NatsServer::start();
    let broker = connected(options(&server.url())).await;

    let err = broker
        .request(RawMessage::new("svc.none", "q"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoResponders { ref subject } if subject == "svc.none"),
        "{err}"
    );

    // A subscriber that never answers: the per-call timeout applies, not the default.
    let _silent = broker.subscribe("svc.silent", None).await.unwrap();
    broker.confirm().await.unwrap();
    let err = broker
        .request(
            RawMessage::new("svc.silent", "q"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(300)),
        "{err}"
    );

    let mut service = broker.subscribe("svc.echo", Some("workers")).await.unwrap();
    broker.confirm().await.unwrap();
    let responder = async {
        let req = next(&mut service).await;
        let mut h = Headers::new();
        h.insert(
            "Bus-Correlation-Id",
            req.headers
                .get("Bus-Correlation-Id")
                .unwrap_or("-")
                .to_owned(),
        );
        let mut reply = RawMessage::new(
            req.reply.expect("a request has a reply subject"),
            req.payload,
        );
        reply.headers = h;
        broker.publish(reply).await.unwrap();
    };
    let mut h = Headers::new();
    h.insert("Bus-Correlation-Id", "c-42");
    let request = broker.request(
        RawMessage::new("svc.echo", "ping").with_headers(h),
        Duration::from_secs(10),
    );
    let (reply, ()) = tokio::join!(request, responder);
    let reply = reply.unwrap();
    assert_eq!(&reply.payload[..], b"ping");
    assert_eq!(reply.headers.get("Bus-Correlation-Id"), Some("c-42"));
}

#[tokio::test]
async fn confirm_works_despite_a_catch_all_subscriber() {
    let server = NatsServer::start();
    let broker = connected(options(&server.url())).await;
    // Another client taps everything and never answers anything.
    let tap = connected(options(&server.url())).await;
    let _all = tap.subscribe(">", None).await.unwrap();
    tap.confirm().await.unwrap();
    let mut sub = broker.subscribe("c.x", None).await.unwrap();
    broker.publish(RawMessage::new("c.x", "1")).await.unwrap();
    broker.confirm().await.unwrap();
    broker.confirm().await.unwrap();
    assert_eq!(next(&mut sub).await.payload, "1");
}

#[tokio::test]
async fn queue_group_members_share_messages() {
    let server = NatsServer::start();
    let broker = connected(options(&server.url())).await;
    let mut a = broker.subscribe("jobs.*", Some("q")).await.unwrap();
    let mut b = broker.subscribe("jobs.*", Some("q")).await.unwrap();
    broker.confirm().await.unwrap();
    for i in 0..100 {
        broker
            .publish(RawMessage::new(format!("jobs.{i}"), "x"))
            .await
            .unwrap();
    }
    broker.confirm().await.unwrap();
    let mut total = 0;
    while total < 100 {
        tokio::select! {
            Some(_) = a.messages.next() => total += 1,
            Some(_) = b.messages.next() => total += 1,
            _ = tokio::time::sleep(GUARD) => panic!("only {total} of 100 queue messages arrived"),
        }
    }
    // Each message went to exactly one member.
    assert_eq!(a.stats.delivered() + b.stats.delivered(), 100);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a.messages.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn oversize_is_refused_and_the_connection_stays_up() {
    let server = NatsServer::builder().max_payload(4096).start();
    let broker = connected(options(&server.url())).await;
    // max_payload is read from the server's INFO just after the connect.
    tokio::time::timeout(GUARD, async {
        while broker.max_payload() != 4096 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("max_payload never became the server's 4096");
    let mut state = broker.state();
    state.mark_unchanged();
    let mut sub = broker.subscribe("big.>", None).await.unwrap();

    let err = broker
        .publish(RawMessage::new("big.one", vec![0u8; 5000]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                size: 5000,
                max: 4096,
                ..
            }
        ),
        "{err}"
    );
    // Headers count too: 4000 bytes of payload plus 200 of headers is over.
    let mut h = Headers::new();
    h.insert("Pad", "p".repeat(200));
    let err = broker
        .publish(RawMessage::new("big.two", vec![0u8; 4000]).with_headers(h.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    let err = broker
        .request(
            RawMessage::new("big.three", vec![0u8; 5000]),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");

    broker
        .publish(RawMessage::new("big.ok", vec![1u8; 3000]).with_headers(h))
        .await
        .unwrap();
    broker.confirm().await.unwrap();
    let got = next(&mut sub).await;
    assert_eq!(got.subject, "big.ok");
    assert_eq!(got.payload.len(), 3000);
    assert!(
        !state.has_changed().unwrap(),
        "the connection must not drop"
    );
    assert_eq!(*state.borrow(), ConnectionState::Connected);
}

#[tokio::test]
async fn slow_consumer_drops_are_counted_and_reported() {
    let server = NatsServer::start();
    let mut o = options(&server.url());
    o.subscription_capacity = Some(8);
    let broker = connected(o).await;
    let mut sub = broker.subscribe("flood", None).await.unwrap();
    broker.confirm().await.unwrap();
    const N: u64 = 2000;
    for _ in 0..N {
        broker.publish(RawMessage::new("flood", "x")).await.unwrap();
    }
    broker.confirm().await.unwrap();
    // The pump counts drops as it moves messages; wait until it has seen all N.
    tokio::time::timeout(GUARD, async {
        while sub.stats.dropped() + 8 < N {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} drops counted", sub.stats.dropped()));
    let mut delivered = 0;
    while tokio::time::timeout(Duration::from_millis(300), sub.messages.next())
        .await
        .is_ok_and(|m| m.is_some())
    {
        delivered += 1;
    }
    // Exact accounting: every message was either delivered or counted as dropped.
    assert_eq!(delivered, 8, "the buffer holds 8");
    assert_eq!(sub.stats.delivered(), delivered);
    assert_eq!(sub.stats.dropped() + delivered, N);
}

#[tokio::test]
async fn starts_disconnected_and_confirm_fails_while_the_server_is_down() {
    let port = bus_tests::server::free_port();
    let mut o = options(&format!("nats://127.0.0.1:{port}"));
    o.request_timeout = Duration::from_millis(300);
    let broker = NatsBroker::connect(o)
        .await
        .expect("connect succeeds without a server");
    assert_eq!(*broker.state().borrow(), ConnectionState::Disconnected);
    let err = broker.confirm().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn configuration_errors_fail_connect() {
    let err = NatsBroker::connect(NatsOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = NatsBroker::connect(NatsOptions::new(["not a url ::"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let mut o = NatsOptions::new(["nats://127.0.0.1:4222"]);
    o.auth = bus::NatsAuth::CredentialsFile("/nonexistent/x.creds".into());
    let err = NatsBroker::connect(o).await.unwrap_err();
    assert!(err.to_string().contains("credentials file"), "{err}");
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, bus::Message)]
#[subject("agent.events.<n>")]
struct Flood {
    n: String,
}

#[tokio::test]
async fn typed_stream_reports_slow_consumer_and_goes_on() {
    let server = NatsServer::start();
    let bus = bus::Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .subscription_capacity(4)
        .connect()
        .await
        .unwrap();
    let mut state = bus.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
    let mut sub = Flood::subscribe(&bus, Flood::filter()).await.unwrap();
    bus.broker().confirm().await.unwrap();
    for i in 0..500 {
        Flood { n: i.to_string() }.publish(&bus).await.unwrap();
    }
    bus.broker().confirm().await.unwrap();
    tokio::time::timeout(GUARD, async {
        while sub.stats().dropped() + 4 < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("drops not counted");
    let mut reported = 0;
    let mut received = 0;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        match item {
            Ok(env) => {
                assert!(env.subject().starts_with("agent.events."));
                received += 1;
            }
            Err(Error::SlowConsumer { dropped, .. }) => reported += dropped,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(received, 4);
    assert_eq!(
        reported + received,
        500,
        "every drop is reported by the typed stream"
    );
}

/// `"num_connections": N` in a `/connz` body.
fn connections(server: &NatsServer) -> usize {
    let body = server.monitor("/connz").unwrap();
    monitor_count(&body, "num_connections").expect("num_connections in /connz")
}

#[tokio::test]
async fn dropping_the_broker_closes_its_connection() {
    let server = NatsServer::start();
    let broker = connected(options(&server.url())).await;
    let sub = broker.subscribe("d.x", None).await.unwrap();
    broker.confirm().await.unwrap();
    assert_eq!(connections(&server), 1);
    let mut state = broker.state();
    drop(sub);
    drop(broker);
    assert_eq!(*state.borrow_and_update(), ConnectionState::Closed);
    tokio::time::timeout(GUARD, async {
        while connections(&server) != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection stayed open after the broker was dropped");
}
