//! JetStream test servers: a [`NatsServer`] (or a [`Cluster`]) with JetStream on, each node with
//! its own store directory in a temp dir that lives as long as the server, and a raw async-nats
//! JetStream context to look at streams from outside the SDK.
//!
//! Uses only `NatsServer::builder().config(..)`, so it works with the harness as it is.

use std::ops::Deref;
use std::time::Duration;

use crate::server::{Cluster, NatsServer, NatsServerBuilder};

/// The `jetstream { .. }` config block for a store directory.
pub fn jetstream_config(store: &std::path::Path) -> String {
    format!(
        "jetstream {{ store_dir: {:?} }}",
        store.display().to_string()
    )
}

/// A nats-server with JetStream on and its store directory; both go away on drop (the server
/// first).
#[derive(Debug)]
pub struct JsServer {
    server: NatsServer,
    store: tempfile::TempDir,
}

impl JsServer {
    /// Starts one on free ports.
    pub fn start() -> JsServer {
        JsServer::start_with(NatsServer::builder())
    }

    /// Starts one from `builder` (a fixed port, say), with JetStream added.
    pub fn start_with(builder: NatsServerBuilder) -> JsServer {
        let store = store_dir();
        let server = builder.config(jetstream_config(store.path())).start();
        JsServer { server, store }
    }

    /// The store directory (kept across restarts: file storage survives a kill).
    pub fn store(&self) -> &std::path::Path {
        self.store.path()
    }
}

impl Deref for JsServer {
    type Target = NatsServer;
    fn deref(&self) -> &NatsServer {
        &self.server
    }
}

/// A cluster of JetStream nodes (`server_name` node0, node1, … come from the harness), each
/// with its own store directory (the harness's, removed with the node).
#[derive(Debug)]
pub struct JsCluster {
    cluster: Cluster,
}

impl JsCluster {
    /// Starts `n` nodes and waits until they are meshed and agree on a meta leader.
    pub fn start(n: usize) -> JsCluster {
        JsCluster {
            cluster: Cluster::start_with(n, || NatsServer::builder().jetstream(true)),
        }
    }
}

impl Deref for JsCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

fn store_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nats-js-")
        .tempdir()
        .expect("cannot create a temporary JetStream store directory")
}

/// A raw async-nats JetStream context on `url`, to inspect streams and consumers from outside.
pub async fn raw_context(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("raw connect to {url}: {e}"));
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(10));
    js
}

/// The number of messages stream `name` holds now.
pub async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    let mut s = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"));
    s.info()
        .await
        .unwrap_or_else(|e| panic!("stream {name} info: {e}"))
        .state
        .messages
}

/// A retry policy for tests: 20 ms, then 80 ms, no jitter.
pub fn fast_retry() -> bus::RetryPolicy {
    bus::RetryPolicy::default()
        .base(Duration::from_millis(20))
        .jitter(0.0)
}

/// Polls `f` every 5 ms until it holds; panics naming `what` after `guard`.
pub async fn wait_until(what: &str, guard: Duration, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + guard;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {guard:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
