//! The drainer: the one task per outbox that sends queued rows in FIFO order, confirms them with
//! the broker, and only then marks them done.
//!
//! A batch is sent, confirmed, and what the confirmation covers is marked done; a failure counts
//! an attempt (only while the connection stays up), and a row out of attempts is dead-lettered.
//! The rows keep their messages: each send hands the broker a copy (`Broker::publish` takes the
//! message by value), so a batch that has to go again is sent again from memory, never read
//! back from the file.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::store::{Failure, Page, Row};
use super::writer::{footprint, Shared, Writer};
use crate::broker::{Broker, ConnectionState};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// Rows sent between two confirmations (and read per page). Large, so that the confirmation
/// round trip is amortised over many messages; a page of this many rows is a few MiB at most.
pub(crate) const BATCH: usize = 4096;
/// Wait after a failure that did not count (the connection changed under the batch), so that a
/// flapping connection does not turn into a busy loop.
const UNCOUNTED_RETRY: Duration = Duration::from_millis(100);
/// What a failed page read says.
const READ_QUEUE: &str = "cannot read the outbox queue";
/// Wait before retrying a failed SQLite operation of the drainer (a full disk, say).
const STORE_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct Drainer {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) writer: Writer,
    pub(crate) shared: Arc<Shared>,
    /// Every queue id up to this one is confirmed or dead-lettered.
    pub(crate) done: watch::Sender<i64>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// When a failed attempt makes a dead letter, and the backoff between attempts.
    pub(crate) retry: RetryPolicy,
    /// The highest id taken from the queue so far (sent, or dead-lettered unread).
    pub(crate) last_taken: i64,
    /// Read from SQLite instead of the in-memory handoff (at startup, and after an overflow).
    pub(crate) paging: bool,
    /// The connection changed since the last confirmation (or none was made yet).
    pub(crate) reconnected: bool,
    /// The next page, being read on the writer thread while the current batch is sent: the id
    /// it starts after, and where its rows arrive.
    pub(crate) prefetch: Option<(i64, oneshot::Receiver<Result<Page>>)>,
    /// A configuration problem that stops the queue (no permission on the confirmation
    /// subject): `flush` reports it instead of waiting forever. Cleared by the next confirmation.
    pub(crate) blocked: watch::Sender<Option<String>>,
    /// Consecutive blocked confirmations, for their growing backoff.
    pub(crate) blocked_tries: u32,
}

/// Whether a state lets the drainer send. In lame duck mode the server still serves the
/// connection until it closes it (for up to its grace period, 10 s and more by default): keep
/// sending until then, and fail over when it does.
fn can_send(state: ConnectionState) -> bool {
    matches!(
        state,
        ConnectionState::Connected | ConnectionState::LameDuck
    )
}

impl Drainer {
    pub(crate) async fn run(mut self) {
        // One buffer for every batch (swapped with the handoff's), so that sending does not
        // allocate (and free) a large block per batch.
        let mut batch = VecDeque::with_capacity(BATCH);
        loop {
            batch.clear();
            self.next_batch(&mut batch).await;
            // Everything up to here is in the batch, or was dead-lettered when it was read.
            let last = self.last_taken;
            if let Some(first) = batch.front().map(|r| r.id) {
                let span = tracing::debug_span!("outbox_drain", first_id = first, n = batch.len());
                self.send_batch(&mut batch).instrument(span).await;
            }
            if last > *self.done.borrow() {
                self.mark_done(last);
                self.done.send_replace(last);
            }
        }
    }

    /// The next rows to send, in id order: from memory when the writer handed them over, from
    /// SQLite (one page at a time, so memory stays flat) when it could not. Returns once there
    /// are rows, or `last_taken` moved past rows that were dead-lettered as they were read.
    async fn next_batch(&mut self, out: &mut VecDeque<Row>) {
        loop {
            if self.paging {
                let page = self.page().await;
                if page.scanned < BATCH {
                    // Near the end of the queue: from now on the writer hands rows over again.
                    // Re-read after clearing the flag so no row committed in between is missed;
                    // rows both read here and handed over are skipped by id below. The first
                    // read may have dead-lettered rows the second does not see: its end counts.
                    {
                        let mut h = self.shared.lock();
                        h.overflowed = false;
                        h.rows.clear();
                        h.bytes = 0;
                    }
                    let first_last = page.last;
                    let page = self.page().await;
                    let full = page.scanned >= BATCH;
                    if !full {
                        self.paging = false;
                    }
                    if let Some(last) = page.last.max(first_last) {
                        self.last_taken = last;
                        if full {
                            self.start_prefetch();
                        }
                        *out = page.rows.into();
                        return;
                    }
                    continue;
                }
                if let Some(last) = page.last {
                    self.last_taken = last;
                }
                self.start_prefetch();
                *out = page.rows.into();
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
        let started = self
            .writer
            .start(READ_QUEUE, move |ctx| ctx.store.page(after, BATCH));
        self.prefetch = started.ok().map(|rx| (after, rx));
    }

    async fn page(&mut self) -> Page {
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
            w.call(READ_QUEUE, move |ctx| ctx.store.page(after, BATCH))
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
        if self.state.has_changed().unwrap_or(true) || !can_send(*self.state.borrow()) {
            self.reconnected = true;
        }
        loop {
            if can_send(*self.state.borrow_and_update()) {
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
        !self.state.has_changed().unwrap_or(true) && can_send(*self.state.borrow())
    }

    /// Sends `rows` until each is confirmed or dead-lettered: send, confirm, and on a failure
    /// count an attempt (or not) and go again.
    async fn send_batch(&mut self, rows: &mut VecDeque<Row>) {
        while !rows.is_empty() {
            self.wait_connected().await;
            let (sent, refused) = self.send(rows).await;
            tracing::trace!(name: "outbox_sent", first_id = rows.front().map_or(0, |r| r.id), n = sent);
            // Nothing may block between the sends and `confirm`: the connection task they woke
            // waits in this worker's LIFO slot (not stealable by the other worker) until this
            // task parks, so a blocking pause here delays every message of the batch by as much.
            if sent > 0 {
                match self.broker.confirm().await {
                    Ok(()) if self.connection_changed() => {
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
                    Ok(()) => {
                        if self.blocked.borrow().is_some() {
                            tracing::info!("outbox confirmations work again; the queue goes on");
                            self.blocked.send_replace(None);
                        }
                        self.blocked_tries = 0;
                        self.confirmed(rows, sent)
                    }
                    Err(e) => {
                        self.confirm_failed(rows, sent, e).await;
                        continue;
                    }
                }
            }
            if let Some(e) = refused {
                self.send_failed(rows, e).await;
            }
        }
    }

    /// Whether the connection may have changed since the batch started: any state change but
    /// the server announcing lame duck mode (the connection stays the same until it closes).
    fn connection_changed(&mut self) -> bool {
        match self.state.has_changed() {
            Ok(false) => false,
            Ok(true) => {
                let now = *self.state.borrow_and_update();
                if now == ConnectionState::LameDuck {
                    return false;
                }
                // Leave the change visible to `wait_connected` (it marks the reconnect).
                self.reconnected = true;
                true
            }
            Err(_) => true,
        }
    }

    /// Hands the broker each row in order (by reference: the row stays until confirmed), up to the first it refuses: how many it
    /// took, and its error.
    async fn send(&self, rows: &VecDeque<Row>) -> (usize, Option<Error>) {
        for (sent, row) in rows.iter().enumerate() {
            if let Err(e) = self.broker.publish_ref(&row.msg).await {
                return (sent, Some(e));
            }
        }
        (rows.len(), None)
    }

    /// The first `n` rows are confirmed: drop them. Unless that was the whole batch (then
    /// [`Drainer::run`] marks it), record it without waiting: the writer thread runs this in
    /// order, before anything asked of it later, and the rest of the batch goes out meanwhile.
    /// A crash before it commits only means these are sent again, with the same msg ids.
    fn confirmed(&mut self, rows: &mut VecDeque<Row>, n: usize) {
        self.reconnected = false;
        let last = rows[n - 1].id;
        rows.drain(..n);
        crate::metrics::confirmed(n);
        if !rows.is_empty() {
            self.mark_done(last);
        }
        tracing::trace!(n, "outbox batch confirmed");
    }

    /// The confirmation of the first `n` rows failed: they are sent again, after counting one
    /// attempt each if the failure was theirs.
    async fn confirm_failed(&mut self, rows: &mut VecDeque<Row>, n: usize, e: Error) {
        match e {
            Error::Rejected { rejections } => {
                return self.rejected(rows, n, rejections).await;
            }
            Error::PermissionDenied { .. } => return self.blocked_by(e).await,
            _ => {}
        }
        // A timeout says nothing about the messages: most often the connection is dead and the
        // client has not noticed yet. Counting it would dead-letter a whole batch of good
        // messages after three such timeouts. Nor does a failure on the first confirmation after
        // a reconnect: the broker may refuse it because of messages lost with the old connection.
        let timed_out = matches!(e, Error::Timeout { .. });
        let counted = !timed_out && !self.reconnected && self.stayed_connected();
        self.reconnected = false;
        if counted {
            tracing::warn!(error = %e, counted, n, "outbox confirm failed; the batch will be sent again");
        } else {
            // The connection's fault: its loss is logged once, by the broker (quiet outages).
            tracing::debug!(error = %e, counted, n, "outbox confirm failed; the batch will be sent again");
        }
        if counted {
            // The server answered, but not with a confirmation: every message of the batch is
            // suspect. A dropped connection (not counted) never dead-letters good messages.
            self.count_failure(rows, n, &e).await;
        } else {
            tokio::time::sleep(UNCOUNTED_RETRY).await;
        }
    }

    /// The server processed the first `n` rows but refused some (permissions, a stream's
    /// limits): those count a failed attempt each (with the server's reason) and go again or to
    /// the dead letters; the others are done and leave the batch.
    async fn rejected(
        &mut self,
        rows: &mut VecDeque<Row>,
        n: usize,
        rejections: Vec<crate::broker::Rejection>,
    ) {
        self.reconnected = false;
        let is_refused = |row: &Row| {
            rejections.iter().any(|r| match &r.msg_id {
                Some(id) => crate::headers::msg_id(&row.msg.headers) == Some(id.as_str()),
                None => r.subject == row.msg.subject,
            })
        };
        let mut refused: VecDeque<Row> = VecDeque::with_capacity(rows.len());
        let mut accepted = 0;
        for row in rows.drain(..n) {
            if is_refused(&row) {
                refused.push_back(row);
            } else {
                accepted += 1;
            }
        }
        let k = refused.len();
        refused.extend(rows.drain(..));
        *rows = refused;
        tracing::warn!(
            refused = k,
            accepted,
            "the server refused messages of an outbox batch"
        );
        if k == 0 {
            return;
        }
        let e = Error::Rejected { rejections };
        self.count_failure(rows, k, &e).await;
    }

    /// The queue cannot be confirmed at all (no permission on the confirmation subject): a
    /// configuration error, never the messages' fault. Said once, made visible to `flush`, and
    /// tried again with a growing wait (up to the retry policy's cap) instead of resending the
    /// batch every few seconds forever.
    async fn blocked_by(&mut self, e: Error) {
        self.reconnected = false;
        let text = e.to_string();
        if self.blocked.borrow().as_deref() != Some(text.as_str()) {
            tracing::error!(error = %text, "the outbox cannot confirm anything; fix the permissions (the queue waits, nothing is dead-lettered)");
            self.blocked.send_replace(Some(text));
        }
        self.blocked_tries = self.blocked_tries.saturating_add(1);
        let wait = RetryPolicy::default()
            .base(Duration::from_secs(1))
            .multiplier(2.0)
            .cap(self.retry.cap.max(Duration::from_secs(1)))
            .backoff(self.blocked_tries);
        tokio::time::sleep(wait).await;
    }

    /// The broker refused the first row (the ones before it are confirmed by now).
    async fn send_failed(&mut self, rows: &mut VecDeque<Row>, e: Error) {
        if self.stayed_connected() {
            self.count_failure(rows, 1, &e).await;
        } else {
            tracing::debug!(error = %e, id = rows.front().map(|r| r.id), "outbox send failed while the connection changed; not counted");
            tokio::time::sleep(UNCOUNTED_RETRY).await;
        }
    }

    /// Counts a failed attempt on each of the first `n` rows, in one store call: a row out of
    /// attempts moves to the dead letters and leaves the batch (the queue goes on without a
    /// wait); otherwise the batch waits the policy's backoff before it is sent again.
    async fn count_failure(&mut self, rows: &mut VecDeque<Row>, n: usize, e: &Error) {
        let mut failures = Vec::with_capacity(n);
        for row in rows.iter_mut().take(n) {
            row.attempts += 1;
            failures.push(Failure {
                id: row.id,
                attempts: row.attempts,
                dead: self.retry.exhausted(row.attempts),
                msg_id: crate::headers::msg_id(&row.msg.headers).map(str::to_owned),
            });
        }
        let error: Arc<str> = e.to_string().into();
        let failures = Arc::new(failures);
        self.retry_store("record a failed attempt", |w| {
            let (failures, error) = (failures.clone(), error.clone());
            async move {
                w.call("cannot record a failed attempt", move |ctx| {
                    ctx.store.fail(&failures, &error)
                })
                .await
            }
        })
        .await;
        let dead: Vec<i64> = failures.iter().filter(|f| f.dead).map(|f| f.id).collect();
        if dead.is_empty() {
            let attempts = rows.front().map_or(1, |r| r.attempts);
            tracing::debug!(error = %error, n, attempts, "outbox send failed; will retry");
            tokio::time::sleep(self.retry.backoff(attempts)).await;
            return;
        }
        for id in dead {
            let Some(at) = rows.iter().position(|r| r.id == id) else {
                continue;
            };
            if let Some(row) = rows.remove(at) {
                crate::metrics::outbox_dead_lettered();
                tracing::warn!(
                    subject = %row.msg.subject,
                    msg_id = crate::headers::msg_id(&row.msg.headers).unwrap_or(""),
                    attempts = row.attempts,
                    error = %error,
                    "outbox message dead-lettered after {} failed attempts; the queue goes on (see Bus::dead_letters)",
                    row.attempts
                );
            }
        }
    }

    /// Records, without waiting, that every row up to `last` is confirmed or dead-lettered.
    fn mark_done(&self, last: i64) {
        let _ = self.writer.submit(move |ctx| ctx.confirmed(last));
    }
}
