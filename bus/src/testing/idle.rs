//! Quiescence: what is in flight on a [`TestBus`](super::TestBus), and waiting until nothing is.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// How often a wait for idleness looks again without being poked (a safety net: every place a
/// message settles pokes it).
const LOOK_AGAIN: Duration = Duration::from_millis(50);

/// What was in flight when [`TestBus::wait_idle`](super::TestBus::wait_idle) gave up (and, all
/// zero, what idle means).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InFlight {
    /// Rows queued in the outbox (not yet confirmed by the broker).
    pub outbox_queued: u64,
    /// Subscriptions with messages waiting in their buffers: pattern and count.
    pub buffered: Vec<(String, u64)>,
    /// Durable consumers (embedded broker) with messages not settled yet: name and count.
    pub durables: Vec<(String, u64)>,
    /// Messages handlers have taken and not finished (running, or waiting for a retry).
    pub handlers: u64,
    /// Requests sent and not answered yet.
    pub open_requests: u64,
}

impl InFlight {
    /// Whether nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.outbox_queued == 0
            && self.buffered.is_empty()
            && self.durables.is_empty()
            && self.handlers == 0
            && self.open_requests == 0
    }
}

impl fmt::Display for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in flight: {} outbox row(s), {} handler message(s) (running or waiting for a retry), {} open request(s)",
            self.outbox_queued, self.handlers, self.open_requests
        )?;
        for (pattern, n) in &self.buffered {
            write!(f, ", {n} buffered on {pattern:?}")?;
        }
        for (name, n) in &self.durables {
            write!(f, ", {n} unsettled in durable {name:?}")?;
        }
        Ok(())
    }
}

/// Waits until `look` says nothing is in flight, twice in a row with a yield between (so a
/// message handed from one stage to the next is seen in one of them); after `timeout` of wall
/// time, `Err` with what was in flight. Woken by every [`poke`](crate::settled::poke), and
/// looks again every [`LOOK_AGAIN`] of tokio time (under a paused clock that costs no wall time).
pub(crate) async fn wait<F, Fut>(timeout: Duration, mut look: F) -> Result<(), InFlight>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = InFlight>,
{
    // Wall time: under tokio's paused clock, backoffs of minutes pass in no time at all.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let poked = crate::settled::signal().notified();
        tokio::pin!(poked);
        poked.as_mut().enable();
        let now = look().await;
        if now.is_idle() {
            tokio::task::yield_now().await;
            let again = look().await;
            if again.is_idle() {
                return Ok(());
            }
        } else if std::time::Instant::now() >= deadline {
            return Err(now);
        }
        tokio::select! {
            _ = poked => {}
            _ = tokio::time::sleep(LOOK_AGAIN) => {}
        }
    }
}
