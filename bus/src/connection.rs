//! Whether the broker can be reached, and why a reachable server refuses this client.

use std::fmt;

/// Whether the broker can be reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet, or reconnecting after a disconnect (the server is down or
    /// unreachable, as far as the client can tell).
    Disconnected,
    /// Connected; publishes go through.
    Connected,
    /// The server announced it is shutting down (lame duck mode); a reconnect will follow.
    LameDuck,
    /// The server is reachable but refuses this client, for the reason given: retrying will
    /// not help until the configuration changes (on one side or the other). The client keeps
    /// trying, and the state becomes [`Connected`](ConnectionState::Connected) once it gets in.
    /// [`Bus::connection_error`](crate::Bus::connection_error) has the details.
    Refused(Refusal),
    /// Closed for good: the `Bus` was shut down.
    Closed,
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Disconnected => f.write_str("disconnected"),
            ConnectionState::Connected => f.write_str("connected"),
            ConnectionState::LameDuck => f.write_str("lame duck"),
            ConnectionState::Refused(why) => write!(f, "refused ({why})"),
            ConnectionState::Closed => f.write_str("closed"),
        }
    }
}

/// Why a reachable server refuses the connection ([`ConnectionState::Refused`]).
///
/// ```
/// use bus::{ConnectionState, Refusal};
/// let state = ConnectionState::Refused(Refusal::Authorization);
/// assert_eq!(state.to_string(), "refused (authorization violation)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The server refused the credentials (NATS's `Authorization Violation`): a wrong token or
    /// password, an unknown user, an NKey or `.creds` the server does not know, or none at all
    /// where the server requires them.
    Authorization,
    /// The server requires TLS and this client, configured without TLS, could not set it up
    /// (typically: the server's certificate is not signed by a CA the client trusts). Give the
    /// CA with `tls_root_certificate`, and `require_tls(true)` to never fall back to plain.
    TlsRequiredByServer,
    /// This client requires TLS (`require_tls(true)` or a `tls://` URL) but the server does
    /// not speak it.
    TlsRequiredByClient,
    /// The TLS handshake failed: the server's certificate is not trusted or does not match
    /// the host, or the server wants a client certificate it did not get or does not trust.
    Tls,
    /// The server answered the client's `CONNECT` with `-ERR 'Maximum Control Line
    /// Exceeded'`: the credentials (a long token or JWT) and the client name make that line
    /// longer than the server's `max_control_line` (4,096 bytes by default). Use shorter
    /// credentials, or raise `max_control_line` on the server.
    ControlLine,
    /// The server answered the client's `CONNECT` with another `-ERR` that every attempt will
    /// get again (a protocol or permissions error at connect); the connection error quotes it.
    ServerError,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Authorization => "authorization violation",
            Refusal::TlsRequiredByServer => "TLS required by server",
            Refusal::TlsRequiredByClient => "TLS required by client",
            Refusal::Tls => "TLS handshake failed",
            Refusal::ControlLine => "control line too long",
            Refusal::ServerError => "server error at connect",
        })
    }
}
