//! [`HandlerStats`]: what a handler counted.

use std::sync::atomic::{AtomicU64, Ordering};

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
