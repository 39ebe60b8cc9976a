//! What only the local broker's durable consumers do: a bound on what a durable keeps, with
//! every message beyond it counted as dropped; `close` ending every puller; one name, one
//! pattern.

use std::time::Duration;

use bus::durable::{DurableSpec, LOCAL_DURABLE_CAPACITY};
use bus::{Broker, Error, LocalBroker, RawMessage};
use futures::StreamExt;

#[tokio::test]
async fn a_full_durable_drops_and_counts() {
    let broker = LocalBroker::new();
    let spec = DurableSpec::new("bounded", "plugin.inbound.*");
    let mut sub = broker.consume(&spec).await.unwrap();
    let over = 25;
    for i in 0..LOCAL_DURABLE_CAPACITY + over {
        broker
            .publish(RawMessage::new("plugin.inbound.x", i.to_string()))
            .await
            .unwrap();
    }
    assert_eq!(
        sub.stats.dropped(),
        over as u64,
        "every message over the bound is counted"
    );
    // The kept ones are the oldest, in order, and the durable takes new ones once there is room.
    let first = sub.deliveries.next().await.unwrap();
    assert_eq!(&first.message.payload[..], b"0");
    first.acker.ack().await.unwrap();
    broker
        .publish(RawMessage::new("plugin.inbound.x", "after"))
        .await
        .unwrap();
    assert_eq!(sub.stats.dropped(), over as u64, "room again: kept");
    assert_eq!(sub.stats.delivered(), 1);
}

#[tokio::test]
async fn close_ends_durable_pullers_and_refuses_consume() {
    let broker = LocalBroker::new();
    let mut sub = broker
        .consume(&DurableSpec::new("closing", "agent.events.>"))
        .await
        .unwrap();
    broker.close();
    let end = tokio::time::timeout(Duration::from_secs(5), sub.deliveries.next()).await;
    assert!(matches!(end, Ok(None)), "the puller's stream ends on close");
    assert!(matches!(
        broker
            .consume(&DurableSpec::new("closing", "agent.events.>"))
            .await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn one_name_one_pattern() {
    let broker = LocalBroker::new();
    let _a = broker
        .consume(&DurableSpec::new("named", "agent.events.a"))
        .await
        .unwrap();
    match broker
        .consume(&DurableSpec::new("named", "agent.events.b"))
        .await
    {
        Err(Error::Durable { name, reason }) => {
            assert_eq!(name, "named");
            assert!(reason.contains("agent.events.a"), "{reason}");
        }
        other => panic!("want Error::Durable, got {:?}", other.map(|s| s.name)),
    }
}

#[tokio::test]
async fn a_durable_name_on_the_filter_must_be_one_token() {
    use bus_tests::msgs::Outbound;
    let bus = bus::Bus::local().await.unwrap();
    for bad in ["two.tokens", "", "a b", ">"] {
        match Outbound::subscribe(&bus, Outbound::filter().durable(bad)).await {
            Err(Error::InvalidSubjectToken { field, value, .. }) => {
                assert_eq!((field, value.as_str()), ("durable", bad));
            }
            other => panic!("{bad:?}: want InvalidSubjectToken, got {:?}", other.err()),
        }
    }
    // A good one makes a durable subscription.
    let sub = Outbound::subscribe(&bus, Outbound::filter().durable("ok"))
        .await
        .unwrap();
    assert_eq!(sub.durable_name(), Some("ok"));
}
