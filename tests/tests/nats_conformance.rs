//! The broker conformance suite, unchanged, on `NatsBroker` against a real nats-server: one
//! test per check, each with its own server; then every check in a row on one broker.

use std::time::Duration;

use bus::{Broker, ConnectionState, NatsBroker, NatsOptions};
use bus_tests::conformance::{self, Caps, Fixture};
use bus_tests::server::NatsServer;

/// A small buffer keeps the slow-consumer check quick.
const CAPACITY: usize = 1_000;

/// A server and a broker connected to it; the server lives as long as the fixture.
struct Nats {
    broker: NatsBroker,
    _server: NatsServer,
}

impl Fixture for Nats {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }
    fn caps(&self) -> Caps {
        caps(CAPACITY)
    }
}

/// `NatsBroker` counts every drop exactly (its own buffer per subscription).
fn caps(subscription_capacity: usize) -> Caps {
    Caps {
        subscription_capacity,
        exact_drop_count: true,
    }
}

async fn broker(url: String, capacity: usize) -> NatsBroker {
    let mut options = NatsOptions::new([url]);
    options.subscription_capacity = Some(capacity);
    options.reconnect_delay = Duration::from_millis(100);
    let broker = NatsBroker::connect(options).await.expect("connect");
    let mut state = broker.state();
    tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("never connected")
    .expect("state watch closed");
    broker
}

async fn nats() -> Nats {
    let server = NatsServer::start();
    Nats {
        broker: broker(server.url(), CAPACITY).await,
        _server: server,
    }
}

bus_tests::conformance_tests!(nats);

/// Every check in a row on one broker with default options: checks do not disturb each other.
#[tokio::test]
async fn all_on_one_broker() {
    let server = NatsServer::start();
    let b = broker(server.url(), 20_000).await;
    conformance::all(&b, caps(20_000)).await;
}
