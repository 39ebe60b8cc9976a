//! The durable outbox: a SQLite disk queue in front of every publish.
//!
//! # Guarantees
//!
//! - `publish().await` returns `Ok` once the message is committed to the outbox file. From then
//!   on it survives a crash of the process (default, [`Durability::ProcessCrash`]: WAL with
//!   `synchronous=NORMAL`) or also a power loss ([`Durability::PowerLoss`]: `synchronous=FULL`,
//!   an fsync per commit). A file that cannot be written (read-only, full, corrupt) makes
//!   `publish` or `connect` fail; it is never reset and a message is never acknowledged and lost.
//! - Delivery is at-least-once and in publish order (FIFO by queue id). A row is deleted only
//!   after the broker confirmed it (on NATS, a round trip through the server after each batch);
//!   a batch whose confirmation fails, or that crossed a reconnect, is sent again. Duplicates
//!   carry the same `Bus-Msg-Id`/`Nats-Msg-Id`, so a JetStream stream dedupes them. A confirmed
//!   batch moves a watermark in the file (one small update); the rows behind it are deleted
//!   when the writer is idle, so a restarted process never resends them.
//! - Time spent disconnected costs nothing. A send or confirmation that fails while the
//!   connection stays up counts one attempt; after 3 (with 100 ms, then 400 ms backoff) the
//!   message moves to the dead-letter table with its last error and the queue goes on behind it.
//!   A payload over the broker's max_payload is refused before anything is sent, so it ends
//!   there without ever disturbing the connection. [`DeadLetters`] lists, counts, replays (to
//!   the end of the queue, same msg id, fresh attempts) and purges them.
//! - Memory stays flat however long the queue is: new rows reach the drainer in memory up to a
//!   bound; beyond it the drainer pages through the file by id. A restarted process on the same
//!   file drains what the previous one left, oldest first. One process at a time: a
//!   `<path>.lock` file is held while the outbox is open.
//!
//! # Shape
//!
//! `publish` hands its message to the one writer thread that owns the connection and commits
//! concurrent publishes together (`writer`, `store`). One drainer task sends the queue in FIFO
//! order, confirms each batch with the broker and only then marks it done (`drainer`), while
//! the next page is read on the writer thread; the dead-letter API runs on the writer thread
//! too (`dead_letters`).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::{Broker, RawMessage};
use crate::{Error, Headers, Result};

mod dead_letters;
mod drainer;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use dead_letters::DeadLetters;

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

/// The outbox: the writer thread, the drainer task, and the watermarks `flush` compares.
pub(crate) struct Outbox {
    writer: writer::Writer,
    /// The highest committed queue id.
    committed: watch::Receiver<i64>,
    /// Every queue id up to this one is confirmed or dead-lettered.
    done: watch::Receiver<i64>,
    drainer: tokio::task::JoinHandle<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.writer.path())
            .field("committed", &*self.committed.borrow())
            .field("done", &*self.done.borrow())
            .finish()
    }
}

impl Outbox {
    /// Opens (or creates) the queue at `path` and starts draining it into `broker`, beginning
    /// with whatever a previous process left.
    pub(crate) async fn open(
        path: PathBuf,
        options: OutboxOptions,
        broker: Arc<dyn Broker>,
    ) -> Result<Outbox> {
        let started = writer::spawn(path, options.durability).await?;
        let (done_tx, done_rx) = watch::channel(started.watermarks.done);
        let state = broker.state();
        let drainer = drainer::Drainer {
            broker,
            writer: started.writer.clone(),
            shared: started.shared,
            done: done_tx,
            state,
            last_taken: 0,
            paging: true,
            reconnected: true,
            prefetch: None,
        };
        let drainer = tokio::spawn(drainer.run());
        tracing::debug!(path = %started.writer.path().display(), committed = started.watermarks.committed, done = started.watermarks.done, "outbox open");
        Ok(Outbox {
            writer: started.writer,
            committed: started.committed,
            done: done_rx,
            drainer,
            thread: Some(started.thread),
        })
    }

    /// Queues `msg`; returns once it is committed to the file.
    pub(crate) async fn enqueue(&self, msg: RawMessage) -> Result<()> {
        self.writer.enqueue(msg).await
    }

    /// Returns once everything enqueued before the call is confirmed or dead-lettered.
    pub(crate) async fn flush(&self) -> Result<()> {
        let target = *self.committed.borrow();
        let mut done = self.done.clone();
        done.wait_for(|d| *d >= target)
            .await
            .map(|_| ())
            .map_err(|_| {
                Error::outbox(
                    self.writer.path(),
                    "the outbox drainer stopped before the flush completed",
                    None,
                )
            })
    }

    pub(crate) fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.writer.clone())
    }

    pub(crate) async fn stats(&self) -> Result<OutboxStats> {
        self.writer
            .call(|ctx| {
                let path = ctx.store.path.clone();
                let (depth, oldest, dead_letters) = ctx
                    .store
                    .stats()
                    .map_err(|e| store::sql_err(&path, "cannot read the outbox stats", e))?;
                Ok(OutboxStats {
                    depth,
                    oldest_age: oldest.map(store::age_of),
                    dead_letters,
                })
            })
            .await
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Nothing is lost here: every committed row is in the file, and a batch sent but not yet
        // confirmed is sent again by the next process (at-least-once, same msg id).
        self.drainer.abort();
        self.writer.shutdown();
        // Wait for the writer so that its lock is released when the Bus is gone: a new Bus on
        // the same file right after must not find it held. It only finishes its current
        // transaction, so this is short.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
