//! `NatsBroker`: the NATS backend on async-nats 0.35. (STUB: to be implemented)

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::broker::{Broker, ConnectionState, RawMessage, RawSubscription};
use crate::Result;

/// How to authenticate to NATS.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token.
    Token(String),
    /// User and password.
    UserPassword(String, String),
    /// An NKey seed.
    NKey(String),
    /// A `.creds` file.
    CredentialsFile(PathBuf),
}

/// Connection options of the NATS backend. Set them through [`BusBuilder`](crate::BusBuilder).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// Server URLs.
    pub urls: Vec<String>,
    /// Client name.
    pub name: Option<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// Root CA to trust (PEM).
    pub tls_root_certificate: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse plain connections.
    pub require_tls: bool,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Default request timeout.
    pub request_timeout: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_delay: Duration,
    /// Subscription buffer size (`None`: the SDK's default).
    pub subscription_capacity: Option<usize>,
    /// Subject of the confirmation round trip.
    pub confirm_subject: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            urls: Vec::new(),
            name: None,
            auth: NatsAuth::None,
            tls_root_certificate: None,
            tls_client_cert: None,
            require_tls: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: crate::DEFAULT_REQUEST_TIMEOUT,
            reconnect_delay: Duration::from_secs(2),
            subscription_capacity: None,
            confirm_subject: "_bus.confirm".to_string(),
        }
    }
}

/// The NATS backend.
#[derive(Debug)]
pub struct NatsBroker {}

impl NatsBroker {
    /// Connects (succeeds while the server is still down; reconnects forever).
    pub async fn connect(_options: NatsOptions) -> Result<NatsBroker> {
        todo!()
    }
}

impl Broker for NatsBroker {
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
        "nats"
    }
}
