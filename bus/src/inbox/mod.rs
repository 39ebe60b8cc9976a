//! The inbox: what a deduplicating handler ([`HandlerOptions::dedupe`]) remembers of the
//! messages it finished, so that a copy of one (a redelivery, an outbox resend, the same
//! message after a restart) is acknowledged without running the handler again.
//!
//! # Where completions live
//!
//! - **In the outbox file**, when the bus has one (every NATS bus by default): table `inbox`
//!   (`handler`, `msg_id`, `done_at`), pruned past the window. A completion is committed in the
//!   same transaction as the messages the handler published through its envelope
//!   ([`Envelope::publish`]), and the incoming message is acknowledged only after that commit:
//!   a handler that fails publishes nothing, and a crash after the commit and before the ack
//!   is answered by the inbox when the message comes again. An unordered durable handler
//!   does not wait for the commit on the message's task: its completion goes to the writer
//!   thread with what to do after it, and one task per handler acknowledges every delivery of
//!   a group commit (see [`Inbox::complete_then`]). The file is one process's (it is
//!   locked), so the handler keeps this file's completions within the window in memory too
//!   (loaded at start, at most [`MEMORY_CAP`]); past the cap a miss asks the file.
//! - **In memory** otherwise (the local broker without an outbox): at most [`MEMORY_CAP`]
//!   completions per handler, the oldest forgotten first; nothing survives a restart, and what
//!   the handler publishes through its envelope is published after `Ok`, best effort (a
//!   failure there fails the attempt, and a retry may publish the first outputs again).
//!
//! - **Shared by every instance** ([`HandlerOptions::dedupe_shared`], NATS only): on top of
//!   the above, a JetStream key-value bucket per handler where creating a message's key is the
//!   claim, so two instances of a queue group never both run one message (see `shared`).
//!
//! While one copy of a message is being handled (retries included), another copy that arrives
//! in the same process is skipped as a duplicate: the first copy's delivery answers for both.
//!
//! [`HandlerOptions::dedupe_shared`]: crate::HandlerOptions::dedupe_shared
//!
//! [`HandlerOptions::dedupe`]: crate::HandlerOptions::dedupe
//! [`Envelope::publish`]: crate::Envelope::publish

mod memory;
#[cfg(feature = "nats")]
mod shared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rustc_hash::FxHashSet;

use self::memory::Completions;
pub(crate) use self::memory::MEMORY_CAP;
#[cfg(feature = "nats")]
use self::shared::SharedClaim;
#[cfg(feature = "nats")]
pub(crate) use self::shared::SharedStore;
use crate::clock::now_ms;
use crate::error::Result;
#[cfg(feature = "outbox")]
use crate::outbox::InboxTable;
use crate::raw::RawMessage;

/// How a handler without an outbox publishes what it collected (after `Ok`).
pub(crate) type SendOutput =
    Arc<dyn Fn(RawMessage) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// The least completions between two prunes of the file's table. A prune scans the handler's
/// rows (the table has no index by time: see `outbox::schema::INBOX`), so it also waits for a
/// quarter of the window: the table holds at most about 1.25 windows of completions, and each
/// completion pays for a few rows of scanning.
#[cfg(feature = "outbox")]
const PRUNE_EVERY: u64 = 4096;

/// One handler's inbox (see the [module docs](self)).
pub(crate) struct Inbox {
    window_ms: i64,
    state: Mutex<State>,
    #[cfg(feature = "outbox")]
    table: Option<InboxTable>,
    send: Option<SendOutput>,
    completed: AtomicU64,
    /// Not before this (unix ms) is the file's table pruned again.
    #[cfg(feature = "outbox")]
    next_prune: std::sync::atomic::AtomicI64,
    #[cfg(feature = "nats")]
    shared: Option<Arc<SharedStore>>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    done: Completions,
    /// The msg ids being handled now.
    running: FxHashSet<Arc<str>>,
}

/// What [`Inbox::claim`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Not finished, not running: run it (and [`Inbox::complete`] or [`Inbox::release`]).
    Run,
    /// Finished within the window, or running now: skip it.
    Duplicate,
}

impl Inbox {
    /// An inbox in memory, outputs published with `send` after `Ok`.
    pub(crate) fn in_memory(window: Duration, send: SendOutput) -> Inbox {
        let window_ms = window.as_millis().min(i64::MAX as u128) as i64;
        Inbox {
            window_ms,
            state: Mutex::new(State {
                done: Completions::new(window_ms, MEMORY_CAP),
                running: FxHashSet::default(),
            }),
            #[cfg(feature = "outbox")]
            table: None,
            send: Some(send),
            completed: AtomicU64::new(0),
            #[cfg(feature = "outbox")]
            next_prune: Default::default(),
            #[cfg(feature = "nats")]
            shared: None,
        }
    }

    /// An inbox in the outbox file's table `table`: prunes it past `window` and loads what is
    /// left into memory.
    #[cfg(feature = "outbox")]
    pub(crate) async fn in_file(window: Duration, table: InboxTable) -> Result<Inbox> {
        let window_ms = window.as_millis().min(i64::MAX as u128) as i64;
        let now = now_ms();
        table.prune(now.saturating_sub(window_ms));
        let rows = table.since(now.saturating_sub(window_ms)).await?;
        let mut done = Completions::new(window_ms, MEMORY_CAP);
        for (id, at) in rows {
            done.insert(id.into(), at);
        }
        tracing::debug!(loaded = done.len(), "inbox loaded from the outbox file");
        Ok(Inbox {
            window_ms,
            state: Mutex::new(State {
                done,
                running: FxHashSet::default(),
            }),
            table: Some(table),
            send: None,
            completed: AtomicU64::new(0),
            next_prune: (now + (window_ms / 4).max(1)).into(),
            #[cfg(feature = "nats")]
            shared: None,
        })
    }

    /// This inbox, with `store` shared by every instance of the handler as well.
    #[cfg(feature = "nats")]
    pub(crate) fn with_shared(mut self, store: SharedStore) -> Inbox {
        self.shared = Some(Arc::new(store));
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether to run the message `msg_id`; `Run` marks it running until
    /// [`complete`](Self::complete) or [`release`](Self::release). With a shared store, a
    /// message this process may run is then claimed there (waiting while another instance
    /// holds it).
    pub(crate) async fn claim(&self, msg_id: &str) -> Result<Claim> {
        let local = self.claim_here(msg_id).await?;
        #[cfg(feature = "nats")]
        if let (Claim::Run, Some(shared)) = (&local, &self.shared) {
            let claimed = shared.claim(msg_id).await;
            return match claimed {
                Ok(SharedClaim::Run) => Ok(Claim::Run),
                Ok(SharedClaim::Done) => {
                    self.state().running.remove(msg_id);
                    Ok(Claim::Duplicate)
                }
                Err(e) => {
                    self.state().running.remove(msg_id);
                    Err(e)
                }
            };
        }
        Ok(local)
    }

    /// [`claim`](Self::claim) in this process: its memory, then its file.
    async fn claim_here(&self, msg_id: &str) -> Result<Claim> {
        let now = now_ms();
        {
            let mut state = self.state();
            if state.running.contains(msg_id) {
                return Ok(Claim::Duplicate);
            }
            match state.done.contains(msg_id, now) {
                Some(true) => return Ok(Claim::Duplicate),
                Some(false) => {
                    state.running.insert(msg_id.into());
                    return Ok(Claim::Run);
                }
                None => {}
            }
        }
        // Completions within the window were evicted from memory: the file knows.
        #[cfg(feature = "outbox")]
        if let Some(table) = &self.table {
            if let Some(at) = table.done_at(msg_id.to_owned()).await? {
                if at >= now - self.window_ms {
                    return Ok(Claim::Duplicate);
                }
            }
        }
        let mut state = self.state();
        if !state.running.insert(msg_id.into()) {
            return Ok(Claim::Duplicate);
        }
        Ok(Claim::Run)
    }

    /// The message `msg_id` is no longer running (it failed, was handed back, or the attempt
    /// was dropped): a copy may run.
    pub(crate) fn release(&self, msg_id: &str) {
        let was_running = self.state().running.remove(msg_id);
        #[cfg(feature = "nats")]
        if let (true, Some(shared)) = (was_running, &self.shared) {
            let (shared, id) = (Arc::clone(shared), msg_id.to_owned());
            tokio::spawn(async move { shared.release(&id).await });
        }
        #[cfg(not(feature = "nats"))]
        let _ = was_running;
    }

    /// The handler finished `msg_id` (`None`: a message without an id) with `outputs` to
    /// publish: in the outbox file, outputs and completion in one transaction; without one,
    /// the outputs published one by one. `Err`: nothing was recorded.
    pub(crate) async fn complete(
        &self,
        msg_id: Option<&str>,
        outputs: Vec<RawMessage>,
    ) -> Result<()> {
        let now = now_ms();
        #[cfg(feature = "outbox")]
        if let Some(table) = &self.table {
            table
                .commit(outputs, msg_id.map(str::to_owned), now)
                .await?;
            self.committed(table, now);
            return self.done(msg_id, now).await;
        }
        if let Some(send) = &self.send {
            for msg in outputs {
                send(msg).await?;
            }
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.done(msg_id, now).await
    }

    /// Whether [`complete_then`](Self::complete_then) may be used: completions in the file,
    /// no shared store.
    #[cfg(feature = "outbox")]
    pub(crate) fn pipelines(&self) -> bool {
        #[cfg(feature = "nats")]
        if self.shared.is_some() {
            return false;
        }
        self.table.is_some()
    }

    /// [`complete`](Self::complete) without waiting (only where it [`pipelines`](Self::pipelines)):
    /// `then` runs with the outcome on the outbox's writer thread, after a committed completion
    /// is recorded here. A quick `then` lets one thread answer a whole group commit.
    #[cfg(feature = "outbox")]
    pub(crate) fn complete_then(
        self: &Arc<Self>,
        msg_id: Option<&str>,
        outputs: Vec<RawMessage>,
        then: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let Some(table) = &self.table else {
            return then(Err(crate::error::Error::Config(
                "the inbox has no outbox file".into(),
            )));
        };
        let now = now_ms();
        let inbox = Arc::clone(self);
        let id = msg_id.map(str::to_owned);
        table.commit_then(
            outputs,
            id.clone(),
            now,
            Box::new(move |outcome| {
                if outcome.is_ok() {
                    if let Some(table) = &inbox.table {
                        inbox.committed(table, now);
                    }
                    inbox.done_here(id.as_deref(), now);
                }
                then(outcome)
            }),
        );
    }

    /// Counts a committed completion; every [`PRUNE_EVERY`], prunes the file's table if a
    /// quarter of the window passed since the last prune.
    #[cfg(feature = "outbox")]
    fn committed(&self, table: &InboxTable, now: i64) {
        if self.completed.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY != PRUNE_EVERY - 1
            || now < self.next_prune.load(Ordering::Relaxed)
        {
            return;
        }
        self.next_prune.store(
            now.saturating_add((self.window_ms / 4).max(1)),
            Ordering::Relaxed,
        );
        table.prune(now.saturating_sub(self.window_ms));
    }

    /// Records `msg_id` as finished and no longer running, at once (no copy here sees
    /// neither), and in the shared store. A shared store that cannot be written is logged, not
    /// returned: the outputs are committed, and the claim there expires (another instance
    /// could then run a copy once more).
    async fn done(&self, msg_id: Option<&str>, now: i64) -> Result<()> {
        let Some(id) = msg_id else {
            return Ok(());
        };
        #[cfg(feature = "nats")]
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.done(id).await {
                tracing::warn!(msg_id = %id, error = %e, "cannot record a completion in the shared inbox; its claim will expire");
            }
        }
        self.done_here(Some(id), now);
        Ok(())
    }

    /// [`done`](Self::done) in this process's memory.
    fn done_here(&self, msg_id: Option<&str>, now: i64) {
        let Some(id) = msg_id else {
            return;
        };
        let mut state = self.state();
        // The id kept while it ran is the one kept as done.
        let id = state.running.take(id).unwrap_or_else(|| id.into());
        state.done.insert(id, now);
    }
}
