//! `LocalBroker`: the embedded in-process broker with NATS semantics. (STUB: to be implemented)

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::broker::{Broker, ConnectionState, RawMessage, RawSubscription};
use crate::Result;

/// Options of the local broker.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Messages a subscription buffers before it counts as a slow consumer (default 65,536).
    pub subscription_capacity: usize,
    /// Largest payload plus headers accepted (default 1 MiB, as NATS).
    pub max_payload: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            subscription_capacity: 65_536,
            max_payload: 1024 * 1024,
        }
    }
}

/// The embedded in-process broker.
#[derive(Debug)]
pub struct LocalBroker {}

impl Default for LocalBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBroker {
    /// A broker with default options.
    pub fn new() -> Self {
        Self::with_options(LocalOptions::default())
    }
    /// A broker with these options.
    pub fn with_options(_options: LocalOptions) -> Self {
        todo!()
    }
}

impl Broker for LocalBroker {
    fn publish(&self, _msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        todo!()
    }
    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        todo!()
    }
    fn subscribe(
        &self,
        _pattern: &str,
        _queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        todo!()
    }
    fn request(&self, _msg: RawMessage, _timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        todo!()
    }
    fn state(&self) -> watch::Receiver<ConnectionState> {
        todo!()
    }
    fn max_payload(&self) -> usize {
        todo!()
    }
    fn kind(&self) -> &'static str {
        "local"
    }
}
