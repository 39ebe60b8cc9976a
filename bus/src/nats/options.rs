//! `NatsOptions` and `NatsAuth`, and their translation into async-nats's `ConnectOptions`.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// The subscription buffer used on NATS when none is set: deep enough that a subscriber which
/// briefly falls behind a full-speed publisher loses nothing (async-nats's own default, 65,536,
/// lost messages in the measurements of DESIGN.md section 6).
pub(crate) const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 262_144;

/// The largest payload assumed before the first connection tells us the server's real limit
/// (nats-server's default `max_payload`).
pub(crate) const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

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
    /// Subscription buffer size (`None`: 262,144).
    pub subscription_capacity: Option<usize>,
    /// Subject prefix of the confirmation echo, `<prefix>.<unique id>` (see
    /// [`NatsBroker`](crate::NatsBroker)); needs publish and subscribe permission on `<prefix>.>`.
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

impl NatsOptions {
    /// Options for these server URLs, everything else default.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        NatsOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            ..NatsOptions::default()
        }
    }

    /// The subscription buffer actually used.
    pub(crate) fn effective_subscription_capacity(&self) -> usize {
        self.subscription_capacity
            .unwrap_or(DEFAULT_SUBSCRIPTION_CAPACITY)
            .max(1)
    }

    /// async-nats's own buffer per subscription, in front of the SDK's: several times larger, so
    /// it overflows only if the pump task draining it is starved (tokio's channel allocates it
    /// lazily, so the size costs nothing until used).
    pub(crate) fn async_nats_capacity(&self) -> usize {
        self.effective_subscription_capacity()
            .saturating_mul(4)
            .max(1 << 18)
    }

    /// Checks what can be checked without a server.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            return Err(Error::Config(
                "no NATS server URL given; call `.nats([\"nats://host:4222\"])`".into(),
            ));
        }
        if let Err(e) = bus_subject::check_subject(&self.confirm_subject) {
            return Err(Error::Config(format!(
                "confirm subject {:?} is not a valid NATS subject: {e}",
                self.confirm_subject
            )));
        }
        if self.reconnect_delay.is_zero() {
            return Err(Error::Config(
                "reconnect_delay must be above zero, or a down server is hammered with reconnects"
                    .into(),
            ));
        }
        Ok(())
    }

    /// async-nats options, without the event callback (added by the caller).
    ///
    /// Always unlimited reconnects (a client that gives up drops what it buffered) and
    /// `retry_on_initial_connect` (a plugin may start before NATS).
    pub(crate) async fn to_connect_options(&self) -> Result<async_nats::ConnectOptions> {
        let mut o = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
            NatsAuth::UserPassword(u, p) => {
                async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
            }
            NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            NatsAuth::CredentialsFile(path) => {
                async_nats::ConnectOptions::with_credentials_file(path)
                    .await
                    .map_err(|e| {
                        Error::Config(format!(
                            "cannot read NATS credentials file {}: {e}; check the path and that it holds a JWT and an NKey seed",
                            path.display()
                        ))
                    })?
            }
        };
        if let Some(name) = &self.name {
            o = o.name(name);
        }
        if let Some(ca) = &self.tls_root_certificate {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client_cert {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        let cap = self.reconnect_delay;
        Ok(o.require_tls(self.require_tls)
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout))
            .subscription_capacity(self.async_nats_capacity())
            .max_reconnects(None)
            .retry_on_initial_connect()
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, cap)))
    }
}

/// Exponential backoff (0, 2, 4, 8 … ms) capped at `cap`: async-nats's default reaches 4 s, too
/// long for a bus whose outbox waits on the reconnect.
pub(crate) fn reconnect_delay(attempts: usize, cap: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(63);
    Duration::from_millis(2u64.saturating_pow(exp)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let cap = Duration::from_millis(500);
        assert_eq!(reconnect_delay(1, cap), Duration::ZERO);
        assert_eq!(reconnect_delay(2, cap), Duration::from_millis(2));
        assert_eq!(reconnect_delay(5, cap), Duration::from_millis(16));
        assert_eq!(reconnect_delay(30, cap), cap);
        assert_eq!(reconnect_delay(usize::MAX, cap), cap);
    }

    #[test]
    fn validate_refuses_no_url_and_bad_confirm_subject() {
        assert!(matches!(
            NatsOptions::default().validate(),
            Err(Error::Config(_))
        ));
        let mut o = NatsOptions::new(["nats://127.0.0.1:4222"]);
        assert!(o.validate().is_ok());
        o.confirm_subject = "a.*".into();
        assert!(matches!(o.validate(), Err(Error::Config(_))));
    }
}
