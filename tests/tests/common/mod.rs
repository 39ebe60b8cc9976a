//! What the auth and TLS tests share: a log capture, and waiting for a refusal.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::{Broker, ConnectionState, NatsBroker, Refusal};

/// One test at a time in a binary that counts log lines: a capture is per thread, but the
/// `tracing` callsites' interest is shared by every thread of the process, and tests running
/// beside a capture were seen to make it miss events (an ERROR line counted 0 times). Each test
/// of such a binary holds this for its whole run.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Everything `bus` logs at DEBUG and above on this thread, as text (one line per event).
///
/// Tests run on tokio's current-thread runtime, so every task of the client (async-nats's
/// event task, the probe) logs on the test's own thread, where the capture is installed.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures until the guard is dropped.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        Logs::capture_at("bus=debug")
    }

    /// [`capture`](Logs::capture) of what `filter` (an `EnvFilter` directive) lets through; each
    /// line names its target (`async_nats::…`, `bus::…`) after the level.
    pub fn capture_at(filter: &str) -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The lines so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// How many lines at `level` (`"ERROR"`, `"WARN"`, …) contain `needle`.
    pub fn count(&self, level: &str, needle: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(level) && l.contains(needle))
            .count()
    }

    /// How many lines at `level`.
    pub fn count_level(&self, level: &str) -> usize {
        self.count(level, "")
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Waits until `broker` is refused for `want`, never passing through `Connected`; returns the
/// connection error it then reports. Panics after `guard`.
pub async fn wait_refused(broker: &NatsBroker, want: Refusal, guard: Duration) -> String {
    let mut rx = broker.state();
    let seen = tokio::time::timeout(
        guard,
        rx.wait_for(|s| matches!(s, ConnectionState::Refused(_) | ConnectionState::Connected)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "never refused; state {}, error {:?}",
            *broker.state().borrow(),
            broker.connection_error()
        )
    })
    .map(|s| *s)
    .expect("state watch closed");
    assert_eq!(seen, ConnectionState::Refused(want), "wrong outcome");
    broker
        .connection_error()
        .expect("a refused broker says why")
}

/// Stays refused for `want` (and never connects) for the whole `window`.
pub async fn stays_refused(broker: &NatsBroker, want: Refusal, window: Duration) {
    let mut rx = broker.state();
    let changed = tokio::time::timeout(
        window,
        rx.wait_for(|s| *s != ConnectionState::Refused(want)),
    )
    .await;
    if let Ok(s) = changed {
        panic!(
            "left the refused state: now {}",
            *s.expect("state watch closed")
        );
    }
}
