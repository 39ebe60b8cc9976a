//! The checkpointer: copies the write-ahead log back into the database file on a thread of its
//! own, so that no publish waits for it.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold (1,000 pages
//! of log by default), on the connection that commits: the writer thread. A checkpoint syncs
//! the log and then the database file (also with `synchronous=NORMAL`), a few milliseconds on a
//! disk, and every publish arriving meanwhile waits behind it. At 500 msg/s that was one stall
//! every 250 messages, and the stalls set the outbox's p99 latency.
//!
//! Here a second connection, on this thread, runs `PRAGMA wal_checkpoint(PASSIVE)`: it never
//! blocks the writer, which goes on appending to the log while the frames before are copied.
//! It runs [`INTERVAL`] after the first write since the last one, and repeats a short pass
//! while frames were added meanwhile, so that the log is usually fully copied and starts over
//! at the next commit. The writer's own automatic checkpoint stays on with a higher threshold
//! ([`BACKSTOP_PAGES`]): it bounds the log when this thread cannot keep up (or a reader holds
//! old frames), and then finds most of the work done.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::store::Durability;
use crate::panic::lock;

/// How long after a write the checkpoint runs: the writes meanwhile are copied together.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// The writer's own automatic checkpoint threshold, in pages of log (16 MiB of 4 KiB pages):
/// reached only when this thread falls behind.
pub(crate) const BACKSTOP_PAGES: u32 = 4096;

/// Passes of one checkpoint: the first copies what was written since the last one, the next
/// ones the little that was committed during it.
const PASSES: u32 = 3;

/// What the writer and the checkpointer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Written since the last checkpoint began.
    dirty: AtomicBool,
    stop: Mutex<bool>,
    bell: Condvar,
    /// Checkpoints run (for tests).
    runs: AtomicU64,
}

/// The handle the writer holds; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection on `path` (already open, in WAL mode, by the writer) and starts
    /// the thread. `None`, with a warning, if it cannot: the writer then keeps SQLite's default
    /// automatic checkpoint.
    pub(crate) fn start(path: &Path, durability: Durability) -> Option<Checkpointer> {
        let opened = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            // A checkpoint syncs as its connection's `synchronous` says: the writer's level.
            conn.execute_batch(&format!("PRAGMA synchronous={};", durability.synchronous()))?;
            Ok(conn)
        });
        let conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the outbox file for background checkpoints; the writer checkpoints itself");
                return None;
            }
        };
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("bus-outbox-checkpoint".into())
            .spawn(move || run(&conn, &thread_shared, &thread_path));
        match thread {
            Ok(thread) => Some(Checkpointer {
                shared,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot start the outbox checkpoint thread; the writer checkpoints itself");
                None
            }
        }
    }

    /// Tells the thread the writer wrote. Cheap when it already knows: one atomic swap.
    pub(crate) fn wrote(&self) {
        if !self.shared.dirty.swap(true, Ordering::AcqRel) {
            let _stop = lock(&self.shared.stop);
            self.shared.bell.notify_one();
        }
    }

    /// Checkpoints run so far.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> u64 {
        self.shared.runs.load(Ordering::Acquire)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.bell.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared, path: &Path) {
    let mut failing = false;
    while wait_for_writes(shared) {
        shared.dirty.store(false, Ordering::Release);
        match checkpoint(conn) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(path = %path.display(), "outbox checkpoints work again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot checkpoint the outbox file in the background; the writer's own checkpoint bounds its log");
            }
            Err(_) => {}
        }
        shared.runs.fetch_add(1, Ordering::AcqRel);
    }
}

/// Waits for a write, then [`INTERVAL`] more, so that a lone publish never shares its moment
/// with a checkpoint and the writes meanwhile are copied together. `false` once asked to stop.
fn wait_for_writes(shared: &Shared) -> bool {
    let mut stop = lock(&shared.stop);
    while !*stop && !shared.dirty.load(Ordering::Acquire) {
        stop = shared
            .bell
            .wait(stop)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    let until = Instant::now() + INTERVAL;
    while !*stop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        stop = shared
            .bell
            .wait_timeout(stop, left)
            .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
    }
    false
}

/// Up to [`PASSES`] passive checkpoints, until the whole log is copied.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    for _ in 0..PASSES {
        let (log, copied): (i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?;
        if copied >= log {
            break;
        }
    }
    Ok(())
}
