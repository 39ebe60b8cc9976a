//! TLS against a real server, with the test certificates in `tests/tls/` (made by
//! `tests/tls/generate.sh`): a trusted server and mutual TLS connect; every TLS mismatch puts
//! the broker in `Refused(…)` naming it (logged once), fails `wait_for_connection` with the
//! reason; unreadable TLS files fail `connect` with `Error::Config`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bus::{Broker, Bus, ConnectionState, Error, NatsBroker, NatsOptions, RawMessage, Refusal};
use bus_tests::server::NatsServer;
use common::{stays_refused, wait_refused, Logs};

const GUARD: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tls")
        .join(name)
}

fn tls_server(verify_clients: bool) -> NatsServer {
    let mut block = format!(
        "tls {{ cert_file: {:?}, key_file: {:?}",
        fixture("server.pem").display().to_string(),
        fixture("server-key.pem").display().to_string()
    );
    if verify_clients {
        block.push_str(&format!(
            ", ca_file: {:?}, verify: true",
            fixture("ca.pem").display().to_string()
        ));
    }
    block.push_str(" }");
    NatsServer::builder().config(block).start()
}

/// A client that requires TLS, trusting nothing but the system roots.
fn options(server: &NatsServer) -> NatsOptions {
    let mut o = plain_options(server);
    o.require_tls = true;
    o
}

/// A client with no TLS setting at all.
fn plain_options(server: &NatsServer) -> NatsOptions {
    let mut o = NatsOptions::new([server.url()]);
    o.reconnect_delay = Duration::from_millis(100);
    o.request_timeout = Duration::from_secs(2);
    o
}

async fn assert_connects(o: NatsOptions) {
    let broker = NatsBroker::connect(o).await.unwrap();
    let mut rx = broker.state();
    tokio::time::timeout(GUARD, rx.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("TLS connection never came up")
        .unwrap();
    broker.publish(RawMessage::new("tls.x", "x")).await.unwrap();
    broker.confirm().await.unwrap();
}

/// Refused for `want`, and still refused after many more attempts (and probes): returns the
/// reason given.
async fn assert_refused(o: NatsOptions, want: Refusal) -> String {
    let broker = NatsBroker::connect(o).await.unwrap();
    let why = wait_refused(&broker, want, GUARD).await;
    // Longer than the interval between two probe attempts (2 s).
    stays_refused(&broker, want, Duration::from_secs(3)).await;
    why
}

#[tokio::test]
async fn trusted_server() {
    let _serial = common::one_at_a_time().await;
    let server = tls_server(false);
    let mut o = options(&server);
    o.tls_root_certificate = Some(fixture("ca.pem"));
    assert_connects(o.clone()).await;
    // Without require_tls the client follows the server's INFO into TLS.
    o.require_tls = false;
    assert_connects(o).await;
}

#[tokio::test]
async fn untrusted_server_is_refused() {
    let _serial = common::one_at_a_time().await;
    let server = tls_server(false);
    // No root CA given: the test CA is not in the system roots.
    let why = assert_refused(options(&server), Refusal::Tls).await;
    assert!(why.contains("invalid peer certificate"), "{why}");
    assert!(
        why.contains("tls_root_certificate"),
        "says what to set: {why}"
    );
}

/// A client with no TLS setting against a server that requires TLS.
#[tokio::test]
async fn plain_client_against_tls_server() {
    let _serial = common::one_at_a_time().await;
    let (logs, _guard) = Logs::capture();
    let server = tls_server(false);
    let why = assert_refused(plain_options(&server), Refusal::TlsRequiredByServer).await;
    assert!(why.contains("the server requires TLS"), "{why}");
    assert!(why.contains("invalid peer certificate"), "{why}");
    let text = logs.text();
    assert_eq!(
        logs.count(
            "ERROR",
            "NATS refused the connection: TLS required by server"
        ),
        1,
        "{text}"
    );
    assert_eq!(logs.count_level("ERROR"), 1, "{text}");
    assert_eq!(logs.count_level("WARN"), 0, "{text}");
    // The attempts themselves, and the probes after the first, at DEBUG.
    assert!(
        logs.count("DEBUG", "NATS connection attempt failed") >= 10,
        "{text}"
    );
    assert!(
        logs.count(
            "DEBUG",
            "NATS refused the connection: TLS required by server"
        ) >= 1,
        "{text}"
    );
}

/// `require_tls` against a server without TLS.
#[tokio::test]
async fn require_tls_against_plain_server() {
    let _serial = common::one_at_a_time().await;
    let (logs, _guard) = Logs::capture();
    let server = NatsServer::start();
    let why = assert_refused(options(&server), Refusal::TlsRequiredByClient).await;
    assert!(why.contains("does not speak TLS"), "{why}");
    assert_eq!(
        logs.count(
            "ERROR",
            "NATS refused the connection: TLS required by client"
        ),
        1,
        "{}",
        logs.text()
    );
    // The same with the CA given: still a client that wants TLS from a server without it.
    let mut o = options(&server);
    o.tls_root_certificate = Some(fixture("ca.pem"));
    assert_refused(o, Refusal::TlsRequiredByClient).await;
}

#[tokio::test]
async fn mutual_tls() {
    let _serial = common::one_at_a_time().await;
    let server = tls_server(true);
    let mut o = options(&server);
    o.tls_root_certificate = Some(fixture("ca.pem"));
    let without_cert = o.clone();
    o.tls_client_cert = Some((fixture("client.pem"), fixture("client-key.pem")));
    assert_connects(o).await;
    let why = assert_refused(without_cert, Refusal::Tls).await;
    assert!(why.contains("TLS handshake failed"), "{why}");
    assert!(why.contains("tls_client_cert"), "says what to set: {why}");
}

/// The refusal follows the cause: once the TLS server is gone, the broker is only
/// disconnected (the server is unreachable, no longer refusing).
#[tokio::test]
async fn refusal_ends_when_the_server_is_gone() {
    let _serial = common::one_at_a_time().await;
    let server = tls_server(false);
    let broker = NatsBroker::connect(plain_options(&server)).await.unwrap();
    wait_refused(&broker, Refusal::TlsRequiredByServer, GUARD).await;
    server.stop();
    let mut rx = broker.state();
    tokio::time::timeout(GUARD, rx.wait_for(|s| *s == ConnectionState::Disconnected))
        .await
        .expect("still refused after the server stopped")
        .unwrap();
    let why = broker.connection_error().expect("says why");
    assert!(why.contains("Connection refused"), "{why}");
}

/// `wait_for_connection` fails at the refusal with the reason, long before its timeout.
#[tokio::test]
async fn wait_for_connection_names_the_tls_refusal() {
    let _serial = common::one_at_a_time().await;
    let server = tls_server(false);
    let started = Instant::now();
    let outcome = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .reconnect_delay(Duration::from_millis(100))
        .wait_for_connection(GUARD)
        .connect()
        .await;
    assert!(
        started.elapsed() < GUARD / 2,
        "took {:?}",
        started.elapsed()
    );
    match &outcome {
        Err(Error::ConnectionRefused {
            refusal: Refusal::TlsRequiredByServer,
            detail,
        }) => assert!(detail.contains("tls_root_certificate"), "{detail}"),
        other => panic!("expected ConnectionRefused(TlsRequiredByServer), got {other:?}"),
    }
    let message = outcome.unwrap_err().to_string();
    assert!(message.contains("TLS required by server"), "{message}");

    let bus = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .tls_root_certificate(fixture("ca.pem"))
        .require_tls(true)
        .wait_for_connection(GUARD)
        .connect()
        .await
        .expect("the trusted CA connects");
    assert_eq!(bus.state(), ConnectionState::Connected);
}

/// Unreadable or non-PEM TLS files fail `connect`, before any attempt.
#[tokio::test]
async fn bad_tls_files_fail_connect() {
    let _serial = common::one_at_a_time().await;
    let server = tls_server(true);
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let ca = || Some(fixture("ca.pem"));
    // (what the error says, root CA, client certificate and key)
    let cases = [
        (
            "cannot read the TLS root certificate",
            Some(missing.clone()),
            None,
        ),
        ("is not a PEM file", Some(not_pem.clone()), None),
        (
            "cannot read the TLS client certificate",
            ca(),
            Some((missing.clone(), fixture("client-key.pem"))),
        ),
        (
            "TLS client key (tls_client_cert)",
            ca(),
            Some((fixture("client.pem"), not_pem.clone())),
        ),
    ];
    for (want, root, client) in cases {
        let mut o = options(&server);
        o.tls_root_certificate = root;
        o.tls_client_cert = client;
        match NatsBroker::connect(o).await {
            Err(Error::Config(text)) => assert!(text.contains(want), "{want}: {text}"),
            other => panic!("{want}: expected Error::Config, got {other:?}"),
        }
    }
}
