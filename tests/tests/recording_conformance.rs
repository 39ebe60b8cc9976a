//! The broker conformance suite on `RecordingBroker`, a `Broker` written in this test crate
//! against `bus`'s public API only: the trait's contract proved by a third implementation. Then
//! a `Bus` on it (`Bus::builder().broker(..)`): typed messages go through the user's broker.

use std::sync::Arc;

use bus::{Broker, Bus};
use bus_tests::conformance::{self, Caps, Fixture};
use bus_tests::msgs::{Delegate, Outbound, RouteReply};
use bus_tests::recording::RecordingBroker;
use futures::StreamExt;

struct Recording {
    broker: RecordingBroker,
}

const CAPACITY: usize = 1_000;

impl Fixture for Recording {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }
    fn caps(&self) -> Caps {
        Caps {
            subscription_capacity: CAPACITY,
            exact_drop_count: true,
        }
    }
}

async fn recording() -> Recording {
    Recording {
        broker: RecordingBroker::new(CAPACITY),
    }
}

bus_tests::conformance_tests!(recording);

/// Every check in a row on one broker: checks do not disturb each other, and every
/// subscription is gone once its stream is dropped.
#[tokio::test]
async fn all_on_one_broker() {
    let broker = RecordingBroker::new(20_000);
    conformance::all(
        &broker,
        Caps {
            subscription_capacity: 20_000,
            exact_drop_count: true,
        },
    )
    .await;
    assert_eq!(broker.subscription_count(), 0);
}

/// A `Bus` on a broker of the user's own: typed publish, subscribe, request and serve go
/// through it, and it saw every message with the subject the derive built.
#[tokio::test]
async fn bus_runs_on_a_custom_broker() {
    let broker = Arc::new(RecordingBroker::new(CAPACITY));
    let bus = Bus::builder()
        .broker(broker.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(bus.broker().kind(), "recording");
    let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel("slack"))
        .await
        .unwrap();
    for i in 0..3 {
        Outbound {
            channel: "slack".into(),
            instance: format!("a{i}"),
            text: format!("hi {i}"),
        }
        .publish(&bus)
        .await
        .unwrap();
    }
    for i in 0..3 {
        let env = sub.next().await.unwrap().unwrap();
        assert_eq!(env.subject(), format!("plugin.outbound.slack.a{i}"));
        assert_eq!(env.text, format!("hi {i}"));
    }
    let served = Delegate::serve(&bus, Delegate::filter(), |req| async move {
        Ok::<_, bus::Error>(RouteReply {
            accepted: req.task == "plan",
        })
    })
    .await
    .unwrap();
    let reply = Delegate {
        agent: "planner".into(),
        task: "plan".into(),
    }
    .request(&bus)
    .await
    .unwrap();
    assert!(reply.accepted);
    bus.flush().await.unwrap();
    served.stop().await;

    let seen: Vec<String> = broker
        .published()
        .into_iter()
        .map(|m| m.subject)
        .filter(|s| !s.starts_with("_INBOX."))
        .collect();
    assert_eq!(
        seen,
        [
            "plugin.outbound.slack.a0",
            "plugin.outbound.slack.a1",
            "plugin.outbound.slack.a2",
            "agent.route.planner",
        ]
    );
    // The request carried its correlation id, and the reply (to an inbox) copied it back.
    let all = broker.published();
    let req = all
        .iter()
        .find(|m| m.subject == "agent.route.planner")
        .unwrap();
    let corr = req
        .headers
        .get("Bus-Correlation-Id")
        .expect("correlation id");
    let reply = all
        .iter()
        .find(|m| m.subject.starts_with("_INBOX."))
        .unwrap();
    assert_eq!(reply.headers.get("Bus-Correlation-Id"), Some(corr));
}

/// A header NATS cannot carry is refused by a typed publish on every kind of bus, before
/// anything reaches the broker or the outbox.
#[tokio::test]
async fn typed_publish_refuses_bad_headers_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let recording = Arc::new(RecordingBroker::new(CAPACITY));
    let buses = [
        Bus::local().await.unwrap(),
        Bus::builder()
            .broker(recording.clone())
            .connect()
            .await
            .unwrap(),
        Bus::builder()
            .outbox_path(dir.path().join("outbox.sqlite3"))
            .connect()
            .await
            .unwrap(),
    ];
    let msg = Outbound {
        channel: "slack".into(),
        instance: "a1".into(),
        text: "hi".into(),
    };
    for bus in &buses {
        for (name, value) in [("Bad Name", "v"), ("X-Crlf", "a\r\nb"), ("X-Nul", "a\0b")] {
            let mut h = bus::Headers::new();
            h.insert(name, value);
            match bus.publish_with_headers(&msg, h).await {
                Err(bus::Error::InvalidHeader { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{bus:?}: header {name:?}: want InvalidHeader, got {other:?}"),
            }
        }
        bus.flush().await.unwrap();
    }
    assert!(recording.published().is_empty());
    assert_eq!(buses[2].outbox_stats().await.unwrap().unwrap().depth, 0);
    assert_eq!(buses[2].dead_letters().count().await.unwrap(), 0);
}
