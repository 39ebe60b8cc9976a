//! Migration of an outbox file from schema version 2 (one private blob per message) to 3, and
//! from 3 to 4 (the `scheduled` table).
//!
//! They run when a `Bus` opens an older file, each in one transaction: a crash or an error in
//! the middle leaves the file at the version it had, untouched (a version-2 file goes to 3, then
//! to 4). From 3 to 4 only a table is added: the queue and the dead letters stay as they are. Every queued row (above the confirmed
//! watermark) and every dead letter is carried over with its id, times, attempts and last error;
//! `outbox_seq` (the id counter and the watermark) is kept as it is. A row whose blob cannot be
//! decoded becomes a dead letter that keeps the blob as its payload and says why.

use rusqlite::{params, Connection};

use super::encoding::{encode_headers, json_text};
use super::schema::{ORIGIN_OUTBOX, SCHEDULED, TABLES, VIEWS};
use crate::broker::RawMessage;
use crate::clock::now_ms;
use crate::headers::{known_name, Headers};

/// What a migration carried over.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Migrated {
    pub(crate) queued: u64,
    pub(crate) dead_letters: u64,
    /// Version-2 rows that could not be decoded, now dead letters.
    pub(crate) undecodable: u64,
}

/// Migrates the version-2 file open on `conn` to version 3, in one transaction.
pub(crate) fn v2_to_v3(conn: &mut Connection) -> rusqlite::Result<Migrated> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(&format!(
        "ALTER TABLE outbox RENAME TO outbox_v2;
         ALTER TABLE dead_letters RENAME TO dead_letters_v2;
         {TABLES}"
    ))?;
    // Dead-letter ids are kept, and so is the counter past them (so that a purged id is not
    // given again).
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq)
         SELECT 'dead_letters', seq FROM sqlite_sequence WHERE name = 'dead_letters_v2'",
        [],
    )?;
    let mut done = Migrated::default();
    let mut dead = DeadLetterInsert {
        stmt: tx.prepare(
            "INSERT INTO dead_letters (id, origin, queue_id, msg_id, subject, reply, headers,
                                       payload, created_at, attempts, last_error, failed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?,
        headers: Vec::new(),
    };
    {
        let mut read = tx.prepare(
            "SELECT id, msg, created_at, attempts, last_error, failed_at
               FROM dead_letters_v2 ORDER BY id",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let blob = r.get_ref(1)?.as_blob()?;
            let last_error: String = r.get(4)?;
            let (msg, error) = match decode(blob) {
                Ok(msg) => (msg, last_error),
                Err(why) => {
                    done.undecodable += 1;
                    let error = format!(
                        "{last_error}; and migrating it to schema 3 found its stored form \
                         undecodable ({why}): the payload is the raw version-2 row"
                    );
                    (undecodable(blob), error)
                }
            };
            let (id, times) = (r.get(0)?, (r.get(2)?, r.get(3)?, r.get(5)?));
            dead.insert(Some(id), None, &msg, times, &error)?;
            done.dead_letters += 1;
        }
    }
    {
        // Rows at or below the watermark are confirmed: they are not carried over.
        let mut read = tx.prepare(
            "SELECT id, msg, created_at, attempts, last_error FROM outbox_v2
              WHERE id > (SELECT done FROM outbox_seq) ORDER BY id",
        )?;
        let mut queue = tx.prepare(
            "INSERT INTO outbox (id, subject, reply, headers, payload, created_at, attempts,
                                 last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let blob = r.get_ref(1)?.as_blob()?;
            let (created_at, attempts): (i64, i64) = (r.get(2)?, r.get(3)?);
            match decode(blob) {
                Ok(msg) => {
                    dead.headers.clear();
                    encode_headers(&msg.headers, &mut dead.headers);
                    queue.execute(params![
                        id,
                        msg.subject,
                        msg.reply,
                        json_text(&dead.headers),
                        &msg.payload[..],
                        created_at,
                        attempts,
                        r.get::<_, Option<String>>(4)?,
                    ])?;
                    done.queued += 1;
                }
                Err(why) => {
                    tracing::warn!(queue_id = id, reason = %why, "outbox migration: a version-2 row cannot be decoded; it becomes a dead letter holding the raw row");
                    let error = format!(
                        "the version-2 row cannot be decoded ({why}); the payload is the raw row \
                         as version 2 stored it"
                    );
                    let times = (created_at, attempts, now_ms());
                    dead.insert(None, Some(id), &undecodable(blob), times, &error)?;
                    done.undecodable += 1;
                    done.dead_letters += 1;
                }
            }
        }
    }
    drop(dead);
    tx.execute_batch(&format!(
        "DROP TABLE outbox_v2;
         DROP TABLE dead_letters_v2;
         {VIEWS}
         PRAGMA user_version = 3;"
    ))?;
    tx.commit()?;
    Ok(done)
}

/// Migrates the version-3 file open on `conn` to version 4: adds the `scheduled` table, in one
/// transaction.
pub(crate) fn v3_to_v4(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(&format!("{SCHEDULED} PRAGMA user_version = 4;"))?;
    tx.commit()
}

/// The one insert into the version-3 dead letters, with its reused headers buffer.
struct DeadLetterInsert<'c> {
    stmt: rusqlite::Statement<'c>,
    headers: Vec<u8>,
}

impl DeadLetterInsert<'_> {
    /// Inserts `msg` as a dead letter (`id`: keep this dead-letter id; `times`: created_at,
    /// attempts, failed_at).
    fn insert(
        &mut self,
        id: Option<i64>,
        queue_id: Option<i64>,
        msg: &RawMessage,
        (created_at, attempts, failed_at): (i64, i64, i64),
        error: &str,
    ) -> rusqlite::Result<()> {
        self.headers.clear();
        encode_headers(&msg.headers, &mut self.headers);
        self.stmt.execute(params![
            id,
            ORIGIN_OUTBOX,
            queue_id,
            crate::headers::msg_id(&msg.headers),
            msg.subject,
            msg.reply,
            json_text(&self.headers),
            &msg.payload[..],
            created_at,
            attempts,
            error,
            failed_at,
        ])?;
        Ok(())
    }
}

/// What an undecodable version-2 row becomes: its raw blob as the payload.
fn undecodable(blob: &[u8]) -> RawMessage {
    RawMessage::new(String::new(), blob.to_vec())
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    let (head, tail) = rest.split_at_checked(n).ok_or("truncated")?;
    *rest = tail;
    Ok(head)
}

fn take_u32(rest: &mut &[u8]) -> Result<usize, &'static str> {
    let b = take(rest, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn take_str<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a str, &'static str> {
    std::str::from_utf8(take(rest, n)?).map_err(|_| "invalid UTF-8")
}

/// Decodes a version-2 blob: `[u32 subject length][subject][u32 reply length + 1, 0 for
/// none][reply][u32 headers length][headers][payload]`, little-endian; headers are `[u16 name
/// length][name][u32 value length][value]`, repeated.
pub(crate) fn decode(blob: &[u8]) -> Result<RawMessage, &'static str> {
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
        payload: bytes::Bytes::copy_from_slice(rest),
    })
}
