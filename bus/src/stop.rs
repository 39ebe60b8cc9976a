//! How the loops of handlers and responders stop: [`StopSignal`] (stop and close as one flag)
//! and [`InFlight`] (the tasks they started, waited for).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures::task::AtomicWaker;
use futures::StreamExt;
use tokio::sync::{watch, Notify};

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
/// atomic operations, which matters for a responder that spawns one per request.
#[derive(Default)]
pub(crate) struct InFlight(Arc<InFlightState>);

#[derive(Default)]
struct InFlightState {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts its task as finished when dropped (also when the task panicked or was cancelled).
struct InFlightGuard(Arc<InFlightState>);

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
            let _guard = guard;
            drop(task.await);
        });
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
