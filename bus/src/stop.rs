//! How everything that runs in the background stops: [`Running`] (the one stop convention of
//! handlers, responders, service endpoints and discovery), [`StopSignal`] (stop and close as one
//! flag that their loops read) and [`InFlight`] (the tasks they started, waited for).
//!
//! The convention: `stop().await` stops taking work, lets what is in flight finish and returns
//! when it has; `stop_timeout(t).await` does the same within `t`, and past it abandons what is
//! still running (a durable delivery left unacknowledged is delivered again after its ack wait)
//! and says so with [`Error::StopTimeout`]. Dropping a handle leaves it running until the bus
//! closes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::StreamExt;
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};

/// A loop running in the background and how to stop it (see the module docs).
#[derive(Debug)]
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    in_flight: InFlight,
}

impl Running {
    /// Runs `run` on a task of its own; it reads `stopped` (through a [`StopSignal`]) and
    /// spawns its work on `in_flight`.
    pub(crate) fn spawn<F, Fut>(run: F) -> Running
    where
        F: FnOnce(watch::Receiver<bool>, InFlight) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let in_flight = InFlight::default();
        let task = tokio::spawn(run(stopped, in_flight.clone()));
        Running {
            stop,
            task,
            in_flight,
        }
    }

    /// Stops taking work and waits until what is in flight has finished.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// [`stop`](Running::stop) within `timeout`; past it, what still runs is abandoned and
    /// [`Error::StopTimeout`] names `what` and how much was abandoned.
    pub(crate) async fn stop_timeout(mut self, what: &str, timeout: Duration) -> Result<()> {
        let _ = self.stop.send(true);
        if tokio::time::timeout(timeout, &mut self.task).await.is_ok() {
            return Ok(());
        }
        let abandoned = self.in_flight.abandon();
        self.task.abort();
        let _ = self.task.await;
        tracing::warn!(
            what,
            ?timeout,
            abandoned,
            "did not stop in time; in-flight work abandoned"
        );
        Err(Error::StopTimeout {
            what: what.to_owned(),
            timeout,
            abandoned,
        })
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// Stop and close as one flag that a handler's or a responder's loop reads per message. A
/// watcher task waits on the two watches once; the loop registers its waker only where it waits
/// anyway, so a message costs no watch waiter (two per message before: a lock and a list
/// insert and removal each).
pub(crate) struct StopSignal {
    state: Arc<StopState>,
    watcher: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct StopState {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl StopSignal {
    /// Set once `stopped` or `closing` turns true. A dropped sender is not a stop (a dropped
    /// [`Handler`](crate::Handler) keeps running until the bus closes).
    pub(crate) fn watch(
        mut stopped: watch::Receiver<bool>,
        mut closing: watch::Receiver<bool>,
    ) -> Self {
        let state = Arc::new(StopState::default());
        let shared = Arc::clone(&state);
        let watcher = tokio::spawn(async move {
            tokio::select! {
                Ok(_) = stopped.wait_for(|s| *s) => {},
                Ok(_) = closing.wait_for(|c| *c) => {},
                else => return,
            }
            shared.set.store(true, Ordering::Release);
            shared.waker.wake();
        });
        StopSignal { state, watcher }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.state.set.load(Ordering::Acquire)
    }

    /// `future`'s output, or `None` once stopped.
    pub(crate) async fn or<Fut: Future>(&self, future: Fut) -> Option<Fut::Output> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            self.state.waker.register(cx.waker());
            if self.is_set() {
                return Poll::Ready(None);
            }
            future.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// The next item of `stream` (`Some(None)` at its end), or `None` once stopped.
    pub(crate) async fn next<S: futures::Stream + Unpin>(
        &self,
        stream: &mut S,
    ) -> Option<Option<S::Item>> {
        self.or(stream.next()).await
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The tasks a loop started for its messages, waited for when it stops: a count and a wake-up.
///
/// What a [`JoinSet`](tokio::task::JoinSet) would do here, without its per-task bookkeeping
/// (a lock to insert, one to report completion, one to reap): a task costs one spawn and two
/// atomic operations, which matters for a responder that spawns one per request. A task that
/// does not finish at once also waits for [`abandon`](InFlight::abandon) (a bounded stop).
#[derive(Debug, Default, Clone)]
pub(crate) struct InFlight(Arc<InFlightState>);

#[derive(Debug, Default)]
struct InFlightState {
    count: AtomicUsize,
    idle: Notify,
    abandoned: AtomicBool,
    abandon: Notify,
}

/// Counts its task as finished when dropped (also when the task panicked or was cancelled).
pub(crate) struct InFlightGuard(Arc<InFlightState>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // With nobody waiting this stores one wake-up (no lock); `wait` re-checks.
            self.0.idle.notify_one();
        }
    }
}

impl InFlight {
    /// Runs `task` on a task of its own, counted until it finishes (its output is dropped).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future + Send + 'static,
    {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        let guard = InFlightGuard(Arc::clone(&self.0));
        tokio::spawn(async move {
            let state = &guard.0;
            let mut task = std::pin::pin!(task);
            // The task first: one that finishes at once never looks at the abandon signal.
            let abandoned = state.abandon.notified();
            let mut abandoned = std::pin::pin!(abandoned);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(out) = task.as_mut().poll(cx) {
                    drop(out);
                    return Poll::Ready(());
                }
                // Registered before the flag is read, so an abandon in between is not missed.
                if abandoned.as_mut().poll(cx).is_ready() || state.abandoned.load(Ordering::Acquire)
                {
                    return Poll::Ready(());
                }
                Poll::Pending
            })
            .await;
        });
    }

    /// Counts work that finishes elsewhere (not a task here) until the returned guard drops.
    #[cfg(feature = "outbox")]
    pub(crate) fn hold(&self) -> InFlightGuard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(&self.0))
    }

    /// Drops every task still running (their futures are cancelled); returns how many.
    pub(crate) fn abandon(&self) -> usize {
        let n = self.0.count.load(Ordering::Acquire);
        self.0.abandoned.store(true, Ordering::Release);
        self.0.abandon.notify_waiters();
        n
    }

    /// Waits until every task spawned so far has finished.
    pub(crate) async fn wait(&self) {
        loop {
            let idle = self.0.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.0.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}
