//! Connection events: the state watch, tracing, the server's max_payload, slow-consumer drops
//! attributed to the subscription they hit, and why connecting fails while it does.
//!
//! # Why a connection fails
//! async-nats 0.35 reports each failed (re)connection attempt only as
//! `Event::ClientError(ClientError::Other(kind))`, the bare name of its `ConnectErrorKind`:
//! `"authorization violation"` names the server's refusal of the credentials, but a TLS failure
//! and a server that is simply down both arrive as `"IO error"` (or `"TLS error"`), without the
//! underlying error. The error of a connection attempt that is not retried, on the other hand,
//! carries its source (`invalid peer certificate: UnknownIssuer`, `Connection refused`, …). So
//! while the client keeps failing with anything but an authorization violation, one probe
//! attempt with the same options and no retry runs (at most one at a time, at most one per
//! [`PROBE_INTERVAL`]) and its error is classified by [`classify`]: a refusal becomes
//! [`ConnectionState::Refused`], anything else stays `Disconnected`; the text is kept for
//! [`NatsBroker::connection_error`](super::NatsBroker::connection_error) either way.
//!
//! # Logging
//! As the crate docs' "Logging" says; the INFO of a reconnect gets the outbox's depth from
//! [`Shared::set_queue_depth`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::{Client, ClientError, ConnectErrorKind, Event, ServerAddr};
use tokio::sync::{mpsc, oneshot, watch};

use super::options::{NatsAuth, NatsOptions, DEFAULT_MAX_PAYLOAD};
use crate::broker::{ConnectionState, Refusal, SubscriptionStats};
use crate::panic::lock;

/// The shortest time between two probe connection attempts while the client keeps failing.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How many 1 ms waits `Connected` is held back at most for the new connection's INFO.
const CONNECTED_WAITS: u32 = 200;

/// Which connection an INFO is of: the server, and the id the server gave this client on that
/// connection (new for every connection, a reconnect to the same server included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnectionId {
    server_id: String,
    client_id: u64,
}

/// What the event callback and the broker share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: watch::Sender<ConnectionState>,
    /// The server's advertised max_payload; [`DEFAULT_MAX_PAYLOAD`] until the first connect.
    pub(crate) max_payload: AtomicUsize,
    /// How many times the connection was lost; `confirm` compares it across confirmations.
    pub(crate) disconnects: AtomicU64,
    /// Live subscriptions by async-nats subscription id (sid), for `Event::SlowConsumer(sid)`
    /// and for `confirm`'s pump barrier.
    pub(crate) subscriptions: Mutex<HashMap<u64, Registered>>,
    /// Set right after `connect` returns (events that come earlier only skip the max_payload
    /// read) and cleared when the broker is dropped: the event callback holds this `Shared`, so
    /// a client kept here for good would keep the connection open forever.
    pub(crate) client: Mutex<Option<Client>>,
    /// Permissions violations the server reported and nobody has taken yet.
    pub(crate) violations: Mutex<Violations>,
    /// Why connecting fails, while it does, and what was logged about it.
    trouble: Mutex<Trouble>,
    /// The connection whose INFO was read when `Connected` was last reported (at first the
    /// empty INFO async-nats holds before any connection).
    reported: Mutex<ConnectionId>,
    /// What a probe attempt needs, set once by `NatsBroker::connect`.
    probe: OnceLock<ProbeConfig>,
    /// How many messages wait to be sent (the outbox's depth), for the INFO of a reconnect.
    queue_depth: OnceLock<DepthProbe>,
}

/// Reads the depth of the queue in front of this connection (`None` when it cannot).
pub(crate) type QueueDepth =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Option<u64>> + Send + Sync>;

/// A [`QueueDepth`] that says what it is in `Debug`.
struct DepthProbe(QueueDepth);

impl std::fmt::Debug for DepthProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepthProbe")
    }
}

/// How long the reconnect INFO waits for the queue depth before it is logged without it.
const QUEUE_DEPTH_WAIT: Duration = Duration::from_secs(2);

/// The options and servers of the client, for a probe attempt made like its own.
#[derive(Debug)]
pub(crate) struct ProbeConfig {
    pub(crate) options: NatsOptions,
    pub(crate) urls: Vec<ServerAddr>,
}

/// The state of an outage (or of the start, before the first connection).
#[derive(Debug, Default)]
struct Trouble {
    /// Why the last attempt failed, in words; `None` while connected or not yet known.
    error: Option<String>,
    /// The refusals logged at ERROR in this outage: later ones go to DEBUG.
    logged: Vec<Refusal>,
    /// Whether "not reachable yet" was logged (at start, before any connection).
    logged_unreachable: bool,
    /// Since when the connection is down (`None` while connected or before the first).
    down_since: Option<Instant>,
    ever_connected: bool,
    /// A probe attempt is running.
    probing: bool,
    last_probe: Option<Instant>,
    /// Bumped at every connect and disconnect: a probe result from an earlier epoch is dropped.
    epoch: u64,
}

/// What one probe attempt found.
#[derive(Debug)]
enum ProbeOutcome {
    /// It connected (and was closed again): whatever failed before was transient.
    Connected,
    Failed(async_nats::ConnectError),
    /// It could not be made or took too long.
    Other(String),
}

/// The server's `-ERR 'Permissions Violation for …'`s, by what was refused.
#[derive(Debug, Default)]
pub(crate) struct Violations {
    /// Subjects a publish to was refused, with the server's text, oldest first.
    pub(crate) publish: Vec<(String, String)>,
    /// Patterns a subscription to was refused, with the server's text.
    pub(crate) subscribe: Vec<(String, String)>,
}

/// What a permissions violation refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Publish,
    Subscription,
}

/// Reads `Permissions Violation for Publish to "a.b"` (2.9) or `… to "a.b" using queue "q"`
/// (newer servers): what was refused and its subject.
pub(crate) fn parse_violation(text: &str) -> Option<(Refused, String)> {
    let rest = text.trim_matches(|c| c == '\'' || c == ' ');
    let rest = rest.strip_prefix("Permissions Violation for ")?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix("Publish to ") {
        (Refused::Publish, r)
    } else if let Some(r) = rest.strip_prefix("Subscription to ") {
        (Refused::Subscription, r)
    } else {
        return None;
    };
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some((kind, rest[..end].to_owned()))
}

/// Bounded: a flood of refused publishes with nobody confirming keeps the latest 1024.
fn push_bounded(list: &mut Vec<(String, String)>, violation: (String, String)) {
    if list.len() >= 1024 {
        list.remove(0);
    }
    list.push(violation);
}

/// A subscription as the event handler knows it.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) pattern: String,
    pub(crate) stats: Arc<SubscriptionStats>,
    /// Asks the subscription's pump to move everything async-nats holds, then answer.
    pub(crate) sync: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: watch::Sender::new(ConnectionState::Disconnected),
            max_payload: AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
            disconnects: AtomicU64::new(0),
            subscriptions: Mutex::new(HashMap::new()),
            client: Mutex::new(None),
            violations: Mutex::new(Violations::default()),
            trouble: Mutex::new(Trouble::default()),
            reported: Mutex::new(ConnectionId::default()),
            probe: OnceLock::new(),
            queue_depth: OnceLock::new(),
        })
    }

    /// Gives the reconnect INFO the depth of the queue in front of this connection (once).
    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    pub(crate) fn set_queue_depth(&self, depth: QueueDepth) {
        let _ = self.queue_depth.set(DepthProbe(depth));
    }

    /// Gives the probe attempts the client's options and servers (once, before connecting).
    pub(crate) fn set_probe(&self, options: NatsOptions, urls: Vec<ServerAddr>) {
        let _ = self.probe.set(ProbeConfig { options, urls });
    }

    /// Why the connection cannot be made, while it cannot; `None` once connected.
    pub(crate) fn connection_error(&self) -> Option<String> {
        if *self.state.borrow() == ConnectionState::Connected {
            return None;
        }
        lock(&self.trouble).error.clone()
    }

    /// The connection is up (its INFO read): ends the outage.
    fn on_connected(&self) {
        let outage = {
            let mut t = lock(&self.trouble);
            t.epoch += 1;
            t.error = None;
            t.logged.clear();
            t.logged_unreachable = false;
            t.ever_connected = true;
            t.down_since.take().map(|since| since.elapsed())
        };
        let reconnected = |outage: Duration, queued: Option<u64>| {
            let outage_ms = u64::try_from(outage.as_millis()).unwrap_or(u64::MAX);
            match queued {
                Some(queued) => tracing::info!(
                    outage_ms,
                    queued,
                    "NATS reconnected after {outage:.1?}; sending the {queued} messages queued in the outbox"
                ),
                None => tracing::info!(outage_ms, "NATS reconnected after {outage:.1?}"),
            }
        };
        match (outage, self.queue_depth.get()) {
            // The depth is read off the connection's path (the outbox answers from its own
            // thread); the one INFO waits for it, a little.
            (Some(outage), Some(depth)) => {
                let depth = (depth.0)();
                tokio::spawn(async move {
                    let queued = tokio::time::timeout(QUEUE_DEPTH_WAIT, depth).await;
                    reconnected(outage, queued.ok().flatten());
                });
            }
            (Some(outage), None) => reconnected(outage, None),
            (None, _) => tracing::info!("NATS connected"),
        }
        self.state.send_replace(ConnectionState::Connected);
    }

    fn on_disconnected(&self) {
        {
            let mut t = lock(&self.trouble);
            t.epoch += 1;
            t.error = None;
            t.logged.clear();
            t.down_since = Some(Instant::now());
            // The first failed attempt of this outage may probe at once.
            t.last_probe = None;
        }
        tracing::warn!("NATS disconnected; reconnecting (publishes wait in the outbox)");
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        self.state.send_replace(ConnectionState::Disconnected);
    }

    /// One failed connection attempt of the client, as async-nats names it.
    fn on_attempt_failed(self: &Arc<Self>, error: &ClientError) {
        match error {
            ClientError::Other(kind) if kind == "authorization violation" => {
                let detail = authorization_detail(self.probe.get().map(|p| &p.options));
                self.refused(&mut lock(&self.trouble), Refusal::Authorization, detail);
            }
            _ => {
                tracing::debug!(error = %error, "NATS connection attempt failed");
                self.maybe_probe();
            }
        }
    }

    /// Starts a probe attempt unless one runs or one started less than [`PROBE_INTERVAL`] ago.
    fn maybe_probe(self: &Arc<Self>) {
        // Not once the broker is gone (only live subscriptions keep the client): nobody to tell.
        let closed = *self.state.borrow() == ConnectionState::Closed;
        let Some(config) = self.probe.get().filter(|_| !closed) else {
            return;
        };
        let epoch = {
            let mut t = lock(&self.trouble);
            if t.probing || t.last_probe.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
                return;
            }
            t.probing = true;
            t.last_probe = Some(Instant::now());
            t.epoch
        };
        // Bounded: async-nats bounds the TCP connect by the connection timeout, but not the
        // wait for the server's INFO or the TLS handshake after it.
        let servers = u32::try_from(config.urls.len()).unwrap_or(u32::MAX);
        let bound = config
            .options
            .connect_timeout
            .saturating_mul(servers.saturating_add(1));
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let Some(config) = shared.probe.get() else {
                return;
            };
            let outcome = match tokio::time::timeout(bound, probe(config)).await {
                Ok(outcome) => outcome,
                Err(_) => ProbeOutcome::Other(format!(
                    "a connection attempt took over {bound:?} (no INFO or TLS handshake from the server)"
                )),
            };
            shared.on_probe(epoch, outcome);
        });
    }

    fn on_probe(&self, epoch: u64, outcome: ProbeOutcome) {
        let mut t = lock(&self.trouble);
        t.probing = false;
        let down = matches!(
            *self.state.borrow(),
            ConnectionState::Disconnected | ConnectionState::Refused(_)
        );
        if t.epoch != epoch || !down {
            return;
        }
        let detail = match outcome {
            ProbeOutcome::Connected => {
                tracing::debug!("NATS probe attempt connected; the client's failure was transient");
                return;
            }
            ProbeOutcome::Failed(e) => {
                let options = self.probe.get().map(|p| &p.options);
                match classify(&e, options) {
                    (Some(refusal), detail) => return self.refused(&mut t, refusal, detail),
                    (None, detail) => detail,
                }
            }
            ProbeOutcome::Other(detail) => detail,
        };
        if !t.ever_connected && !t.logged_unreachable {
            t.logged_unreachable = true;
            tracing::warn!(error = %detail, "NATS server not reachable yet; retrying in the background");
        } else {
            tracing::debug!(error = %detail, "NATS server unreachable");
        }
        t.error = Some(detail);
        drop(t);
        self.state.send_if_modified(|s| {
            let refused = matches!(s, ConnectionState::Refused(_));
            if refused {
                *s = ConnectionState::Disconnected;
            }
            refused
        });
    }

    /// The server refuses the client: the state says why, logged at ERROR once per outage.
    fn refused(&self, t: &mut Trouble, refusal: Refusal, detail: String) {
        if t.logged.contains(&refusal) {
            tracing::debug!(reason = %detail, "NATS refused the connection: {refusal}");
        } else {
            t.logged.push(refusal);
            tracing::error!(reason = %detail, "NATS refused the connection: {refusal}; retrying in the background");
        }
        t.error = Some(detail);
        self.state.send_if_modified(|s| match s {
            ConnectionState::Disconnected | ConnectionState::Refused(_) => {
                let changed = *s != ConnectionState::Refused(refusal);
                *s = ConnectionState::Refused(refusal);
                changed
            }
            _ => false,
        });
    }

    pub(crate) fn violations(&self) -> std::sync::MutexGuard<'_, Violations> {
        lock(&self.violations)
    }

    /// Records a permissions violation. A refused subscription that is live (the server ended
    /// it after a reconnect, say) is marked failed, so its subscriber sees why.
    fn on_violation(&self, kind: Refused, subject: String, text: String) {
        match kind {
            Refused::Publish => {
                tracing::error!(subject, error = %text, "NATS refused a publish: permissions violation");
                push_bounded(&mut self.violations().publish, (subject, text));
            }
            Refused::Subscription => {
                tracing::error!(pattern = subject, error = %text, "NATS refused a subscription: permissions violation");
                for reg in self.subscriptions().values() {
                    if reg.pattern == subject {
                        reg.stats.fail(text.clone());
                    }
                }
                push_bounded(&mut self.violations().subscribe, (subject, text));
            }
        }
    }

    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Registered>> {
        lock(&self.subscriptions)
    }

    /// Copies the server's max_payload if the client knows it (0 means "not yet").
    pub(crate) fn refresh_max_payload(&self) -> bool {
        let Some(max) = self.server_info(|i| i.max_payload).filter(|&m| m > 0) else {
            return false;
        };
        let old = self.max_payload.swap(max, Ordering::Relaxed);
        if old != max {
            tracing::debug!(max_payload = max, "NATS server max_payload");
        }
        true
    }

    /// Reads the client's copy of the server's INFO, if there is a client.
    fn server_info<T>(&self, f: impl FnOnce(&async_nats::ServerInfo) -> T) -> Option<T> {
        let guard = lock(&self.client);
        guard.as_ref().map(|c| f(&c.server_info()))
    }

    /// Handles one async-nats event. Runs on async-nats's event task, so it must stay quick:
    /// that task's channel holds 128 events and drops the rest.
    pub(crate) fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Connected => {
                // async-nats emits `Connected` just before it stores the new connection's INFO.
                // The state is reported once that INFO (the server's max_payload) is known: the
                // drainer, waiting for `Connected`, must not send by the previous server's limit
                // (this server would close the connection on an oversize message the SDK should
                // refuse). The INFO is the new one when it names another connection than the one
                // reported last (`ConnectionId`); usually so already when this runs: no wait.
                let shared = Arc::clone(self);
                let generation = self.disconnects.load(Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut waits = 0u32;
                    let mut ran_out = false;
                    let seen = loop {
                        // Which connection the client's copy of the server's INFO is of.
                        let now = shared.server_info(|i| ConnectionId {
                            server_id: i.server_id.clone(),
                            client_id: i.client_id,
                        });
                        let unreported = |id: &&ConnectionId| *lock(&shared.reported) != **id;
                        if let Some(id) = now.as_ref().filter(unreported) {
                            if shared.refresh_max_payload() {
                                break Some(id.clone());
                            }
                        }
                        if waits == CONNECTED_WAITS {
                            // Still the INFO of the connection reported last: a server that
                            // sends no client id. Go on with what it says.
                            shared.refresh_max_payload();
                            ran_out = true;
                            break now;
                        }
                        waits += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    };
                    // The mechanism the start-up test checks: `ran_out` must stay false.
                    tracing::debug!(waits, ran_out, "NATS connection INFO read");
                    if let Some(id) = seen {
                        *lock(&shared.reported) = id;
                    }
                    if shared.disconnects.load(Ordering::Relaxed) == generation {
                        shared.on_connected();
                    }
                });
            }
            Event::Disconnected => self.on_disconnected(),
            Event::LameDuckMode => {
                tracing::warn!(
                    "NATS server entered lame duck mode; a reconnect to another server will follow"
                );
                self.state.send_replace(ConnectionState::LameDuck);
            }
            Event::SlowConsumer(sid) => {
                // async-nats sends one event per message its full subscription buffer refused.
                let subs = self.subscriptions();
                match subs.get(&sid) {
                    Some(reg) => {
                        reg.stats.add_dropped(1);
                        tracing::debug!(pattern = %reg.pattern, sid, "NATS slow consumer: message dropped");
                    }
                    None => tracing::warn!(sid, "NATS slow consumer on an unknown subscription"),
                }
            }
            Event::ServerError(async_nats::ServerError::Other(text)) => {
                match parse_violation(&text) {
                    Some((kind, subject)) => self.on_violation(kind, subject, text),
                    None => tracing::error!(error = %text, "NATS server error"),
                }
            }
            Event::ServerError(e) => tracing::error!(error = %e, "NATS server error"),
            Event::ClientError(e) => self.on_attempt_failed(&e),
        }
    }
}

/// One connection attempt with the client's options and no retry.
async fn probe(config: &ProbeConfig) -> ProbeOutcome {
    let options = match config.options.probe_connect_options().await {
        Ok(o) => o,
        Err(e) => return ProbeOutcome::Other(e.to_string()),
    };
    match options.connect(config.urls.clone()).await {
        // The only handle, dropped at once: that closes the probe connection.
        Ok(_client) => ProbeOutcome::Connected,
        Err(e) => ProbeOutcome::Failed(e),
    }
}

/// What the server is told about who this client is, without secrets.
fn credentials_used(options: Option<&NatsOptions>) -> String {
    match options.map(|o| &o.auth) {
        None => "unknown credentials".into(),
        Some(NatsAuth::None) => "no credentials".into(),
        Some(NatsAuth::Token(_)) => "a token".into(),
        Some(NatsAuth::UserPassword(user, _)) => format!("user {user:?} with a password"),
        Some(NatsAuth::NKey(seed)) => match nkeys::KeyPair::from_seed(seed.trim()) {
            Ok(kp) => format!("NKey {}", kp.public_key()),
            Err(_) => "an NKey".into(),
        },
        Some(NatsAuth::CredentialsFile(path)) => format!("credentials file {}", path.display()),
    }
}

fn authorization_detail(options: Option<&NatsOptions>) -> String {
    format!(
        "the server answered `Authorization Violation` to {}: the token, user or password is \
         wrong, the user, NKey or .creds is unknown to the server, or it requires credentials \
         and none were given",
        credentials_used(options)
    )
}

/// Sorts the error of a failed connection attempt into a refusal (with its explanation) or a
/// server that cannot be reached (`None`, with the error's words).
///
/// A TLS failure shows as an I/O error of kind `InvalidData` (what tokio-rustls makes of a
/// rustls error; async-nats's own protocol errors use `InvalidInput`). async-nats upgrades to
/// TLS when the client asks for it (`require_tls`, a `tls://` URL) or when the server's INFO
/// says it requires it; so a TLS failure of a client that did not ask for TLS means the server
/// requires it.
pub(crate) fn classify(
    e: &async_nats::ConnectError,
    options: Option<&NatsOptions>,
) -> (Option<Refusal>, String) {
    let words =
        std::error::Error::source(e).map_or_else(|| e.kind().to_string(), ToString::to_string);
    if let Some(text) = server_error_text(e) {
        return match server_refusal(&text, options) {
            Some((refusal, detail)) => (Some(refusal), detail),
            None => (
                None,
                format!("the server answered the connection attempt with `-ERR '{text}'`"),
            ),
        };
    }
    match e.kind() {
        ConnectErrorKind::AuthorizationViolation => {
            return (Some(Refusal::Authorization), authorization_detail(options))
        }
        ConnectErrorKind::Authentication => {
            return (
                Some(Refusal::Authorization),
                format!(
                    "cannot sign the server's challenge with the NKey seed or the .creds file \
                     ({words}); check the seed"
                ),
            )
        }
        ConnectErrorKind::Tls => {
            return (
                Some(Refusal::Tls),
                format!(
                    "cannot set up TLS on this client: {words}; check the files given to \
                     tls_root_certificate and tls_client_cert"
                ),
            )
        }
        _ => {}
    }
    let tls_failure = tls_error_text(e);
    let Some(tls) = tls_failure else {
        return (None, e.to_string());
    };
    let wants_tls = options.is_some_and(NatsOptions::client_wants_tls);
    let has_tls = options.is_some_and(NatsOptions::has_tls_config);
    if wants_tls && tls.contains("corrupt message") {
        (
            Some(Refusal::TlsRequiredByClient),
            format!(
                "this client requires TLS (require_tls or a tls:// URL) but the server does not \
                 speak TLS (the handshake got: {tls}); enable TLS on the server or connect \
                 without require_tls"
            ),
        )
    } else if !wants_tls && !has_tls {
        (
            Some(Refusal::TlsRequiredByServer),
            format!(
                "the server requires TLS; this client has no TLS configured, so it tried with \
                 the system's root certificates and failed: {tls}; give the CA that signed the \
                 server's certificate with tls_root_certificate (and set require_tls)"
            ),
        )
    } else {
        (
            Some(Refusal::Tls),
            format!(
                "the TLS handshake failed: {tls}; check that tls_root_certificate is the CA \
                 that signed the server's certificate and that the certificate names the host \
                 of the URL, and, if the server verifies clients, that tls_client_cert is set \
                 and signed by a CA the server trusts"
            ),
        )
    }
}

/// The text of the server's `-ERR` that ended a connection attempt, if one did: async-nats
/// 0.35 returns any `-ERR` answering its `CONNECT` (but `Authorization Violation`) as an I/O
/// error whose source is the `ServerError`.
fn server_error_text(e: &async_nats::ConnectError) -> Option<String> {
    in_sources(e, |server: &async_nats::ServerError| {
        Some(match server {
            async_nats::ServerError::AuthorizationViolation => "Authorization Violation".to_owned(),
            async_nats::ServerError::SlowConsumer(_) => "Slow Consumer".to_owned(),
            async_nats::ServerError::Other(text) => {
                text.trim_matches(|c| c == '\'' || c == ' ').to_owned()
            }
        })
    })
}

/// The first text `f` finds in an error of type `T` among the sources of `e`.
fn in_sources<T: std::error::Error + 'static>(
    e: &async_nats::ConnectError,
    f: impl Fn(&T) -> Option<String>,
) -> Option<String> {
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>().and_then(&f) {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// Sorts a server's `-ERR` answering the client's `CONNECT` into a refusal (every attempt will
/// get it again until the configuration changes) or not (`None`: it may pass, the reconnect
/// loop goes on).
///
/// Permanent, by nats-server's texts (2.9 to 2.15):
/// - `Authorization Violation`, `User Authentication Expired`, `User Authentication Revoked`,
///   `Account Authentication Expired`: the credentials ([`Refusal::Authorization`]);
/// - `Maximum Control Line Exceeded`: the `CONNECT` line, which carries the credentials, is
///   longer than the server's `max_control_line` ([`Refusal::ControlLine`]);
/// - `Secure Connection - TLS Required`: the server wants TLS ([`Refusal::TlsRequiredByServer`]);
/// - `Permissions Violation …`, `Invalid Client Protocol`, `Unknown Protocol Operation`,
///   `Client Parser ERROR`, `No Responders Requires Headers Support`, `Maximum Payload
///   Violation`: what the client sends at connect is refused as such ([`Refusal::ServerError`]).
///
/// Transient: `Maximum Connections Exceeded` and `Maximum Account Active Connections Exceeded`
/// (others may disconnect), `Authentication Timeout` (a slow client or network), `Stale
/// Connection`, `Slow Consumer`, a server shutting down, and anything not listed above.
fn server_refusal(text: &str, options: Option<&NatsOptions>) -> Option<(Refusal, String)> {
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if has("authorization violation")
        || has("authentication expired")
        || has("authentication revoked")
    {
        return Some((
            Refusal::Authorization,
            if has("authorization violation") {
                authorization_detail(options)
            } else {
                format!(
                    "the server answered `{text}` to {}: the credentials are no longer valid; \
                     issue new ones (e.g. a new .creds file with `nsc generate creds`)",
                    credentials_used(options)
                )
            },
        ));
    }
    if has("maximum control line exceeded") {
        return Some((
            Refusal::ControlLine,
            format!(
                "the server answered `-ERR '{text}'` to this client's CONNECT: the CONNECT line \
                 carries the credentials ({}) and the client name, and is longer than the \
                 server's max_control_line (4096 bytes unless configured); use shorter \
                 credentials (an NKey or a .creds file instead of a long token) or raise \
                 max_control_line in the server's configuration",
                credentials_size(options)
            ),
        ));
    }
    if has("tls required") {
        return Some((
            Refusal::TlsRequiredByServer,
            format!(
                "the server answered `-ERR '{text}'`: it requires TLS; connect with a tls:// \
                 URL or require_tls, and give the CA that signed its certificate with \
                 tls_root_certificate"
            ),
        ));
    }
    let permanent = [
        "permissions violation",
        "invalid client protocol",
        "unknown protocol operation",
        "parser error",
        "requires headers support",
        "maximum payload violation",
    ];
    if permanent.iter().any(|p| has(p)) {
        return Some((
            Refusal::ServerError,
            format!(
                "the server answered `-ERR '{text}'` to this client's CONNECT (as {}), and \
                 will at every attempt; check the server's configuration for this user \
                 (permissions, limits) and the client's options",
                credentials_used(options)
            ),
        ));
    }
    None
}

/// The credentials in words with their size in bytes, never their value.
fn credentials_size(options: Option<&NatsOptions>) -> String {
    let size = match options.map(|o| &o.auth) {
        Some(NatsAuth::Token(t)) => Some(t.len()),
        Some(NatsAuth::UserPassword(u, p)) => Some(u.len() + p.len()),
        Some(NatsAuth::CredentialsFile(path)) => std::fs::metadata(path)
            .ok()
            .and_then(|m| usize::try_from(m.len()).ok()),
        _ => None,
    };
    let what = credentials_used(options);
    match size {
        Some(n) => format!("{what} of {n} bytes"),
        None => what,
    }
}

/// The rustls error behind a failed attempt, if a TLS failure it was.
fn tls_error_text(e: &async_nats::ConnectError) -> Option<String> {
    in_sources(e, |io: &std::io::Error| {
        (io.kind() == std::io::ErrorKind::InvalidData).then(|| {
            io.get_ref()
                .map_or_else(|| io.to_string(), ToString::to_string)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_violation_texts() {
        assert_eq!(
            parse_violation("Permissions Violation for Publish to \"plugin.outbound.denied.x\""),
            Some((Refused::Publish, "plugin.outbound.denied.x".into()))
        );
        assert_eq!(
            parse_violation(
                "'Permissions Violation for Subscription to \"a.>\" using queue \"q\"'"
            ),
            Some((Refused::Subscription, "a.>".into()))
        );
        assert_eq!(parse_violation("Maximum Payload Violation"), None);
    }

    fn io(kind: std::io::ErrorKind, text: &str) -> async_nats::ConnectError {
        async_nats::ConnectError::from(std::io::Error::new(kind, text.to_owned()))
    }

    /// The decision table of [`classify`], on errors shaped as async-nats 0.35 returns them
    /// (the integration tests `nats_auth` and `nats_tls` get them from real servers).
    #[test]
    fn classifies_failed_attempts() {
        use std::io::ErrorKind::{ConnectionRefused, InvalidData};
        let plain = NatsOptions::new(["nats://127.0.0.1:4222"]);
        let mut require = plain.clone();
        require.require_tls = true;
        let tls_url = NatsOptions::new(["tls://127.0.0.1:4222"]);
        let mut with_ca = plain.clone();
        with_ca.tls_root_certificate = Some("ca.pem".into());
        let corrupt = "received corrupt message of type InvalidContentType";
        let untrusted = "invalid peer certificate: UnknownIssuer";
        let auth = async_nats::ConnectError::from(ConnectErrorKind::AuthorizationViolation);
        let tls = |text| io(InvalidData, text);
        let refused = io(ConnectionRefused, "Connection refused");
        let cases = [
            (&auth, &plain, Some(Refusal::Authorization)),
            (&tls(untrusted), &plain, Some(Refusal::TlsRequiredByServer)),
            (&tls(untrusted), &require, Some(Refusal::Tls)),
            (&tls(untrusted), &with_ca, Some(Refusal::Tls)),
            (&tls(corrupt), &require, Some(Refusal::TlsRequiredByClient)),
            (&tls(corrupt), &tls_url, Some(Refusal::TlsRequiredByClient)),
            (&refused, &require, None),
            (&refused, &plain, None),
        ];
        for (e, options, want) in cases {
            let (got, detail) = classify(e, Some(options));
            assert_eq!(got, want, "{e} with {:?}", options.urls);
            assert!(!detail.is_empty());
        }
        let (_, detail) = classify(&refused, Some(&plain));
        assert!(detail.contains("Connection refused"), "{detail}");
        let mut long_token = plain.clone();
        long_token.auth = NatsAuth::Token("x".repeat(5000));
        for (text, want) in [
            ("maximum control line exceeded", Some(Refusal::ControlLine)),
            (
                "'Maximum Control Line Exceeded'",
                Some(Refusal::ControlLine),
            ),
            ("User Authentication Expired", Some(Refusal::Authorization)),
            (
                "Secure Connection - TLS Required",
                Some(Refusal::TlsRequiredByServer),
            ),
            ("Invalid Client Protocol", Some(Refusal::ServerError)),
            ("maximum connections exceeded", None),
            ("Authentication Timeout", None),
            ("Stale Connection", None),
        ] {
            let got = server_refusal(text, Some(&long_token));
            assert_eq!(got.as_ref().map(|(r, _)| *r), want, "{text}");
            if let Some((_, detail)) = got {
                assert!(!detail.contains("xxxxxxxx"), "never the token: {detail}");
            }
        }
        let (_, detail) =
            server_refusal("maximum control line exceeded", Some(&long_token)).unwrap();
        assert!(
            detail.contains("a token of 5000 bytes") && detail.contains("max_control_line"),
            "{detail}"
        );
        let (_, detail) = classify(&auth, Some(&plain));
        assert!(detail.contains("Authorization Violation") && detail.contains("no credentials"));
    }
}
