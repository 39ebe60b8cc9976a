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
}

impl OutboxStats {
    pub(crate) fn new(
        depth: u64,
        oldest_ms: Option<i64>,
        dead_letters: u64,
        schema_version: u32,
        file_size: u64,
        inbox: u64,
    ) -> Self {
        OutboxStats {
            depth,
            oldest_age: oldest_ms.map(age_of),
            dead_letters,
            schema_version,
            file_size,
            inbox,
        }
    }
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
    /// Set when the stored row is not a message that can be sent (invalid UTF-8, malformed
    /// headers, a NULL): why. The drainer moves such a row to the dead letters when it reaches
    /// it; the other fields are then shown as well as they could be read.
    pub decode_error: Option<String>,
}
