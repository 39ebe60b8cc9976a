//! The nats-server the bench runs against. (Interim: replaced by the bus-tests harness.)

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runner::{fail, BenchResult};

/// A nats-server child process on a fixed loopback port, stoppable and restartable on that port.
pub struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts a server on a free port.
    pub async fn start() -> BenchResult<Server> {
        let port = free_port()?;
        let mut s = Server { port, child: None };
        s.resume().await?;
        Ok(s)
    }

    /// The client URL.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage).
    pub async fn stop(&mut self) -> BenchResult<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts it again on the same port.
    pub async fn resume(&mut self) -> BenchResult<()> {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot start nats-server ({e}); install it (apt-get install nats-server) or put it on PATH")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(fail("nats-server did not listen within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
