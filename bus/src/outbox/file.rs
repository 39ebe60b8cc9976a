//! `OutboxFile`: a read-only view of an outbox file, for tools that run beside the service.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::io::sql_err;
use super::read;
use super::records::{OutboxStats, QueuedMessage};
use super::schema;
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};

/// A read-only view of an outbox file: stats, the queue and the dead letters, while a running
/// `Bus` holds the file (or not).
///
/// It never writes to the file and never takes its `.lock`, so the service goes on publishing
/// and draining meanwhile; each call reads one consistent snapshot (SQLite's WAL mode lets a
/// reader and the writer work at once). The file trails the service by a moment: a batch the
/// broker confirmed is recorded by the service's writer thread right after its `flush`
/// returns, so a message can still show as queued just after it was delivered. The calls are blocking (SQLite is): in async code run
/// them with `tokio::task::spawn_blocking`. To change anything (replay, purge), use the
/// service's [`DeadLetters`](crate::DeadLetters).
///
/// ```no_run
/// # fn run() -> Result<(), bus::Error> {
/// use bus::outbox::OutboxFile;
///
/// let file = OutboxFile::open_read_only("/var/lib/billing/bus-outbox.sqlite3")?;
/// let stats = file.stats()?;
/// eprintln!("{} queued (oldest {:?}), {} dead", stats.depth, stats.oldest_age, stats.dead_letters);
/// let mut after = None;
/// loop {
///     let page = file.queued(100, after)?;
///     for m in &page {
///         eprintln!("{} {} attempts={} {:?}", m.id, m.subject, m.attempts, m.last_error);
///     }
///     match page.last() {
///         Some(m) => after = Some(m.id),
///         None => break,
///     }
/// }
/// for dl in file.dead_letters()? {
///     eprintln!("{} [{}] {}: {}", dl.id, dl.origin, dl.subject, dl.last_error);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OutboxFile {
    conn: Connection,
    path: PathBuf,
}

impl OutboxFile {
    /// Opens the outbox file at `path` for reading only.
    ///
    /// Fails with [`Error::Outbox`] if there is no file, if it is not an outbox, or if its
    /// schema is not version 4 or 3 (a version-3 file is read as it is, with nothing
    /// scheduled; a version-2 file is migrated when a `Bus` of this version next opens it;
    /// read-only access cannot migrate it).
    ///
    /// Like any SQLite reader, it needs the file's `-wal` and `-shm` companions: while a `Bus`
    /// holds the file they exist; on a file nobody has open, SQLite creates them empty beside
    /// it (they never change the data). Where they cannot be created (a read-only directory
    /// or filesystem) no writer can run either, and the file is read as it is.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<OutboxFile> {
        let path = path.as_ref();
        let fix = "give the path of the outbox file (its outbox_path)";
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(Error::outbox(path, format!("not a file; {fix}"), None)),
            Err(e) => {
                let detail = format!("cannot read the outbox file: {e}; {fix}");
                return Err(Error::outbox(path, detail, Some(Box::new(e))));
            }
        }
        match Self::connect(path, false) {
            Err(Error::Outbox {
                source: Some(s), ..
            }) if cannot_open(&*s) && !super::io::beside(path, "-wal").exists() => {
                // No -wal, and none can be created: nothing can be writing this file.
                tracing::debug!(path = %path.display(), "outbox side files cannot be created; reading the file as immutable");
                Self::connect(path, true)
            }
            other => other,
        }
    }

    /// Opens the connection and checks the schema: the first read, where a missing `-shm` shows.
    fn connect(path: &Path, immutable: bool) -> Result<OutboxFile> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = if immutable {
            Connection::open_with_flags(
                format!("file:{}?immutable=1", uri_path(path)),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )
        } else {
            Connection::open_with_flags(path, flags)
        }
        .map_err(|e| sql_err(path, "cannot open the outbox file", e))?;
        conn.execute_batch("PRAGMA query_only = 1; PRAGMA busy_timeout = 5000;")
            .map_err(|e| sql_err(path, "cannot configure the read-only connection", e))?;
        schema::check_current(&conn, path, "which read-only access cannot do")?;
        Ok(OutboxFile {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file this view reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one read transaction, so that what it reads is one snapshot.
    fn snapshot<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let run = || -> rusqlite::Result<T> {
            self.conn.execute_batch("BEGIN")?;
            let out = f(&self.conn)?;
            // After reading past a damaged page SQLite fails the COMMIT of even a read
            // transaction with the same error; what was read is still good (salvage).
            if self.conn.execute_batch("COMMIT").is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            Ok(out)
        };
        run().map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            sql_err(&self.path, what, e)
        })
    }

    /// Depth, oldest age and dead-letter count of the queue, and the file's schema version and
    /// size on disk.
    pub fn stats(&self) -> Result<OutboxStats> {
        let (counts, version) = self.snapshot("cannot read the outbox stats", |c| {
            let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            Ok((read::counts(c)?, version))
        })?;
        Ok(OutboxStats::new(
            counts,
            version as u32,
            read::file_size(&self.path),
        ))
    }

    /// Up to `limit` queued messages, oldest first, starting after queue id `after` (`None`:
    /// from the start). Page through the queue by passing the last id of one call to the next.
    pub fn queued(&self, limit: usize, after: Option<i64>) -> Result<Vec<QueuedMessage>> {
        // A damaged page fails a range scan as a whole: then read row by row, so that a
        // listing of a damaged file shows every row that can still be read (salvage).
        let after = after.unwrap_or(0);
        self.snapshot("cannot read the outbox queue", |c| {
            match read::queued(c, after, limit) {
                Err(e) if read::is_corrupt(&e) => read::queued_salvaged(c, after, limit),
                other => other,
            }
        })
    }

    /// Up to `limit` messages published for later and not due yet
    /// ([`Bus::publish_at`](crate::Bus::publish_at)), the soonest due first, each with its
    /// [`due_at`](QueuedMessage::due_at) and its id among the scheduled ones. Page by passing
    /// the last one's `(due_at, id)` as `after`. When one is due it moves to the queue
    /// ([`queued`](OutboxFile::queued)) with a queue id. Empty for a version-3 file.
    pub fn scheduled(
        &self,
        limit: usize,
        after: Option<(std::time::SystemTime, i64)>,
    ) -> Result<Vec<QueuedMessage>> {
        let after = after.map(|(due, id)| (crate::clock::unix_ms(due), id));
        self.snapshot("cannot read the scheduled messages", |c| {
            read::scheduled(c, after, limit)
        })
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.snapshot("cannot list the dead letters", read::dead_letters)
    }

    /// The dead letter `id`, or `None` if there is none.
    pub fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>> {
        self.snapshot("cannot read the dead letter", |c| {
            read::dead_letter_by_id(c, id)
        })
    }
}

/// Whether SQLite failed because it could not open or create a file (here: `-wal` or `-shm`).
fn cannot_open(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|c| matches!(c, ErrorCode::CannotOpen | ErrorCode::ReadOnly))
}

/// `path` for a `file:` URI: `%`, `?` and `#` escaped, the rest as it is.
fn uri_path(path: &Path) -> String {
    // `%` first, so that the escapes it makes are not escaped again.
    let path = path.to_string_lossy();
    path.replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23")
}
