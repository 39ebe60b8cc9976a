//! What a handler gives up on: the record it hands to the bus's dead letters, and where those
//! are kept without an outbox file (in memory, bounded). The outbox stores the same record in
//! its dead-letter table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::raw::RawMessage;

// Without the `outbox` feature there is no `Bus::dead_letters` view (its `DeadLetters` type
// lives in the outbox module): handler dead letters are then kept and counted, not listed.
#[cfg_attr(not(feature = "outbox"), allow(dead_code))]
/// A message a handler gave up on, as handed to the bus's dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) msg: RawMessage,
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
    /// `handler:<name>`.
    pub(crate) origin: String,
    pub(crate) failed_at: SystemTime,
}

/// Where a handler puts what it gives up on.
pub(crate) type DeadLetterSink = Arc<dyn Fn(Failed) + Send + Sync>;

/// Handler dead letters of a bus without an outbox file: kept in memory, the newest
/// [`MEMORY_DEAD_LETTERS`], older ones counted as evicted.
pub(crate) const MEMORY_DEAD_LETTERS: usize = 10_000;

/// The in-memory dead letters of handlers.
#[derive(Debug, Default)]
pub(crate) struct MemoryDeadLetters {
    letters: std::sync::Mutex<std::collections::VecDeque<(i64, Failed)>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

#[cfg_attr(not(feature = "outbox"), allow(dead_code))]
impl MemoryDeadLetters {
    pub(crate) fn push(&self, failed: Failed) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        let mut l = self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.len() >= MEMORY_DEAD_LETTERS {
            l.pop_front();
            let evicted = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            if evicted.is_power_of_two() {
                tracing::warn!(evicted, kept = MEMORY_DEAD_LETTERS, "in-memory handler dead letters full: the oldest are dropped (configure an outbox to keep them all)");
            }
        }
        l.push_back((id, failed));
    }

    pub(crate) fn list(&self) -> Vec<(i64, Failed)> {
        self.letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn take(&self, id: i64) -> Option<Failed> {
        let mut l = self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = l.iter().position(|(i, _)| *i == id)?;
        l.remove(i).map(|(_, f)| f)
    }

    pub(crate) fn purge(&self) -> u64 {
        let mut l = self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = l.len() as u64;
        l.clear();
        n
    }

    pub(crate) fn len(&self) -> u64 {
        self.letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64
    }
}
