//! TLS against a real server, with the test certificates in `tests/tls/` (made by
//! `tests/tls/generate.sh`): a trusted server, mutual TLS, and an untrusted server refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::{Broker, ConnectionState, NatsBroker, NatsOptions, RawMessage};
use bus_tests::server::NatsServer;
use bus_tests::support::stays_unconnected;

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

fn options(server: &NatsServer) -> NatsOptions {
    let mut o = NatsOptions::new([server.url()]);
    o.reconnect_delay = Duration::from_millis(100);
    o.request_timeout = Duration::from_secs(2);
    o.require_tls = true;
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

async fn assert_never_connects(o: NatsOptions) {
    let broker = NatsBroker::connect(o).await.unwrap();
    assert!(
        stays_unconnected(&broker, Duration::from_secs(2)).await,
        "connected although TLS should have failed"
    );
}

#[tokio::test]
async fn trusted_server() {
    let server = tls_server(false);
    let mut o = options(&server);
    o.tls_root_certificate = Some(fixture("ca.pem"));
    assert_connects(o).await;
}

#[tokio::test]
async fn untrusted_server_is_refused() {
    let server = tls_server(false);
    // No root CA given: the test CA is not in the system roots.
    assert_never_connects(options(&server)).await;
}

#[tokio::test]
async fn mutual_tls() {
    let server = tls_server(true);
    let mut o = options(&server);
    o.tls_root_certificate = Some(fixture("ca.pem"));
    let without_cert = o.clone();
    o.tls_client_cert = Some((fixture("client.pem"), fixture("client-key.pem")));
    assert_connects(o).await;
    assert_never_connects(without_cert).await;
}
