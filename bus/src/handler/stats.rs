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
