//! The dead-letter API: list, count, replay and purge the messages that failed every attempt.

use std::sync::Arc;

use super::records::DeadLetter;
use super::writer::Writer;
use crate::broker::Broker;
use crate::dead_letter::MemoryDeadLetters;
use crate::{Error, Result};

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
    File(Writer),
    Memory {
        letters: Arc<MemoryDeadLetters>,
        broker: Arc<dyn Broker>,
    },
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Place::File(w) => f.debug_tuple("DeadLetters").field(&w.path()).finish(),
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

    pub(crate) fn new(writer: Writer) -> Self {
        DeadLetters {
            place: Place::File(writer),
        }
    }

    fn writer(&self) -> Result<&Writer> {
        match &self.place {
            Place::File(w) => Ok(w),
            Place::Memory { .. } => Err(Error::NoOutbox),
        }
    }

    /// Every dead letter, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        if let Place::Memory { letters, .. } = &self.place {
            return Ok(letters
                .list()
                .into_iter()
                .map(|(id, f)| DeadLetter::from_handler(id, f))
                .collect());
        }
        self.writer()?
            .call("cannot list the dead letters", |ctx| {
                ctx.store.dead_letters()
            })
            .await
    }

    /// How many there are.
    pub async fn count(&self) -> Result<u64> {
        if let Place::Memory { letters, .. } = &self.place {
            return Ok(letters.len());
        }
        self.writer()?
            .call("cannot count the dead letters", |ctx| {
                ctx.store.dead_letter_count()
            })
            .await
    }

    /// Moves a dead letter back to the end of the queue, with fresh attempts and the same msg id.
    ///
    /// Fails with [`Error::DeadLetterNotFound`] if there is no dead letter `id`. Without an
    /// outbox, the message is published again to its subject at once (and is gone if that fails
    /// while the broker is unreachable: there is no queue to keep it).
    pub async fn replay(&self, id: i64) -> Result<()> {
        if let Place::Memory { letters, broker } = &self.place {
            let failed = letters.take(id).ok_or(Error::DeadLetterNotFound(id))?;
            tracing::info!(dead_letter = id, subject = %failed.msg.subject, "dead letter replayed");
            return broker.publish(failed.msg).await;
        }
        let replayed = self
            .writer()?
            .call("cannot replay the dead letter", move |ctx| {
                let new_id = ctx.store.replay(id)?;
                if let Some(new_id) = new_id {
                    ctx.committed.send_replace(new_id);
                    // The drainer finds the row in SQLite; it is not worth decoding it here.
                    ctx.shared.mark_overflowed();
                    tracing::info!(dead_letter = id, queue_id = new_id, "dead letter replayed");
                }
                Ok(new_id)
            });
        replayed
            .await?
            .map(drop)
            .ok_or(Error::DeadLetterNotFound(id))
    }

    /// Deletes every dead letter; returns how many.
    pub async fn purge(&self) -> Result<u64> {
        if let Place::Memory { letters, .. } = &self.place {
            return Ok(letters.purge());
        }
        self.writer()?
            .call("cannot purge the dead letters", |ctx| ctx.store.purge())
            .await
    }
}
