//! A damaged outbox file: refused at open, and survived while running.
//!
//! - **At open**, `PRAGMA quick_check(8)` reads every page of the file (the b-tree structure,
//!   page by page; it skips the costlier index-content cross-checks of `integrity_check`, which
//!   is all this schema has little of). It is bounded by a time budget, [`OPEN_CHECK_BUDGET`],
//!   rather than by a page count: an outbox that drains is small (its free pages are given
//!   back, `reclaim`), so it is checked whole in milliseconds; a file with a backlog of
//!   hundreds of MiB is checked for the budget, and what the check did not reach is guarded as
//!   it is read (below). A damaged file is refused with [`Error::Outbox`]: what SQLite found,
//!   that nothing was changed, and how to recover. It is never repaired or reset.
//! - **While running**, a page can still go bad (a disk error, something writing into the
//!   file). When reading the queue fails with `SQLITE_CORRUPT`, the drainer reads that stretch
//!   of the queue row by row ([`read::salvage`]): every row that can be read is sent, in order;
//!   each row that cannot becomes a dead letter at once (its queue id and SQLite's error; its
//!   content is lost) and is never retried, so the queue goes on and `flush` returns. The file
//!   is then marked damaged: confirmed rows are no longer deleted (that would touch the bad
//!   pages) and the next open refuses it, which is when it is moved aside.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::ErrorCode;

use super::io::sql_err;
use super::read::{self, SENDABLE_COLUMNS};
use super::schema::ORIGIN_OUTBOX;
use super::store::{dead_letter, Failure, Page, Row, Store};
use crate::clock::now_ms;
use crate::error::{Error, Result};

/// How long the check at open may read the file before it stops (and the open goes on).
pub(crate) const OPEN_CHECK_BUDGET: Duration = Duration::from_secs(2);

/// Ids read one by one per page at most, in a damaged stretch: bounds the writer thread's
/// time per call when the ids have gaps.
const MAX_PROBES: usize = 64 * 1024;

/// What to do with a damaged outbox file, for the errors that refuse it.
pub(crate) fn recovery_hint(path: &std::path::Path) -> String {
    let p = path.display();
    format!(
        "the file was not changed. To recover: stop every process that uses it, move it aside \
         together with its -wal and -shm files (mv {p} {p}.damaged, and {p}-wal, {p}-shm the \
         same way), and start again: a new, empty outbox is created at this path. The moved \
         file can still be read: `bus dead-letters` and OutboxFile::open_read_only list its \
         dead letters and every queued row that can be read (an unreadable row shows as a \
         decode error), and `sqlite3 {p}.damaged .recover` salvages what SQLite can"
    )
}

impl Store {
    /// Refuses a damaged file (see the module docs); within [`OPEN_CHECK_BUDGET`].
    pub(crate) fn check_integrity(&self) -> Result<()> {
        let p = &self.path;
        let handle = self.conn.get_interrupt_handle();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // Interrupts the check when the budget runs out. Joined before anything else runs on
        // the connection, so that the interrupt cannot hit a later statement.
        let timer = std::thread::Builder::new()
            .name("bus-outbox-check".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) =
                    done_rx.recv_timeout(OPEN_CHECK_BUDGET)
                {
                    handle.interrupt();
                }
            })
            .map_err(|e| Error::outbox(p, "cannot start the outbox check", Some(Box::new(e))))?;
        let started = std::time::Instant::now();
        let found = (|| -> rusqlite::Result<Vec<String>> {
            let mut stmt = self.conn.prepare("PRAGMA quick_check(8)")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })();
        drop(done_tx);
        let _ = timer.join();
        match found {
            Ok(lines) if lines.len() == 1 && lines[0] == "ok" => {
                tracing::debug!(path = %p.display(), elapsed = ?started.elapsed(), "outbox file checked");
                Ok(())
            }
            Ok(lines) => Err(damaged(p, &lines.join("; "))),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) => {
                tracing::info!(path = %p.display(), budget = ?OPEN_CHECK_BUDGET, "the outbox file is too big to check whole at open; the rest is checked as it is read");
                Ok(())
            }
            Err(e) if read::is_corrupt(&e) => Err(damaged(p, &e.to_string())),
            Err(e) => Err(sql_err(p, "cannot check the outbox file", e)),
        }
    }

    /// [`Store::page`] on a damaged stretch of the queue: the rows after `after` read one by
    /// one; the unreadable ones become dead letters (once) and count as read.
    pub(crate) fn salvage(
        &mut self,
        after: i64,
        limit: usize,
        first_error: &rusqlite::Error,
    ) -> rusqlite::Result<Page> {
        if !self.damaged {
            tracing::error!(path = %self.path.display(), error = %first_error, "the outbox file is damaged; the queue goes on row by row: unreadable rows become dead letters, the rest is sent. Replace the file at the next restart (it will be refused then)");
            self.damaged = true;
        }
        let from = after.max(self.done_id) + 1;
        let known = &self.unreadable;
        let read = read::salvage(
            &self.conn,
            SENDABLE_COLUMNS,
            from,
            self.last_id,
            limit,
            MAX_PROBES,
            |id| known.contains(&id),
            read::sendable_row,
        )?;
        let mut page = Page {
            rows: Vec::with_capacity(read.rows.len()),
            scanned: if read.reached_end {
                read.rows.len() + read.unreadable.len()
            } else {
                // Stopped early: the drainer must come back for the rest.
                limit.max(1)
            },
            last: (read.last >= from).then_some(read.last),
        };
        let mut bad = Vec::new();
        for m in read.rows {
            match m.decoded.problem {
                None => page.rows.push(Row {
                    id: m.id,
                    attempts: m.attempts,
                    msg: m.decoded.msg,
                }),
                Some(why) => bad.push((m.id, m.attempts, m.decoded.msg, why)),
            }
        }
        if !bad.is_empty() || !read.unreadable.is_empty() {
            let tx = self.conn.transaction()?;
            for (id, attempts, msg, why) in &bad {
                let failure = Failure {
                    id: *id,
                    attempts: *attempts,
                    dead: true,
                    msg_id: crate::headers::msg_id(&msg.headers).map(str::to_owned),
                };
                dead_letter(
                    &tx,
                    &failure,
                    &format!("the queued row cannot be decoded: {why}"),
                )?;
            }
            for (id, why) in &read.unreadable {
                tracing::warn!(path = %self.path.display(), queue_id = id, error = %why, "outbox row unreadable (damaged page); dead-lettered without its content");
                tx.prepare_cached(
                    "INSERT INTO dead_letters (origin, queue_id, msg_id, subject, reply, headers,
                         payload, created_at, attempts, last_error, failed_at)
                     VALUES (?1, ?2, NULL, '', NULL, '[]', X'', 0, 0, ?3, ?4)",
                )?
                .execute(rusqlite::params![
                    ORIGIN_OUTBOX,
                    id,
                    format!(
                        "the queued row cannot be read from the outbox file ({why}): the page \
                         that holds it is damaged and its content is lost; it was not sent"
                    ),
                    now_ms()
                ])?;
            }
            tx.commit()?;
            self.unreadable
                .extend(read.unreadable.iter().map(|(id, _)| *id));
        }
        Ok(page)
    }
}

/// The error for a file the check at open found damaged.
fn damaged(path: &std::path::Path, found: &str) -> Error {
    Error::outbox(
        path,
        format!(
            "the outbox file is damaged (SQLite's quick_check: {found}); {}",
            recovery_hint(path)
        ),
        None,
    )
}
