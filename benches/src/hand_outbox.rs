//! The outbox written by hand, as the baselines use it: the SDK's table in a WAL file with
//! `synchronous=NORMAL`, and its rows inserted the way the SDK stores them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::runner::BenchResult;

/// The id headers the outbox stores with every typed message today, in its row's JSON text.
/// The message id travels in one header only.
const ID_HEADERS: [&str; 1] = ["Nats-Msg-Id"];

/// The outbox table's columns as the SDK creates them (schema version 3).
const TABLE: &str = "CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    subject    TEXT    NOT NULL,
    reply      TEXT,
    headers    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
)";

/// The hand-written outbox's file: WAL, `synchronous=NORMAL` (the SDK's default durability)
/// and the SDK's table.
pub(crate) fn open_by_hand(path: &Path) -> BenchResult<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    conn.execute_batch(TABLE)?;
    Ok(conn)
}

/// The hand-written outbox's insert, prepared once per transaction.
pub(crate) const INSERT: &str = "INSERT INTO outbox (id, subject, reply, headers, payload, \
    created_at) VALUES (?1, ?2, NULL, ?3, ?4, ?5)";

/// Inserts row `id` as the SDK stores it, its id headers written as JSON text into the reused
/// `headers`.
pub(crate) fn insert_by_hand(
    insert: &mut rusqlite::Statement<'_>,
    headers: &mut String,
    id: i64,
    subject: &str,
    payload: &[u8],
    now: i64,
) -> BenchResult<()> {
    headers.clear();
    headers.push('[');
    for (i, name) in ID_HEADERS.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(
            headers,
            "{sep}[\"{name}\",\"{:016x}{id:016x}\"]",
            0x5eed_u64
        )?;
    }
    headers.push(']');
    insert.execute(rusqlite::params![
        id,
        subject,
        headers.as_str(),
        payload,
        now
    ])?;
    Ok(())
}

/// Milliseconds since the Unix epoch, as the SDK's `created_at`.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
