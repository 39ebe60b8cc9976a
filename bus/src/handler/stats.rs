//! [`HandlerStats`]: what a handler counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a handler counted so far.
#[derive(Debug, Default)]
pub struct HandlerStats {
    pub(super) handled: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    // Effects once (the inbox).
    pub(super) duplicates_skipped: AtomicU64,
    pub(super) without_msg_id: AtomicU64,
    /// Messages taken from the subscription (a durable redelivery again); counted only with
    /// the `testing` feature, so that a handler's hot path pays nothing for it otherwise.
    #[cfg(feature = "testing")]
    taken: AtomicU64,
    /// Durable deliveries handed back to the broker (a nak) to come again.
    #[cfg(feature = "testing")]
    requeued: AtomicU64,
    /// The handler's name and the attempts `bus::testing` makes fail.
    #[cfg(feature = "testing")]
    pub(crate) faults: Faults,
}

/// A handler's injected faults (`bus::testing`).
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) name: std::sync::OnceLock<String>,
    /// Attempts still to fail.
    pub(crate) fail_next: AtomicU64,
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
    /// Messages taken and not finished yet: being handled, or waiting for a retry's backoff
    /// (feature `testing`: what `bus::testing` waits for).
    #[cfg(feature = "testing")]
    pub fn in_flight(&self) -> u64 {
        let done = self.handled()
            + self.dead_lettered()
            + self.duplicates_skipped()
            + self.requeued.load(Ordering::Relaxed);
        self.taken.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Whether an attempt that succeeded is to count as failed (`bus::testing`), and with what
    /// error; always `None` without the `testing` feature.
    #[inline(always)]
    pub(super) fn injected_failure(&self) -> Option<String> {
        #[cfg(feature = "testing")]
        if self
            .faults
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Some("failure injected by bus::testing".to_owned());
        }
        None
    }

    /// A message was taken from the subscription.
    #[inline(always)]
    pub(super) fn took(&self) {
        #[cfg(feature = "testing")]
        self.taken.fetch_add(1, Ordering::Relaxed);
    }
    /// A message was finished with `Ok`.
    pub(super) fn did_handle(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        crate::settled::poke();
    }
    /// A duplicate was skipped by the inbox (acknowledged or dropped, never run).
    pub(super) fn did_skip_duplicate(&self) {
        self.duplicates_skipped.fetch_add(1, Ordering::Relaxed);
        crate::settled::poke();
    }
    /// A message was dead-lettered.
    pub(super) fn did_dead_letter(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        crate::settled::poke();
    }
    /// A durable delivery was handed back to the broker, to come again.
    pub(super) fn did_requeue(&self) {
        #[cfg(feature = "testing")]
        self.requeued.fetch_add(1, Ordering::Relaxed);
        crate::settled::poke();
    }

    // Effects once (the inbox).

    /// Messages a deduplicating handler ([`HandlerOptions::dedupe`]) skipped: their msg id was
    /// finished within the window, or a copy was being handled at the time. Acknowledged
    /// (durable) or dropped (plain), never run.
    ///
    /// [`HandlerOptions::dedupe`]: crate::HandlerOptions::dedupe
    pub fn duplicates_skipped(&self) -> u64 {
        self.duplicates_skipped.load(Ordering::Relaxed)
    }
    /// Messages a deduplicating handler ran without dedupe because they carry no msg id.
    pub fn without_msg_id(&self) -> u64 {
        self.without_msg_id.load(Ordering::Relaxed)
    }
}
