//! `BusBuilder`: NATS or local, outbox or not, and every connection option.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::{DirectBroker, DEFAULT_REQUEST_TIMEOUT};
use crate::headers::WireHeaders;
use crate::local::{LocalBroker, LocalOptions};
use crate::nats::{NatsAuth, NatsBroker, NatsOptions};
use crate::outbox::{Durability, Outbox, OutboxOptions};
use crate::{Bus, Error, Result};

/// The outbox file used on NATS when none is named with [`BusBuilder::outbox_path`].
pub const DEFAULT_OUTBOX_PATH: &str = "bus-outbox.sqlite3";

#[derive(Debug, Clone, Default)]
enum Backend {
    #[default]
    Local,
    Nats,
}

#[derive(Debug, Clone, Default)]
enum OutboxChoice {
    /// On for NATS (at [`DEFAULT_OUTBOX_PATH`]), off for local.
    #[default]
    Default,
    Path(PathBuf),
    Off,
}

/// Configures and connects a [`Bus`]. Start with [`Bus::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), bus::Error> {
/// use std::time::Duration;
/// let bus = bus::Bus::builder()
///     .nats(["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"])
///     .name("billing-plugin")
///     .credentials_file("/etc/bus/billing.creds")
///     .require_tls(true)
///     .request_timeout(Duration::from_secs(2))
///     .outbox_path("/var/lib/billing/bus-outbox.sqlite3")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct BusBuilder {
    backend: Backend,
    outbox: OutboxChoice,
    outbox_options: OutboxOptions,
    request_timeout: Option<Duration>,
    wire_headers: WireHeaders,
    nats: NatsOptions,
    local: LocalOptions,
}

impl BusBuilder {
    /// Use the embedded in-process broker (the default). No outbox unless
    /// [`outbox_path`](BusBuilder::outbox_path) is set.
    pub fn local(mut self) -> Self {
        self.backend = Backend::Local;
        self
    }

    /// Use NATS at these server URLs (one or more members of a cluster). The outbox is on by
    /// default; turn it off with [`no_outbox`](BusBuilder::no_outbox).
    pub fn nats<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.backend = Backend::Nats;
        self.nats.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Put the durable outbox (a SQLite file) in front of every publish.
    pub fn outbox_path(mut self, path: impl AsRef<Path>) -> Self {
        self.outbox = OutboxChoice::Path(path.as_ref().to_path_buf());
        self
    }

    /// Publish straight to the broker, with no outbox. On NATS this means a message published
    /// while the server is unreachable, or in flight when it dies, can be lost.
    pub fn no_outbox(mut self) -> Self {
        self.outbox = OutboxChoice::Off;
        self
    }

    /// How much the outbox survives: a process crash (the default) or a power loss.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.outbox_options.durability = durability;
        self
    }

    /// How many failed send attempts (while connected) move an outbox message to the dead
    /// letters, and the backoff between them (default: 3 attempts, 100 ms then 400 ms).
    pub fn retry(mut self, policy: crate::RetryPolicy) -> Self {
        self.outbox_options.retry = policy;
        self
    }

    /// Which headers typed messages carry on the wire: [`WireHeaders::Minimal`] (the default:
    /// only the ids of messages that go through the outbox, and the correlation id of requests)
    /// or [`WireHeaders::Full`] (ids, `Content-Type` and `Bus-Type` on every typed message).
    /// See [`WireHeaders`] for why, with the measured cost.
    pub fn wire_headers(mut self, wire_headers: WireHeaders) -> Self {
        self.wire_headers = wire_headers;
        self
    }

    /// How long a request waits for its reply (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// How many messages a subscription buffers before the subscriber counts as slow and
    /// messages are dropped (counted and reported). Default 65,536 (local) / 262,144 (NATS).
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.local.subscription_capacity = capacity;
        self.nats.subscription_capacity = Some(capacity);
        self
    }

    /// NATS: the client name shown by the server's monitoring.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.nats.name = Some(name.into());
        self
    }

    /// NATS: authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.nats.auth = NatsAuth::Token(token.into());
        self
    }

    /// NATS: authenticate with a user and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.nats.auth = NatsAuth::UserPassword(user.into(), password.into());
        self
    }

    /// NATS: authenticate with an NKey seed (`SU…`).
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.nats.auth = NatsAuth::NKey(seed.into());
        self
    }

    /// NATS: authenticate with a `.creds` file (JWT and NKey seed).
    pub fn credentials_file(mut self, path: impl AsRef<Path>) -> Self {
        self.nats.auth = NatsAuth::CredentialsFile(path.as_ref().to_path_buf());
        self
    }

    /// NATS: trust this root CA (PEM) for the server's certificate.
    pub fn tls_root_certificate(mut self, path: impl AsRef<Path>) -> Self {
        self.nats.tls_root_certificate = Some(path.as_ref().to_path_buf());
        self
    }

    /// NATS: present this client certificate and key (PEM) for mutual TLS.
    pub fn tls_client_cert(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.nats.tls_client_cert = Some((cert.as_ref().to_path_buf(), key.as_ref().to_path_buf()));
        self
    }

    /// NATS: refuse to connect without TLS.
    pub fn require_tls(mut self, require: bool) -> Self {
        self.nats.require_tls = require;
        self
    }

    /// NATS: how long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.nats.connect_timeout = timeout;
        self
    }

    /// NATS: the longest wait between reconnect attempts (default 2 s); reconnects never stop.
    pub fn reconnect_delay(mut self, max: Duration) -> Self {
        self.nats.reconnect_delay = max;
        self
    }

    /// NATS: the subject prefix of the confirmation round trip the outbox drainer makes after
    /// each batch (default `_bus.confirm`): the client echoes a token through the server on
    /// `<prefix>.<unique id>`, so it needs publish and subscribe permission on `<prefix>.>`.
    pub fn confirm_subject(mut self, subject: impl Into<String>) -> Self {
        self.nats.confirm_subject = subject.into();
        self
    }

    /// Connects. On NATS this succeeds even while the server is down: publishes wait in the
    /// outbox and drain once it is up. Fails on bad configuration or an unusable outbox file.
    pub async fn connect(self) -> Result<Bus> {
        let request_timeout = self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let (direct, default_outbox) = match self.backend {
            Backend::Local => (
                DirectBroker::Local(Arc::new(LocalBroker::with_options(self.local))),
                false,
            ),
            Backend::Nats => {
                if self.nats.urls.is_empty() {
                    return Err(Error::Config(
                        "no NATS server URL given; call `.nats([\"nats://host:4222\"])`".into(),
                    ));
                }
                let mut opts = self.nats;
                opts.request_timeout = request_timeout;
                (
                    DirectBroker::Nats(Arc::new(NatsBroker::connect(opts).await?)),
                    true,
                )
            }
        };
        let path = match self.outbox {
            OutboxChoice::Path(p) => Some(p),
            OutboxChoice::Default if default_outbox => Some(PathBuf::from(DEFAULT_OUTBOX_PATH)),
            OutboxChoice::Default | OutboxChoice::Off => None,
        };
        let outbox = match path {
            Some(path) => Some(Outbox::open(path, self.outbox_options, direct.as_dyn()).await?),
            None => None,
        };
        Ok(Bus::from_parts(
            direct,
            outbox,
            request_timeout,
            self.wire_headers,
        ))
    }
}
