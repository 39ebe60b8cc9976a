//! Tests of the nats-server harness itself, with async-nats as a plain client.

use std::time::Duration;

use bus_tests::server::{find_binary, Cluster, NatsServer, MISSING_BINARY};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(20);

async fn client(url: &str) -> async_nats::Client {
    tokio::time::timeout(GUARD, async_nats::connect(url))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

#[tokio::test]
async fn starts_and_serves_pub_sub() {
    let server = NatsServer::start();
    assert!(server.is_running());
    assert!(server.url().starts_with("nats://127.0.0.1:"));
    let c = client(&server.url()).await;
    let mut sub = c.subscribe("h.x").await.unwrap();
    c.publish("h.x", "hi".into()).await.unwrap();
    let msg = tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&msg.payload[..], b"hi");
    assert!(server.monitor("/varz").unwrap().contains("\"port\""));
    assert!(
        server.log().contains("Server is ready"),
        "log: {}",
        server.log()
    );
}

#[test]
fn restart_keeps_the_port_and_kill_stops_it() {
    let server = NatsServer::start();
    let port = server.port();
    server.kill();
    assert!(!server.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    server.start_again();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    server.restart();
    assert!(server.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    server.stop();
    assert!(!server.is_running());
}

#[test]
fn drop_kills_the_process() {
    let server = NatsServer::start();
    let port = server.port();
    drop(server);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn config_options_reach_the_server() {
    let server = NatsServer::builder().max_payload(4096).start();
    let c = client(&server.url()).await;
    assert_eq!(c.server_info().max_payload, 4096);
}

#[tokio::test]
async fn cluster_routes_messages_between_nodes() {
    let cluster = Cluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    let sub_client = client(&cluster.urls()[2]).await;
    let pub_client = client(&cluster.urls()[0]).await;
    let mut sub = sub_client.subscribe("cluster.x").await.unwrap();
    sub_client.flush().await.unwrap();
    // Interest propagates between routes asynchronously: publish until one arrives.
    let received = tokio::time::timeout(GUARD, async {
        loop {
            pub_client
                .publish("cluster.x", "across".into())
                .await
                .unwrap();
            pub_client.flush().await.unwrap();
            if let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return msg;
            }
        }
    })
    .await
    .expect("no message crossed the cluster");
    assert_eq!(&received.payload[..], b"across");

    // A node can be killed and brought back; it rejoins the routes.
    cluster.node(1).kill();
    assert!(!cluster.node(1).is_running());
    cluster.node(1).start_again();
    assert!(cluster.node(1).is_running());
}

#[test]
fn missing_binary_explains_how_to_install() {
    let bogus = std::path::Path::new("/nonexistent/nats-server");
    assert_eq!(find_binary(Some(bogus)), Err(MISSING_BINARY.to_string()));
    let panic = std::panic::catch_unwind(|| NatsServer::builder().binary(bogus).start())
        .expect_err("start must panic without a binary");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(
        message,
        "nats-server not found: install nats-server (Debian: apt-get install nats-server) or set NATS_SERVER_BIN"
    );
}

#[test]
fn finds_the_installed_binary() {
    let path = find_binary(None).expect("nats-server must be installed for these tests");
    assert!(path.is_file());
}

#[test]
fn a_server_that_cannot_start_fails_with_its_output() {
    let panic = std::panic::catch_unwind(|| {
        NatsServer::builder()
            .config("max_payload: \"not a size\"")
            .start()
    })
    .expect_err("a bad config must fail the start");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("nats-server exited during startup"),
        "{message}"
    );
    assert!(
        message.contains("max_payload"),
        "the config and the server's complaint are shown: {message}"
    );
}
