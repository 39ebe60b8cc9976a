//! The built-in heartbeat on a real nats-server: another process's bus sees every instance's
//! typed `Health` on `plugin.health.<instance>`; the snapshot carries the outbox depth and the
//! handler failures; it is never queued (nothing goes out, nor is stored, while disconnected).

use std::time::Duration;

use bus::{Bus, HandlerOptions, Health, RetryPolicy};
use bus_tests::msgs::{outbound, Outbound};
use bus_tests::server::NatsServer;
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(20);

#[tokio::test]
async fn heartbeats_are_typed_and_current() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let watcher = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let mut beats = Health::subscribe(&watcher, Health::filter().instance("planner-1"))
        .await
        .unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .instance("planner-1")
        .heartbeat(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let handler = bus
        .handle_with(
            Outbound::filter().channel("hb"),
            HandlerOptions::named("failing").retry(RetryPolicy::default().max_attempts(1)),
            |_m| async { Err::<(), _>("no") },
        )
        .await
        .unwrap();
    outbound("hb", "a", "x").publish(&bus).await.unwrap();
    bus.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    let beat = loop {
        let beat = tokio::time::timeout_at(deadline, beats.next())
            .await
            .expect("no heartbeat with the handler failure")
            .unwrap()
            .unwrap();
        assert_eq!(beat.subject(), "plugin.health.planner-1");
        // A beat sent while the message was delivered but not yet confirmed still counts it in
        // the outbox: wait for one that has both the failure and the emptied outbox.
        if beat.handler_failures == 1 && beat.outbox_depth == 0 {
            break beat;
        }
    };
    assert_eq!(beat.instance, "planner-1");
    assert_eq!(beat.state, "connected");
    assert_eq!(beat.outbox_depth, 0);
    assert_eq!(beat.dead_letters, 1, "the handler's dead letter counts");
    assert_eq!(beat.version, env!("CARGO_PKG_VERSION"));
    let now = bus.health().await;
    assert!(now.uptime_ms >= beat.uptime_ms);
    assert_eq!(handler.stats().dead_lettered(), 1);
    // Never queued: with the server down no heartbeat is stored in the outbox.
    drop(watcher);
    server.kill();
    let mut state = bus.watch_state();
    tokio::time::timeout(
        GUARD,
        state.wait_for(|s| *s != bus::ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
    assert_eq!(bus.health().await.state, "disconnected");
}

#[tokio::test]
async fn an_instance_name_must_be_one_token() {
    assert!(matches!(
        Bus::builder().instance("a.b").connect().await,
        Err(bus::Error::Config(_))
    ));
}
