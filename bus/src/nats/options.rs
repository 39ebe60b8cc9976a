//! `NatsOptions` and `NatsAuth`, and their translation into async-nats's `ConnectOptions`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// The subscription buffer used on NATS when none is set: deep enough that a subscriber which
/// briefly falls behind a full-speed publisher loses nothing (async-nats's own default, 65,536,
/// lost messages in the measurements of `docs/design.md`, "async-nats 0.35 as measured here").
pub(crate) const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 262_144;

/// The largest payload assumed before the first connection tells us the server's real limit
/// (nats-server's default `max_payload`).
pub(crate) const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// How to authenticate to NATS.
///
/// Its `Debug` never shows a secret: tokens, passwords and seeds print as `***` (a seed as its
/// public key).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token.
    Token(String),
    /// User and password.
    UserPassword(String, String),
    /// A user NKey seed (`SU…`, 58 characters; surrounding white space is ignored). Checked
    /// when connecting: a malformed seed fails with [`Error::Config`].
    NKey(String),
    /// A `.creds` file (a user JWT and NKey seed). Read when connecting: a missing, unreadable
    /// or malformed file fails with [`Error::Config`].
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(***)"),
            NatsAuth::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            NatsAuth::NKey(seed) => match nkeys::KeyPair::from_seed(seed.trim()) {
                Ok(pair) => write!(f, "NKey({})", pair.public_key()),
                Err(_) => f.write_str("NKey(***)"),
            },
            NatsAuth::CredentialsFile(path) => {
                f.debug_tuple("CredentialsFile").field(path).finish()
            }
        }
    }
}

/// Connection options of the NATS backend. Set them through [`BusBuilder`](crate::BusBuilder).
///
/// Its `Debug` shows the URLs through [`redact_url`] and the credentials as [`NatsAuth`]'s
/// `Debug` does: no secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// Server URLs. Credentials in a URL (`nats://user:password@host:4222`, or
    /// `nats://token@host:4222`) are taken out of it when connecting and used as
    /// [`NatsAuth::UserPassword`] (or [`NatsAuth::Token`]); they may not be combined with
    /// [`auth`](NatsOptions::auth), and every URL that has some must have the same.
    pub urls: Vec<String>,
    /// Client name.
    pub name: Option<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// Root CA to trust (PEM). Must be readable when connecting.
    pub tls_root_certificate: Option<PathBuf>,
    /// Client certificate and key (PEM). Must be readable when connecting.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse plain connections. (Without it the client still uses TLS when the server
    /// requires it, and plain TCP otherwise.)
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

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("NatsOptions")
            .field("urls", &urls)
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("tls_root_certificate", &self.tls_root_certificate)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("require_tls", &self.require_tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("confirm_subject", &self.confirm_subject)
            .finish()
    }
}

/// A server URL fit to print: the password of its user info replaced by `***`
/// (`nats://alice:***@host:4222`), or the whole user info when it is a token
/// (`nats://***@host:4222`). A URL without user info is returned as it is.
///
/// Every URL the SDK logs, puts in an error or prints goes through it.
///
/// ```
/// assert_eq!(bus::redact_url("nats://alice:s3cret@127.0.0.1:4222"), "nats://alice:***@127.0.0.1:4222");
/// assert_eq!(bus::redact_url("tls://t0ken@nats.example:4222"), "tls://***@nats.example:4222");
/// assert_eq!(bus::redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(parts) = split_userinfo(url) else {
        return url.to_owned();
    };
    let hidden = match parts.userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{}{hidden}@{}", parts.scheme, parts.rest)
}

/// A URL cut around its user info: `<scheme>` `<userinfo>@` `<rest>`.
struct UserInfo<'a> {
    /// Up to and including `://` (empty without a scheme).
    scheme: &'a str,
    userinfo: &'a str,
    /// The host, port and whatever follows.
    rest: &'a str,
}

/// Finds the user info of `url` (the part of its authority before the last `@`), if any.
fn split_userinfo(url: &str) -> Option<UserInfo<'_>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let after = &url[start..];
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let at = after[..authority_end].rfind('@')?;
    Some(UserInfo {
        scheme: &url[..start],
        userinfo: &after[..at],
        rest: &after[at + 1..],
    })
}

/// `%XX` escapes of a URL's user info decoded (invalid ones are kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        if escape {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            request_timeout: crate::broker::DEFAULT_REQUEST_TIMEOUT,
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

    /// These options with the credentials of the URLs taken out of them and put in
    /// [`auth`](NatsOptions::auth): async-nats 0.35 ignores a URL's user info (so the client
    /// would connect without them), and a URL that keeps them is a secret waiting to be logged.
    pub(crate) fn with_url_credentials(mut self) -> Result<NatsOptions> {
        let mut found: Option<(String, NatsAuth)> = None;
        for url in &mut self.urls {
            let Some(parts) = split_userinfo(url) else {
                continue;
            };
            let auth = match parts.userinfo.split_once(':') {
                Some((user, password)) => {
                    NatsAuth::UserPassword(percent_decode(user), percent_decode(password))
                }
                None => NatsAuth::Token(percent_decode(parts.userinfo)),
            };
            let shown = redact_url(url);
            let stripped = format!("{}{}", parts.scheme, parts.rest);
            match &found {
                None => found = Some((shown, auth)),
                Some((first, seen)) if !same_auth(seen, &auth) => {
                    return Err(Error::Config(format!(
                        "the NATS server URLs {first} and {shown} carry different credentials; \
                         one client logs in one way: give the same credentials to every URL, \
                         or none and set them with .user_password() or .token()"
                    )))
                }
                Some(_) => {}
            }
            *url = stripped;
        }
        if let Some((shown, auth)) = found {
            if !matches!(self.auth, NatsAuth::None) {
                return Err(Error::Config(format!(
                    "the NATS server URL {shown} carries credentials and others were set too \
                     ({:?}); give them one way only",
                    self.auth
                )));
            }
            self.auth = auth;
        }
        Ok(self)
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
        bus_subject::check_subject(&self.confirm_subject).map_err(|e| {
            let subject = &self.confirm_subject;
            Error::Config(format!(
                "confirm subject {subject:?} is not a valid NATS subject: {e}"
            ))
        })?;
        if self.reconnect_delay.is_zero() {
            return Err(Error::Config(
                "reconnect_delay must be above zero, or a down server is hammered with reconnects"
                    .into(),
            ));
        }
        if let NatsAuth::NKey(seed) = &self.auth {
            check_nkey_seed(seed)?;
        }
        if let Some(ca) = &self.tls_root_certificate {
            check_pem_file("TLS root certificate (tls_root_certificate)", ca)?;
        }
        if let Some((cert, key)) = &self.tls_client_cert {
            check_pem_file("TLS client certificate (tls_client_cert)", cert)?;
            check_pem_file("TLS client key (tls_client_cert)", key)?;
        }
        Ok(())
    }

    /// Whether the client asks for TLS itself (`require_tls` or a `tls://` URL).
    pub(crate) fn client_wants_tls(&self) -> bool {
        let tls = |url: &String| url.trim().to_ascii_lowercase().starts_with("tls://");
        self.require_tls || self.urls.iter().any(tls)
    }

    /// Whether any TLS file (root CA, client certificate) is configured.
    pub(crate) fn has_tls_config(&self) -> bool {
        self.tls_root_certificate.is_some() || self.tls_client_cert.is_some()
    }

    /// async-nats options, without the event callback (added by the caller).
    ///
    /// Always unlimited reconnects (a client that gives up drops what it buffered) and
    /// `retry_on_initial_connect` (a plugin may start before NATS).
    pub(crate) async fn to_connect_options(&self) -> Result<async_nats::ConnectOptions> {
        let cap = self.reconnect_delay;
        Ok(self
            .base_connect_options()
            .await?
            .max_reconnects(None)
            .retry_on_initial_connect()
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, cap)))
    }

    /// The same options for one connection attempt that is not retried: its error carries the
    /// reason (see `events.rs`), which the retrying client's events do not.
    pub(crate) async fn probe_connect_options(&self) -> Result<async_nats::ConnectOptions> {
        Ok(self
            .base_connect_options()
            .await?
            .reconnect_delay_callback(|_| Duration::ZERO))
    }

    /// Credentials, name, TLS and timeouts: what the client and a probe attempt share.
    async fn base_connect_options(&self) -> Result<async_nats::ConnectOptions> {
        let mut o = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
            NatsAuth::UserPassword(u, p) => {
                async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
            }
            NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.trim().to_owned()),
            NatsAuth::CredentialsFile(path) => {
                async_nats::ConnectOptions::with_credentials_file(path)
                    .await
                    .map_err(|e| creds_error(path, &e))?
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
        Ok(o.require_tls(self.require_tls)
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout))
            .subscription_capacity(self.async_nats_capacity()))
    }
}

/// Whether two credentials taken from URLs are the same.
fn same_auth(a: &NatsAuth, b: &NatsAuth) -> bool {
    match (a, b) {
        (NatsAuth::Token(x), NatsAuth::Token(y)) => x == y,
        (NatsAuth::UserPassword(u, p), NatsAuth::UserPassword(v, q)) => u == v && p == q,
        _ => false,
    }
}

/// Refuses a seed async-nats could not sign with (it would only fail at every connection
/// attempt, as "failed signing nonce"). Never quotes the seed: it is a secret.
fn check_nkey_seed(seed: &str) -> Result<()> {
    let seed = seed.trim();
    let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| {
        let len = seed.chars().count();
        let looks = if seed.starts_with('S') {
            let start: String = seed.chars().take(2).collect();
            format!("{len} characters starting with {start:?}")
        } else {
            format!("{len} characters, not starting with `S`")
        };
        Error::Config(format!(
            "the NKey seed is malformed ({e}; it has {looks}); a user NKey seed is 58 \
             characters starting with `SU`, as `nk -gen user` or `nsc` print it (pass the \
             seed, not the public key `U…`)"
        ))
    })?;
    let kind = pair.key_pair_type();
    if kind != nkeys::KeyPairType::User {
        return Err(Error::Config(format!(
            "the NKey seed is of type {kind:?}, not a user seed; a NATS user authenticates \
             with a user seed (`SU…`)"
        )));
    }
    Ok(())
}

/// Why a `.creds` file cannot be used: unreadable, or not a JWT and a user seed.
fn creds_error(path: &Path, e: &std::io::Error) -> Error {
    let path = path.display();
    Error::Config(if e.kind() == std::io::ErrorKind::InvalidData {
        format!(
            "NATS credentials file {path} is not valid: {e}; it must hold a user JWT and a user \
             NKey seed between `-----BEGIN …-----` lines, as `nsc generate creds` writes it"
        )
    } else {
        format!("cannot read NATS credentials file {path}: {e}; check the path and its permissions")
    })
}

/// Refuses a TLS file that cannot be read, or holds no PEM block, before any connection
/// attempt (async-nats would only fail each attempt with "TLS error").
fn check_pem_file(what: &str, path: &Path) -> Result<()> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the {what} {shown}: {e}; check the path and its permissions"
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Config(format!(
            "the {what} {shown} is not a PEM file (no `-----BEGIN` line)"
        )));
    }
    Ok(())
}

/// The wait before reconnect attempt `attempts` (1 is the first, at once): the bus's one backoff,
/// [`RetryPolicy`], from 2 ms doubling up to `cap`, without jitter. async-nats's default reaches
/// 4 s, too long for a bus whose outbox waits on the reconnect.
pub(crate) fn reconnect_delay(attempts: usize, cap: Duration) -> Duration {
    let failed = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    RetryPolicy::default()
        .base(Duration::from_millis(2))
        .multiplier(2.0)
        .cap(cap)
        .jitter(0.0)
        .backoff(failed)
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

    #[test]
    fn a_malformed_seed_with_a_wide_character_is_an_error_not_a_panic() {
        let Err(Error::Config(text)) = check_nkey_seed("Sé and more") else {
            panic!("a malformed seed is a config error");
        };
        assert!(
            text.contains("11 characters starting with \"Sé\""),
            "{text}"
        );
    }

    /// Test-only keys (never use them anywhere else).
    const USER_SEED: &str = "SUAAG5V7ZXS6RRI4JCJRRLZDICIMTGKTAXJXWFSSF4PGZHUBKJQMWHQQXE";
    const USER_PUBLIC: &str = "UDFBW64ZQED22ZTSF3O75GRKSNTDRNTDTY3GBSRPBECMM5T2L473M5W2";
    const ACCOUNT_SEED: &str = "SAAKCYW6SREWLWAO4U75BHDCU3RVPSBWOXMOPMVFRJLLBJYN34L2GTIFDI";

    fn with_seed(seed: &str) -> Result<()> {
        let mut o = NatsOptions::new(["nats://127.0.0.1:4222"]);
        o.auth = NatsAuth::NKey(seed.into());
        o.validate()
    }

    #[test]
    fn validate_checks_the_nkey_seed() {
        assert!(with_seed(USER_SEED).is_ok());
        assert!(with_seed(&format!(" {USER_SEED}\n")).is_ok());
        for bad in [&USER_SEED[..57], USER_PUBLIC, "", "SUxyz"] {
            match with_seed(bad) {
                Err(Error::Config(text)) => {
                    assert!(text.contains("malformed"), "{text}");
                    assert!(
                        bad.len() < 8 || !text.contains(bad),
                        "quotes the seed: {text}"
                    );
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(
            matches!(with_seed(ACCOUNT_SEED), Err(Error::Config(t)) if t.contains("type Account"))
        );
    }

    #[test]
    fn validate_checks_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text = dir.path().join("ca.txt");
        std::fs::write(&text, "not pem").unwrap();
        let mut o = NatsOptions::new(["nats://127.0.0.1:4222"]);
        o.tls_root_certificate = Some(pem.clone());
        o.tls_client_cert = Some((pem.clone(), pem.clone()));
        assert!(o.validate().is_ok());
        o.tls_root_certificate = Some(text);
        assert!(matches!(o.validate(), Err(Error::Config(t)) if t.contains("not a PEM file")));
        o.tls_root_certificate = Some(pem.clone());
        o.tls_client_cert = Some((pem, dir.path().join("missing.pem")));
        assert!(
            matches!(o.validate(), Err(Error::Config(t)) if t.contains("cannot read the TLS client key"))
        );
    }

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            (
                "nats://alice:S3cret@127.0.0.1:4222",
                "nats://alice:***@127.0.0.1:4222",
            ),
            ("nats://T0ken@host:4222", "nats://***@host:4222"),
            ("alice:S3cret@host:4222", "alice:***@host:4222"),
            ("nats://a:b@c:S3cret@host/x@y", "nats://a:***@host/x@y"),
            ("nats://host:4222/p@th", "nats://host:4222/p@th"),
            ("nats://host:4222", "nats://host:4222"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn url_credentials_move_to_auth_and_never_show() {
        let o = NatsOptions::new(["nats://alice:S3cret%40x@a:4222", "nats://b:4222"])
            .with_url_credentials()
            .unwrap();
        assert_eq!(o.urls, ["nats://a:4222", "nats://b:4222"]);
        assert!(matches!(&o.auth, NatsAuth::UserPassword(u, p) if u == "alice" && p == "S3cret@x"));
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("S3cret") && shown.contains("alice"),
            "{shown}"
        );
        let o = NatsOptions::new(["tls://T0ken@a:4222"])
            .with_url_credentials()
            .unwrap();
        assert!(matches!(&o.auth, NatsAuth::Token(t) if t == "T0ken"));
        assert!(!format!("{o:?}").contains("T0ken"));
        let config_error = |o: NatsOptions| match o.with_url_credentials() {
            Err(Error::Config(text)) => text,
            other => panic!("{other:?}"),
        };
        let mixed = NatsOptions::new(["nats://a:S3cret@a:4222", "nats://a:0ther@b:4222"]);
        let text = config_error(mixed);
        assert!(text.contains("different credentials"), "{text}");
        assert!(
            !text.contains("S3cret") && !text.contains("0ther") && !text.contains("  "),
            "{text}"
        );
        let mut both = NatsOptions::new(["nats://a:S3cret@a:4222"]);
        both.auth = NatsAuth::Token("T0ken".into());
        let text = config_error(both);
        assert!(
            !text.contains("S3cret") && !text.contains("T0ken") && !text.contains("  "),
            "{text}"
        );
        let mut nkey = NatsOptions::new(["nats://a:4222"]);
        nkey.auth = NatsAuth::NKey(USER_SEED.into());
        let shown = format!("{nkey:?}");
        assert!(
            !shown.contains(USER_SEED) && shown.contains(USER_PUBLIC),
            "{shown}"
        );
    }

    #[test]
    fn tls_wanted_by_option_or_url() {
        let mut o = NatsOptions::new(["nats://a:4222"]);
        assert!(!o.client_wants_tls());
        o.require_tls = true;
        assert!(o.client_wants_tls());
        assert!(NatsOptions::new(["nats://a:4222", "TLS://b:4222"]).client_wants_tls());
    }
}
