//! The queries that read an outbox, shared by the writer thread's [`Store`](super::store::Store)
//! and the read-only [`OutboxFile`](super::OutboxFile), so both see the queue the same way.
//!
//! Reading a row never fails because of what is in it: a value that is not what the schema
//! promises (invalid UTF-8, malformed headers, a NULL, text where a number belongs) is read as
//! well as it can be and the reason is given (`decode_error`), so one bad row can neither stop
//! the drainer nor hide the rest of a listing.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use bytes::BytesMut;

use super::encoding::{decode_columns, not_a_payload, Decoded};
use super::records::{Counts, QueuedMessage};
use super::schema::has_table;
use crate::dead_letter::DeadLetter;

/// Milliseconds since the Unix epoch as a time (negative counts as the epoch).
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// An INTEGER column, or why it is not one.
fn int(v: ValueRef<'_>, column: &str) -> Result<i64, String> {
    match v {
        ValueRef::Integer(n) => Ok(n),
        ValueRef::Null => Err(format!("{column} is NULL")),
        _ => Err(format!("{column} is not an integer")),
    }
}

/// A TEXT column that may be NULL, lossily.
fn opt_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(x) => Some(x.to_string()),
    }
}

/// An attempt count as stored (clamped into `u32`), or why it is not one.
fn attempts(v: ValueRef<'_>) -> Result<u32, String> {
    int(v, "attempts").map(|n| n.clamp(0, u32::MAX as i64) as u32)
}

/// The value read, or 0 with the reason kept in `problem` (unless it holds an earlier one).
fn or_zero<T: Default>(read: Result<T, String>, problem: &mut Option<String>) -> T {
    read.unwrap_or_else(|p| {
        problem.get_or_insert(p);
        T::default()
    })
}

/// A query of the queue: the columns given, of the rows above `max(?1, the watermark)`, oldest
/// first, at most `?2`.
macro_rules! queue_page {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM outbox WHERE id > max(?1, (SELECT done FROM outbox_seq)) ORDER BY id LIMIT ?2"
        )
    };
}

/// Runs a [`queue_page!`] query and maps each row.
fn page_of<T>(
    conn: &Connection,
    sql: &str,
    after: i64,
    limit: usize,
    mut f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let limit = limit.min(i64::MAX as usize) as i64;
    let mut rows = stmt.query(rusqlite::params![after, limit])?;
    let mut out = Vec::with_capacity((limit as usize).min(4096));
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// Columns `at..at + 4` (subject, reply, headers, payload) as a message.
fn message_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Decoded> {
    Ok(decode_columns(
        r.get_ref(at)?,
        r.get_ref(at + 1)?,
        r.get_ref(at + 2)?,
        r.get_ref(at + 3)?,
    ))
}

/// Up to `limit` queued rows (above the confirmed watermark) with an id above `after`, oldest
/// first, with everything that is known about them.
pub(crate) fn queued(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<QueuedMessage>> {
    let sql = queue_page!("id, subject, reply, headers, payload, created_at, attempts, last_error");
    page_of(conn, sql, after, limit, queued_row)
}

/// One row of [`queued`]'s columns.
fn queued_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedMessage> {
    let Decoded { msg, mut problem } = message_at(r, 1)?;
    let created_at = or_zero(int(r.get_ref(5)?, "created_at"), &mut problem);
    let attempts = or_zero(attempts(r.get_ref(6)?), &mut problem);
    Ok(QueuedMessage {
        id: r.get(0)?,
        subject: msg.subject,
        reply: msg.reply,
        headers: msg.headers,
        payload: msg.payload,
        created_at: from_ms(created_at),
        attempts,
        last_error: opt_text(r.get_ref(7)?),
        due_at: None,
        decode_error: problem,
    })
}

/// What the drainer needs of a queued row: its id, attempts so far, and the message.
pub(crate) struct Sendable {
    pub(crate) id: i64,
    pub(crate) attempts: u32,
    pub(crate) decoded: Decoded,
}

/// As [`queued`], with only the columns the drainer needs (this runs for every paged row). The
/// payloads of the page share one buffer: one allocation per page instead of one per row.
pub(crate) fn sendable(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Sendable>> {
    let sql = queue_page!("id, attempts, subject, reply, headers, payload");
    let mut payloads = BytesMut::new();
    let mut ends = Vec::with_capacity(limit.min(4096));
    let mut page = page_of(conn, sql, after, limit, |r| {
        let payload = r.get_ref(5)?;
        let mut decoded = decode_columns(
            r.get_ref(2)?,
            r.get_ref(3)?,
            r.get_ref(4)?,
            ValueRef::Blob(&[]),
        );
        match payload {
            ValueRef::Blob(b) | ValueRef::Text(b) => payloads.extend_from_slice(b),
            other => {
                decoded.problem.get_or_insert(not_a_payload(&other));
            }
        }
        ends.push(payloads.len());
        let attempts = or_zero(attempts(r.get_ref(1)?), &mut decoded.problem);
        Ok(Sendable {
            id: r.get(0)?,
            attempts,
            decoded,
        })
    })?;
    let payloads = payloads.freeze();
    let mut start = 0;
    for (row, end) in page.iter_mut().zip(ends) {
        row.decoded.msg.payload = payloads.slice(start..end);
        start = end;
    }
    Ok(page)
}

const DEAD: &str = "SELECT id, origin, queue_id, subject, reply, headers, payload, created_at,
  attempts, last_error, failed_at FROM dead_letters";

fn dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    // A dead letter may be a row that could not be decoded: shown as well as it can be; its
    // `last_error` says what was wrong, and the raw values stay in the file.
    let msg = decode_columns(r.get_ref(3)?, r.get_ref(4)?, r.get_ref(5)?, r.get_ref(6)?).msg;
    Ok(DeadLetter {
        id: r.get(0)?,
        origin: opt_text(r.get_ref(1)?).unwrap_or_default(),
        queue_id: int(r.get_ref(2)?, "queue_id").ok(),
        subject: msg.subject,
        reply: msg.reply,
        headers: msg.headers,
        payload: msg.payload,
        created_at: from_ms(int(r.get_ref(7)?, "created_at").unwrap_or(0)),
        attempts: attempts(r.get_ref(8)?).unwrap_or(0),
        last_error: opt_text(r.get_ref(9)?).unwrap_or_default(),
        failed_at: from_ms(int(r.get_ref(10)?, "failed_at").unwrap_or(0)),
    })
}

/// Every dead letter, oldest first.
pub(crate) fn dead_letters(conn: &Connection) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut stmt = conn.prepare_cached(&format!("{DEAD} ORDER BY id"))?;
    let rows = stmt.query_map([], dead_letter)?;
    rows.collect()
}

/// The dead letter `id`, if there is one.
pub(crate) fn dead_letter_by_id(
    conn: &Connection,
    id: i64,
) -> rusqlite::Result<Option<DeadLetter>> {
    conn.prepare_cached(&format!("{DEAD} WHERE id = ?1"))?
        .query_row([id], dead_letter)
        .optional()
}

pub(crate) fn dead_letter_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
}

/// Queue depth, `created_at` of the oldest queued row (unix ms), dead-letter count, and the
/// scheduled messages (none in a version-3 file, which has no such table).
pub(crate) fn counts(conn: &Connection) -> rusqlite::Result<Counts> {
    let (scheduled, next_due) = if has_table(conn, "scheduled")? {
        conn.query_row("SELECT count(*), min(due_at) FROM scheduled", [], |r| {
            Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(from_ms)))
        })?
    } else {
        (0, None)
    };
    let (depth, oldest_ms) = conn.query_row(
        "SELECT count(*), (SELECT created_at FROM outbox
                            WHERE id > (SELECT done FROM outbox_seq) ORDER BY id LIMIT 1)
           FROM outbox WHERE id > (SELECT done FROM outbox_seq)",
        [],
        |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1).unwrap_or(None))),
    )?;
    Ok(Counts {
        depth,
        oldest_ms,
        dead_letters: dead_letter_count(conn)?,
        scheduled,
        next_due,
        inbox: inbox_size(conn)?,
    })
}

/// Up to `limit` scheduled messages (not due yet) after schedule id `after`, by due time then id
/// (`after`: the last one of the previous page), each with its `due_at`. None in a version-3
/// file.
pub(crate) fn scheduled(
    conn: &Connection,
    after: Option<(i64, i64)>,
    limit: usize,
) -> rusqlite::Result<Vec<QueuedMessage>> {
    if !has_table(conn, "scheduled")? {
        return Ok(Vec::new());
    }
    let (due, id) = after.unwrap_or((i64::MIN, i64::MIN));
    let mut stmt = conn.prepare_cached(
        "SELECT id, subject, reply, headers, payload, created_at, 0, NULL, due_at
           FROM scheduled WHERE (due_at, id) > (?1, ?2) ORDER BY due_at, id LIMIT ?3",
    )?;
    let limit = limit.min(i64::MAX as usize) as i64;
    let rows = stmt.query_map(rusqlite::params![due, id, limit], |r| {
        let due_at = Some(from_ms(r.get(8)?));
        Ok(QueuedMessage {
            due_at,
            ..queued_row(r)?
        })
    })?;
    rows.collect()
}

/// Rows in the `inbox` table (0 when the file has none yet).
pub(crate) fn inbox_size(conn: &Connection) -> rusqlite::Result<u64> {
    if !has_table(conn, "inbox")? {
        return Ok(0);
    }
    conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
}

/// Bytes the outbox takes on disk: the file and its write-ahead log.
pub(crate) fn file_size(path: &Path) -> u64 {
    [path, &super::io::beside(path, "-wal")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// What [`salvage`] read of a damaged range of the queue.
pub(crate) struct Salvaged<T> {
    /// The rows that could be read, in id order.
    pub(crate) rows: Vec<T>,
    /// The ids whose row could not be read, each with SQLite's error.
    pub(crate) unreadable: Vec<(i64, String)>,
    /// The highest id looked at (`from - 1` if none).
    pub(crate) last: i64,
    /// Every id up to `upto` was looked at.
    pub(crate) reached_end: bool,
}

/// Whether SQLite says the file is damaged (`SQLITE_CORRUPT`, "database disk image is
/// malformed"), as opposed to busy, full or unwritable.
pub(crate) fn is_corrupt(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
}

/// Reads the queue row by row, from id `from` to `upto`, when a range scan failed on a damaged
/// page: each id is its own lookup, so a row on a bad page fails alone and the rows on good
/// pages are read. Stops after `limit` rows (readable or not) or `max_probes` ids; `skip` names
/// ids already known to be unreadable (counted as looked at, never reported twice).
#[allow(clippy::too_many_arguments)]
pub(crate) fn salvage<T>(
    conn: &Connection,
    columns: &str,
    from: i64,
    upto: i64,
    limit: usize,
    max_probes: usize,
    skip: impl Fn(i64) -> bool,
    mut f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Salvaged<T>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {columns} FROM outbox WHERE id = ?1"))?;
    let mut out = Salvaged {
        rows: Vec::new(),
        unreadable: Vec::new(),
        last: from - 1,
        reached_end: false,
    };
    let mut probes = 0;
    let mut id = from;
    while id <= upto {
        if out.rows.len() + out.unreadable.len() >= limit || probes >= max_probes {
            return Ok(out);
        }
        probes += 1;
        if !skip(id) {
            match stmt.query_row([id], &mut f).optional() {
                Ok(Some(row)) => out.rows.push(row),
                Ok(None) => {}
                Err(e) if is_corrupt(&e) => out.unreadable.push((id, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        out.last = id;
        id += 1;
    }
    out.reached_end = true;
    Ok(out)
}

/// The columns [`sendable_row`] reads.
pub(crate) const SENDABLE_COLUMNS: &str = "id, attempts, subject, reply, headers, payload";

/// One row of [`SENDABLE_COLUMNS`] for the drainer (its payload in its own buffer).
pub(crate) fn sendable_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Sendable> {
    let mut decoded = message_at(r, 2)?;
    let attempts = or_zero(attempts(r.get_ref(1)?), &mut decoded.problem);
    Ok(Sendable {
        id: r.get(0)?,
        attempts,
        decoded,
    })
}

/// As [`queued`], on a file with a damaged page: the rows that can be read, and for each row
/// that cannot, an entry with only its id and the reason in `decode_error`, so that a listing
/// of a damaged file shows what is lost and goes on past it.
pub(crate) fn queued_salvaged(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<QueuedMessage>> {
    let (last, done): (i64, i64) =
        conn.query_row("SELECT last, done FROM outbox_seq", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let from = after.max(done) + 1;
    let read = salvage(
        conn,
        "id, subject, reply, headers, payload, created_at, attempts, last_error",
        from,
        last,
        limit,
        usize::MAX,
        |_| false,
        queued_row,
    )?;
    let mut out: Vec<QueuedMessage> = read.rows;
    out.extend(read.unreadable.into_iter().map(|(id, why)| QueuedMessage {
        id,
        subject: String::new(),
        reply: None,
        headers: crate::Headers::new(),
        payload: bytes::Bytes::new(),
        created_at: UNIX_EPOCH,
        attempts: 0,
        last_error: None,
        due_at: None,
        decode_error: Some(format!(
            "the row cannot be read from the file ({why}): the page that holds it is damaged"
        )),
    }));
    out.sort_by_key(|m| m.id);
    Ok(out)
}
