//! The dead-letter API: list, count, replay and purge the messages that failed every attempt.

use super::store::sql_err;
use super::writer::Writer;
use super::DeadLetter;
use crate::{Error, Result};

/// The dead-letter table of an outbox: list, count, replay and purge.
///
/// Get one with [`Bus::dead_letters`](crate::Bus::dead_letters). Cheap to clone. On a `Bus`
/// without an outbox every method fails with [`Error::NoOutbox`].
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
#[derive(Debug, Clone)]
pub struct DeadLetters {
    writer: Option<Writer>,
}

impl DeadLetters {
    pub(crate) fn none() -> Self {
        DeadLetters { writer: None }
    }

    pub(crate) fn new(writer: Writer) -> Self {
        DeadLetters {
            writer: Some(writer),
        }
    }

    fn writer(&self) -> Result<&Writer> {
        self.writer.as_ref().ok_or(Error::NoOutbox)
    }

    /// Every dead letter, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        self.writer()?
            .call(|ctx| {
                let path = ctx.store.path.clone();
                ctx.store
                    .dead_letters()
                    .map_err(|e| sql_err(&path, "cannot list the dead letters", e))
            })
            .await
    }

    /// How many there are.
    pub async fn count(&self) -> Result<u64> {
        self.writer()?
            .call(|ctx| {
                let path = ctx.store.path.clone();
                ctx.store
                    .dead_letter_count()
                    .map_err(|e| sql_err(&path, "cannot count the dead letters", e))
            })
            .await
    }

    /// Moves a dead letter back to the end of the queue, with fresh attempts and the same msg id.
    ///
    /// Fails with [`Error::DeadLetterNotFound`] if there is no dead letter `id`.
    pub async fn replay(&self, id: i64) -> Result<()> {
        self.writer()?
            .call(move |ctx| {
                let path = ctx.store.path.clone();
                match ctx.store.replay(id) {
                    Ok(Some(new_id)) => {
                        ctx.committed.send_replace(new_id);
                        // The drainer finds the row in SQLite; it is not worth decoding it here.
                        ctx.shared.mark_overflowed();
                        tracing::info!(dead_letter = id, queue_id = new_id, "dead letter replayed");
                        Ok(())
                    }
                    Ok(None) => Err(Error::DeadLetterNotFound(id)),
                    Err(e) => Err(sql_err(&path, "cannot replay the dead letter", e)),
                }
            })
            .await
    }

    /// Deletes every dead letter; returns how many.
    pub async fn purge(&self) -> Result<u64> {
        self.writer()?
            .call(|ctx| {
                let path = ctx.store.path.clone();
                ctx.store
                    .purge()
                    .map_err(|e| sql_err(&path, "cannot purge the dead letters", e))
            })
            .await
    }
}
