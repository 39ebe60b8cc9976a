//! The durable outbox: a SQLite disk queue in front of every publish, and a read-only view of
//! its file for tools ([`OutboxFile`]).
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
//!   carry the same `Nats-Msg-Id`, so a JetStream stream dedupes them. A confirmed
//!   batch moves a watermark in the file (one small update); the rows behind it are deleted
//!   when the writer is idle, so a restarted process never resends them.
//! - Time spent disconnected costs nothing. A send or confirmation that fails while the
//!   connection stays up counts one attempt; after [`RetryPolicy::max_attempts`] (3, with
//!   about 100 ms, then 400 ms of backoff, by default; see [`OutboxOptions::retry`]) the message
//!   moves to the dead-letter table with its last error and the queue goes on behind it. A
//!   payload over the server's max_payload is refused by `publish` once that limit is known
//!   (on NATS, after the first connection), and over [`OutboxOptions::max_payload`] before;
//!   one queued before the limit was known is refused before anything is sent, so it ends
//!   there without ever disturbing the connection. A row that cannot be read back as a message (its
//!   bytes were damaged or edited by hand) is moved there at once, with the reason, and is never
//!   retried. [`DeadLetters`] lists, counts, replays (to the end of the queue, same msg id, fresh
//!   attempts) and purges them.
//! - Memory stays flat however long the queue is: new rows reach the drainer in memory up to a
//!   bound; beyond it the drainer pages through the file by id. A restarted process on the same
//!   file drains what the previous one left, oldest first. One process at a time: the lock is
//!   on the file itself (its inode, `lock`), so a second `Bus` reaching it through a symlink or
//!   a hard link is refused too; a file with several hard links is refused at open. A damaged
//!   file is refused at open, and a page that goes bad while running turns its rows into dead
//!   letters (`integrity`). Free space is given back when the queue is empty and idle
//!   (`reclaim`). The write-ahead log is copied back into the file on a thread of its own
//!   (`checkpoint`), so that a publish never waits for a checkpoint's syncs; under a sustained
//!   flood the log grows to about 16 MiB before the writer checkpoints it itself. A file of
//!   schema version 2 (bus before the readable schema) is migrated on open, in one
//!   transaction, keeping every queued row and dead letter.
//!
//! # The file, for operators
//!
//! The file is plain SQLite (schema version 4, `PRAGMA user_version`), readable while the
//! service runs. Table `outbox` is the queue (`id`, `subject`, `reply`, `headers`, `payload`,
//! `created_at` in unix ms, `attempts`, `last_error`), but its rows up to `outbox_seq.done` are
//! already confirmed and only wait to be deleted: read the view `queued` instead. `headers` is
//! JSON text, `[["Nats-Msg-Id","…"],["X-Tenant","acme"]]`. Table `dead_letters` has the same
//! columns plus `origin` (`outbox`, or `handler:<name>` for a handler's dead letters),
//! `queue_id`, `msg_id` and `failed_at`. What is stuck, and why:
//!
//! ```text
//! sqlite3 -readonly bus-outbox.sqlite3 'SELECT * FROM stuck'
//! sqlite3 -readonly bus-outbox.sqlite3 'SELECT * FROM dead'
//! ```
//!
//! `stuck` lists the queued messages that failed at least once (`id`, `subject`, `attempts`,
//! `last_error`, `created` as UTC text, `msg_id`), oldest first; `dead` the dead letters
//! (`id`, `origin`, `subject`, `attempts`, `last_error`, `failed`, `msg_id`, `queue_id`). The
//! depth and the age of the oldest queued message:
//!
//! ```text
//! sqlite3 -readonly bus-outbox.sqlite3 \
//!   "SELECT count(*), (strftime('%s','now') * 1000 - min(created_at)) / 1000.0 FROM queued"
//! ```
//!
//! Reading is always safe; never write to the file while a `Bus` has it open (use
//! [`DeadLetters`] to replay or purge). In Rust, [`OutboxFile::open_read_only`] gives the same
//! views without taking the lock.
//!
//! The one table a tool may write beside the owner is `operator_requests` (`id`, `op`
//! `replay`|`purge`, `dead_letter_id`, `requested_at`, `done_at`, `result`, `queue_id`): the
//! `bus` CLI ([`OperatorRequests`]) asks there for a replay or purge, and the process holding
//! the file runs each pending row within about 500 ms, through its own writer, and answers it
//! in the same row. The table is optional (a file without it is still a valid outbox).
//!
//! Table `scheduled` holds the messages published for later
//! ([`Bus::publish_at`](crate::Bus::publish_at)) that are not due yet (`id`, `due_at` in unix ms,
//! the message's columns, `created_at`). When one is due, the writer moves it to the end of the
//! queue in one transaction (by due time, then id), where it gets its queue id and is sent like
//! any other: so it survives a restart, is never sent before `due_at`, and the queue stays in
//! id order (its confirmed watermark is never held up by a message that is not due). The table
//! came with schema version 4: a version-3 file is migrated when a `Bus` opens it, because an
//! older build would never send what is scheduled in it; tools still read a version-3 file.
//! [`OutboxFile::scheduled`] lists them, `bus outbox list` shows them with their due time.
//!
//! # Where the file is, and who holds it
//!
//! Without `.outbox_path(..)`, a NATS bus uses [`DEFAULT_OUTBOX_PATH`](crate::DEFAULT_OUTBOX_PATH),
//! `bus-outbox.sqlite3`, a path **relative to the working directory** of the process; started
//! from another directory, the process opens another (empty) queue and the old one waits where
//! it was. Services should pass an absolute path. Next to the file live `<path>.lock` and, while
//! it is open, SQLite's `<path>-wal` and `<path>-shm`; keep them together, and do not delete
//! them while a process runs.
//!
//! One holder at a time, for as long as its `Bus` lives: a second `Bus` on the same file, in
//! another process or the same one, fails at `connect` with `the outbox is in use by another
//! Bus` whether it names the file by the same path, another spelling, a symlink or a hard link
//! (two drainers must never send the same queue). Give each process (each instance of a plugin)
//! its own `outbox_path`. The lock dies with the process, so a crash never leaves the file
//! locked. A file with several hard links is refused at open even when nobody holds it (SQLite
//! names its log after the path, so after a crash another name would miss the last commits); a
//! symlink is safe.
//!
//! # A damaged file, a foreign schema, space
//!
//! - At open, SQLite's `quick_check` reads the file (for up to 2 s; a bigger backlog is checked
//!   that long and the rest as it is read). A damaged file fails `connect` with an
//!   [`Error::Outbox`] naming the file and what SQLite found; it is never
//!   repaired or reset. To recover: stop the process, move the file aside with its `-wal` and
//!   `-shm`, restart (a new queue is created), and read the old one with
//!   [`OutboxFile::open_read_only`] or `bus dead-letters` (every readable row is listed, each
//!   unreadable one is named), or `sqlite3 FILE .recover`. A page that goes bad while running:
//!   the readable rows are still sent in order, each unreadable one becomes a dead letter at
//!   once (its queue id and the reason; its content is lost), `flush` returns, and the next open
//!   refuses the file.
//! - A schema that is not the outbox's (a version-3 file whose tables were changed, a version-2
//!   file the migration cannot read) fails `connect`, with the file left as it was.
//! - The file grows with the backlog and shrinks back once the queue is empty and the bus has
//!   been idle for a second (incremental vacuum, then the log is truncated). A file made by an
//!   earlier bus is switched to this with one `VACUUM` at open when it holds at most 64 MiB of
//!   live data (else at a later open).
//! - Confirmations that cannot happen (no permission on the confirmation subject): nothing is
//!   dead-lettered, the queue waits with a growing backoff, and `flush` fails with
//!   [`Error::Outbox`] ("the queue is blocked: permission denied …")
//!   instead of hanging. In lame duck mode the drainer keeps sending until the server closes the
//!   connection, then fails over.
//! - `.no_outbox()` publishes straight to the client; a message published while the server is
//!   unreachable, or in flight when it dies, can then be lost. `Bus::local()` has no outbox
//!   unless `.outbox_path(..)` asks for one.
//!
//! # Dead letters from Rust
//!
//! ```no_run
//! # async fn inspect(bus: bus::Bus) -> Result<(), bus::Error> {
//! let dead = bus.dead_letters();
//! for letter in dead.list().await? {
//!     println!("{} {} attempts={} last error: {}", letter.id, letter.subject, letter.attempts, letter.last_error);
//! }
//! if let Some(first) = dead.list().await?.first() {
//!     dead.replay(first.id).await?;     // back to the end of the queue, same msg id
//! }
//! dead.purge().await?;
//! let stats = bus.outbox_stats().await?; // depth and oldest age, for health checks
//! # let _ = stats; Ok(()) }
//! ```
//!
//! # Shape
//!
//! `publish` hands its message to the one writer thread that owns the connection and commits
//! concurrent publishes together (`writer`, `store`). One drainer task sends the queue in FIFO
//! order, confirms each batch with the broker and only then marks it done (`drainer`), while
//! the next page is read on the writer thread; the dead-letter API runs on the writer thread
//! too (`dead_letters`), and so do the requests a tool writes into the file
//! (`operator_requests`: the tool's side; `request_runner`: the owner's; `request_rows`: the
//! rows both read). `schema` holds the tables and views and the version check, `encoding` the
//! columns of a message, `read` the queries the writer and [`OutboxFile`] share, `migrate` the
//! upgrade from version 2, `records` the types the API hands out, and `io`, below them all,
//! the errors that say what to do and the clock of the file's timestamps.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::watch;

use crate::broker::{Broker, ConnectionState, RawMessage};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

mod checkpoint;
mod dead_letters;
mod drainer;
mod encoding;
mod file;
mod integrity;
mod io;
mod lock;
mod migrate;
mod operator_requests;
mod read;
mod reclaim;
mod records;
mod request_rows;
mod request_runner;
mod schema;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use crate::dead_letter::{DeadLetter, DeadLetters};
pub use file::OutboxFile;
pub use operator_requests::OperatorRequests;
pub use records::{OutboxStats, QueuedMessage};
pub use request_rows::{OperatorRequest, RequestOp, RequestOutcome};
pub use store::Durability;

/// The default of [`OutboxOptions::max_payload`]: 8 MiB, the largest max_payload nats-server
/// recommends (it warns at start-up above it; its own default is 1 MiB).
pub const DEFAULT_OUTBOX_MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// Outbox options.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboxOptions {
    /// What a committed publish survives.
    pub durability: Durability,
    /// How many failed send attempts (while connected) make a dead letter, and the backoff
    /// between them. Set it with [`BusBuilder::outbox_retry`](crate::BusBuilder::outbox_retry).
    pub retry: RetryPolicy,
    /// The largest message (payload plus headers) the outbox queues while the server's own
    /// limit is not known (on NATS: until the first connection brings the server's INFO):
    /// a bigger one is refused by `publish` with [`Error::OutboxMessageTooLarge`] and never
    /// stored. Once the server's max_payload is known, that limit decides instead
    /// ([`Error::PayloadTooLarge`] at `publish`). Default [`DEFAULT_OUTBOX_MAX_PAYLOAD`]; set
    /// it with [`BusBuilder::outbox_max_payload`](crate::BusBuilder::outbox_max_payload).
    pub max_payload: usize,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            durability: Durability::default(),
            retry: RetryPolicy::default(),
            max_payload: DEFAULT_OUTBOX_MAX_PAYLOAD,
        }
    }
}

impl OutboxOptions {
    /// Sets what a committed publish survives.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the send attempts and the backoff between them.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the largest message queued while the server's own limit is not known.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}

/// The outbox: the writer thread, the drainer task, and the watermarks `flush` compares.
pub(crate) struct Outbox {
    writer: writer::Writer,
    /// The highest committed queue id.
    committed: watch::Receiver<i64>,
    /// Every queue id up to this one is confirmed or dead-lettered.
    done: watch::Receiver<i64>,
    /// Why the drainer cannot make progress at all, while it cannot.
    blocked: watch::Receiver<Option<String>>,
    drainer: tokio::task::JoinHandle<()>,
    thread: Option<JoinHandle<()>>,
    /// Who decides the size a message may have (see [`PublishLimit`]).
    limit: Arc<PublishLimit>,
}

/// The size check at `publish`, before a message is queued: a message the server would refuse
/// must fail the call, not sit in the file to become a dead letter later.
///
/// On NATS the server's max_payload is known once a connection was made (the client reads it
/// from the server's INFO, and the bus reports `Connected` only after it has it); from then on
/// it is the limit (the last server's, while disconnected). Before that, and for other brokers
/// (the in-process broker checks its own limit when the message is sent, which makes it a dead
/// letter), the outbox's own cap is the limit.
struct PublishLimit {
    broker: Arc<dyn Broker>,
    state: watch::Receiver<ConnectionState>,
    /// The broker's limit is a server's and was learned from it.
    known: std::sync::atomic::AtomicBool,
    cap: usize,
}

impl PublishLimit {
    fn check(&self, msg: &RawMessage) -> Result<()> {
        use std::sync::atomic::Ordering;
        let size = msg.wire_size();
        if size <= self.cap.min(self.broker.max_payload()) {
            return Ok(());
        }
        let known = self.known.load(Ordering::Relaxed)
            || (self.broker.kind() == "nats"
                && matches!(
                    *self.state.borrow(),
                    ConnectionState::Connected | ConnectionState::LameDuck
                )
                && {
                    self.known.store(true, Ordering::Relaxed);
                    true
                });
        if known {
            let max = self.broker.max_payload();
            if size > max {
                return Err(Error::PayloadTooLarge {
                    subject: msg.subject.clone(),
                    size,
                    max,
                });
            }
            return Ok(());
        }
        if size > self.cap {
            return Err(Error::OutboxMessageTooLarge {
                subject: msg.subject.clone(),
                size,
                max: self.cap,
            });
        }
        Ok(())
    }
}

/// One handler's completions in the outbox file's `inbox` table, written through the writer
/// thread: a completion is committed in the same transaction as the messages the handler
/// published meanwhile ([`commit`](InboxTable::commit)).
#[derive(Debug, Clone)]
pub(crate) struct InboxTable {
    writer: writer::Writer,
    limit: Arc<PublishLimit>,
    handler: Arc<str>,
}

impl InboxTable {
    /// Queues `outputs` and records that this handler finished `msg_id` (if it has one) at `at`
    /// (unix ms), in one transaction. An output over the size limit fails the whole commit before anything
    /// is written.
    pub(crate) async fn commit(
        &self,
        outputs: Vec<RawMessage>,
        msg_id: Option<String>,
        at: i64,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commit_then(
            outputs,
            msg_id,
            at,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        );
        rx.await.unwrap_or_else(|_| Err(self.writer.closed()))
    }

    /// [`commit`](Self::commit) without waiting: `then` runs on the writer thread with the
    /// outcome (at once, here, when an output is over the size limit or the writer is gone).
    pub(crate) fn commit_then(
        &self,
        outputs: Vec<RawMessage>,
        msg_id: Option<String>,
        at: i64,
        then: writer::Then,
    ) {
        let done = match self.row(&outputs, msg_id, at) {
            Ok(done) => done,
            Err(e) => return then(Err(e)),
        };
        self.writer.complete(outputs, done, then);
    }

    /// The completion row of `msg_id`, after checking every output against the size limit.
    fn row(
        &self,
        outputs: &[RawMessage],
        msg_id: Option<String>,
        at: i64,
    ) -> Result<Option<store::InboxRow>> {
        for msg in outputs {
            self.limit.check(msg)?;
        }
        Ok(msg_id.map(|msg_id| store::InboxRow {
            handler: Arc::clone(&self.handler),
            msg_id,
            at,
        }))
    }

    /// The msg ids this handler finished at or after `since` (unix ms), oldest first.
    pub(crate) async fn since(&self, since: i64) -> Result<Vec<(String, i64)>> {
        let handler = Arc::clone(&self.handler);
        self.writer
            .call("cannot read the inbox", move |ctx| {
                ctx.store.inbox_since(&handler, since)
            })
            .await
    }

    /// When this handler finished `msg_id` (unix ms), if it did.
    pub(crate) async fn done_at(&self, msg_id: String) -> Result<Option<i64>> {
        let handler = Arc::clone(&self.handler);
        self.writer
            .call("cannot read the inbox", move |ctx| {
                ctx.store.inbox_done_at(&handler, &msg_id)
            })
            .await
    }

    /// Deletes this handler's completions older than `before` (unix ms), without waiting.
    pub(crate) fn prune(&self, before: i64) {
        let handler = Arc::clone(&self.handler);
        let _ = self.writer.submit(move |ctx| {
            if let Err(e) = ctx.store.inbox_prune(&handler, before) {
                tracing::warn!(error = %e, handler = %handler, "cannot prune the inbox; will retry");
            }
        });
    }
}

impl std::fmt::Debug for PublishLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishLimit")
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
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
        let limit = Arc::new(PublishLimit {
            broker: broker.clone(),
            state: broker.state(),
            known: Default::default(),
            cap: options.max_payload,
        });
        let started = writer::spawn(path, options.durability).await?;
        let (done_tx, done_rx) = watch::channel(started.watermarks.done);
        let state = broker.state();
        let (blocked_tx, blocked_rx) = watch::channel(None);
        let drainer = drainer::Drainer {
            broker,
            writer: started.writer.clone(),
            shared: started.shared,
            done: done_tx,
            state,
            retry: options.retry,
            last_taken: 0,
            paging: true,
            reconnected: true,
            prefetch: None,
            blocked: blocked_tx,
            blocked_tries: 0,
        };
        let drainer = tokio::spawn(drainer.run());
        tracing::debug!(path = %started.writer.path().display(), committed = started.watermarks.committed, done = started.watermarks.done, "outbox open");
        Ok(Outbox {
            writer: started.writer,
            committed: started.committed,
            done: done_rx,
            blocked: blocked_rx,
            drainer,
            thread: Some(started.thread),
            limit,
        })
    }

    /// Queues `msg`; returns once it is committed to the file. A message over the size limit
    /// (see [`PublishLimit`]) is refused first and never stored.
    pub(crate) async fn enqueue(&self, msg: RawMessage) -> Result<()> {
        self.limit.check(&msg)?;
        self.writer.enqueue(msg).await
    }

    /// Keeps `msg` in the file until `due` (see `schema::SCHEDULED`); returns once it is
    /// committed. A message over the size limit is refused first and never stored.
    pub(crate) async fn schedule(&self, msg: RawMessage, due: std::time::SystemTime) -> Result<()> {
        self.limit.check(&msg)?;
        let due_at = crate::clock::unix_ms(due);
        self.writer
            .call("cannot schedule the message", move |ctx| {
                ctx.schedule(&msg, due_at)
            })
            .await
    }

    /// Returns once everything enqueued before the call is confirmed or dead-lettered.
    ///
    /// Fails at once, instead of waiting, while the drainer is blocked by a configuration
    /// problem (no permission on the confirmation subject): nothing would ever be confirmed.
    pub(crate) async fn flush(&self) -> Result<()> {
        let target = *self.committed.borrow();
        let mut done = self.done.clone();
        let mut blocked = self.blocked.clone();
        tokio::select! {
            reached = done.wait_for(|d| *d >= target) => reached.map(|_| ()).map_err(|_| {
                Error::outbox(
                    self.writer.path(),
                    "the outbox drainer stopped before the flush completed",
                    None,
                )
            }),
            Ok(problem) = blocked.wait_for(Option::is_some) => Err(Error::outbox(
                self.writer.path(),
                format!(
                    "the queue is blocked: {}; the messages stay queued and are sent once it is fixed",
                    problem.as_deref().unwrap_or("")
                ),
                None,
            )),
        }
    }

    /// Where handlers put what they give up on when the bus has an outbox: its dead-letter
    /// table, beside the outbox's own, so one list, one replay and the CLI see both.
    pub(crate) fn handler_sink(&self) -> crate::dead_letter::DeadLetterSink {
        let writer = self.writer.clone();
        std::sync::Arc::new(move |failed: crate::dead_letter::Failed| {
            let at = failed
                .failed_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let submitted = writer.submit(move |ctx| {
                if let Err(e) = ctx.store.insert_dead_letter(
                    &failed.origin,
                    &failed.msg,
                    failed.attempts,
                    &failed.last_error,
                    at,
                ) {
                    tracing::error!(error = %e, subject = %failed.msg.subject, "cannot store a handler's dead letter");
                }
            });
            if submitted.is_err() {
                tracing::error!("the outbox is closed: a handler's dead letter is lost");
            }
        })
    }

    pub(crate) fn dead_letters(&self) -> DeadLetters {
        DeadLetters::in_store(std::sync::Arc::new(self.writer.clone()))
    }

    pub(crate) async fn stats(&self) -> Result<OutboxStats> {
        self.writer
            .call("cannot read the outbox stats", |ctx| ctx.store.stats())
            .await
    }
    /// The inbox table of handler `handler` in this file (see [`InboxTable`]).
    pub(crate) fn inbox_table(&self, handler: &str) -> InboxTable {
        InboxTable {
            writer: self.writer.clone(),
            limit: Arc::clone(&self.limit),
            handler: Arc::from(handler),
        }
    }

    /// The file, for the metrics' `outbox` label.
    pub(crate) fn path(&self) -> &std::path::Path {
        self.writer.path()
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
