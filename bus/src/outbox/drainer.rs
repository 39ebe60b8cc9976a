//! The drainer: the one task per outbox that sends queued rows in FIFO order, confirms them with
//! the broker, and only then deletes them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::store::{sql_err, Row};
use super::writer::{footprint, Shared, Writer};
use crate::broker::{Broker, ConnectionState};
use crate::headers;
use crate::{Error, Result};

/// Rows sent between two confirmations (and read per page). Large, so that the confirmation
/// round trip is amortised over many messages; a page of this many rows is a few MiB at most.
pub(crate) const BATCH: usize = 4096;
/// Failed attempts (while connected) after which a message is dead-lettered.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Wait after a failure that did not count (the connection changed under the batch), so that a
/// flapping connection does not turn into a busy loop.
const UNCOUNTED_RETRY: Duration = Duration::from_millis(100);
/// Wait before retrying a failed SQLite operation of the drainer (a full disk, say).
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Backoff after the `attempts`-th failed attempt: 100 ms, 400 ms, 1.6 s, …
fn backoff(attempts: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(4u64.saturating_pow(attempts.saturating_sub(1))))
}

pub(crate) struct Drainer {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) writer: Writer,
    pub(crate) shared: Arc<Shared>,
    /// Every queue id up to this one is confirmed or dead-lettered.
    pub(crate) done: watch::Sender<i64>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// The highest id taken from the queue so far.
    pub(crate) last_taken: i64,
    /// Read from SQLite instead of the in-memory handoff (at startup, and after an overflow).
    pub(crate) paging: bool,
    /// The connection changed since the last confirmation (or none was made yet).
    pub(crate) reconnected: bool,
    /// The next page, being read on the writer thread while the current batch is sent: the id
    /// it starts after, and where its rows arrive.
    pub(crate) prefetch: Option<(i64, oneshot::Receiver<Result<Vec<Row>>>)>,
}

impl Drainer {
    pub(crate) async fn run(mut self) {
        // One buffer for every batch (swapped with the handoff's), so that sending does not
        // allocate (and free) a large block per batch.
        let mut batch = VecDeque::with_capacity(BATCH);
        loop {
            batch.clear();
            self.next_batch(&mut batch).await;
            let (first, last) = match (batch.front(), batch.back()) {
                (Some(f), Some(l)) => (f.id, l.id),
                _ => continue,
            };
            let span = tracing::debug_span!("outbox_drain", first_id = first, n = batch.len());
            self.send_batch(&mut batch).instrument(span).await;
            self.done.send_if_modified(|d| {
                let moved = last > *d;
                if moved {
                    *d = last;
                }
                moved
            });
        }
    }

    /// The next rows to send, in id order: from memory when the writer handed them over, from
    /// SQLite (one page at a time, so memory stays flat) when it could not.
    async fn next_batch(&mut self, out: &mut VecDeque<Row>) {
        loop {
            if self.paging {
                let rows = self.page().await;
                if rows.len() < BATCH {
                    // Near the end of the queue: from now on the writer hands rows over again.
                    // Re-read after clearing the flag so no row committed in between is missed;
                    // rows both read here and handed over are skipped by id below.
                    {
                        let mut h = self.shared.lock();
                        h.overflowed = false;
                        h.rows.clear();
                        h.bytes = 0;
                    }
                    let rows = self.page().await;
                    let full = rows.len() >= BATCH;
                    if !full {
                        self.paging = false;
                    }
                    if let Some(last) = rows.last() {
                        self.last_taken = last.id;
                        if full {
                            self.start_prefetch();
                        }
                        *out = rows.into();
                        return;
                    }
                    continue;
                }
                if let Some(last) = rows.last() {
                    self.last_taken = last.id;
                }
                self.start_prefetch();
                *out = rows.into();
                return;
            }
            {
                let mut h = self.shared.lock();
                if h.overflowed {
                    // Rows are in SQLite that were never handed over: page until caught up.
                    h.rows.clear();
                    h.bytes = 0;
                    self.paging = true;
                    continue;
                }
                while h.rows.front().is_some_and(|r| r.id <= self.last_taken) {
                    if let Some(r) = h.rows.pop_front() {
                        h.bytes -= footprint(&r.msg);
                    }
                }
                if !h.rows.is_empty() {
                    if h.rows.len() <= BATCH {
                        // Take them all: swap buffers (`out` is empty) instead of moving rows.
                        std::mem::swap(&mut h.rows, out);
                        h.bytes = 0;
                    } else {
                        out.extend(h.rows.drain(..BATCH));
                        h.bytes -= out.iter().map(|r| footprint(&r.msg)).sum::<usize>();
                    }
                    self.last_taken = out.back().map_or(self.last_taken, |r| r.id);
                    return;
                }
            }
            self.shared.notify.notified().await;
        }
    }

    /// Starts reading the page after `last_taken` on the writer thread, so that it is ready (or
    /// nearly) when the batch about to be sent is confirmed.
    fn start_prefetch(&mut self) {
        let after = self.last_taken;
        let started = self.writer.start(move |ctx| {
            let path = ctx.store.path.clone();
            ctx.store
                .page(after, BATCH)
                .map_err(|e| sql_err(&path, "cannot read the outbox queue", e))
        });
        self.prefetch = started.ok().map(|rx| (after, rx));
    }

    async fn page(&mut self) -> Vec<Row> {
        let after = self.last_taken;
        if let Some((at, rx)) = self.prefetch.take() {
            match rx.await {
                Ok(Ok(rows)) if at == after => return rows,
                // Read for another position (cannot happen: only the drainer moves it), or
                // failed: read again below, retrying until it works.
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "outbox drainer cannot read the queue; retrying")
                }
                Err(_) => {}
            }
        }
        self.retry_store("read the queue", move |w| async move {
            w.call(move |ctx| {
                let path = ctx.store.path.clone();
                ctx.store
                    .page(after, BATCH)
                    .map_err(|e| sql_err(&path, "cannot read the outbox queue", e))
            })
            .await
        })
        .await
    }

    /// Retries a store operation until it succeeds: the drainer has nowhere to report an error
    /// to, and giving up would strand the queue.
    async fn retry_store<T, F, Fut>(&self, what: &'static str, f: F) -> T
    where
        F: Fn(Writer) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        loop {
            match f(self.writer.clone()).await {
                Ok(v) => return v,
                Err(e) => {
                    tracing::error!(error = %e, "outbox drainer cannot {what}; retrying");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
    }

    async fn wait_connected(&mut self) {
        if self.state.has_changed().unwrap_or(true)
            || *self.state.borrow() != ConnectionState::Connected
        {
            self.reconnected = true;
        }
        loop {
            if *self.state.borrow_and_update() == ConnectionState::Connected {
                return;
            }
            if self.state.changed().await.is_err() {
                // The broker is gone: nothing will ever be sent again; wait to be aborted.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether a failure happened on a connection that stayed up since the batch started: only
    /// such a failure is the message's fault and counts as an attempt.
    fn stayed_connected(&self) -> bool {
        !self.state.has_changed().unwrap_or(true)
            && *self.state.borrow() == ConnectionState::Connected
    }

    /// Puts back, from SQLite, the messages of `rows` that were handed to the broker (moved out
    /// rather than cloned: a failure is rare, a clone per message is not). The rows are still
    /// there: nothing of this batch past the confirmed prefix has been marked done.
    async fn reload(&self, rows: &mut VecDeque<Row>) {
        let (Some(front), n) = (rows.front(), rows.len()) else {
            return;
        };
        let after = front.id - 1;
        let fresh = self
            .retry_store("read the queue", move |w| async move {
                w.call(move |ctx| {
                    let path = ctx.store.path.clone();
                    ctx.store
                        .page(after, n)
                        .map_err(|e| sql_err(&path, "cannot read the outbox queue", e))
                })
                .await
            })
            .await;
        let same = fresh.len() == n && fresh.iter().zip(rows.iter()).all(|(f, r)| f.id == r.id);
        if same {
            for (row, f) in rows.iter_mut().zip(fresh) {
                row.msg = f.msg;
            }
        } else {
            // Cannot happen (the batch is a contiguous run of the queue and only this task
            // removes rows from it); if it did, the file is the truth.
            tracing::warn!(
                n,
                got = fresh.len(),
                "outbox batch differs from the file; resending what the file holds"
            );
            *rows = fresh.into();
        }
    }

    async fn send_batch(&mut self, rows: &mut VecDeque<Row>) {
        // Whether some messages of `rows` were moved into the broker and must be read back
        // before the batch (or what is left of it) is handled again.
        let mut moved = false;
        while !rows.is_empty() {
            if std::mem::take(&mut moved) {
                self.reload(rows).await;
                if rows.is_empty() {
                    return;
                }
            }
            self.wait_connected().await;
            let mut sent = 0;
            let mut failure = None;
            moved = true;
            for row in rows.iter_mut() {
                let msg = std::mem::replace(&mut row.msg, empty_message());
                match self.broker.publish(msg).await {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if sent > 0 {
                match self.broker.confirm().await {
                    Ok(()) if self.state.has_changed().unwrap_or(true) => {
                        // The connection dropped during the batch: the confirmation may have gone
                        // through the new connection while part of the batch died in the old one.
                        // Send it again (at-least-once: duplicates carry the same msg id).
                        tracing::debug!(
                            n = sent,
                            "outbox batch crossed a reconnect; sending it again"
                        );
                        tokio::time::sleep(UNCOUNTED_RETRY).await;
                        continue;
                    }
                    Ok(()) if sent == rows.len() => {
                        self.reconnected = false;
                        let last = rows.back().map_or(0, |r| r.id);
                        rows.clear();
                        let _ = self.writer.submit(move |ctx| ctx.confirmed(last));
                        tracing::trace!(n = sent, "outbox batch confirmed");
                        return;
                    }
                    Ok(()) => {
                        self.reconnected = false;
                        let last = rows.get(sent - 1).map_or(0, |r| r.id);
                        rows.drain(..sent);
                        // Confirmed: record it without waiting. The writer thread runs this in
                        // order, before anything asked of it later (a stats call after a flush
                        // sees the rows gone); the next batch goes out meanwhile. A crash before
                        // it commits only means these are sent again, with the same msg ids.
                        let _ = self.writer.submit(move |ctx| ctx.confirmed(last));
                        tracing::trace!(n = sent, "outbox batch confirmed");
                    }
                    Err(e) => {
                        // A timeout says nothing about the messages: most often the connection is
                        // dead and the client has not noticed yet. Counting it would dead-letter
                        // a whole batch of good messages after three such timeouts.
                        let timed_out = matches!(e, Error::Timeout { .. });
                        // Nor does a failure on the first confirmation after a reconnect: the
                        // broker may refuse it because of messages lost with the old connection.
                        let counted = !timed_out && !self.reconnected && self.stayed_connected();
                        self.reconnected = false;
                        tracing::warn!(error = %e, counted, n = sent, "outbox confirm failed; the batch will be sent again");
                        // The messages are needed again (and for the dead-letter log).
                        self.reload(rows).await;
                        moved = false;
                        if counted {
                            // The server answered, but not with a confirmation: every message of
                            // the batch is suspect. Count one attempt each; a dropped connection
                            // (not counted) never dead-letters good messages.
                            let mut dead = Vec::new();
                            for row in rows.iter_mut().take(sent) {
                                row.attempts += 1;
                                self.record_failure(row, &e.to_string()).await;
                                if row.attempts >= MAX_ATTEMPTS {
                                    dead.push(row.id);
                                }
                            }
                            if !dead.is_empty() {
                                let mut kept = VecDeque::with_capacity(rows.len());
                                for row in rows.drain(..) {
                                    if dead.contains(&row.id) {
                                        self.dead_letter(row, &e.to_string()).await;
                                    } else {
                                        kept.push_back(row);
                                    }
                                }
                                *rows = kept;
                                continue;
                            }
                            let n = rows.front().map_or(1, |r| r.attempts);
                            tokio::time::sleep(backoff(n)).await;
                        } else {
                            tokio::time::sleep(UNCOUNTED_RETRY).await;
                        }
                        continue;
                    }
                }
            }
            let Some(e) = failure else { continue };
            // The failed message went into the broker too: read the rest back first.
            self.reload(rows).await;
            moved = false;
            let counted = self.stayed_connected();
            let Some(row) = rows.front_mut() else {
                continue;
            };
            if !counted {
                tracing::debug!(error = %e, id = row.id, "outbox send failed while the connection changed; not counted");
                tokio::time::sleep(UNCOUNTED_RETRY).await;
                continue;
            }
            row.attempts += 1;
            let error = e.to_string();
            if row.attempts >= MAX_ATTEMPTS {
                if let Some(row) = rows.pop_front() {
                    self.dead_letter(row, &error).await;
                }
            } else {
                tracing::debug!(error = %error, id = row.id, attempts = row.attempts, "outbox send failed; will retry");
                let row = row.clone();
                self.record_failure(&row, &error).await;
                tokio::time::sleep(backoff(row.attempts)).await;
            }
        }
    }

    async fn record_failure(&self, row: &Row, error: &str) {
        let (id, attempts, error) = (row.id, row.attempts, Arc::new(error.to_string()));
        self.retry_store("record a failed attempt", |w| {
            let error = error.clone();
            async move {
                w.call(move |ctx| {
                    let path = ctx.store.path.clone();
                    ctx.store
                        .record_failure(id, attempts, &error)
                        .map_err(|e| sql_err(&path, "cannot record a failed attempt", e))
                })
                .await
            }
        })
        .await
    }

    async fn dead_letter(&self, row: Row, error: &str) {
        let (id, attempts, err) = (row.id, row.attempts, Arc::new(error.to_string()));
        self.retry_store("move a message to the dead letters", |w| {
            let err = err.clone();
            async move {
                w.call(move |ctx| {
                    let path = ctx.store.path.clone();
                    ctx.store
                        .dead_letter(id, attempts, &err)
                        .map_err(|e| sql_err(&path, "cannot move a message to the dead letters", e))
                })
                .await
            }
        })
        .await;
        tracing::warn!(
            subject = %row.msg.subject,
            msg_id = row.msg.headers.get(headers::MSG_ID).unwrap_or(""),
            attempts,
            error,
            "outbox message dead-lettered after {attempts} failed attempts; the queue goes on (see Bus::dead_letters)"
        );
    }
}

/// What is left in a row whose message was handed to the broker: allocates nothing.
fn empty_message() -> crate::broker::RawMessage {
    crate::broker::RawMessage {
        subject: String::new(),
        reply: None,
        headers: crate::Headers::new(),
        payload: bytes::Bytes::new(),
    }
}
