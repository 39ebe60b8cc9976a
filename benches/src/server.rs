//! The nats-server the bench runs against: the `bus-tests` harness, wrapped for async callers.

use bus_tests::server::NatsServer;

use crate::runner::{fail, panic_text, BenchResult};

/// A nats-server child process on a loopback port kept across restarts; killed on drop.
pub struct Server {
    inner: NatsServer,
}

impl Server {
    /// Starts a server on a free port. Fails (instead of panicking) with the harness's message,
    /// which says how to install nats-server when the binary is missing.
    pub async fn start() -> BenchResult<Server> {
        tokio::task::spawn_blocking(|| {
            std::panic::catch_unwind(NatsServer::start)
                .map(|inner| Server { inner })
                .map_err(|p| fail(format!("cannot start nats-server: {}", panic_text(&*p))))
        })
        .await?
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
