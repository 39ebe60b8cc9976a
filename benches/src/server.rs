//! The nats-server the bench runs against: the `bus-tests` harness, wrapped for async callers.

use std::path::PathBuf;

use bus_tests::server::NatsServer;

use crate::runner::{fail, panic_text, BenchResult};

/// A nats-server child process on a loopback port kept across restarts; killed on drop.
pub struct Server {
    inner: NatsServer,
}

/// Which nats-server the bench runs: `--server-bin PATH`, else the harness's default lookup
/// (`NATS_SERVER_BIN`, Debian's `/usr/sbin/nats-server`, `PATH`).
#[derive(Debug, Clone, Default)]
pub struct ServerSpec {
    /// The binary, when given.
    pub binary: Option<PathBuf>,
    /// JetStream on, with file storage in the server's temp dir.
    pub jetstream: bool,
    /// A fixed client port (for a client that is handed the address before the server exists).
    pub port: Option<u16>,
}

impl Server {
    /// Starts a server as `spec` says, on a free port unless it names one. Fails (instead of
    /// panicking) with the harness's message, which says how to install nats-server when the
    /// binary is missing.
    pub async fn start(spec: &ServerSpec) -> BenchResult<Server> {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || Server::start_blocking(&spec)).await?
    }

    /// [`Server::start`] for a caller outside the runtime.
    pub fn start_blocking(spec: &ServerSpec) -> BenchResult<Server> {
        let mut builder = NatsServer::builder().jetstream(spec.jetstream);
        if let Some(bin) = &spec.binary {
            builder = builder.binary(bin);
        }
        if let Some(port) = spec.port {
            builder = builder.port(port);
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.start()))
            .map(|inner| Server { inner })
            .map_err(|p| fail(format!("cannot start nats-server: {}", panic_text(&*p))))
    }

    /// The binary and its version, for the report.
    pub fn describe(&self) -> String {
        format!(
            "nats-server {} ({})",
            self.inner.version(),
            self.inner.binary().display()
        )
    }

    /// The client URL.
    pub fn client_url(&self) -> String {
        self.inner.url()
    }

    /// Kills the server at once (SIGKILL), as in a crash: the outage of `drain_after_outage`.
    pub async fn stop(&mut self) -> BenchResult<()> {
        tokio::task::block_in_place(|| self.inner.kill());
        Ok(())
    }

    /// Starts it again on the same port and waits until it is ready.
    pub async fn resume(&mut self) -> BenchResult<()> {
        tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.start_again()))
                .map_err(|p| fail(format!("cannot restart nats-server: {}", panic_text(&*p))))
        })
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> BenchResult<u16> {
    Ok(bus_tests::server::free_port())
}
