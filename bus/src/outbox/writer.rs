//! The writer thread: the one owner of the SQLite connection.
//!
//! rusqlite is synchronous, so the connection lives on a dedicated thread. Every enqueue that is
//! waiting when the thread looks at its channel goes into one transaction (group commit); each
//! caller is answered once that transaction is committed. Everything else (the confirmed
//! watermark, dead-lettering, pages for the drainer, reads for the API) is a closure run on the
//! same thread, in order; confirmed rows are deleted when nothing else is waiting.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch, Notify};

use super::checkpoint::{Checkpointer, BACKSTOP_PAGES};
use super::io::{sql_detail, sql_err};
use super::store::{Durability, InboxRow, Row, Store, Watermarks};
use crate::broker::RawMessage;
use crate::error::{Error, Result};

/// Most enqueues committed in one transaction; bounds the latency of the first one.
const MAX_GROUP: usize = 4096;
/// Rows the writer hands to the drainer in memory before it falls back to paging from SQLite.
///
/// In practice the byte bound below is the one that bites; paging costs a read and a decode per
/// row on the writer thread, so the handoff should absorb any backlog a fast producer builds up
/// while the broker is reachable. The tests use a small bound to exercise the paging path.
#[cfg(not(test))]
pub(crate) const HANDOFF_MAX_ROWS: usize = 1 << 20;
#[cfg(test)]
pub(crate) const HANDOFF_MAX_ROWS: usize = 8192;
/// Estimated memory (see [`footprint`]) the writer hands to the drainer in memory before the
/// same fallback. This is what keeps the process flat however long the queue is.
pub(crate) const HANDOFF_MAX_BYTES: usize = 16 * 1024 * 1024;

/// What a queued message costs in memory while it waits in the handoff: its strings and payload
/// plus the `Row` itself, its allocations and the allocator's overhead (measured roughly).
pub(crate) fn footprint(msg: &RawMessage) -> usize {
    const ROW_OVERHEAD: usize = 224;
    msg.payload.len()
        + msg.subject.len()
        + msg.reply.as_ref().map_or(0, String::len)
        + msg
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
        + ROW_OVERHEAD
}

/// Newly committed rows on their way to the drainer, so it need not read back what it just wrote.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    pub(crate) rows: VecDeque<Row>,
    pub(crate) bytes: usize,
    /// Some committed rows were not handed over (the buffer was full, or a dead letter was
    /// replayed): the drainer must page from SQLite until it catches up.
    pub(crate) overflowed: bool,
}

/// The handoff buffer and the bell the drainer waits on.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) handoff: Mutex<Handoff>,
    pub(crate) notify: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Handoff> {
        // A panic while holding this lock leaves only plain data behind; keep going.
        self.handoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the drainer to look in SQLite for rows it was not handed.
    pub(crate) fn mark_overflowed(&self) {
        self.lock().overflowed = true;
        self.notify.notify_one();
    }
}

/// What the writer thread owns besides the connection.
pub(crate) struct Ctx {
    /// The background checkpoints (declared first: it stops before the store closes).
    pub(crate) checkpoint: Option<Checkpointer>,
    /// The connection's `total_changes` when the checkpointer was last told of writes.
    pub(crate) changes: u64,
    pub(crate) store: Store,
    pub(crate) shared: Arc<Shared>,
    /// The highest committed queue id.
    pub(crate) committed: watch::Sender<i64>,
    /// Group commits so far (a test checks that concurrent publishes share them).
    pub(crate) commits: u64,
    /// When to look for operator requests (`request_runner`) next.
    pub(crate) requests: super::request_runner::Pickup,
    /// When the writer last committed a publish or a confirmation (space is given back only
    /// after a quiet time; reads such as stats do not count).
    pub(crate) last_busy: std::time::Instant,
    /// When the next scheduled message is due (unix ms), if one is (see [`Ctx::release_due`]).
    pub(crate) next_due: Option<i64>,
}

/// Confirmed rows deleted per step when the writer is idle: small enough that a publish arriving
/// meanwhile waits little.
const TIDY_CHUNK: i64 = 1024;
/// Confirmed rows left in the file before an idle writer deletes them row by row. Below this it
/// waits until the drainer has caught up and empties the table at once, which costs almost
/// nothing, instead of spending CPU the drainer (on the same cores) could use.
const TIDY_THRESHOLD: i64 = 64 * 1024;
/// Confirmed rows allowed to pile up in the file before the writer deletes them even while busy
/// (bounds the file under a sustained load with no idle moment; each is a few hundred bytes).
const MAX_UNDELETED: i64 = 256 * 1024;

impl Ctx {
    /// Tells the checkpointer if anything was written since it was last told.
    fn after_writes(&mut self) {
        if let Some(checkpoint) = &self.checkpoint {
            let changes = self.store.conn.total_changes();
            if changes != self.changes {
                self.changes = changes;
                checkpoint.wrote();
            }
        }
    }

    /// Records that every row up to `last` is confirmed or dead-lettered. Nobody awaits this: a
    /// failure is logged and the watermark moved with the next batch (until then a restarted
    /// process would send these again, same msg ids).
    pub(crate) fn confirmed(&mut self, last: i64) {
        self.last_busy = std::time::Instant::now();
        if let Err(e) = self.store.mark_done(last) {
            tracing::error!(path = %self.store.path.display(), error = %e, last, "cannot record confirmed outbox messages; will retry with the next batch (a restart would send them again)");
            return;
        }
        // Under a load that never leaves the writer idle, delete down to the bound right here.
        while self.store.undeleted() > MAX_UNDELETED {
            if !self.tidy() {
                break;
            }
        }
    }

    /// Keeps `msg` in the file until `due_at` (unix ms); the writer wakes for it then.
    pub(crate) fn schedule(&mut self, msg: &RawMessage, due_at: i64) -> rusqlite::Result<()> {
        self.store.schedule(msg, due_at)?;
        self.last_busy = std::time::Instant::now();
        self.next_due = Some(self.next_due.map_or(due_at, |d| d.min(due_at)));
        Ok(())
    }

    /// Moves the scheduled messages that are due to the end of the queue and tells the drainer
    /// (which finds them in SQLite, as replayed dead letters). Called between commands; a
    /// failure is logged and tried again a second later (the messages stay scheduled).
    fn release_due(&mut self) {
        let now = crate::clock::now_ms();
        if self.next_due.is_none_or(|due| due > now) {
            return;
        }
        let released = self.store.release_due(now).and_then(|last| {
            let next = self.store.next_due()?;
            Ok((last, next))
        });
        match released {
            Ok((last, next)) => {
                self.next_due = next;
                if let Some(last) = last {
                    self.last_busy = std::time::Instant::now();
                    self.committed.send_replace(last);
                    self.shared.mark_overflowed();
                }
            }
            Err(e) => {
                tracing::error!(path = %self.store.path.display(), error = %e, "cannot move due scheduled messages to the outbox queue; trying again in a second (they stay scheduled)");
                self.next_due = Some(now + 1000);
            }
        }
    }

    /// How long the writer may wait for a command: until the next operator-request poll or the
    /// next scheduled message's due time, whichever is first.
    fn wait(&self) -> std::time::Duration {
        let requests = self.requests.wait();
        match self.next_due {
            Some(due) => requests.min(std::time::Duration::from_millis(
                (due - crate::clock::now_ms()).max(0) as u64,
            )),
            None => requests,
        }
    }

    /// Called when nothing is waiting: deletes confirmed rows if that is cheap (the queue is
    /// caught up) or overdue; returns whether to call again.
    fn tidy_idle(&mut self) -> bool {
        if self.store.undeleted() == 0 {
            return false;
        }
        if !self.store.caught_up() && self.store.undeleted() < TIDY_THRESHOLD {
            return false;
        }
        self.tidy()
    }

    /// Called when nothing is waiting: gives free space back if the queue is empty and the
    /// writer has been idle a while (`reclaim`); returns whether to call again.
    fn reclaim_idle(&mut self) -> bool {
        if !self.store.can_reclaim()
            || self.last_busy.elapsed() < super::reclaim::IDLE_BEFORE_RECLAIM
        {
            return false;
        }
        match self.store.reclaim_step() {
            Ok(more) => more,
            Err(e) => {
                // Only space is at stake; try again after the next drain.
                tracing::warn!(path = %self.store.path.display(), error = %e, "cannot give the outbox's free space back; will try after the next drain");
                self.store.reclaim_pending = false;
                false
            }
        }
    }

    /// Deletes a chunk of confirmed rows; returns whether there is more to delete.
    fn tidy(&mut self) -> bool {
        match self.store.tidy(TIDY_CHUNK) {
            Ok(more) => more,
            Err(e) => {
                // Only space is at stake: the rows are already marked done and never resent.
                tracing::warn!(path = %self.store.path.display(), error = %e, "cannot delete confirmed outbox messages; will retry");
                false
            }
        }
    }
}

type Op = Box<dyn FnOnce(&mut Ctx) + Send>;

type Reply = oneshot::Sender<Result<()>>;

/// What runs on the writer thread once a completion's transaction is decided (see
/// [`Writer::complete`]): quick, it must not block.
pub(crate) type Then = Box<dyn FnOnce(Result<()>) + Send>;

enum Command {
    Enqueue(RawMessage, Reply),
    /// A handler's outputs and its inbox completion, committed together (see
    /// [`Writer::complete`]).
    Complete(Vec<RawMessage>, Option<InboxRow>, Then),
    Op(Op),
    Shutdown,
}

/// A handle on the writer thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

/// What [`spawn`] returns: the handle, its thread, and the state it starts from.
pub(crate) struct Started {
    pub(crate) writer: Writer,
    pub(crate) thread: JoinHandle<()>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) committed: watch::Receiver<i64>,
    pub(crate) watermarks: Watermarks,
}

/// Opens the store on a new thread and returns once it is open (or failed to open).
pub(crate) async fn spawn(path: PathBuf, durability: Durability) -> Result<Started> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel::<Command>();
    let shared = Arc::new(Shared::default());
    let thread_shared = shared.clone();
    let thread_path = path.clone();
    let thread = std::thread::Builder::new()
        .name("bus-outbox-writer".into())
        .spawn(move || {
            let opened = Store::open(&thread_path, durability).and_then(|store| {
                let w = store.watermarks()?;
                let next_due = store
                    .next_due()
                    .map_err(|e| sql_err(&thread_path, "cannot read the scheduled messages", e))?;
                Ok((store, (w, next_due)))
            });
            let (store, (w, next_due)) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let (committed_tx, committed_rx) = watch::channel(w.committed);
            if ready_tx.send(Ok((committed_rx, w))).is_err() {
                return;
            }
            // Checkpoints on a thread of their own; the writer's own only as a backstop.
            let checkpoint = Checkpointer::start(&thread_path, durability);
            if checkpoint.is_some() {
                store.backstop_checkpoints(BACKSTOP_PAGES);
            }
            run(
                rx,
                Ctx {
                    checkpoint,
                    changes: 0,
                    store,
                    shared: thread_shared,
                    committed: committed_tx,
                    commits: 0,
                    requests: super::request_runner::Pickup::default(),
                    last_busy: std::time::Instant::now(),
                    next_due,
                },
            );
        })
        .map_err(|e| {
            Error::outbox(
                &path,
                "cannot start the outbox writer thread",
                Some(Box::new(e)),
            )
        })?;
    let (committed, watermarks) = match ready_rx.await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(Error::outbox(
                &path,
                "the outbox writer thread died while opening the file",
                None,
            ));
        }
    };
    Ok(Started {
        writer: Writer {
            tx,
            path: Arc::new(path),
        },
        thread,
        shared,
        committed,
        watermarks,
    })
}

/// What the next group commit holds: queued messages (each answered, unless it is a handler's
/// output) and inbox completions (each answered once, with its outputs).
#[derive(Default)]
struct Group {
    msgs: Vec<(RawMessage, Option<Reply>)>,
    done: Vec<InboxRow>,
    done_replies: Vec<Then>,
}

impl Group {
    fn len(&self) -> usize {
        self.msgs.len() + self.done_replies.len()
    }
}

fn run(rx: mpsc::Receiver<Command>, mut ctx: Ctx) {
    let mut group = Group::default();
    loop {
        ctx.after_writes();
        // Replays and purges asked through the file, every 500 ms, busy or idle.
        if let Some(last) = ctx.requests.poll(&mut ctx.store) {
            ctx.committed.send_replace(last);
            ctx.shared.mark_overflowed();
        }
        // Scheduled messages that are due join the queue, busy or idle.
        ctx.release_due();
        // Delete confirmed rows only when nothing is waiting, so publishes never wait for it.
        let first = match rx.try_recv() {
            Ok(cmd) => cmd,
            Err(mpsc::TryRecvError::Empty) => {
                if ctx.tidy_idle() || ctx.reclaim_idle() {
                    continue;
                }
                match rx.recv_timeout(ctx.wait()) {
                    Ok(cmd) => cmd,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
        };
        let mut next = Some(first);
        // Take everything already waiting: that is what makes the commit a group commit.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Enqueue(msg, reply) => {
                    group.msgs.push((msg, Some(reply)));
                    if group.len() >= MAX_GROUP {
                        commit_group(&mut ctx, &mut group);
                    }
                }
                Command::Complete(outputs, done, reply) => {
                    group.msgs.extend(outputs.into_iter().map(|m| (m, None)));
                    group.done.extend(done);
                    group.done_replies.push(reply);
                    if group.len() >= MAX_GROUP {
                        commit_group(&mut ctx, &mut group);
                    }
                }
                Command::Op(op) => {
                    // Keep the order of commands: what was enqueued before this op is committed first.
                    commit_group(&mut ctx, &mut group);
                    op(&mut ctx);
                }
                Command::Shutdown => {
                    commit_group(&mut ctx, &mut group);
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        commit_group(&mut ctx, &mut group);
    }
}

fn commit_group(ctx: &mut Ctx, group: &mut Group) {
    if group.len() == 0 {
        return;
    }
    let Group {
        msgs: batch,
        done,
        done_replies,
    } = std::mem::take(group);
    ctx.last_busy = std::time::Instant::now();
    let _span = tracing::trace_span!("outbox_commit", n = batch.len(), done = done.len()).entered();
    match ctx.store.insert_all(batch.iter().map(|(m, _)| m), &done) {
        Ok(_) if batch.is_empty() => {
            // Completions alone: nothing new for the drainer.
            ctx.commits += 1;
            for then in done_replies {
                then(Ok(()));
            }
        }
        Ok(first) => {
            ctx.commits += 1;
            tracing::trace!(name: "outbox_committed", first_id = first, n = batch.len());
            let last = first + batch.len() as i64 - 1;
            ctx.committed.send_replace(last);
            let mut replies = Vec::with_capacity(batch.len());
            {
                let mut h = ctx.shared.lock();
                for (id, (msg, reply)) in (first..).zip(batch) {
                    let size = footprint(&msg);
                    if !h.overflowed
                        && h.rows.len() < HANDOFF_MAX_ROWS
                        && h.bytes + size <= HANDOFF_MAX_BYTES
                    {
                        h.bytes += size;
                        h.rows.push_back(Row {
                            id,
                            msg,
                            attempts: 0,
                        });
                    } else {
                        // The row is safe in SQLite; the drainer will page it from there.
                        h.overflowed = true;
                    }
                    replies.push(reply);
                }
            }
            ctx.shared.notify.notify_one();
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Ok(()));
            }
            for then in done_replies {
                then(Ok(()));
            }
        }
        Err(e) => {
            let path = ctx.store.path.clone();
            tracing::error!(path = %path.display(), error = %e, n = batch.len(), "outbox commit failed; the messages were not queued");
            let detail = sql_detail("cannot queue the message", &e);
            let mut first = Some(e);
            // rusqlite errors are not Clone: the first caller gets the source, all get the text.
            let mut error = || {
                let source = first
                    .take()
                    .map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
                Error::outbox(&path, detail.clone(), source)
            };
            for reply in batch.into_iter().filter_map(|(_, r)| r) {
                let _ = reply.send(Err(error()));
            }
            for then in done_replies {
                then(Err(error()));
            }
        }
    }
}

impl Writer {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn closed(&self) -> Error {
        Error::outbox(
            self.path.as_path(),
            "the outbox is closed (its Bus was dropped)",
            None,
        )
    }

    /// Queues `msg`; returns once it is committed.
    pub(crate) async fn enqueue(&self, msg: RawMessage) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Enqueue(msg, tx))
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Queues a handler's `outputs` and records its inbox completion `done` in one
    /// transaction (all of it, or, on `Err`, none of it); `then` runs on the writer thread with
    /// the outcome (here, at once, when the writer is gone).
    pub(crate) fn complete(&self, outputs: Vec<RawMessage>, done: Option<InboxRow>, then: Then) {
        if let Err(mpsc::SendError(Command::Complete(_, _, then))) =
            self.tx.send(Command::Complete(outputs, done, then))
        {
            then(Err(self.closed()));
        }
    }

    /// Runs `f` on the writer thread and returns its result; a SQLite error becomes an
    /// [`Error::Outbox`] that says `what` failed (and what to do about it).
    pub(crate) async fn call<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx) -> rusqlite::Result<T> + Send + 'static,
    {
        self.start(what, f)?.await.map_err(|_| self.closed())?
    }

    /// Runs `f` on the writer thread without waiting for it (in order with everything else).
    pub(crate) fn submit<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce(&mut Ctx) + Send + 'static,
    {
        self.tx
            .send(Command::Op(Box::new(f)))
            .map_err(|_| self.closed())
    }

    /// As [`call`](Writer::call), but the answer arrives on the returned receiver, so the
    /// caller can do something else meanwhile (the drainer reads its next page this way).
    pub(crate) fn start<T, F>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(move |ctx| {
            let _ = tx.send(f(ctx).map_err(|e| sql_err(&ctx.store.path, what, e)));
        })?;
        Ok(rx)
    }

    /// Asks the thread to commit what it holds and stop.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}
