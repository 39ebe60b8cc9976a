//! `BusBuilder`: NATS or local, outbox or not, and every connection option.

#[cfg(any(feature = "nats", feature = "outbox"))]
use std::path::Path;
#[cfg(feature = "outbox")]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::broker::DEFAULT_REQUEST_TIMEOUT;
use crate::connection::ConnectionState;
use crate::error::{Error, Result};
use crate::handle::Bus;
use crate::headers::WireHeaders;
use crate::local::{LocalBroker, LocalOptions};
#[cfg(feature = "nats")]
use crate::nats::{NatsAuth, NatsBroker, NatsOptions};
#[cfg(feature = "outbox")]
use crate::outbox::{Durability, Outbox, OutboxOptions};
use crate::stream::StreamConfig;

/// The outbox file used on NATS when none is named with [`BusBuilder::outbox_path`]. A relative
/// path: it is resolved against the process's working directory.
#[cfg(feature = "outbox")]
pub const DEFAULT_OUTBOX_PATH: &str = "bus-outbox.sqlite3";

#[derive(Clone, Default)]
enum Backend {
    #[default]
    Local,
    #[cfg(feature = "nats")]
    Nats,
    Custom(Arc<dyn Broker>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local => f.write_str("Local"),
            #[cfg(feature = "nats")]
            Backend::Nats => f.write_str("Nats"),
            Backend::Custom(b) => write!(f, "Custom({})", b.kind()),
        }
    }
}

#[cfg(feature = "outbox")]
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
    #[cfg(feature = "outbox")]
    outbox: OutboxChoice,
    #[cfg(feature = "outbox")]
    outbox_options: OutboxOptions,
    request_timeout: Option<Duration>,
    wire_headers: WireHeaders,
    #[cfg(feature = "nats")]
    nats: NatsOptions,
    local: LocalOptions,
    streams: Vec<StreamConfig>,
    /// How long `connect` waits for the first connection; `None`: it does not wait.
    wait_for_connection: Option<Duration>,
    /// The instance name of the health snapshot and heartbeat.
    instance: Option<String>,
    /// How often the heartbeat goes out; `None`: no heartbeat.
    heartbeat: Option<Duration>,
    check_subject_fields: bool,
}

impl BusBuilder {
    /// Use NATS at these server URLs (one or more members of a cluster). The outbox is on by
    /// default; turn it off with [`no_outbox`](BusBuilder::no_outbox).
    #[cfg(feature = "nats")]
    pub fn nats<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.backend = Backend::Nats;
        self.nats.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    setters! {
        /// Use the embedded in-process broker (the default). No outbox unless
        /// [`outbox_path`](BusBuilder::outbox_path) is set.
        fn local() => backend = Backend::Local;
        /// This process's instance name: the `<instance>` of its heartbeat subject
        /// `plugin.health.<instance>` (default `<host>-<pid>`). Must be one subject token.
        fn instance(name: impl Into<String>) => instance = Some(name.into());

        /// Sends the [`Health`](crate::Health) snapshot on `plugin.health.<instance>` every
        /// `interval`, directly (never queued: a stale heartbeat is worse than none), while
        /// connected. Off by default.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), bus::Error> {
        /// use bus::{Health, Message};
        /// use futures::StreamExt;
        /// let bus = bus::Bus::builder()
        ///     .instance("planner-1")
        ///     .heartbeat(std::time::Duration::from_millis(50))
        ///     .connect()
        ///     .await?;
        /// let mut beats = Health::subscribe(&bus, Health::filter()).await?;
        /// let beat = beats.next().await.unwrap()?;
        /// assert_eq!(beat.instance, "planner-1");
        /// # Ok(()) }
        /// ```
        fn heartbeat(interval: Duration) => heartbeat = Some(interval);

        /// Run on this broker: any implementation of [`Broker`], the built-in ones included (a
        /// [`LocalBroker`] or [`NatsBroker`](crate::NatsBroker) given here is recognised and called
        /// as fast as one the builder makes). No outbox unless
        /// [`outbox_path`](BusBuilder::outbox_path) is set.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), bus::Error> {
        /// use std::sync::Arc;
        /// let broker = Arc::new(bus::LocalBroker::new());
        /// let bus = bus::Bus::builder().broker(broker.clone()).connect().await?;
        /// assert_eq!(bus.broker().kind(), "local");
        /// # Ok(()) }
        /// ```
        fn broker(broker: Arc<dyn Broker>) => backend = Backend::Custom(broker);

        /// How a subscription on the local broker buffers, and its max payload.
        fn local_options(options: LocalOptions) => local = options;

        /// Put the durable outbox (a SQLite file) in front of every publish.
        #[cfg(feature = "outbox")]
        fn outbox_path(path: impl AsRef<Path>) =>
            outbox = OutboxChoice::Path(path.as_ref().to_path_buf());

        /// Publish straight to the broker, with no outbox. On NATS this means a message published
        /// while the server is unreachable, or in flight when it dies, can be lost.
        #[cfg(feature = "outbox")]
        fn no_outbox() => outbox = OutboxChoice::Off;

        /// How much the outbox survives: a process crash (the default) or a power loss.
        #[cfg(feature = "outbox")]
        fn durability(durability: Durability) => outbox_options.durability = durability;

        /// The largest message (payload plus headers) the outbox queues while the server's
        /// max_payload is not known yet (before the first connection); default
        /// [`DEFAULT_OUTBOX_MAX_PAYLOAD`](crate::outbox::DEFAULT_OUTBOX_MAX_PAYLOAD), 8 MiB. A
        /// bigger one fails `publish` with [`Error::OutboxMessageTooLarge`](crate::Error::OutboxMessageTooLarge);
        /// once connected, the server's limit applies instead (`Error::PayloadTooLarge`).
        #[cfg(feature = "outbox")]
        fn outbox_max_payload(bytes: usize) => outbox_options.max_payload = bytes;

        /// How many failed send attempts (while connected) move an outbox message to the dead
        /// letters, and the backoff between them (default: 3 attempts, 100 ms then 400 ms). The
        /// outbox's only: a handler's retries are its own ([`HandlerOptions::retry`](crate::HandlerOptions::retry)).
        #[cfg(feature = "outbox")]
        fn outbox_retry(policy: crate::retry::RetryPolicy) => outbox_options.retry = policy;

        /// Which headers typed messages carry on the wire: [`WireHeaders::Minimal`] (the default:
        /// only the ids of messages that go through the outbox, and the correlation id of requests)
        /// or [`WireHeaders::Full`] (ids, `Content-Type` and `Bus-Type` on every typed message).
        /// See [`WireHeaders`] for why, with the measured cost.
        fn wire_headers(wire_headers: WireHeaders) => wire_headers = wire_headers;

        /// How long a request waits for its reply (default 5 s).
        fn request_timeout(timeout: Duration) => request_timeout = Some(timeout);

        /// Checks every received message against its subject (off by default): each subscription's
        /// messages, and the requests `serve` answers, have their subject rebuilt from the decoded
        /// body and compared with the subject they arrived on. A message whose placeholder fields
        /// disagree (a peer published `channel: "email"` on `plugin.outbound.slack.a1`) is an
        /// [`Error::SubjectMismatch`] item on the subscription, or an [`Error::Remote`] for the
        /// requester, and never reaches your code as valid. One subscription can also turn it on or
        /// off with [`Subscription::check_subject_fields`](crate::Subscription::check_subject_fields).
        ///
        /// It costs one subject built per received message; off, nothing.
        fn check_subject_fields(check: bool) => check_subject_fields = check;

        /// Makes [`connect`](BusBuilder::connect) wait up to `timeout` for the first connection,
        /// and fail if it does not come: with [`Error::ConnectionRefused`] as soon as the server
        /// refuses this client (credentials, TLS: see [`Refusal`](crate::Refusal)), with
        /// [`Error::ConnectTimeout`] (naming the last connection error, e.g. `Connection refused`)
        /// when no connection came up in time.
        ///
        /// Without it (the default) `connect` returns at once and the bus connects in the
        /// background, so a plugin can start before the NATS server; watch
        /// [`Bus::state`](Bus::state) then.
        ///
        /// With several server URLs, the first refusal fails the wait even if another server
        /// might have accepted the client: give them all the same credentials and TLS setup.
        ///
        /// ```no_run
        /// # async fn run() -> Result<(), bus::Error> {
        /// use std::time::Duration;
        /// let bus = bus::Bus::builder()
        ///     .nats(["nats://127.0.0.1:4222"])
        ///     .user_password("billing", "s3cret")
        ///     .wait_for_connection(Duration::from_secs(10))
        ///     .connect()
        ///     .await?; // Err(ConnectionRefused { refusal: Authorization, .. }) on a wrong password
        /// # Ok(()) }
        /// ```
        fn wait_for_connection(timeout: Duration) => wait_for_connection = Some(timeout);
    }

    /// How many messages a subscription buffers before the subscriber counts as slow and
    /// messages are dropped (counted and reported). Default 65,536 (local) / 262,144 (NATS).
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.local.subscription_capacity = capacity;
        #[cfg(feature = "nats")]
        {
            self.nats.subscription_capacity = Some(capacity);
        }
        self
    }

    /// Declares a JetStream stream (repeatable; see [`StreamConfig`]). On NATS it is created or
    /// updated to this configuration whenever the connection comes up
    /// ([`StreamConfig::existing`]: used as found), and a publish whose subject it covers is
    /// confirmed by its PubAck: a message the stream refuses is reported, never counted as a
    /// success. Durable consumers run on the stream that covers their subjects. Other brokers
    /// check the configuration and have no streams (the local broker keeps what durable
    /// consumers need in memory).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bus::Error> {
    /// use bus::StreamConfig;
    /// let bus = bus::Bus::builder()
    ///     .nats(["nats://127.0.0.1:4222"])
    ///     .stream(StreamConfig::new("PLUGIN_OUTBOUND", ["plugin.outbound.>"]))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn stream(mut self, stream: StreamConfig) -> Self {
        self.streams.push(stream);
        self
    }

    /// The former name of [`outbox_retry`](BusBuilder::outbox_retry), which says what it governs.
    #[cfg(feature = "outbox")]
    #[deprecated(note = "renamed `outbox_retry`: it governs the outbox's send attempts only")]
    pub fn retry(self, policy: crate::retry::RetryPolicy) -> Self {
        self.outbox_retry(policy)
    }

    /// Connects. On NATS this succeeds even while the server is down (unless told to
    /// [`wait_for_connection`](BusBuilder::wait_for_connection)): publishes wait in the outbox
    /// and drain once it is up. Fails on bad configuration (an unparsable URL, a malformed
    /// NKey seed, an unreadable or invalid credentials or TLS file, …) or an unusable outbox
    /// file.
    pub async fn connect(self) -> Result<Bus> {
        self.connect_through(|broker| broker).await
    }

    /// [`connect`](BusBuilder::connect), the bus running on what `wrap` makes of the broker
    /// (`bus::testing` records through it); the outbox sends through it too.
    pub(crate) async fn connect_through(
        self,
        wrap: impl FnOnce(Arc<dyn Broker>) -> Arc<dyn Broker>,
    ) -> Result<Bus> {
        let request_timeout = self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        for s in &self.streams {
            s.validate()?;
        }
        let broker = wrap(match self.backend {
            Backend::Local => Arc::new(LocalBroker::with_options(self.local)),
            #[cfg(feature = "nats")]
            Backend::Nats => {
                let mut opts = self.nats;
                opts.request_timeout = request_timeout;
                Arc::new(NatsBroker::connect_with_streams(opts, self.streams).await?)
            }
            Backend::Custom(broker) => broker,
        });
        #[cfg(feature = "outbox")]
        let outbox = {
            let path = match self.outbox {
                OutboxChoice::Path(p) => Some(p),
                OutboxChoice::Default if broker.kind() == "nats" => {
                    Some(PathBuf::from(DEFAULT_OUTBOX_PATH))
                }
                OutboxChoice::Default | OutboxChoice::Off => None,
            };
            match path {
                Some(path) => Some(Outbox::open(path, self.outbox_options, broker.clone()).await?),
                None => None,
            }
        };
        if let Some(instance) = &self.instance {
            bus_subject::check_token(instance).map_err(|e| {
                Error::Config(format!(
                    "instance name {instance:?} is not a subject token: {e}"
                ))
            })?;
        }
        let bus = Bus::from_parts(
            self.instance,
            broker,
            #[cfg(feature = "outbox")]
            outbox,
            request_timeout,
            self.wire_headers,
            self.check_subject_fields,
        );
        if let Some(timeout) = self.wait_for_connection {
            // On failure the bus is dropped here: its client stops reconnecting.
            wait_connected(&bus, timeout).await?;
        }
        if let Some(interval) = self.heartbeat {
            bus.start_heartbeat(interval);
        }
        Ok(bus)
    }
}

/// The options of the NATS backend.
#[cfg(feature = "nats")]
impl BusBuilder {
    setters! {
        /// NATS: the client name shown by the server's monitoring.
        fn name(name: impl Into<String>) => nats.name = Some(name.into());
        /// NATS: authenticate with a token.
        fn token(token: impl Into<String>) => nats.auth = NatsAuth::Token(token.into());
        /// NATS: authenticate with a user and password.
        fn user_password(user: impl Into<String>, password: impl Into<String>) =>
            nats.auth = NatsAuth::UserPassword(user.into(), password.into());
        /// NATS: authenticate with an NKey seed (`SU…`).
        fn nkey(seed: impl Into<String>) => nats.auth = NatsAuth::NKey(seed.into());
        /// NATS: authenticate with a `.creds` file (JWT and NKey seed).
        fn credentials_file(path: impl AsRef<Path>) =>
            nats.auth = NatsAuth::CredentialsFile(path.as_ref().to_path_buf());
        /// NATS: trust this root CA (PEM) for the server's certificate.
        fn tls_root_certificate(path: impl AsRef<Path>) =>
            nats.tls_root_certificate = Some(path.as_ref().to_path_buf());
        /// NATS: present this client certificate and key (PEM) for mutual TLS.
        fn tls_client_cert(cert: impl AsRef<Path>, key: impl AsRef<Path>) =>
            nats.tls_client_cert = Some((cert.as_ref().to_path_buf(), key.as_ref().to_path_buf()));
        /// NATS: refuse to connect without TLS.
        fn require_tls(require: bool) => nats.require_tls = require;
        /// NATS: how long one connection attempt may take (default 5 s).
        fn connect_timeout(timeout: Duration) => nats.connect_timeout = timeout;
        /// NATS: the longest wait between reconnect attempts (default 2 s); reconnects never stop.
        fn reconnect_delay(max: Duration) => nats.reconnect_delay = max;

        /// NATS: the subject prefix of the confirmation round trip the outbox drainer makes after
        /// each batch (default `_bus.confirm`): the client echoes a token through the server on
        /// `<prefix>.<unique id>`, so it needs publish and subscribe permission on `<prefix>.>`.
        fn confirm_subject(subject: impl Into<String>) => nats.confirm_subject = subject.into();
    }
}

/// Waits until `bus` is connected; fails at the first refusal, or after `timeout`.
async fn wait_connected(bus: &Bus, timeout: Duration) -> Result<()> {
    let mut state = bus.watch_state();
    let reached = state.wait_for(|s| *s != ConnectionState::Disconnected);
    // A closed watch: the broker is gone.
    let now = tokio::time::timeout(timeout, reached)
        .await
        .map(|r| r.map_or(ConnectionState::Closed, |s| *s));
    let detail = bus.connection_error();
    match now {
        Err(_) => Err(Error::ConnectTimeout {
            timeout,
            detail: detail.unwrap_or_else(|| format!("still {} after the wait", bus.state())),
        }),
        Ok(ConnectionState::Refused(refusal)) => Err(Error::ConnectionRefused {
            refusal,
            detail: detail.unwrap_or_else(|| refusal.to_string()),
        }),
        Ok(ConnectionState::Closed) => Err(Error::Closed),
        Ok(_) => Ok(()),
    }
}

impl Bus {
    /// A builder for every other setup: NATS, an outbox, a broker of your own, timeouts, auth,
    /// TLS.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bus::Error> {
    /// let bus = bus::Bus::builder()
    ///     .nats(["nats://127.0.0.1:4222"])
    ///     .outbox_path("var/bus-outbox.sqlite3")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }
}
