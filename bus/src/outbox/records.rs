//! What the outbox API hands out: the queue's stats, a queued message, a dead letter.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::io::age_of;
use crate::headers::Headers;

/// Depth and age of the outbox queue, for health checks and tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Messages committed and not yet confirmed by the broker.
    pub depth: u64,
    /// Age of the oldest of them.
    pub oldest_age: Option<Duration>,
    /// Messages in the dead-letter table.
    pub dead_letters: u64,
    /// The file's schema version (`PRAGMA user_version`).
    pub schema_version: u32,
    /// Bytes the outbox takes on disk: the file and its write-ahead log.
    pub file_size: u64,
    /// Completions in the `inbox` table: messages deduplicating handlers finished within their
    /// window (see [`HandlerOptions::dedupe`](crate::HandlerOptions::dedupe)).
    pub inbox: u64,
    /// Messages published for later ([`Bus::publish_at`](crate::Bus::publish_at)) that are not
    /// due yet: they are not in the queue (`depth`) until they are.
    pub scheduled: u64,
    /// When the next of them is due.
    pub next_due: Option<SystemTime>,
}

impl OutboxStats {
    pub(crate) fn new(counts: Counts, schema_version: u32, file_size: u64) -> Self {
        OutboxStats {
            depth: counts.depth,
            oldest_age: counts.oldest_ms.map(age_of),
            dead_letters: counts.dead_letters,
            schema_version,
            file_size,
            inbox: counts.inbox,
            scheduled: counts.scheduled,
            next_due: counts.next_due,
        }
    }
}

/// What [`OutboxStats`] counts in the file (`oldest_ms` in unix ms).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) depth: u64,
    pub(crate) oldest_ms: Option<i64>,
    pub(crate) dead_letters: u64,
    pub(crate) scheduled: u64,
    pub(crate) next_due: Option<SystemTime>,
    pub(crate) inbox: u64,
}

/// A message waiting in the outbox queue, as [`OutboxFile::queued`](super::OutboxFile::queued) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuedMessage {
    /// Its queue id: the queue is sent in this order.
    pub id: i64,
    /// The subject.
    pub subject: String,
    /// The reply subject, if it has one.
    pub reply: Option<String>,
    /// The headers (with its `Nats-Msg-Id`).
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// When it was queued.
    pub created_at: SystemTime,
    /// Failed send attempts so far.
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// For a message published for later and not due yet (see
    /// [`OutboxFile::scheduled`](super::OutboxFile::scheduled)): when it is due; its `id` is then
    /// its id among the scheduled ones (it gets a queue id when it is due). `None` in the queue.
    pub due_at: Option<SystemTime>,
    /// Set when the stored row is not a message that can be sent (invalid UTF-8, malformed
    /// headers, a NULL): why. The drainer moves such a row to the dead letters when it reaches
    /// it; the other fields are then shown as well as they could be read.
    pub decode_error: Option<String>,
}
