//! The buffer of one local subscription: a bounded single-consumer queue that allocates nothing
//! until a message arrives.
//!
//! A tokio `mpsc` channel allocates its first block of 32 slots when it is created (about 4 KB
//! for a [`RawMessage`]), so 100,000 idle subscriptions held some 440 MiB. Here an idle
//! subscription is one small `Arc`; the `VecDeque` grows with what is actually buffered. The
//! consumer takes everything buffered in one lock (it swaps the shared queue with its own), so
//! a busy subscription costs one lock per batch on its side and one per message on the
//! publisher's, which only ever `try_push`es.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::raw::RawMessage;

/// What a push refused, with the message handed back.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The buffer holds `capacity` messages: a slow consumer.
    Full(RawMessage),
    /// The consumer is gone.
    Closed(RawMessage),
}

/// Creates a queue holding at most `capacity` (>= 1) messages not yet taken by the consumer.
pub(crate) fn queue(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        pending: AtomicUsize::new(0),
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            taken: VecDeque::new(),
        },
    )
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    /// Messages pushed and not yet taken by the consumer (in `state.items` or in its batch).
    pending: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    items: VecDeque<RawMessage>,
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The publishing side; the stream ends once it is dropped and everything buffered was taken.
#[derive(Debug)]
pub(crate) struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Buffers `msg` unless the buffer is full or the consumer is gone; never waits.
    pub(crate) fn try_push(&self, msg: RawMessage) -> Result<(), PushError> {
        let s = &*self.shared;
        // Reserve a place first, so concurrent publishers can never overfill the buffer.
        if s.pending.fetch_add(1, Ordering::AcqRel) >= s.capacity {
            s.pending.fetch_sub(1, Ordering::AcqRel);
            // A consumer that went away with a full buffer is gone, not slow: no drop to count.
            if s.lock().receiver_gone {
                return Err(PushError::Closed(msg));
            }
            return Err(PushError::Full(msg));
        }
        let mut state = s.lock();
        if state.receiver_gone {
            drop(state);
            s.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Closed(msg));
        }
        state.items.push_back(msg);
        let waker = state.waker.take();
        drop(state);
        // Woken outside the lock; the consumer registers again when it finds nothing.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The consuming side.
#[derive(Debug)]
pub(crate) struct Receiver {
    shared: Arc<Shared>,
    /// The batch taken from the shared queue, handed out one by one without a lock.
    taken: VecDeque<RawMessage>,
}

/// A batch buffer larger than this many slots is given back to this size once the flood is
/// over (a batch that fills less than a quarter of it), so a subscription that once took a
/// flood does not hold its memory forever. During the flood the two buffers (the publisher's
/// and the consumer's batch) keep their size, so a long burst grows them once, not once per
/// batch.
const KEEP_SLOTS: usize = 1024;

impl Receiver {
    /// The next message, `Ready(None)` once the sender is gone and everything was taken.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<RawMessage>> {
        if let Some(msg) = self.pop() {
            return Poll::Ready(Some(msg));
        }
        let mut state = self.shared.lock();
        if !state.items.is_empty() {
            if self.taken.capacity() > KEEP_SLOTS && state.items.len() < self.taken.capacity() / 4 {
                self.taken.shrink_to(KEEP_SLOTS);
            }
            std::mem::swap(&mut state.items, &mut self.taken);
            drop(state);
            return Poll::Ready(self.pop());
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn pop(&mut self) -> Option<RawMessage> {
        let msg = self.taken.pop_front()?;
        self.shared.pending.fetch_sub(1, Ordering::AcqRel);
        Some(msg)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        // Buffered messages are dropped outside the lock.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn msg(i: usize) -> RawMessage {
        RawMessage::new(format!("a.{i}"), "x")
    }

    fn poll(rx: &mut Receiver) -> Poll<Option<RawMessage>> {
        rx.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_flood_grows_the_buffers_once_and_they_shrink_after_it() {
        let (tx, mut rx) = queue(100_000);
        let mut grown = Vec::new();
        for _ in 0..4 {
            for i in 0..10_000 {
                tx.try_push(msg(i)).unwrap();
            }
            for _ in 0..10_000 {
                assert!(matches!(poll(&mut rx), Poll::Ready(Some(_))));
            }
            // What the publisher fills next: the consumer's last batch buffer, handed back.
            grown.push(rx.shared.lock().items.capacity());
        }
        // The buffers keep their size while the batches stay big (none starts from empty).
        assert!(grown[1..].iter().all(|&c| c >= 10_000), "{grown:?}");
        // Once the batches are small again, both go back to KEEP_SLOTS.
        for i in 0..2 {
            tx.try_push(msg(i)).unwrap();
            assert!(matches!(poll(&mut rx), Poll::Ready(Some(_))));
        }
        assert!(rx.taken.capacity() <= KEEP_SLOTS, "{}", rx.taken.capacity());
        assert!(rx.shared.lock().items.capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn in_order_bounded_then_room_again() {
        let (tx, mut rx) = queue(3);
        for i in 0..3 {
            tx.try_push(msg(i)).unwrap();
        }
        assert!(matches!(tx.try_push(msg(9)), Err(PushError::Full(m)) if m.subject == "a.9"));
        // Taking one message makes room for one, even while the rest of the batch is held.
        let Poll::Ready(Some(m)) = poll(&mut rx) else {
            panic!("a message")
        };
        assert_eq!(m.subject, "a.0");
        tx.try_push(msg(3)).unwrap();
        assert!(matches!(tx.try_push(msg(9)), Err(PushError::Full(_))));
        let got: Vec<String> = (0..3)
            .map(|_| match poll(&mut rx) {
                Poll::Ready(Some(m)) => m.subject,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["a.1", "a.2", "a.3"]);
        assert!(poll(&mut rx).is_pending());
    }

    #[test]
    fn ends_after_the_sender_is_gone_and_the_rest_is_taken() {
        let (tx, mut rx) = queue(8);
        tx.try_push(msg(1)).unwrap();
        drop(tx);
        assert!(matches!(poll(&mut rx), Poll::Ready(Some(_))));
        assert!(matches!(poll(&mut rx), Poll::Ready(None)));
    }

    #[test]
    fn a_gone_receiver_refuses() {
        let (tx, rx) = queue(8);
        drop(rx);
        assert!(matches!(tx.try_push(msg(1)), Err(PushError::Closed(_))));
        // Also when it left a full buffer behind: gone, not a slow consumer.
        let (tx, rx) = queue(1);
        tx.try_push(msg(1)).unwrap();
        drop(rx);
        assert!(matches!(tx.try_push(msg(2)), Err(PushError::Closed(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_the_consumer_across_threads() {
        let (tx, mut rx) = queue(1 << 20);
        let n = 100_000;
        let consumer = tokio::spawn(async move {
            let mut next = 0usize;
            while let Some(m) = std::future::poll_fn(|cx| rx.poll_recv(cx)).await {
                assert_eq!(m.subject, format!("a.{next}"));
                next += 1;
            }
            next
        });
        for i in 0..n {
            tx.try_push(msg(i)).unwrap();
            if i.is_multiple_of(1000) {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        assert_eq!(consumer.await.unwrap(), n);
    }
}
