//! The rows of `operator_requests`, as both sides read them: what a tool asks of the owner of an
//! outbox file ([`RequestOp`]), what came of it ([`RequestOutcome`]), and a row as read
//! ([`OperatorRequest`]).

use std::time::SystemTime;

use rusqlite::types::ValueRef;

use super::read::from_ms;

/// The columns of a request row, in the order [`request`] reads them.
pub(crate) const COLUMNS: &str =
    "SELECT id, op, dead_letter_id, requested_at, done_at, result, queue_id FROM operator_requests";

/// `result` of a request that replayed its dead letter (the new queue id is in `queue_id`).
pub(crate) const REPLAYED: &str = "replayed";
/// `result` of a request that purged its dead letter.
pub(crate) const PURGED: &str = "purged";
/// `result` of a request whose dead letter was not there (already replayed or purged).
pub(crate) const NOT_FOUND: &str = "not found";

/// A TEXT value, if it is one.
pub(crate) fn text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// What an operator asks of the owner of an outbox file, for one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestOp {
    /// Move it back to the end of the queue, with fresh attempts and the same msg id (as
    /// [`DeadLetters::replay`](crate::DeadLetters::replay)).
    Replay,
    /// Delete it.
    Purge,
}

impl RequestOp {
    /// Its name in the file's `op` column: `replay` or `purge`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOp::Replay => "replay",
            RequestOp::Purge => "purge",
        }
    }
}

/// What the owner did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestOutcome {
    /// The dead letter is back in the queue, as this queue id.
    Replayed {
        /// Its new queue id.
        queue_id: i64,
    },
    /// The dead letter was deleted.
    Purged,
    /// There was no such dead letter (any more).
    NotFound,
    /// The owner did not run it, and says why (an operation it does not know, say).
    Refused(String),
}

impl RequestOutcome {
    fn from_columns(result: String, queue_id: Option<i64>) -> RequestOutcome {
        match (result.as_str(), queue_id) {
            (REPLAYED, Some(queue_id)) => RequestOutcome::Replayed { queue_id },
            (PURGED, _) => RequestOutcome::Purged,
            (NOT_FOUND, _) => RequestOutcome::NotFound,
            _ => RequestOutcome::Refused(result),
        }
    }
}

/// One row of `operator_requests`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OperatorRequest {
    /// The request's id.
    pub id: i64,
    /// The operation as written (`replay`, `purge`).
    pub op: String,
    /// The dead letter it is about.
    pub dead_letter_id: i64,
    /// When it was written.
    pub requested_at: SystemTime,
    /// When the owner ran it; `None` while it is pending.
    pub done_at: Option<SystemTime>,
    /// What came of it; `None` while it is pending.
    pub outcome: Option<RequestOutcome>,
}

/// Reads a row selected with [`COLUMNS`].
pub(crate) fn request(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRequest> {
    let done_at: Option<i64> = r.get_ref(4)?.as_i64().ok();
    let outcome = done_at.map(|_| {
        RequestOutcome::from_columns(
            text(r.get_ref(5).unwrap_or(ValueRef::Null)).unwrap_or_default(),
            r.get_ref(6).ok().and_then(|v| v.as_i64().ok()),
        )
    });
    Ok(OperatorRequest {
        id: r.get(0)?,
        op: text(r.get_ref(1)?).unwrap_or_default(),
        dead_letter_id: r.get_ref(2)?.as_i64().unwrap_or(0),
        requested_at: from_ms(r.get_ref(3)?.as_i64().unwrap_or(0)),
        done_at: done_at.map(from_ms),
        outcome,
    })
}
