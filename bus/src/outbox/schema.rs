//! The outbox file's schema (version 4), its operator views, and the check that a file has it.

use std::path::Path;

use rusqlite::Connection;

use super::io::sql_err;
use crate::error::{Error, Result};

/// The schema version this build writes and understands (`PRAGMA user_version`).
///
/// Version 4: version 3 and the `scheduled` table (messages published for later, see
/// [`SCHEDULED`]). Version 3: one column per part of a message (see [`TABLES`]), readable with
/// the `sqlite3` shell. Version 2 kept the whole message in one private blob. Both are migrated
/// on open (`migrate`); a version-3 file can still be read by tools (it has nothing scheduled).
/// Version 1 predates any release.
pub(crate) const SCHEMA_VERSION: i64 = 4;

/// Messages published for later (`Bus::publish_at`): they wait here, not in the queue, until
/// they are due; the writer then moves the due ones, by due time then id, to the end of the
/// queue in one transaction (they get their queue id then), so the queue stays in id order and
/// its confirmed watermark is never held up by a message that is not due. `due_at` and
/// `created_at` are unix ms. Added by version 4.
pub(crate) const SCHEDULED: &str = "
CREATE TABLE scheduled (
    id         INTEGER PRIMARY KEY,
    due_at     INTEGER NOT NULL,
    subject    TEXT    NOT NULL,
    reply      TEXT,
    headers    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX scheduled_due ON scheduled (due_at, id);
";

/// The `origin` of a dead letter that failed in the outbox (handlers write `handler:<name>`).
pub(crate) const ORIGIN_OUTBOX: &str = "outbox";

/// The tables. Queue ids are assigned by the writer from `outbox_seq`, not by AUTOINCREMENT
/// (which rewrites `sqlite_sequence` once per inserted row): ids must never be reused once the
/// queue empties, because the drainer pages with `id > last_seen` and a replayed dead letter must
/// land at the end of the queue, so the highest id ever given is kept in `outbox_seq.last`,
/// updated once per commit.
///
/// Confirmed rows are not deleted one by one on the hot path: `outbox_seq.done` (every id up to
/// it is confirmed or dead-lettered) moves with one single-row update per confirmed batch, and
/// the rows at or below it are deleted when the writer is idle. A row at or below `done` is
/// never read as queued: the `queued` view is the queue.
pub(crate) const TABLES: &str = "
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    subject    TEXT    NOT NULL,
    reply      TEXT,
    headers    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    origin     TEXT    NOT NULL,
    queue_id   INTEGER,
    msg_id     TEXT,
    subject    TEXT    NOT NULL,
    reply      TEXT,
    headers    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    failed_at  INTEGER NOT NULL
);
";

/// `outbox_seq`, unchanged since version 2 (the migration keeps it as it is).
pub(crate) const SEQ: &str = "
CREATE TABLE outbox_seq (last INTEGER NOT NULL, done INTEGER NOT NULL);
INSERT INTO outbox_seq (last, done) VALUES (0, 0);
";

/// Views for operators (`sqlite3 FILE 'SELECT * FROM stuck'`). Plain SQL functions only
/// (`json_extract`, not `->>`), so that an older `sqlite3` shell can still read the file.
/// A malformed `headers` value shows a NULL `msg_id` instead of failing the query.
pub(crate) const VIEWS: &str = "
CREATE VIEW IF NOT EXISTS queued AS
    SELECT outbox.* FROM outbox WHERE id > (SELECT done FROM outbox_seq);
CREATE VIEW IF NOT EXISTS stuck AS
    SELECT id,
           subject,
           attempts,
           last_error,
           datetime(created_at / 1000, 'unixepoch') AS created,
           (SELECT json_extract(h.value, '$[1]')
              FROM json_each(CASE WHEN json_valid(headers) THEN headers ELSE '[]' END) AS h
             WHERE json_extract(h.value, '$[0]') IN ('Nats-Msg-Id', 'Bus-Msg-Id')
             LIMIT 1) AS msg_id
      FROM queued
     WHERE attempts > 0 OR last_error IS NOT NULL
     ORDER BY id;
CREATE VIEW IF NOT EXISTS dead AS
    SELECT id,
           origin,
           subject,
           attempts,
           last_error,
           datetime(failed_at / 1000, 'unixepoch') AS failed,
           msg_id,
           queue_id
      FROM dead_letters
     ORDER BY id;
";

/// The operator requests (`operator_requests`): replays and purges of dead letters that a tool beside
/// the service (the `bus` CLI) writes into the file and the owning process runs. Not part of
/// the checked layout and created by whichever side needs it first, so a file with or without
/// it is still a version-3 file that every version-3 build opens (see `operator_requests` for why no
/// version bump). `op` is not constrained: a build that does not know an operation answers it
/// instead of a newer tool failing to ask. The partial index keeps the owner's poll (every
/// 500 ms) a lookup of the pending rows only.
pub(crate) const REQUESTS: &str = "
CREATE TABLE IF NOT EXISTS operator_requests (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    op             TEXT    NOT NULL,
    dead_letter_id INTEGER NOT NULL,
    requested_at   INTEGER NOT NULL,
    done_at        INTEGER,
    result         TEXT,
    queue_id       INTEGER
);
CREATE INDEX IF NOT EXISTS operator_requests_pending
    ON operator_requests (id) WHERE done_at IS NULL;
";

/// The handlers' inbox (`inbox`): one row per message a deduplicating handler finished
/// (`handler`, `msg_id`, `done_at` in unix ms), written in the same transaction as what the
/// handler published through its envelope (see [`inbox`](crate::inbox)), and pruned past the
/// handler's window. Like `operator_requests`, not part of the checked layout and created at
/// open if missing, so a file with or without it is still a version-3 file.
///
/// One b-tree, no index on `done_at`: a completion is one insert (an index by time doubled
/// the inbox's cost per message), and pruning scans the handler's rows instead, seldom enough
/// that the scan costs a few rows per completion (see `inbox::Inbox`). The index an earlier
/// version made is dropped.
pub(crate) const INBOX: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    handler TEXT    NOT NULL,
    msg_id  TEXT    NOT NULL,
    done_at INTEGER NOT NULL,
    PRIMARY KEY (handler, msg_id)
) WITHOUT ROWID;
DROP INDEX IF EXISTS inbox_done;
";

/// The column layout of a table: name, declared type, NOT NULL, primary key position.
type Columns = Vec<(String, String, bool, i64)>;

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Columns> {
    let mut stmt = conn.prepare(
        "SELECT name, upper(type), \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid",
    )?;
    let rows = stmt.query_map([table], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0, r.get(3)?))
    })?;
    rows.collect()
}

fn describe(cols: &Columns) -> String {
    cols.iter()
        .map(|(name, ty, not_null, _)| {
            format!("{name} {ty}{}", if *not_null { " NOT NULL" } else { "" })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `conn` holds the version-4 tables exactly (names, types, NOT NULL, keys) and one
/// `outbox_seq` row; `Err` says what differs. The reference is [`TABLES`] itself, created in
/// memory, so the check cannot drift from the schema it checks. `scheduled`: whether to check
/// the `scheduled` table too (not on a version-3 file a tool reads).
pub(crate) fn check(conn: &Connection, scheduled: bool) -> std::result::Result<(), String> {
    let reference = Connection::open_in_memory()
        .and_then(|r| {
            r.execute_batch(&format!("{TABLES}{SEQ}{SCHEDULED}"))
                .map(|()| r)
        })
        .map_err(|e| format!("cannot build the reference schema: {e}"))?;
    let tables = ["outbox", "dead_letters", "outbox_seq", "scheduled"];
    for table in &tables[..3 + usize::from(scheduled)] {
        let want = columns(&reference, table).map_err(|e| e.to_string())?;
        let got = columns(conn, table).map_err(|e| format!("cannot read table {table}: {e}"))?;
        if got.is_empty() {
            return Err(format!("table {table} is missing"));
        }
        if got != want {
            return Err(format!(
                "table {table} has columns ({}), expected ({})",
                describe(&got),
                describe(&want)
            ));
        }
    }
    let seq_rows: i64 = conn
        .query_row("SELECT count(*) FROM outbox_seq", [], |r| r.get(0))
        .map_err(|e| format!("cannot read table outbox_seq: {e}"))?;
    if seq_rows != 1 {
        return Err(format!(
            "table outbox_seq has {seq_rows} rows, expected exactly 1"
        ));
    }
    Ok(())
}

/// The error for a file whose `user_version` is not one this build can open.
fn version_err(path: &Path, version: i64) -> Error {
    let detail = if version < SCHEMA_VERSION {
        format!(
            "outbox schema version {version} is from a pre-release bus and cannot be migrated \
             (only versions 2 and 3 can); drain it with the bus that wrote it, or move it aside"
        )
    } else {
        format!(
            "unknown outbox schema version {version} (this build of bus understands version \
             {SCHEMA_VERSION}); the file was written by a newer bus: upgrade bus, or point \
             outbox_path at another file (the queued messages are left untouched)"
        )
    };
    Error::outbox(path, detail, None)
}

/// The error for a file whose tables are not the ones of its version.
fn layout_err(path: &Path, version: i64, why: &str) -> Error {
    Error::outbox(
        path,
        format!(
            "the outbox file says schema version {version} but its tables do not match it \
             ({why}); it was changed by something other than bus: move it aside (it may still \
             hold unsent messages; it is never reset automatically) and point outbox_path \
             elsewhere"
        ),
        None,
    )
}

/// What a file's `PRAGMA user_version` says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No version and no table: a new file.
    Empty,
    /// No version but tables: some other SQLite file.
    Foreign,
    /// Version 2, which only a `Bus` migrates.
    V2,
    /// Version 3, which a `Bus` migrates and a tool reads (nothing scheduled).
    V3,
    /// This build's version.
    Current,
}

/// Reads the schema version of the file open on `conn`; a version this build cannot open is an
/// error that says what to do.
pub(crate) fn found(conn: &Connection, path: &Path) -> Result<Found> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sql_err(path, "cannot read the outbox schema version", e))?;
    match version {
        0 => {
            let any_table = "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table'";
            let tables: bool = conn
                .query_row(any_table, [], |r| r.get(0))
                .map_err(|e| sql_err(path, "cannot read the outbox schema", e))?;
            Ok(if tables { Found::Foreign } else { Found::Empty })
        }
        2 => Ok(Found::V2),
        3 => Ok(Found::V3),
        SCHEMA_VERSION => Ok(Found::Current),
        v => Err(version_err(path, v)),
    }
}

/// Checks that the file open on `conn` has this build's tables ([`check`]).
pub(crate) fn check_layout(conn: &Connection, path: &Path) -> Result<()> {
    check(conn, true).map_err(|why| layout_err(path, SCHEMA_VERSION, &why))
}

/// Whether the file open on `conn` has the table `name` (a version-3 file a tool reads has no
/// `scheduled`; `inbox` and `operator_requests` are created when first needed).
pub(crate) fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
}

/// For a tool beside the service, which neither creates nor migrates a file: the file must be
/// a version-4 outbox with its tables, or a version-3 one (read as it is: nothing scheduled).
/// `v2` ends the sentence about a version-2 file (what the tool cannot do with it).
pub(crate) fn check_current(conn: &Connection, path: &Path, v2: &str) -> Result<()> {
    match found(conn, path)? {
        Found::Current => check_layout(conn, path),
        Found::V3 => check(conn, false).map_err(|why| layout_err(path, 3, &why)),
        Found::Empty | Found::Foreign => Err(Error::outbox(
            path,
            "this SQLite file is not a bus outbox (it has no outbox schema version)",
            None,
        )),
        Found::V2 => Err(Error::outbox(
            path,
            format!(
                "this outbox file has schema version 2 (written by an older bus); a Bus of this \
                 version migrates it to version {SCHEMA_VERSION} when it opens it, {v2}"
            ),
            None,
        )),
    }
}
