//! The outbox file as the store of the bus's dead letters ([`DeadLetterStore`]): list, count,
//! replay and purge through the writer thread.

use futures::future::BoxFuture;

use super::writer::Writer;
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::error::Result;

impl DeadLetterStore for Writer {
    fn list(&self) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        Box::pin(self.call("cannot list the dead letters", |ctx| {
            ctx.store.dead_letters()
        }))
    }

    fn count(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.call("cannot count the dead letters", |ctx| {
            ctx.store.dead_letter_count()
        }))
    }

    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.call("cannot replay the dead letter", move |ctx| {
            let new_id = ctx.store.replay(id)?;
            if let Some(new_id) = new_id {
                ctx.committed.send_replace(new_id);
                // The drainer finds the row in SQLite; it is not worth decoding it here.
                ctx.shared.mark_overflowed();
                tracing::info!(dead_letter = id, queue_id = new_id, "dead letter replayed");
            }
            Ok(new_id.is_some())
        }))
    }

    fn purge(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.call("cannot purge the dead letters", |ctx| ctx.store.purge()))
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}
