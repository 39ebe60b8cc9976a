//! Helpers that several test files share. Each takes its guard or timeout from the caller, so a
//! test keeps the bound it was written with.

use std::time::Duration;

use bus::{Broker, Bus, ConnectionState, NatsBroker, NatsOptions, RawMessage, RawSubscription};
use futures::StreamExt;

/// Options for `url` with a fast reconnect (100 ms), so restarts in tests are quick, and the
/// given request timeout.
pub fn nats_options(url: &str, request_timeout: Duration) -> NatsOptions {
    let mut o = NatsOptions::new([url]);
    o.reconnect_delay = Duration::from_millis(100);
    o.request_timeout = request_timeout;
    o
}

/// Waits until `broker`'s state is `want`; panics after `guard`.
pub async fn wait_state(broker: &NatsBroker, want: ConnectionState, guard: Duration) {
    let mut rx = broker.state();
    tokio::time::timeout(guard, rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("state never became {want}"))
        .expect("state watch closed");
}

/// Whether `broker` stays short of `Connected` for the whole of `window`.
pub async fn stays_unconnected(broker: &NatsBroker, window: Duration) -> bool {
    let mut rx = broker.state();
    let connected = tokio::time::timeout(window, rx.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .is_ok();
    !connected
}

/// Flushes `bus`; panics if the flush fails or takes longer than `guard`.
pub async fn flush(bus: &Bus, guard: Duration) {
    tokio::time::timeout(guard, bus.flush())
        .await
        .expect("flush hung")
        .expect("flush failed");
}

/// Takes messages from `sub` until `n` arrived, or none arrived for `idle`.
pub async fn collect(sub: &mut RawSubscription, n: usize, idle: Duration) -> Vec<RawMessage> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(idle, sub.messages.next()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// Publishes `before` on `<prefix>.small`, `big` on `<prefix>.big`, then `after 0` … `after
/// {after - 1}` on `<prefix>.small`, each raw: an oversize message in the middle of a queue.
/// Returns the small payloads in publish order, which is what a subscriber must see.
pub async fn publish_around(bus: &Bus, prefix: &str, big: Vec<u8>, after: usize) -> Vec<String> {
    let small = format!("{prefix}.small");
    bus.publish_raw(RawMessage::new(small.as_str(), "before"))
        .await
        .unwrap();
    bus.publish_raw(RawMessage::new(format!("{prefix}.big").as_str(), big))
        .await
        .unwrap();
    for i in 0..after {
        bus.publish_raw(RawMessage::new(small.as_str(), format!("after {i}")))
            .await
            .unwrap();
    }
    let mut want = vec!["before".to_string()];
    want.extend((0..after).map(|i| format!("after {i}")));
    want
}
