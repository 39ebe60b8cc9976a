//! The `Broker` trait: bytes in, bytes out, the contract both backends keep.

use std::any::Any;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

pub use crate::connection::{ConnectionState, Refusal};
use crate::durable::{DurableSpec, DurableSubscription};
pub use crate::error::Rejection;
use crate::error::{Error, Result};
pub use crate::raw::{
    check_publish, check_subscription, DropCounter, RawMessage, RawSubscription, SubscriptionStats,
};

/// The default time a request waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The contract both backends ([`LocalBroker`](crate::LocalBroker) and
/// [`NatsBroker`](crate::NatsBroker)) keep, checked by one conformance suite.
///
/// Semantics are NATS's: subjects are dot-separated tokens; in a pattern `*` matches one token and
/// a final `>` one or more; subscribers in the same queue group share messages (each message goes to
/// one member); a request with no subscriber fails fast with [`Error::NoResponders`](crate::Error);
/// publishers are never blocked by a slow subscriber, whose overflow is counted in its
/// [`SubscriptionStats`]. The trait is object safe: a [`Bus`](crate::Bus) runs on any
/// `Arc<dyn Broker>` ([`BusBuilder::broker`](crate::BusBuilder::broker)); the built-in brokers are
/// recognised there and called without the boxed futures of this trait.
///
/// What a conforming broker must also do (the conformance suite of `bus-tests` checks each):
/// refuse an invalid subject or pattern with [`Error::InvalidSubject`](crate::Error), a header
/// NATS cannot carry with [`Error::InvalidHeader`](crate::Error), and a message over
/// [`max_payload`](Broker::max_payload) with [`Error::PayloadTooLarge`](crate::Error), all before
/// anything is delivered ([`check_publish`] does all three); and keep one publisher's messages in
/// order per subscriber.
pub trait Broker: Any + Send + Sync + 'static {
    /// Sends one message. `Ok` means the broker accepted it for sending, not that it was processed:
    /// use [`confirm`](Broker::confirm) for that. Refuses a message over [`max_payload`](Broker::max_payload).
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>>;

    /// [`publish`](Broker::publish) of a message the caller keeps (the outbox keeps each row
    /// until it is confirmed). The default sends a clone; a broker that can send from a
    /// reference saves the copy.
    fn publish_ref<'a>(&'a self, msg: &'a RawMessage) -> BoxFuture<'a, Result<()>> {
        self.publish(msg.clone())
    }

    /// A barrier: returns once the broker has processed every message this handle published
    /// before the call (on NATS, a round trip through the server).
    fn confirm(&self) -> BoxFuture<'_, Result<()>>;

    /// Subscribes to `pattern`, optionally as a member of queue group `queue`.
    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>>;

    /// Sends a request and waits up to `timeout` for the first reply.
    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>>;

    /// The connection state, as a watch that changes when it does.
    fn state(&self) -> watch::Receiver<ConnectionState>;

    /// The largest payload plus headers the broker accepts, in bytes.
    fn max_payload(&self) -> usize;

    /// A short name for logs: `"local"` or `"nats"`.
    fn kind(&self) -> &'static str;

    /// Attaches a puller to the durable consumer `spec.name`, creating it on first use (see
    /// [`durable`](crate::durable)): messages on `spec.pattern` published while no puller was
    /// attached are delivered, each delivery is settled by its [`Acker`](crate::durable::Acker),
    /// and pullers on one name share its messages.
    ///
    /// The default fails with [`Error::Unsupported`]: a broker
    /// written elsewhere keeps compiling, and offers durable consumers once it implements this.
    fn consume(&self, spec: &DurableSpec) -> BoxFuture<'_, Result<DurableSubscription>> {
        let _ = spec;
        let broker = self.kind();
        Box::pin(futures::future::ready(Err(Error::Unsupported {
            broker,
            what: "durable consumers",
        })))
    }
}
