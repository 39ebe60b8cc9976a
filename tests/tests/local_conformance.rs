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
    let options = LocalOptions {
        subscription_capacity: 1_000,
        ..LocalOptions::default()
    };
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
