//! `Handler`: runs a function for every message of a subscription, with retries, bounded
//! concurrency, dead letters and a clean stop.
//!
//! Each message is attempted at most `concurrency` at once: first inline on the handler's loop,
//! then, if it has to wait, on a task of its own (so a quick handler costs no task and no
//! allocation per message). An `Err` or a panic
//! is a failed attempt: the message waits its [`RetryPolicy`] backoff *without* holding a slot, so
//! a failing message never blocks the ones behind it, and after `max_attempts` it is
//! dead-lettered with its subject, headers, payload, attempts, last error and the handler's name.
//! A payload that does not decode is dead-lettered at once: retrying cannot fix it. In ordered
//! mode one message is finished (retries included) before the next starts.

mod options;
mod run;
mod slots;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use self::options::{HandlerOptions, DEFAULT_CONCURRENCY};
use self::run::Run;
use crate::dead_letter::DeadLetterSink;
use crate::durable::DurableSubscription;
use crate::envelope::Envelope;
use crate::incoming::Incoming;
use crate::raw::RawSubscription;
use crate::stop::{Running, StopSignal};

/// What a handler counted so far.
#[derive(Debug, Default)]
pub struct HandlerStats {
    pub(super) handled: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
}

impl HandlerStats {
    /// Messages the handler finished with `Ok`.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }
    /// Attempts that returned `Err` or panicked.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }
    /// Messages given up on and dead-lettered.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// A running handler (from `T::handle` / [`Bus::handle`](crate::Bus::handle)).
///
/// Dropping it leaves it running until the bus closes; [`stop`](Handler::stop) ends it cleanly.
pub struct Handler {
    name: String,
    stats: Arc<HandlerStats>,
    running: Running,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// The handler's name (the type's name unless [`HandlerOptions::named`] set one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it counted so far.
    pub fn stats(&self) -> &Arc<HandlerStats> {
        &self.stats
    }

    /// Stops taking messages (unsubscribes) and waits for the ones in flight to finish, their
    /// pending retries included. Messages not yet taken stay with the broker (core NATS: gone
    /// for this subscriber; a durable consumer: kept for it, and what this handler had fetched
    /// but not started is handed back at once, to another instance or the next start).
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// [`stop`](Handler::stop), waiting at most `timeout` for the messages in flight; past it
    /// they are abandoned (their futures dropped; a durable delivery left unacknowledged is
    /// delivered again after its ack wait) and [`Error::StopTimeout`](crate::Error::StopTimeout)
    /// says how many. For a handler that may never return.
    pub async fn stop_timeout(self, timeout: Duration) -> crate::error::Result<()> {
        let what = format!("handler {:?}", self.name);
        self.running.stop_timeout(&what, timeout).await
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.running.is_running()
    }
}

/// What a handler takes its messages from.
pub(crate) enum Source {
    /// A plain subscription: retries in memory.
    Plain(RawSubscription),
    /// A durable consumer: acked, naked for redelivery, terminated.
    Durable(DurableSubscription),
}

/// Starts a handler on `source`.
pub(crate) fn spawn<M, F, Fut, E>(
    source: Source,
    options: HandlerOptions,
    sink: DeadLetterSink,
    (running, closing): (tokio::sync::mpsc::Sender<()>, watch::Receiver<bool>),
    handler: F,
) -> Handler
where
    M: Incoming,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| M::TYPE_NAME.to_owned());
    let stats = Arc::new(HandlerStats::default());
    let run = Run::new(handler, &options, &name, Arc::clone(&stats), sink);
    let ordered = options.ordered;
    let running = Running::spawn(move |stopped, in_flight| async move {
        let _running = running;
        let stop = StopSignal::watch(stopped, closing);
        match source {
            Source::Plain(raw) => {
                let start = Run::plain_starter();
                run.serve(
                    raw.messages,
                    raw.stats,
                    raw.pattern,
                    ordered,
                    (stop, in_flight),
                    start,
                )
                .await
            }
            Source::Durable(raw) => {
                let start = Run::durable_starter(ordered);
                run.serve(
                    raw.deliveries,
                    raw.stats,
                    raw.pattern,
                    ordered,
                    (stop, in_flight),
                    start,
                )
                .await
            }
        }
    });
    Handler {
        name,
        stats,
        running,
    }
}
