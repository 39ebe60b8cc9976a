//! The durable outbox: a SQLite disk queue in front of every publish. (STUB: to be implemented)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::broker::{Broker, RawMessage};
use crate::{Headers, Result};

/// What a committed publish survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// A crash of the process (WAL, `synchronous=NORMAL`). The default.
    #[default]
    ProcessCrash,
    /// A power loss or OS crash (`synchronous=FULL`: an fsync on every commit).
    PowerLoss,
}

/// Outbox options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OutboxOptions {
    /// What a committed publish survives.
    pub durability: Durability,
}

/// Depth and age of the outbox queue, for health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Messages committed and not yet confirmed by the broker.
    pub depth: u64,
    /// Age of the oldest of them.
    pub oldest_age: Option<Duration>,
    /// Messages in the dead-letter table.
    pub dead_letters: u64,
}

/// A message that failed every send attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter table (for [`DeadLetters::replay`]).
    pub id: i64,
    /// The subject.
    pub subject: String,
    /// The headers (with its `Bus-Msg-Id`).
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// Send attempts made.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: String,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
}

/// The dead-letter table of an outbox: list, count, replay and purge.
#[derive(Debug, Clone)]
pub struct DeadLetters {}

impl DeadLetters {
    pub(crate) fn none() -> Self {
        todo!()
    }
    /// Every dead letter, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        todo!()
    }
    /// How many there are.
    pub async fn count(&self) -> Result<u64> {
        todo!()
    }
    /// Moves a dead letter back to the end of the queue, with fresh attempts and the same msg id.
    pub async fn replay(&self, _id: i64) -> Result<()> {
        todo!()
    }
    /// Deletes every dead letter; returns how many.
    pub async fn purge(&self) -> Result<u64> {
        todo!()
    }
}

/// The outbox.
#[derive(Debug)]
pub(crate) struct Outbox {}

impl Outbox {
    pub(crate) async fn open(
        _path: PathBuf,
        _options: OutboxOptions,
        _broker: Arc<dyn Broker>,
    ) -> Result<Outbox> {
        todo!()
    }
    pub(crate) async fn enqueue(&self, _msg: RawMessage) -> Result<()> {
        todo!()
    }
    pub(crate) async fn flush(&self) -> Result<()> {
        todo!()
    }
    pub(crate) fn dead_letters(&self) -> DeadLetters {
        todo!()
    }
    pub(crate) async fn stats(&self) -> Result<OutboxStats> {
        todo!()
    }
}
