//! The owner's side of the operator requests: the writer thread looks for pending rows every
//! [`POLL`] and runs them (see `operator_requests`).

use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension};

use super::request_rows::{text, NOT_FOUND, PURGED, REPLAYED};
use super::store::{ReplayTx, Store};
use crate::clock::now_ms;

/// How often the owner looks for pending requests.
pub(crate) const POLL: Duration = Duration::from_millis(500);
/// Requests run in one transaction; with more pending, the owner goes on right after the
/// commands that are waiting (publishes never wait for a long replay).
pub(crate) const CHUNK: usize = 1000;
/// Answered requests older than this are deleted (when the owner runs new ones).
const KEEP_DONE_MS: i64 = 7 * 24 * 3600 * 1000;

const ANY_PENDING: &str = "SELECT id FROM operator_requests WHERE done_at IS NULL LIMIT 1";
const PENDING: &str = "SELECT id, op, dead_letter_id FROM operator_requests
    WHERE done_at IS NULL ORDER BY id LIMIT ?1";
const ANSWER: &str = "UPDATE operator_requests SET done_at = ?2, result = ?3, queue_id = ?4
    WHERE id = ?1";
const PRUNE: &str = "DELETE FROM operator_requests WHERE done_at IS NOT NULL AND done_at < ?1";

/// The owner's side: when it looks next. Lives on the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Pickup {
    /// `None`: at once (at start, and while a long request list is being worked through).
    next: Option<Instant>,
    /// The last look failed and was logged; the next failure is not logged again.
    failing: bool,
}

/// What one [`process`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Processed {
    pub(crate) replayed: usize,
    pub(crate) purged: usize,
    /// Requests whose dead letter was not there, or whose operation is unknown.
    pub(crate) other: usize,
    /// More requests are pending than one call runs.
    pub(crate) more: bool,
    /// The new highest queue id, if anything was replayed.
    pub(crate) last_queued: Option<i64>,
}

impl Processed {
    pub(crate) fn ran(&self) -> usize {
        self.replayed + self.purged + self.other
    }
}

impl Pickup {
    /// How long the writer thread may wait for a command before it must look.
    pub(crate) fn wait(&self) -> Duration {
        self.next.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// Called by the writer thread between commands: runs the pending requests when it is time
    /// to look. Returns the new highest queue id when requests replayed dead letters (the caller
    /// tells the drainer, which finds the rows in SQLite as after `DeadLetters::replay`).
    pub(crate) fn poll(&mut self, store: &mut Store) -> Option<i64> {
        let now = Instant::now();
        if self.next.is_some_and(|t| now < t) {
            return None;
        }
        self.next = Some(now + POLL);
        match process(store, CHUNK) {
            Ok(done) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %store.path.display(), "operator requests can be read again");
                }
                if done.ran() > 0 {
                    tracing::info!(path = %store.path.display(), replayed = done.replayed, purged = done.purged, not_done = done.other, more = done.more, "operator requests from the outbox file run");
                }
                if done.more {
                    self.next = None;
                }
                done.last_queued
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(path = %store.path.display(), error = %e, "cannot run the operator requests of the outbox file (replay/purge asked by a tool); will retry every 500 ms");
                }
                None
            }
        }
    }
}

/// Runs up to `limit` pending requests, oldest first, in one transaction that also marks each
/// done with its outcome.
pub(crate) fn process(store: &mut Store, limit: usize) -> rusqlite::Result<Processed> {
    // A plain read first: an owner with nothing to do takes no write lock.
    let pending: Option<i64> = store
        .conn
        .prepare_cached(ANY_PENDING)?
        .query_row([], |r| r.get(0))
        .optional()?;
    if pending.is_none() {
        return Ok(Processed::default());
    }
    let now = now_ms();
    let (mut done, last_queued) = store.with_replays(|r| {
        // Read again inside the transaction: a row withdrawn meanwhile is not run.
        let rows = {
            let mut stmt = r.tx.prepare_cached(PENDING)?;
            // One more than is run: whether more are pending.
            let fetch = limit.saturating_add(1).min(i64::MAX as usize) as i64;
            let rows = stmt.query_map([fetch], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    text(row.get_ref(1)?),
                    row.get_ref(2)?.as_i64().ok(),
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut done = Processed {
            more: rows.len() > limit,
            ..Processed::default()
        };
        for (id, op, dead_letter) in rows.into_iter().take(limit) {
            let (result, queue_id) = run_one(r, op.as_deref(), dead_letter, &mut done)?;
            r.tx.prepare_cached(ANSWER)?
                .execute(params![id, now, result, queue_id])?;
        }
        r.tx.prepare_cached(PRUNE)?.execute([now - KEEP_DONE_MS])?;
        Ok(done)
    })?;
    done.last_queued = last_queued;
    Ok(done)
}

/// Runs one request; returns its `result` text and the new queue id of a replay.
fn run_one(
    r: &mut ReplayTx<'_>,
    op: Option<&str>,
    dead_letter: Option<i64>,
    done: &mut Processed,
) -> rusqlite::Result<(String, Option<i64>)> {
    let not_found = || NOT_FOUND.to_owned();
    let (count, result, queue_id) = match (op, dead_letter) {
        (_, None) => {
            let why = "refused: dead_letter_id is not an integer".to_owned();
            (&mut done.other, why, None)
        }
        (Some("replay"), Some(id)) => match r.replay(id)? {
            Some(queue_id) => (&mut done.replayed, REPLAYED.to_owned(), Some(queue_id)),
            None => (&mut done.other, not_found(), None),
        },
        (Some("purge"), Some(id)) => {
            let delete = "DELETE FROM dead_letters WHERE id = ?1";
            match r.tx.prepare_cached(delete)?.execute([id])? {
                0 => (&mut done.other, not_found(), None),
                _ => (&mut done.purged, PURGED.to_owned(), None),
            }
        }
        (other, Some(_)) => {
            let (other, version) = (other.unwrap_or(""), env!("CARGO_PKG_VERSION"));
            let why = format!(
                "refused: unknown operation {other:?} (this bus {version} runs replay and purge)"
            );
            (&mut done.other, why, None)
        }
    };
    *count += 1;
    Ok((result, queue_id))
}
