//! Giving disk space back after a drain.
//!
//! SQLite keeps the pages of deleted rows as free pages inside the file, so an outbox that once
//! held two million messages would stay that big forever. The policy:
//!
//! - New files are created with `auto_vacuum = INCREMENTAL` (set before the first table), so
//!   free pages can be cut off the end of the file without rewriting it.
//! - When the queue is empty (everything confirmed and deleted) and the writer has been idle
//!   for [`IDLE_BEFORE_RECLAIM`], it runs `PRAGMA incremental_vacuum` in steps of
//!   [`STEP_PAGES`] pages (a publish arriving meanwhile waits one step at most), then
//!   `PRAGMA wal_checkpoint(TRUNCATE)`, which copies the log into the file, truncates the file
//!   to its live pages and empties the `-wal`. Never while messages are queued: a busy queue
//!   reuses its free pages anyway, and the drain must not pay for it.
//! - A file made before this (with `auto_vacuum = NONE`) needs one `VACUUM` to switch, which
//!   rewrites the whole file: it is done at open when the live data is at most
//!   [`VACUUM_AT_OPEN_MAX_BYTES`] (well under a second), else put off to an open where the
//!   queue is smaller, with a log line. A `VACUUM` that cannot run (a reader holds the file)
//!   is put off the same way; neither ever fails the open.

use std::time::Duration;

use super::store::Store;

/// Idle time of the writer before free space is given back.
pub(crate) const IDLE_BEFORE_RECLAIM: Duration = Duration::from_secs(1);
/// Pages given back per step (16 MiB with the default 4 KiB pages).
const STEP_PAGES: i64 = 4096;
/// Free pages below which nothing is given back (256 KiB): not worth a checkpoint.
const MIN_FREE_PAGES: i64 = 64;
/// Largest live data (file minus free pages) that is rewritten at open to switch an older file
/// to incremental auto-vacuum.
pub(crate) const VACUUM_AT_OPEN_MAX_BYTES: i64 = 64 * 1024 * 1024;

impl Store {
    fn pragma_i64(&self, name: &str) -> rusqlite::Result<i64> {
        self.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
    }

    /// Switches a file made with `auto_vacuum = NONE` to incremental, if it is small enough to
    /// rewrite now (see the module docs). Only logs on failure.
    pub(crate) fn enable_reclaim(&mut self) {
        let p = self.path.display().to_string();
        let mode = match self.pragma_i64("auto_vacuum") {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %p, error = %e, "cannot read the outbox's auto_vacuum mode");
                return;
            }
        };
        if mode == 2 {
            return;
        }
        let live = (|| -> rusqlite::Result<i64> {
            let size = self.pragma_i64("page_size")?;
            Ok((self.pragma_i64("page_count")? - self.pragma_i64("freelist_count")?) * size)
        })();
        match live {
            Ok(live) if live <= VACUUM_AT_OPEN_MAX_BYTES => {
                let started = std::time::Instant::now();
                let done = self
                    .conn
                    .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;");
                match done {
                    Ok(()) => {
                        tracing::info!(path = %p, elapsed = ?started.elapsed(), "outbox file switched to incremental auto-vacuum (one VACUUM): its free space is now given back after a drain")
                    }
                    Err(e) => {
                        tracing::info!(path = %p, error = %e, "cannot VACUUM the outbox file now (to give its free space back later); will try at the next open")
                    }
                }
            }
            Ok(live) => {
                tracing::info!(path = %p, live_bytes = live, "outbox file made without auto-vacuum holds too much to rewrite at open; it is switched at an open when its queue is smaller")
            }
            Err(e) => tracing::warn!(path = %p, error = %e, "cannot size the outbox file"),
        }
    }

    /// Whether the queue is empty and its deleted rows' space may be given back now.
    pub(crate) fn can_reclaim(&self) -> bool {
        self.reclaim_pending && !self.damaged && self.caught_up() && self.undeleted() == 0
    }

    /// One step of giving space back; returns whether to call again.
    pub(crate) fn reclaim_step(&mut self) -> rusqlite::Result<bool> {
        let free = self.pragma_i64("freelist_count")?;
        if free >= MIN_FREE_PAGES {
            let mut stmt = self
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({STEP_PAGES})"))?;
            // One result row per page freed: it must be stepped to the end.
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            if free > STEP_PAGES {
                return Ok(true);
            }
        }
        // Busy (a reader holds an old snapshot) is not an error: the log is emptied next time.
        let (busy, _, _): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        self.reclaim_pending = busy != 0;
        Ok(false)
    }
}
