//! Reconnects: a subscriber survives a server restart on the same port; the state watch follows;
//! `connect` succeeds before the server exists.

use std::time::Duration;

use bus::{Broker, ConnectionState, NatsBroker, NatsOptions, RawMessage, RawSubscription};
use bus_tests::server::{free_port, NatsServer};
use bus_tests::support::{nats_options, wait_state};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(30);

fn options(url: &str) -> NatsOptions {
    nats_options(url, Duration::from_secs(2))
}

/// Publishes and confirms until the subscriber gets a message: after a reconnect the client
/// re-subscribes asynchronously, so the first publishes may precede the interest.
async fn publish_until_received(broker: &NatsBroker, sub: &mut RawSubscription, subject: &str) {
    tokio::time::timeout(GUARD, async {
        loop {
            broker
                .publish(RawMessage::new(subject, "after"))
                .await
                .unwrap();
            if broker.confirm().await.is_ok() {
                if let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_millis(300), sub.messages.next()).await
                {
                    assert_eq!(msg.subject, subject);
                    return;
                }
            }
        }
    })
    .await
    .expect("the subscriber got nothing after the restart");
}

#[tokio::test]
async fn subscriber_survives_a_restart_on_the_same_port() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(options(&server.url())).await.unwrap();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    let mut sub = broker.subscribe("r.>", None).await.unwrap();
    broker
        .publish(RawMessage::new("r.before", "x"))
        .await
        .unwrap();
    broker.confirm().await.unwrap();
    let first = tokio::time::timeout(GUARD, sub.messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject, "r.before");

    let mut state = broker.state();
    server.kill();
    wait_state(&broker, ConnectionState::Disconnected, GUARD).await;
    assert!(state.has_changed().unwrap());
    state.mark_unchanged();
    server.start_again();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    publish_until_received(&broker, &mut sub, "r.after").await;
    assert_eq!(sub.stats.dropped(), 0);
}

#[tokio::test]
async fn graceful_stop_then_start_also_reconnects() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(options(&server.url())).await.unwrap();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    let mut sub = broker.subscribe("g.x", None).await.unwrap();
    server.stop();
    wait_state(&broker, ConnectionState::Disconnected, GUARD).await;
    server.start_again();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    publish_until_received(&broker, &mut sub, "g.x").await;
}

#[tokio::test]
async fn connect_succeeds_before_the_server_starts() {
    let port = free_port();
    let broker = NatsBroker::connect(options(&format!("nats://127.0.0.1:{port}")))
        .await
        .expect("connect must succeed while the server is down");
    assert_eq!(*broker.state().borrow(), ConnectionState::Disconnected);
    // Subscribing while down works; the client subscribes once connected.
    let mut sub = broker.subscribe("late.x", None).await.unwrap();

    let _server = NatsServer::builder().port(port).start();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    publish_until_received(&broker, &mut sub, "late.x").await;
}

#[tokio::test]
async fn fails_over_between_cluster_nodes() {
    let cluster = bus_tests::server::Cluster::start(3);
    let broker = NatsBroker::connect(options(&cluster.urls()[0]))
        .await
        .unwrap();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    let mut sub = broker.subscribe("f.x", None).await.unwrap();
    // Kill node 0: the client learned the others from the cluster's INFO and moves there.
    cluster.node(0).kill();
    wait_state(&broker, ConnectionState::Disconnected, GUARD).await;
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    publish_until_received(&broker, &mut sub, "f.x").await;
}

#[tokio::test]
async fn confirm_fails_once_after_a_lost_connection() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(options(&server.url())).await.unwrap();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    broker.confirm().await.expect("confirm while connected");
    broker
        .publish(RawMessage::new("c.x", "maybe lost"))
        .await
        .unwrap();
    server.kill();
    wait_state(&broker, ConnectionState::Disconnected, GUARD).await;
    server.start_again();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    // The message published before the outage is unproven: the confirmation says so ...
    let err = broker.confirm().await.unwrap_err();
    assert!(
        matches!(err, bus::Error::ConnectionLost { op: "confirm" }),
        "{err}"
    );
    // ... and the next one, with nothing lost in between, succeeds.
    broker.confirm().await.expect("confirm after the reconnect");
}

#[tokio::test]
async fn lame_duck_mode_is_reported() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(options(&server.url())).await.unwrap();
    wait_state(&broker, ConnectionState::Connected, GUARD).await;
    server.lame_duck();
    wait_state(&broker, ConnectionState::LameDuck, GUARD).await;
}
