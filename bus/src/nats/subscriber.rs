//! The async-nats subscriber of one subscription, shared by the task that pumps its messages and
//! the stream that takes it out on drop (to unsubscribe at once); also a durable puller's inbox.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use futures::StreamExt;

/// The async-nats subscriber, shared by the pump (which reads it) and the stream (which takes it
/// out on drop to unsubscribe at once).
pub(super) type SharedSubscriber = Arc<std::sync::Mutex<Option<async_nats::Subscriber>>>;

pub(super) fn lock_sub(
    sub: &SharedSubscriber,
) -> std::sync::MutexGuard<'_, Option<async_nats::Subscriber>> {
    crate::panic::lock(sub)
}

/// The next message of the shared subscriber; `None` once it was taken out or ended.
pub(super) fn next_message(
    sub: &SharedSubscriber,
) -> impl Future<Output = Option<async_nats::Message>> + '_ {
    std::future::poll_fn(move |cx| match lock_sub(sub).as_mut() {
        Some(s) => s.poll_next_unpin(cx),
        None => Poll::Ready(None),
    })
}

/// Waits for a message of the shared subscriber, then hands it and every other one async-nats
/// already holds to `forward`, under one lock and in one wake-up (a message at a time cost a
/// lock and a trip through `select!` each). `false` once the subscriber ended or was taken out,
/// or `forward` refused (our side closed).
pub(super) fn forward_ready<'a>(
    sub: &'a SharedSubscriber,
    forward: &'a mut impl FnMut(async_nats::Message) -> bool,
) -> impl Future<Output = bool> + 'a {
    std::future::poll_fn(move |cx| {
        let mut guard = lock_sub(sub);
        let Some(s) = guard.as_mut() else {
            return Poll::Ready(false);
        };
        let mut moved = false;
        loop {
            match s.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    moved = true;
                    if !forward(msg) {
                        return Poll::Ready(false);
                    }
                }
                Poll::Ready(None) => return Poll::Ready(false),
                // The waker is registered; come back with what was moved, if anything.
                Poll::Pending if moved => return Poll::Ready(true),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
}
