//! The record of a [`TestBus`](super::TestBus): every message published, consumed, requested and
//! answered, in the order the broker saw them.

use std::sync::Mutex;

use bytes::Bytes;

use crate::headers::{self, Headers};
use crate::message::Message;
use crate::panic::lock;
use crate::raw::RawMessage;

/// What happened to a [`Record`]'s message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Published (by the bus, its outbox or a handler), once per publish even when a fault
    /// delivers it twice.
    Published,
    /// Taken by a subscriber: a handler, a responder, a durable consumer or a
    /// [`Subscription`](crate::Subscription) (once per delivery: a duplicate is consumed twice).
    Consumed,
    /// Sent as a request.
    Request,
    /// Sent as the reply to a request.
    Reply,
}

/// One entry of the record: a message and what happened to it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Record {
    /// Its position in the record, from 0.
    pub seq: u64,
    /// What happened.
    pub kind: Kind,
    /// Its subject.
    pub subject: String,
    /// Its headers.
    pub headers: Headers,
    /// Its message id (`Nats-Msg-Id` or `Bus-Msg-Id`), when it has one.
    pub msg_id: Option<String>,
    /// Its payload (MessagePack for typed messages).
    pub payload: Bytes,
}

impl Record {
    /// The body as an `M`, when the subject fits `M`'s template and the payload decodes.
    pub fn decode<M: Message>(&self) -> Option<M> {
        if !bus_subject::matches(&template_pattern(M::SUBJECT), &self.subject) {
            return None;
        }
        crate::codec::decode::<M>(&self.payload).ok()
    }
}

/// A [`Record`] whose body is an `M`: what [`TestBus::published`](super::TestBus::published)
/// and its siblings return.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Recorded<M> {
    /// The decoded body.
    pub body: M,
    /// The entry, with subject, headers and msg id.
    pub record: Record,
}

impl<M> std::ops::Deref for Recorded<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.body
    }
}

/// `agent.route.<agent>` as the pattern `agent.route.*`.
fn template_pattern(template: &str) -> String {
    template
        .split('.')
        .map(|t| if t.starts_with('<') { "*" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// The record itself, shared by the broker that writes it and the harness that reads it.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    entries: Mutex<Vec<Record>>,
}

impl Recorder {
    /// Adds an entry; returns its `seq`.
    pub(crate) fn add(&self, kind: Kind, msg: &RawMessage) -> u64 {
        let mut entries = lock(&self.entries);
        let seq = entries.len() as u64;
        entries.push(Record {
            seq,
            kind,
            subject: msg.subject.clone(),
            headers: msg.headers.clone(),
            msg_id: headers::msg_id(&msg.headers).map(str::to_owned),
            payload: msg.payload.clone(),
        });
        seq
    }

    /// Takes entry `seq` back out (its send failed); the later ones move up.
    pub(crate) fn retract(&self, seq: u64) {
        let mut entries = lock(&self.entries);
        if let Some(at) = entries.iter().rposition(|r| r.seq == seq) {
            entries.remove(at);
            for r in &mut entries[at..] {
                r.seq -= 1;
            }
        }
    }

    pub(crate) fn all(&self) -> Vec<Record> {
        lock(&self.entries).clone()
    }

    pub(crate) fn of<M: Message>(&self, kind: Kind) -> Vec<Recorded<M>> {
        lock(&self.entries)
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| {
                r.decode::<M>().map(|body| Recorded {
                    body,
                    record: r.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_template_becomes_a_pattern() {
        assert_eq!(super::template_pattern("a.<b>.c.<d>"), "a.*.c.*");
    }
}
