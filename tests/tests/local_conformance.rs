//! The broker conformance suite on `LocalBroker`, one test per check.

use bus::{Broker, LocalBroker, LocalOptions};
use bus_tests::conformance::{self, Caps, Fixture};

/// A fresh local broker with a small buffer, so the slow-consumer check stays quick.
struct Local {
    broker: LocalBroker,
    caps: Caps,
}

impl Fixture for Local {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }
    fn caps(&self) -> Caps {
        self.caps
    }
}

async fn local() -> Local {
    let mut options = LocalOptions::default();
    options.subscription_capacity = 1_000;
    Local {
        caps: Caps::local(&options),
        broker: LocalBroker::with_options(options),
    }
}

bus_tests::conformance_tests!(local);

/// Every check in a row on one broker (default options): checks do not disturb each other.
#[tokio::test]
async fn all_on_one_broker() {
    let options = LocalOptions::default();
    let broker = LocalBroker::with_options(options.clone());
    conformance::all(&broker, Caps::local(&options)).await;
    assert_eq!(
        broker.subscription_count(),
        0,
        "every check's subscriptions are gone once dropped"
    );
}

/// `close` ends every stream, reports `Closed` and refuses further use.
#[tokio::test]
async fn close_ends_streams_and_refuses_use() {
    use futures::StreamExt;
    let broker = LocalBroker::new();
    let mut sub = broker.subscribe("a.>", None).await.unwrap();
    let mut state = broker.state();
    assert_eq!(*state.borrow(), bus::ConnectionState::Connected);
    broker.close();
    assert_eq!(*state.borrow_and_update(), bus::ConnectionState::Closed);
    let end = tokio::time::timeout(conformance::RECV_TIMEOUT, sub.messages.next()).await;
    assert!(matches!(end, Ok(None)), "the stream must end on close");
    assert!(matches!(
        broker.publish(bus::RawMessage::new("a.b", "x")).await,
        Err(bus::Error::Closed)
    ));
    assert!(matches!(
        broker.subscribe("a.b", None).await,
        Err(bus::Error::Closed)
    ));
    assert!(matches!(broker.confirm().await, Err(bus::Error::Closed)));
    assert_eq!(broker.subscription_count(), 0);
}
