//! The SQLite side of the outbox: opening (lock, mode, pragmas, schema version) and every query.
//!
//! Only the writer thread touches the connection, so nothing here is shared or locked.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::{DeadLetter, Durability};
use crate::broker::RawMessage;
use crate::headers::{self, Headers};
use crate::{Error, Result};

/// The schema version this build writes and understands (`PRAGMA user_version`).
///
/// Version 2: the whole message in one blob (see [`encode_msg`]), queue ids from `outbox_seq`
/// instead of AUTOINCREMENT, and the confirmed watermark `outbox_seq.done`.
pub(crate) const SCHEMA_VERSION: i64 = 2;

// Queue ids are assigned by the writer from `outbox_seq`, not by AUTOINCREMENT (which rewrites
// `sqlite_sequence` once per inserted row): ids must never be reused once the queue empties,
// because the drainer pages with `id > last_seen` and a replayed dead letter must land at the end
// of the queue, so the highest id ever given is kept in `outbox_seq`, updated once per commit.
//
// Confirmed rows are not deleted one by one on the hot path: `outbox_seq.done` (every id up to it
// is confirmed or dead-lettered) moves with one single-row update per confirmed batch, and the
// rows at or below it are deleted when the writer is idle (or once too many have piled up). A
// row at or below `done` is never read as queued.
const SCHEMA: &str = "
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    msg        BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE outbox_seq (last INTEGER NOT NULL, done INTEGER NOT NULL);
INSERT INTO outbox_seq (last, done) VALUES (0, 0);
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    msg        BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    failed_at  INTEGER NOT NULL
);
";

/// A queued message as the drainer sees it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) msg: RawMessage,
    pub(crate) attempts: u32,
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
    last_id: i64,
    /// Every id up to this one is confirmed or dead-lettered (mirrors `outbox_seq.done`).
    done_id: i64,
    /// Every row up to this id is physically deleted (at most `done_id`).
    deleted_upto: i64,
    /// Reused buffer for encoding headers.
    scratch: Vec<u8>,
    /// Held (locked) for as long as the store lives; the OS releases the lock with the descriptor.
    _lock: File,
}

/// `<path>.lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn create_private(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The queue holds message payloads: readable by its owner only.
        o.mode(0o600);
    }
    o.open(path)
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "; the directory must exist and be writable by this process"
        }
        std::io::ErrorKind::NotFound => "; create the directory first",
        std::io::ErrorKind::StorageFull => "; the disk is full, free some space",
        _ => "",
    };
    Error::outbox(path, format!("{what}: {e}{hint}"), Some(Box::new(e)))
}

/// Maps a SQLite error to an [`Error::Outbox`] that says what to do.
pub(crate) fn sql_err(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    Error::outbox(path, sql_detail(what, &e), Some(Box::new(e)))
}

/// The text of [`sql_err`]: what failed, why, and what to do.
pub(crate) fn sql_detail(what: &str, e: &rusqlite::Error) -> String {
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => {
            "; the disk is full: free some space (the message was NOT queued)"
        }
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => {
            "; the file or its directory is not writable by this process"
        }
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            "; the file is not a SQLite database or is corrupt: move it aside (it may still hold \
             unsent messages; it is never reset automatically) and point outbox_path elsewhere"
        }
        Some(ErrorCode::CannotOpen) => "; check that the directory exists and is writable",
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            "; another process holds the file"
        }
        _ => "",
    };
    format!("{what}: {e}{hint}")
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Rows per multi-row `INSERT` (3 parameters each, well under SQLite's limit of 32766).
const ROWS_PER_INSERT: usize = 64;

static INSERT_MULTI: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let rows = vec!["(?, ?, ?)"; ROWS_PER_INSERT].join(", ");
    format!("INSERT INTO outbox (id, msg, created_at) VALUES {rows}")
});

/// A message as one blob, so that a queued row is one bound value and one read:
/// `[u32 subject length][subject][u32 reply length + 1, 0 for none][reply][u32 headers length]`
/// `[headers][payload]`, little-endian; headers are `[u16 name length][name][u32 value length]`
/// `[value]`, repeated. Cheap to write and read on the hot path (no serde), order-preserving.
/// Appended to `out`.
pub(crate) fn encode_msg(m: &RawMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(&(m.subject.len() as u32).to_le_bytes());
    out.extend_from_slice(m.subject.as_bytes());
    match &m.reply {
        Some(r) => {
            out.extend_from_slice(&(r.len() as u32 + 1).to_le_bytes());
            out.extend_from_slice(r.as_bytes());
        }
        None => out.extend_from_slice(&0u32.to_le_bytes()),
    }
    let at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    for (name, value) in m.headers.iter() {
        // Header names are short tokens; anything longer could not be sent anyway.
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    let n = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&m.payload);
}

/// The name as a `'static` string when it is one of ours, so decoding does not allocate it.
fn known_name(name: &str) -> Cow<'static, str> {
    for k in [
        headers::MSG_ID,
        headers::NATS_MSG_ID,
        headers::CONTENT_TYPE,
        headers::TYPE,
        headers::CORRELATION_ID,
        headers::ERROR,
    ] {
        if k == name {
            return Cow::Borrowed(k);
        }
    }
    Cow::Owned(name.to_owned())
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        format!("corrupt outbox message: {what}").into(),
    )
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> rusqlite::Result<&'a [u8]> {
    if rest.len() < n {
        return Err(corrupt("truncated"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u32(rest: &mut &[u8]) -> rusqlite::Result<usize> {
    let b = take(rest, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn take_str<'a>(rest: &mut &'a [u8], n: usize) -> rusqlite::Result<&'a str> {
    std::str::from_utf8(take(rest, n)?).map_err(|_| corrupt("invalid UTF-8"))
}

/// The inverse of [`encode_msg`].
pub(crate) fn decode_msg(blob: &[u8]) -> rusqlite::Result<RawMessage> {
    let mut rest = blob;
    let n = take_u32(&mut rest)?;
    let subject = take_str(&mut rest, n)?.to_owned();
    let reply = match take_u32(&mut rest)? {
        0 => None,
        n => Some(take_str(&mut rest, n - 1)?.to_owned()),
    };
    let n = take_u32(&mut rest)?;
    let mut hs = take(&mut rest, n)?;
    let mut headers = Headers::with_capacity(2);
    while !hs.is_empty() {
        let b = take(&mut hs, 2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let name = known_name(take_str(&mut hs, n)?);
        let n = take_u32(&mut hs)?;
        headers.append(name, take_str(&mut hs, n)?.to_owned());
    }
    Ok(RawMessage {
        subject,
        reply,
        headers,
        payload: Bytes::copy_from_slice(rest),
    })
}

impl Store {
    /// Takes the lock, creates the file `0600` if needed, sets the pragmas and checks the schema.
    pub(crate) fn open(path: &Path, durability: Durability) -> Result<Store> {
        let lock_file = lock_path(path);
        let lock = create_private(&lock_file, false)
            .map_err(|e| io_err(&lock_file, "cannot create the outbox lock file", e))?;
        // `File::try_lock` (Rust 1.89, the workspace's rust-version) is an OS advisory lock: it
        // is released when the process dies, so a crashed publisher never leaves the file locked.
        let locked = lock.try_lock();
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::outbox(
                    path,
                    format!(
                        "the outbox is in use by another Bus (lock {} is held); two processes must \
                         never drain the same queue: give each process its own outbox_path, or \
                         drop the other Bus first",
                        lock_file.display()
                    ),
                    None,
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err(&lock_file, "cannot lock the outbox lock file", e))
            }
        }
        // Create the file ourselves so that it is born 0600 (SQLite would use the umask); the
        // -wal and -shm files SQLite creates take the mode of the main file.
        match create_private(path, true) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(path, "cannot create the outbox file", e)),
        }
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
            _lock: lock,
        };
        store.configure(durability)?;
        store.check_schema()?;
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
        Ok(store)
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
        let sync = match durability {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        self.conn
            .execute_batch(&format!(
                "PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF;"
            ))
            .map_err(|e| sql_err(p, "cannot configure the outbox file", e))?;
        Ok(())
    }

    fn check_schema(&self) -> Result<()> {
        let p = &self.path;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sql_err(p, "cannot read the outbox schema version", e))?;
        match version {
            0 => {
                let tables: i64 = self
                    .conn
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| sql_err(p, "cannot read the outbox schema", e))?;
                if tables > 0 {
                    return Err(Error::outbox(
                        p,
                        "this SQLite file is not a bus outbox (it has tables but no outbox schema \
                         version); point outbox_path at a new file",
                        None,
                    ));
                }
                self.conn
                    .execute_batch(&format!(
                        "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| sql_err(p, "cannot create the outbox schema", e))?;
                Ok(())
            }
            SCHEMA_VERSION => Ok(()),
            v => Err(Error::outbox(
                p,
                format!(
                    "unknown outbox schema version {v} (this build of bus understands version \
                     {SCHEMA_VERSION}); the file was written by a newer bus: upgrade bus, or point \
                     outbox_path at another file (the queued messages are left untouched)"
                ),
                None,
            )),
        }
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

    /// Inserts `msgs` in one transaction; returns the id of the first (the others follow it).
    pub(crate) fn insert_all<'a>(
        &mut self,
        msgs: impl Iterator<Item = &'a RawMessage>,
    ) -> rusqlite::Result<i64> {
        let first = self.last_id + 1;
        let mut id = self.last_id;
        let now = now_ms();
        let tx = self.conn.transaction()?;
        {
            // Many rows per statement: SQLite's per-statement work (bind, step, reset) is a good
            // part of a small insert. The encoded rows of one statement sit in one buffer.
            let mut multi = tx.prepare_cached(&INSERT_MULTI)?;
            let mut single =
                tx.prepare_cached("INSERT INTO outbox (id, msg, created_at) VALUES (?1, ?2, ?3)")?;
            let mut ends: Vec<usize> = Vec::with_capacity(ROWS_PER_INSERT);
            let mut msgs = msgs.peekable();
            while msgs.peek().is_some() {
                self.scratch.clear();
                ends.clear();
                for m in msgs.by_ref().take(ROWS_PER_INSERT) {
                    encode_msg(m, &mut self.scratch);
                    ends.push(self.scratch.len());
                }
                let mut start = 0;
                if ends.len() == ROWS_PER_INSERT {
                    for (i, &end) in ends.iter().enumerate() {
                        id += 1;
                        multi.raw_bind_parameter(3 * i + 1, id)?;
                        multi.raw_bind_parameter(3 * i + 2, &self.scratch[start..end])?;
                        multi.raw_bind_parameter(3 * i + 3, now)?;
                        start = end;
                    }
                    multi.raw_execute()?;
                } else {
                    for &end in &ends {
                        id += 1;
                        single.execute(params![id, &self.scratch[start..end], now])?;
                        start = end;
                    }
                }
            }
            tx.prepare_cached("UPDATE outbox_seq SET last = ?1")?
                .execute([id])?;
        }
        tx.commit()?;
        self.last_id = id;
        Ok(first)
    }

    /// Up to `limit` queued rows with an id above `after`, oldest first.
    pub(crate) fn page(&self, after: i64, limit: usize) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, msg, attempts FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        // Rows at or below `done` may still be in the table; they are confirmed, never resent.
        let after = after.max(self.done_id);
        let mut rows = stmt.query(params![after, limit as i64])?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while let Some(r) = rows.next()? {
            out.push(Row {
                id: r.get(0)?,
                // Decoded straight from SQLite's buffer, without copying the blob first.
                msg: decode_msg(r.get_ref(1)?.as_blob()?)?,
                attempts: r.get(2)?,
            });
        }
        Ok(out)
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
        if self.deleted_upto >= self.done_id {
            return Ok(false);
        }
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

    /// Records a failed attempt on a queued row.
    pub(crate) fn record_failure(
        &mut self,
        id: i64,
        attempts: u32,
        error: &str,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE outbox SET attempts = ?2, last_error = ?3 WHERE id = ?1",
            params![id, attempts, error],
        )?;
        Ok(())
    }

    /// Moves a queued row to the dead-letter table, in one transaction.
    pub(crate) fn dead_letter(
        &mut self,
        id: i64,
        attempts: u32,
        error: &str,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO dead_letters (msg, created_at, attempts, last_error, failed_at)
             SELECT msg, created_at, ?2, ?3, ?4 FROM outbox WHERE id = ?1",
            params![id, attempts, error, now_ms()],
        )?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
        tx.commit()
    }

    /// Every dead letter, oldest first.
    pub(crate) fn dead_letters(&self) -> rusqlite::Result<Vec<DeadLetter>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, msg, attempts, last_error, failed_at FROM dead_letters ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let msg = decode_msg(r.get_ref(1)?.as_blob()?)?;
            Ok(DeadLetter {
                id: r.get(0)?,
                subject: msg.subject,
                headers: msg.headers,
                payload: msg.payload,
                attempts: r.get(2)?,
                last_error: r.get(3)?,
                failed_at: from_ms(r.get(4)?),
            })
        })?;
        rows.collect()
    }

    pub(crate) fn dead_letter_count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
    }

    /// Moves a dead letter to the end of the queue with fresh attempts; returns its new queue id,
    /// or `None` if there is no such dead letter.
    pub(crate) fn replay(&mut self, id: i64) -> rusqlite::Result<Option<i64>> {
        let new_id = self.last_id + 1;
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO outbox (id, msg, created_at, attempts)
             SELECT ?3, msg, ?2, 0 FROM dead_letters WHERE id = ?1",
            params![id, now_ms(), new_id],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute("UPDATE outbox_seq SET last = ?1", [new_id])?;
        tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
        tx.commit()?;
        self.last_id = new_id;
        Ok(Some(new_id))
    }

    pub(crate) fn purge(&mut self) -> rusqlite::Result<u64> {
        Ok(self.conn.execute("DELETE FROM dead_letters", [])? as u64)
    }

    /// Depth, created_at of the oldest queued row (unix ms), dead-letter count.
    pub(crate) fn stats(&self) -> rusqlite::Result<(u64, Option<i64>, u64)> {
        let depth: u64 = self.conn.query_row(
            "SELECT count(*) FROM outbox WHERE id > ?1",
            [self.done_id],
            |r| r.get(0),
        )?;
        let oldest: Option<i64> = self
            .conn
            .query_row(
                "SELECT created_at FROM outbox WHERE id > ?1 ORDER BY id LIMIT 1",
                [self.done_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok((depth, oldest, self.dead_letter_count()?))
    }
}

/// How old a row created at `created_ms` is now.
pub(crate) fn age_of(created_ms: i64) -> Duration {
    Duration::from_millis((now_ms() - created_ms).max(0) as u64)
}
