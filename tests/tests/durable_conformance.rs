//! The durable consumer conformance checks on both built-in brokers: the local broker (durables
//! in memory) and a real nats-server with JetStream (a stream on `durable.>`). Run the NATS half
//! on both server lines (`NATS_SERVER_BIN`).

use bus::stream::StreamConfig;
use bus::{Broker, ConnectionState, LocalBroker, LocalOptions, NatsBroker};
use bus_tests::conformance::{Caps, Fixture, DURABLE_SUBJECTS};
use bus_tests::jetstream::JsServer;
use bus_tests::support::{nats_options, wait_state};
use std::time::Duration;

mod local {
    use super::*;

    pub struct Local(LocalBroker);

    impl Fixture for Local {
        fn broker(&self) -> &dyn Broker {
            &self.0
        }
        fn caps(&self) -> Caps {
            Caps::local(&LocalOptions::default())
        }
    }

    pub async fn local() -> Local {
        Local(LocalBroker::new())
    }

    bus_tests::durable_conformance_tests!(local);
}

mod nats {
    use super::*;

    /// A JetStream server and a broker declaring a stream on the checks' subjects.
    pub struct Nats {
        broker: NatsBroker,
        _server: JsServer,
    }

    impl Fixture for Nats {
        fn broker(&self) -> &dyn Broker {
            &self.broker
        }
        fn caps(&self) -> Caps {
            Caps {
                subscription_capacity: 65_536,
                exact_drop_count: true,
            }
        }
    }

    pub async fn nats() -> Nats {
        let server = JsServer::start();
        let broker = NatsBroker::connect_with_streams(
            nats_options(&server.url(), Duration::from_secs(5)),
            vec![StreamConfig::new("DURABLE_CONFORMANCE", [DURABLE_SUBJECTS])],
        )
        .await
        .expect("connect");
        wait_state(&broker, ConnectionState::Connected, Duration::from_secs(20)).await;
        broker
            .streams_ready(Duration::from_secs(20))
            .await
            .expect("stream set up");
        Nats {
            broker,
            _server: server,
        }
    }

    bus_tests::durable_conformance_tests!(nats);
}

/// A broker written elsewhere that does not implement `consume` keeps compiling, and says so.
#[tokio::test]
async fn a_broker_without_durables_says_unsupported() {
    let recording = bus_tests::recording::RecordingBroker::new(16);
    match recording
        .consume(&bus::durable::DurableSpec::new("d", "durable.x"))
        .await
    {
        Err(bus::Error::Unsupported { broker, what }) => {
            assert_eq!(broker, recording.kind());
            assert!(what.contains("durable"), "{what}");
        }
        other => panic!("want Unsupported, got {:?}", other.map(|s| s.name)),
    }
}
