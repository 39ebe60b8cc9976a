//! The concurrency bound of a handler.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The concurrency bound of a handler: free slots, and the loop or a retry waiting for one.
///
/// A counter rather than a [`Semaphore`](tokio::sync::Semaphore): taking and giving back a
/// slot is one atomic operation each (a semaphore locks its waiter list on every release),
/// which matters when a quick handler takes and gives one per message.
pub(super) struct Slots {
    free: AtomicUsize,
    /// Takers waiting in [`take`](Slots::take): a slot given back wakes one only if there are
    /// any (most of the time there are none, and a quick handler gives one back per message).
    waiting: AtomicUsize,
    given_back: Notify,
}

impl Slots {
    pub(super) fn new(n: usize) -> Self {
        Slots {
            free: AtomicUsize::new(n),
            waiting: AtomicUsize::new(0),
            given_back: Notify::new(),
        }
    }

    // `SeqCst` on `free` and `waiting`: a taker counts itself waiting and then looks at `free`,
    // a giver adds to `free` and then looks at `waiting`, so one of them sees the other.
    pub(super) fn try_take(&self) -> bool {
        self.free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Waits for a slot and takes it.
    pub(super) async fn take(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted out also when this future is dropped (a stop while waiting).
        let _waiting = Waiting(&self.waiting);
        loop {
            let given_back = self.given_back.notified();
            let mut given_back = std::pin::pin!(given_back);
            given_back.as_mut().enable();
            if self.try_take() {
                return;
            }
            given_back.await;
        }
    }

    /// Gives a slot back if one was taken.
    #[inline]
    pub(super) fn give_back_if(&self, taken: bool) {
        if taken {
            self.give_back();
        }
    }

    pub(super) fn give_back(&self) {
        self.free.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            // A wake-up stored if the waiter is between counting itself and waiting; it
            // re-checks `free` either way.
            self.given_back.notify_one();
        }
    }
}

/// A taker counted in [`Slots::waiting`] until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A slot a message holds while it is attempted; given back when dropped.
pub(super) struct Slot<'a>(pub(super) &'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}
