//! Dead letters: what the outbox and handlers give up on, and the one API that lists, counts,
//! replays and purges them ([`DeadLetters`]), on every build. With an outbox they live in its
//! file (the outbox implements [`DeadLetterStore`]); without one, handler dead letters are kept
//! in memory, bounded ([`MemoryDeadLetters`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::broker::Broker;
use crate::error::{Error, Result};
use crate::headers::Headers;
use crate::panic::lock;
use crate::raw::RawMessage;

/// A message a handler gave up on, as handed to the bus's dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) msg: RawMessage,
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
    /// `handler:<name>`.
    pub(crate) origin: String,
    pub(crate) failed_at: SystemTime,
}

/// Where a handler puts what it gives up on.
pub(crate) type DeadLetterSink = Arc<dyn Fn(Failed) + Send + Sync>;

/// Handler dead letters of a bus without an outbox file: kept in memory, the newest
/// [`MEMORY_DEAD_LETTERS`], older ones counted as evicted.
pub(crate) const MEMORY_DEAD_LETTERS: usize = 10_000;

/// The in-memory dead letters of handlers.
#[derive(Debug, Default)]
pub(crate) struct MemoryDeadLetters {
    letters: std::sync::Mutex<std::collections::VecDeque<(i64, Failed)>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

impl MemoryDeadLetters {
    pub(crate) fn push(&self, failed: Failed) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        let mut l = lock(&self.letters);
        if l.len() >= MEMORY_DEAD_LETTERS {
            l.pop_front();
            let evicted = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            if evicted.is_power_of_two() {
                tracing::warn!(evicted, kept = MEMORY_DEAD_LETTERS, "in-memory handler dead letters full: the oldest are dropped (configure an outbox to keep them all)");
            }
        }
        l.push_back((id, failed));
    }

    pub(crate) fn list(&self) -> Vec<(i64, Failed)> {
        lock(&self.letters).iter().cloned().collect()
    }

    pub(crate) fn take(&self, id: i64) -> Option<Failed> {
        let mut l = lock(&self.letters);
        let i = l.iter().position(|(i, _)| *i == id)?;
        l.remove(i).map(|(_, f)| f)
    }

    pub(crate) fn purge(&self) -> u64 {
        lock(&self.letters).drain(..).count() as u64
    }

    pub(crate) fn len(&self) -> u64 {
        lock(&self.letters).len() as u64
    }
}

/// A message that failed every send attempt, or could not be read back from the queue.
///
/// A row that could not be decoded is shown as well as it can be (text decoded lossily,
/// headers empty if they were unreadable); its [`last_error`](DeadLetter::last_error) says
/// what was wrong, and the file keeps its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the dead-letter table (for [`DeadLetters::replay`]).
    pub id: i64,
    /// Where it died: `"outbox"` for the outbox's drainer; a handler will write
    /// `"handler:<name>"`.
    pub origin: String,
    /// Its id in the queue when it died there, if it was queued.
    pub queue_id: Option<i64>,
    /// The subject.
    pub subject: String,
    /// The reply subject, if it had one.
    pub reply: Option<String>,
    /// The headers (with its `Nats-Msg-Id`).
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// Send attempts made.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: String,
    /// When it was first queued.
    pub created_at: SystemTime,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
}

impl DeadLetter {
    /// A handler's dead letter kept in memory (a bus without an outbox).
    pub(crate) fn from_handler(id: i64, f: Failed) -> DeadLetter {
        DeadLetter {
            id,
            origin: f.origin,
            queue_id: None,
            subject: f.msg.subject,
            reply: f.msg.reply,
            headers: f.msg.headers,
            payload: f.msg.payload,
            attempts: f.attempts,
            last_error: f.last_error,
            created_at: f.failed_at,
            failed_at: f.failed_at,
        }
    }
}

/// Where dead letters are kept when not in memory: the outbox file's dead-letter table.
pub(crate) trait DeadLetterStore: Send + Sync + 'static {
    fn list(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>>>;
    fn count(&self) -> BoxFuture<'_, Result<u64>>;
    /// `Ok(false)`: no dead letter `id`.
    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool>>;
    fn purge(&self) -> BoxFuture<'_, Result<u64>>;
    /// The file, for `Debug`.
    fn describe(&self) -> String;
}

/// The dead letters of a bus: list, count, replay and purge. Messages the outbox failed to send
/// (`origin` `"outbox"`) and messages handlers gave up on (`"handler:<name>"`) alike.
///
/// Get one with [`Bus::dead_letters`](crate::Bus::dead_letters). Cheap to clone. With an outbox
/// they live in its file (and survive restarts); without one, only handler dead letters exist,
/// kept in memory (the newest 10,000), and a replay publishes the message again at once.
///
/// ```no_run
/// # async fn run(bus: bus::Bus) -> Result<(), bus::Error> {
/// let dlq = bus.dead_letters();
/// for dl in dlq.list().await? {
///     eprintln!("{} on {}: {} (after {} attempts)", dl.id, dl.subject, dl.last_error, dl.attempts);
///     dlq.replay(dl.id).await?; // back to the end of the queue, same msg id
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DeadLetters {
    place: Place,
}

#[derive(Clone)]
enum Place {
    Store(Arc<dyn DeadLetterStore>),
    Memory {
        letters: Arc<MemoryDeadLetters>,
        broker: Arc<dyn Broker>,
    },
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Place::Store(s) => f.debug_tuple("DeadLetters").field(&s.describe()).finish(),
            Place::Memory { letters, .. } => f
                .debug_struct("DeadLetters")
                .field("in_memory", &letters.len())
                .finish(),
        }
    }
}

impl DeadLetters {
    pub(crate) fn in_memory(letters: Arc<MemoryDeadLetters>, broker: Arc<dyn Broker>) -> Self {
        DeadLetters {
            place: Place::Memory { letters, broker },
        }
    }

    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    pub(crate) fn in_store(store: Arc<dyn DeadLetterStore>) -> Self {
        DeadLetters {
            place: Place::Store(store),
        }
    }

    /// Every dead letter, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        match &self.place {
            Place::Store(s) => s.list().await,
            Place::Memory { letters, .. } => Ok(letters
                .list()
                .into_iter()
                .map(|(id, f)| DeadLetter::from_handler(id, f))
                .collect()),
        }
    }

    /// How many there are.
    pub async fn count(&self) -> Result<u64> {
        match &self.place {
            Place::Store(s) => s.count().await,
            Place::Memory { letters, .. } => Ok(letters.len()),
        }
    }

    /// Moves a dead letter back to the end of the queue, with fresh attempts and the same msg id.
    ///
    /// Fails with [`Error::DeadLetterNotFound`] if there is no dead letter `id`. Without an
    /// outbox, the message is published again to its subject at once (and is gone if that fails
    /// while the broker is unreachable: there is no queue to keep it).
    pub async fn replay(&self, id: i64) -> Result<()> {
        match &self.place {
            Place::Store(s) => (s.replay(id).await?)
                .then_some(())
                .ok_or(Error::DeadLetterNotFound(id)),
            Place::Memory { letters, broker } => {
                let failed = letters.take(id).ok_or(Error::DeadLetterNotFound(id))?;
                tracing::info!(dead_letter = id, subject = %failed.msg.subject, "dead letter replayed");
                broker.publish(failed.msg).await
            }
        }
    }

    /// Deletes every dead letter; returns how many.
    pub async fn purge(&self) -> Result<u64> {
        match &self.place {
            Place::Store(s) => s.purge().await,
            Place::Memory { letters, .. } => Ok(letters.purge()),
        }
    }
}
