//! The writer thread's side of the outbox file: opening it (lock, mode, pragmas, schema version,
//! migration) and every query that writes.
//!
//! Only the writer thread touches the connection, so nothing here is shared or locked.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use super::encoding::{encode_headers, json_text};
use super::io::{create_private, io_err, sql_err};
use super::lock::{refuse_hard_links, FileLock};
use super::records::OutboxStats;
use super::schema::{
    self, Found, INBOX, ORIGIN_OUTBOX, REQUESTS, SCHEDULED, SCHEMA_VERSION, SEQ, TABLES, VIEWS,
};
use super::{migrate, read};
use crate::broker::RawMessage;
use crate::clock::now_ms;
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};

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

impl Durability {
    /// SQLite's `synchronous` level for this durability.
    pub(crate) fn synchronous(self) -> &'static str {
        match self {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        }
    }
}

/// A queued message as the drainer sees it. The row keeps its message for as long as it is
/// queued: each send attempt hands the broker a copy (the trait takes it by value), so a batch
/// that has to go again is still here, and so is what the dead-letter log names.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) msg: RawMessage,
    pub(crate) attempts: u32,
}

/// One page of the queue read for the drainer.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// The rows to send, in id order.
    pub(crate) rows: Vec<Row>,
    /// Rows read, counting those that could not be decoded (now dead letters): the page was
    /// full if this reached the limit.
    pub(crate) scanned: usize,
    /// The highest id read, also when that row was dead-lettered.
    pub(crate) last: Option<i64>,
}

/// A failed attempt on a queued row, to record (or to dead-letter the row, when `dead`).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) id: i64,
    /// Attempts made, this one included.
    pub(crate) attempts: u32,
    pub(crate) dead: bool,
    pub(crate) msg_id: Option<String>,
}

/// What the writer learns about the queue when it opens it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watermarks {
    /// The highest id ever given to a queued row (0 for a new file).
    pub(crate) committed: i64,
    /// Every id up to this one is already confirmed or dead-lettered.
    pub(crate) done: i64,
}

/// The open outbox file: the SQLite connection and the lock file that keeps other processes out.
pub(crate) struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// The highest queue id ever given (mirrors `outbox_seq` as of the last commit).
    pub(crate) last_id: i64,
    /// Every id up to this one is confirmed or dead-lettered (mirrors `outbox_seq.done`).
    pub(crate) done_id: i64,
    /// Every row up to this id is physically deleted (at most `done_id`).
    deleted_upto: i64,
    /// Reused buffer for the headers JSON of one multi-row insert.
    scratch: Vec<u8>,
    /// A page of the file was found unreadable while running (`salvage`): no more deletes or
    /// space reclaim on it; the next open refuses the file (`integrity`).
    pub(crate) damaged: bool,
    /// Queue ids found unreadable and already dead-lettered (their rows cannot be deleted).
    pub(crate) unreadable: std::collections::BTreeSet<i64>,
    /// Rows were deleted since the last space reclaim (`reclaim`).
    pub(crate) reclaim_pending: bool,
    /// Held for as long as the store lives (dropped after the connection: fields drop in order).
    _lock: FileLock,
}

impl Store {
    /// Takes the lock, creates the file `0600` if needed, sets the pragmas and checks the schema.
    pub(crate) fn open(path: &Path, durability: Durability) -> Result<Store> {
        Self::try_open(path, durability)?.ok_or_else(|| {
            Error::outbox(
                path,
                "the outbox is in use by another Bus (in this process or another, through this \
                 path or another name of the same file: a symlink or a hard link); two drainers \
                 must never send the same queue: give each process its own outbox_path, or drop \
                 the other Bus first",
                None,
            )
        })
    }

    /// As [`Store::open`], but `None` when another holder has the lock (the operator requests
    /// run by a tool when no process holds the file).
    pub(crate) fn try_open(path: &Path, durability: Durability) -> Result<Option<Store>> {
        // Create the file ourselves so that it is born 0600 (SQLite would use the umask); the
        // -wal and -shm files SQLite creates take the mode of the main file. It exists before
        // the lock is taken because the lock is on the file itself (`lock`).
        match create_private(path, true) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(path, "cannot create the outbox file", e)),
        }
        // An OS advisory lock: it is released when the process dies, so a crashed publisher
        // never leaves the file locked.
        let Some(lock) = FileLock::try_acquire(path)? else {
            return Ok(None);
        };
        refuse_hard_links(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, "cannot open the outbox file", e))?;
        // SQLite quietly opens a write-protected file read-only; every publish would then fail.
        if conn
            .is_readonly(rusqlite::DatabaseName::Main)
            .unwrap_or(false)
        {
            return Err(Error::outbox(
                path,
                "the outbox file is read-only; it must be writable by this process",
                None,
            ));
        }
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            last_id: 0,
            done_id: 0,
            deleted_upto: 0,
            scratch: Vec::new(),
            damaged: false,
            unreadable: Default::default(),
            reclaim_pending: true,
            _lock: lock,
        };
        store.configure(durability)?;
        store.check_integrity()?;
        store.check_schema()?;
        store.enable_reclaim();
        (store.last_id, store.done_id) = store
            .conn
            .query_row("SELECT last, done FROM outbox_seq", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| sql_err(path, "cannot read the outbox", e))?;
        // Whatever a previous process left at or below `done` is deleted when the writer is idle.
        let first: Option<i64> = store
            .conn
            .query_row("SELECT min(id) FROM outbox", [], |r| r.get(0))
            .map_err(|e| sql_err(path, "cannot read the outbox", e))?;
        store.deleted_upto = first.map_or(store.done_id, |f| (f - 1).min(store.done_id));
        Ok(Some(store))
    }

    fn configure(&self, durability: Durability) -> Result<()> {
        let p = &self.path;
        // The first statement that reads the file: a non-SQLite or corrupt file fails here.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| sql_err(p, "cannot read the outbox file", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::outbox(
                p,
                format!("cannot switch the outbox to WAL mode (got {mode:?}); is the file on a filesystem that supports shared memory?"),
                None,
            ));
        }
        let sync = durability.synchronous();
        self.conn
            .execute_batch(&format!(
                "PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF;"
            ))
            .map_err(|e| sql_err(p, "cannot configure the outbox file", e))?;
        Ok(())
    }
}

/// Scheduled messages moved to the queue per transaction: a long one would hold up publishes.
const RELEASE_CHUNK: i64 = 4096;

/// Rows per multi-row `INSERT` (5 parameters each and one shared, well under SQLite's limit of
/// 32766).
const ROWS_PER_INSERT: usize = 64;

macro_rules! insert_into_outbox {
    () => {
        "INSERT INTO outbox (id, subject, reply, headers, payload, created_at) VALUES "
    };
}

const INSERT_SINGLE: &str = concat!(insert_into_outbox!(), "(?1, ?2, ?3, ?4, ?5, ?6)");

/// Row `i` binds `?5i+1` to `?5i+5`; all share `created_at`, bound once as the last parameter.
static INSERT_MULTI: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let now = 5 * ROWS_PER_INSERT + 1;
    let rows: Vec<String> = (0..ROWS_PER_INSERT)
        .map(|i| {
            let p = 5 * i;
            format!(
                "(?{}, ?{}, ?{}, ?{}, ?{}, ?{now})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect();
    format!(concat!(insert_into_outbox!(), "{}"), rows.join(", "))
});

/// Moves queue row `?1` to the dead letters as it is stored, whatever its values (a row that
/// cannot be decoded keeps its raw bytes): `?2` msg id, `?3` attempts, `?4` error, `?5` now,
/// `?6` origin. Part of a transaction that then deletes the row.
const DEAD_LETTER: &str = "INSERT INTO dead_letters (origin, queue_id, msg_id, subject, reply,
      headers, payload, created_at, attempts, last_error, failed_at)
    SELECT ?6, id, ?2, coalesce(subject, ''), reply, coalesce(headers, '[]'),
           coalesce(payload, X''), coalesce(created_at, 0), ?3, ?4, ?5
      FROM outbox WHERE id = ?1";

impl Store {
    fn check_schema(&mut self) -> Result<()> {
        let p = self.path.clone();
        match schema::found(&self.conn, &p)? {
            Found::Foreign => {
                return Err(Error::outbox(
                    &p,
                    "this SQLite file is not a bus outbox (it has tables but no outbox schema \
                     version); point outbox_path at a new file",
                    None,
                ))
            }
            Found::Empty => {
                // Before the first table: a file whose free pages can be given back to the
                // filesystem (`reclaim`). Set only here: on an existing file the pragma writes
                // its header, and a file must not change just by being opened.
                self.conn
                    .execute_batch(&format!(
                        "PRAGMA auto_vacuum = INCREMENTAL; BEGIN IMMEDIATE; {TABLES} {SEQ} \
                         {SCHEDULED} {VIEWS} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| sql_err(&p, "cannot create the outbox schema", e))?;
            }
            Found::V2 => {
                let started = std::time::Instant::now();
                let done = migrate::v2_to_v3(&mut self.conn).map_err(|e| {
                    sql_err(
                        &p,
                        "cannot migrate the outbox from schema version 2 to 3 (the file is left \
                         at version 2, unchanged)",
                        e,
                    )
                })?;
                tracing::info!(path = %p.display(), queued = done.queued, dead_letters = done.dead_letters, undecodable = done.undecodable, elapsed = ?started.elapsed(), "outbox migrated from schema version 2 to 3");
                self.migrate_v3()?;
            }
            Found::V3 => self.migrate_v3()?,
            Found::Current => {}
        }
        schema::check_layout(&self.conn, &p)?;
        // An operator may have dropped a view; they cost nothing to put back.
        self.conn
            .execute_batch(VIEWS)
            .map_err(|e| sql_err(&p, "cannot create the outbox views", e))?;
        self.conn
            .execute_batch(REQUESTS)
            .map_err(|e| sql_err(&p, "cannot create the operator requests table", e))?;
        self.conn
            .execute_batch(INBOX)
            .map_err(|e| sql_err(&p, "cannot create the inbox table", e))
    }

    /// Migrates a version-3 file to 4 (`migrate::v3_to_v4`).
    fn migrate_v3(&mut self) -> Result<()> {
        migrate::v3_to_v4(&mut self.conn).map_err(|e| {
            sql_err(
                &self.path,
                "cannot migrate the outbox from schema version 3 to 4 (the file is left at \
                 version 3, unchanged)",
                e,
            )
        })?;
        tracing::info!(path = %self.path.display(), "outbox migrated from schema version 3 to 4");
        Ok(())
    }

    /// The committed and done watermarks of a freshly opened queue.
    pub(crate) fn watermarks(&self) -> Result<Watermarks> {
        let p = &self.path;
        let committed = self.last_id;
        let first: Option<i64> = self
            .conn
            .query_row(
                "SELECT min(id) FROM outbox WHERE id > ?1",
                [self.done_id],
                |r| r.get(0),
            )
            .map_err(|e| sql_err(p, "cannot read the outbox", e))?;
        Ok(Watermarks {
            committed,
            done: first.map_or(committed, |f| f - 1).max(self.done_id),
        })
    }

    /// Inserts `msgs` and the inbox completions `done` in one transaction; returns the id of
    /// the first message (the others follow it).
    pub(crate) fn insert_all<'a>(
        &mut self,
        msgs: impl Iterator<Item = &'a RawMessage>,
        done: &[InboxRow],
    ) -> rusqlite::Result<i64> {
        let first = self.last_id + 1;
        let mut id = self.last_id;
        let now = now_ms();
        let tx = self.conn.transaction()?;
        {
            // Many rows per statement: SQLite's per-statement work (bind, step, reset) is a good
            // part of a small insert. The headers JSON of one statement's rows sits in one buffer.
            let mut multi = tx.prepare_cached(&INSERT_MULTI)?;
            let mut single = tx.prepare_cached(INSERT_SINGLE)?;
            let mut chunk: Vec<(&RawMessage, usize)> = Vec::with_capacity(ROWS_PER_INSERT);
            let mut msgs = msgs.peekable();
            while msgs.peek().is_some() {
                self.scratch.clear();
                chunk.clear();
                for m in msgs.by_ref().take(ROWS_PER_INSERT) {
                    encode_headers(&m.headers, &mut self.scratch);
                    chunk.push((m, self.scratch.len()));
                }
                let full = chunk.len() == ROWS_PER_INSERT;
                if full {
                    multi.raw_bind_parameter(5 * ROWS_PER_INSERT + 1, now)?;
                }
                let mut start = 0;
                for (i, &(m, end)) in chunk.iter().enumerate() {
                    id += 1;
                    let (stmt, at) = if full {
                        (&mut multi, 5 * i)
                    } else {
                        single.raw_bind_parameter(6, now)?;
                        (&mut single, 0)
                    };
                    stmt.raw_bind_parameter(at + 1, id)?;
                    stmt.raw_bind_parameter(at + 2, m.subject.as_str())?;
                    stmt.raw_bind_parameter(at + 3, m.reply.as_deref())?;
                    stmt.raw_bind_parameter(at + 4, json_text(&self.scratch[start..end]))?;
                    stmt.raw_bind_parameter(at + 5, &m.payload[..])?;
                    start = end;
                    if !full {
                        stmt.raw_execute()?;
                    }
                }
                if full {
                    multi.raw_execute()?;
                }
            }
            if id != self.last_id {
                tx.prepare_cached("UPDATE outbox_seq SET last = ?1")?
                    .execute([id])?;
            }
            if !done.is_empty() {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO inbox (handler, msg_id, done_at) VALUES (?1, ?2, ?3)",
                )?;
                for row in done {
                    insert.execute(params![&*row.handler, row.msg_id, row.at])?;
                }
            }
        }
        tx.commit()?;
        self.last_id = id;
        Ok(first)
    }

    /// Keeps `msg` in the `scheduled` table until `due_at` (unix ms; see [`SCHEDULED`]).
    pub(crate) fn schedule(&mut self, msg: &RawMessage, due_at: i64) -> rusqlite::Result<()> {
        self.scratch.clear();
        encode_headers(&msg.headers, &mut self.scratch);
        self.conn
            .prepare_cached(
                "INSERT INTO scheduled (due_at, subject, reply, headers, payload, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                due_at,
                msg.subject,
                msg.reply,
                json_text(&self.scratch),
                &msg.payload[..],
                now_ms()
            ])?;
        Ok(())
    }

    /// When the next scheduled message is due (unix ms), if any is.
    pub(crate) fn next_due(&self) -> rusqlite::Result<Option<i64>> {
        self.conn
            .query_row("SELECT min(due_at) FROM scheduled", [], |r| r.get(0))
    }

    /// Moves up to [`RELEASE_CHUNK`] scheduled messages due at `now` (unix ms) to the end of the
    /// queue, by due time then schedule id, in one transaction; they get the next queue ids and
    /// fresh attempts. Returns the last queue id given, `None` if nothing was due.
    pub(crate) fn release_due(&mut self, now: i64) -> rusqlite::Result<Option<i64>> {
        let tx = self.conn.transaction()?;
        let mut id = self.last_id;
        {
            let due: Vec<i64> = tx
                .prepare_cached(
                    "SELECT id FROM scheduled WHERE due_at <= ?1 ORDER BY due_at, id LIMIT ?2",
                )?
                .query_map(params![now, RELEASE_CHUNK], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if due.is_empty() {
                return Ok(None);
            }
            let mut queue = tx.prepare_cached(
                "INSERT INTO outbox (id, subject, reply, headers, payload, created_at, attempts)
                 SELECT ?2, subject, reply, headers, payload, ?3, 0 FROM scheduled WHERE id = ?1",
            )?;
            let mut remove = tx.prepare_cached("DELETE FROM scheduled WHERE id = ?1")?;
            for scheduled in due {
                id += 1;
                queue.execute(params![scheduled, id, now])?;
                remove.execute([scheduled])?;
            }
            if id != self.last_id {
                tx.prepare_cached("UPDATE outbox_seq SET last = ?1")?
                    .execute([id])?;
            }
        }
        tx.commit()?;
        self.last_id = id;
        Ok(Some(id))
    }

    /// Up to `limit` queued rows with an id above `after`, oldest first. A row that cannot be
    /// decoded is moved to the dead letters here, with the reason, and counted in
    /// [`Page::scanned`]: it is never sent, never retried, and the queue goes on.
    pub(crate) fn page(&mut self, after: i64, limit: usize) -> rusqlite::Result<Page> {
        let read = match read::sendable(&self.conn, after, limit) {
            Ok(read) => read,
            Err(e) if read::is_corrupt(&e) => return self.salvage(after, limit, &e),
            Err(e) => return Err(e),
        };
        let mut page = Page {
            rows: Vec::with_capacity(read.len()),
            scanned: read.len(),
            last: read.last().map(|m| m.id),
        };
        let mut bad = Vec::new();
        for m in read {
            let Some(why) = m.decoded.problem else {
                page.rows.push(Row {
                    id: m.id,
                    attempts: m.attempts,
                    msg: m.decoded.msg,
                });
                continue;
            };
            let msg = m.decoded.msg;
            tracing::warn!(path = %self.path.display(), queue_id = m.id, subject = %msg.subject, reason = %why, "outbox row cannot be decoded; moved to the dead letters without sending it (see Bus::dead_letters)");
            let failure = Failure {
                id: m.id,
                attempts: m.attempts,
                dead: true,
                msg_id: crate::headers::msg_id(&msg.headers).map(str::to_owned),
            };
            bad.push((failure, format!("the queued row cannot be decoded: {why}")));
        }
        if !bad.is_empty() {
            let tx = self.conn.transaction()?;
            for (failure, error) in &bad {
                dead_letter(&tx, failure, error)?;
            }
            tx.commit()?;
        }
        Ok(page)
    }

    /// Sets SQLite's automatic checkpoint (run by the committing connection) to `pages` of log:
    /// the bound for when the background checkpoints fall behind. A failure keeps the default
    /// (1,000 pages), which is only slower.
    pub(crate) fn backstop_checkpoints(&self, pages: u32) {
        if let Err(e) = self
            .conn
            .execute_batch(&format!("PRAGMA wal_autocheckpoint={pages};"))
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot set the outbox's automatic checkpoint");
        }
    }

    /// Records that every row up to `last` is confirmed or dead-lettered: one single-row update
    /// (batches are confirmed in id order, and the rows of a batch that were not confirmed were
    /// dead-lettered, so everything below a confirmed batch is done). The rows themselves are
    /// deleted later by [`Store::tidy`].
    pub(crate) fn mark_done(&mut self, last: i64) -> rusqlite::Result<()> {
        if last <= self.done_id {
            return Ok(());
        }
        self.conn
            .prepare_cached("UPDATE outbox_seq SET done = ?1")?
            .execute([last])?;
        self.done_id = last;
        Ok(())
    }

    /// Confirmed rows still in the table (an upper bound).
    pub(crate) fn undeleted(&self) -> i64 {
        self.done_id - self.deleted_upto
    }

    /// Whether every queued row is confirmed (then [`Store::tidy`] empties the table at once).
    pub(crate) fn caught_up(&self) -> bool {
        self.done_id >= self.last_id
    }

    /// Deletes up to `chunk` confirmed rows; returns whether any may remain. When the whole queue
    /// is confirmed, the table is emptied at once (SQLite then frees its pages without visiting
    /// each row, which is far cheaper than deleting them one by one).
    pub(crate) fn tidy(&mut self, chunk: i64) -> rusqlite::Result<bool> {
        if self.deleted_upto >= self.done_id || self.damaged {
            // A damaged file keeps its confirmed rows (deleting would touch the bad pages):
            // they are below the watermark, never sent again, and the file is replaced anyway.
            return Ok(false);
        }
        self.reclaim_pending = true;
        if self.done_id >= self.last_id {
            self.conn
                .prepare_cached("DELETE FROM outbox")?
                .execute([])?;
            self.deleted_upto = self.done_id;
            return Ok(false);
        }
        let upto = self.done_id.min(self.deleted_upto.saturating_add(chunk));
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE id <= ?1")?
            .execute([upto])?;
        self.deleted_upto = upto;
        Ok(upto < self.done_id)
    }

    /// Records failed attempts, all with `error`, in one transaction: a row out of attempts
    /// (`dead`) moves to the dead letters, the others keep their new count and the error.
    pub(crate) fn fail(&mut self, failures: &[Failure], error: &str) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for f in failures {
            if f.dead {
                dead_letter(&tx, f, error)?;
            } else {
                tx.prepare_cached(
                    "UPDATE outbox SET attempts = ?2, last_error = ?3 WHERE id = ?1",
                )?
                .execute(params![f.id, f.attempts, error])?;
            }
        }
        tx.commit()
    }

    /// Every dead letter, oldest first.
    pub(crate) fn dead_letters(&self) -> rusqlite::Result<Vec<DeadLetter>> {
        read::dead_letters(&self.conn)
    }

    pub(crate) fn dead_letter_count(&self) -> rusqlite::Result<u64> {
        read::dead_letter_count(&self.conn)
    }

    /// Moves a dead letter to the end of the queue with fresh attempts; returns its new queue id,
    /// or `None` if there is no such dead letter.
    pub(crate) fn replay(&mut self, id: i64) -> rusqlite::Result<Option<i64>> {
        self.with_replays(|r| r.replay(id))
            .map(|(queued, _)| queued)
    }

    /// Runs `f` in one write transaction in which [`ReplayTx::replay`] moves dead letters to the
    /// end of the queue, and commits; returns what `f` returned and the new highest queue id if
    /// anything was replayed (the caller tells the drainer). The operator requests use it to
    /// run many replays, and their bookkeeping, in one commit.
    pub(crate) fn with_replays<T>(
        &mut self,
        f: impl FnOnce(&mut ReplayTx<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<(T, Option<i64>)> {
        // IMMEDIATE: a tool may write to the file too (operator requests), and a deferred
        // transaction that reads first could not upgrade to a write after it.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut r = ReplayTx {
            tx,
            last: self.last_id,
        };
        let out = f(&mut r)?;
        let moved = (r.last != self.last_id).then_some(r.last);
        if let Some(last) = moved {
            r.tx.execute("UPDATE outbox_seq SET last = ?1", [last])?;
        }
        r.tx.commit()?;
        if let Some(last) = moved {
            self.last_id = last;
        }
        Ok((out, moved))
    }

    /// Records a message a handler gave up on (it never was in the queue): `origin` says which
    /// handler (`handler:<name>`).
    pub(crate) fn insert_dead_letter(
        &mut self,
        origin: &str,
        msg: &RawMessage,
        attempts: u32,
        error: &str,
        failed_at_ms: i64,
    ) -> rusqlite::Result<()> {
        let mut headers = Vec::new();
        encode_headers(&msg.headers, &mut headers);
        self.conn
            .prepare_cached(
                "INSERT INTO dead_letters (origin, queue_id, msg_id, subject, reply, headers,
                     payload, created_at, attempts, last_error, failed_at)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?7)",
            )?
            .execute(params![
                origin,
                crate::headers::msg_id(&msg.headers),
                msg.subject,
                msg.reply,
                json_text(&headers),
                &msg.payload[..],
                failed_at_ms,
                attempts,
                error,
            ])?;
        Ok(())
    }

    pub(crate) fn purge(&mut self) -> rusqlite::Result<u64> {
        self.reclaim_pending = true;
        Ok(self.conn.execute("DELETE FROM dead_letters", [])? as u64)
    }

    /// Depth, age of the oldest queued row, dead letters, schema version and size on disk.
    pub(crate) fn stats(&self) -> rusqlite::Result<OutboxStats> {
        let counts = read::counts(&self.conn)?;
        Ok(OutboxStats::new(
            counts,
            SCHEMA_VERSION as u32,
            read::file_size(&self.path),
        ))
    }
}

/// The inbox (see [`INBOX`]).
impl Store {
    /// The msg ids handler `handler` finished at or after `since` (unix ms), oldest first.
    pub(crate) fn inbox_since(
        &self,
        handler: &str,
        since: i64,
    ) -> rusqlite::Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT msg_id, done_at FROM inbox WHERE handler = ?1 AND done_at >= ?2 ORDER BY done_at",
        )?;
        let rows = stmt.query_map(params![handler, since], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// When handler `handler` finished `msg_id` (unix ms), if it did.
    pub(crate) fn inbox_done_at(
        &self,
        handler: &str,
        msg_id: &str,
    ) -> rusqlite::Result<Option<i64>> {
        use rusqlite::OptionalExtension;
        self.conn
            .prepare_cached("SELECT done_at FROM inbox WHERE handler = ?1 AND msg_id = ?2")?
            .query_row(params![handler, msg_id], |r| r.get(0))
            .optional()
    }

    /// Deletes handler `handler`'s completions older than `before` (unix ms); returns how many.
    pub(crate) fn inbox_prune(&mut self, handler: &str, before: i64) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM inbox WHERE handler = ?1 AND done_at < ?2")?
            .execute(params![handler, before])
    }
}

/// One inbox completion: handler `handler` finished the message `msg_id` at `at` (unix ms).
#[derive(Debug, Clone)]
pub(crate) struct InboxRow {
    pub(crate) handler: std::sync::Arc<str>,
    pub(crate) msg_id: String,
    pub(crate) at: i64,
}

/// The transaction of [`Store::with_replays`].
pub(crate) struct ReplayTx<'c> {
    pub(crate) tx: rusqlite::Transaction<'c>,
    /// The highest queue id given, replays in this transaction included.
    last: i64,
}

impl ReplayTx<'_> {
    /// Moves dead letter `id` to the end of the queue with fresh attempts (same msg id); returns
    /// its new queue id, or `None` if there is no such dead letter.
    pub(crate) fn replay(&mut self, id: i64) -> rusqlite::Result<Option<i64>> {
        let new_id = self.last + 1;
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO outbox (id, subject, reply, headers, payload, created_at, attempts)
                 SELECT ?3, subject, reply, headers, payload, ?2, 0 FROM dead_letters WHERE id = ?1",
            )?
            .execute(params![id, now_ms(), new_id])?;
        if n == 0 {
            return Ok(None);
        }
        self.tx
            .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?
            .execute([id])?;
        self.last = new_id;
        Ok(Some(new_id))
    }
}

/// Moves the queue row of `failure` to the dead letters (inside the caller's transaction).
pub(crate) fn dead_letter(
    tx: &rusqlite::Transaction<'_>,
    failure: &Failure,
    error: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(DEAD_LETTER)?.execute(params![
        failure.id,
        failure.msg_id,
        failure.attempts,
        error,
        now_ms(),
        ORIGIN_OUTBOX
    ])?;
    tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([failure.id])?;
    Ok(())
}
