//! Order per key: the lanes of a handler run with [`HandlerOptions::ordered_by_subject`] or
//! [`HandlerOptions::ordered_by`](super::HandlerOptions::ordered_by).
//!
//! A lane is the queue of one key's messages. The handler's loop computes the key of each
//! message it takes: a key with no running message starts a lane (a task that handles its
//! messages one after the other, each finished, retries included, before the next); a key whose
//! lane is running appends the message to that lane's queue. Lanes run concurrently, each
//! holding one of the handler's concurrency slots while a message of it is attempted (and not
//! while it waits for a retry's backoff), so at most `concurrency` messages are attempted at
//! once and a key's messages never overtake each other. Memory is bounded: the loop takes a
//! message only while fewer than [`Lanes::bound`] are taken and not finished, lane queues
//! included; the rest wait in the subscription (or on the broker).
//!
//! Keys are 64-bit hashes: two keys with the same hash share a lane (still in order, only less
//! parallel). Nothing here knows how a message is handled: `run` drives the lanes.
//!
//! [`HandlerOptions::ordered_by_subject`]: super::HandlerOptions::ordered_by_subject

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

use rustc_hash::FxBuildHasher;

use super::slots::Slots;

/// A key function on a decoded message, type-erased: `None` for a message of another type.
type KeyFn = Arc<dyn Fn(&dyn Any) -> Option<u64> + Send + Sync>;

/// What the key of a message is.
#[derive(Clone)]
pub(crate) enum KeyOf {
    /// Its concrete subject.
    Subject,
    /// A function of the decoded message, of the type `type_name`.
    Typed {
        type_id: TypeId,
        type_name: &'static str,
        key: KeyFn,
    },
}

impl fmt::Debug for KeyOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOf::Subject => f.write_str("Subject"),
            KeyOf::Typed { type_name, .. } => write!(f, "Typed({type_name})"),
        }
    }
}

/// The hash of a key.
pub(crate) fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl KeyOf {
    /// The key of `M` values computed by `key`.
    pub(crate) fn typed<M: Any, K: Hash>(key: impl Fn(&M) -> K + Send + Sync + 'static) -> Self {
        KeyOf::Typed {
            type_id: TypeId::of::<M>(),
            type_name: std::any::type_name::<M>(),
            key: Arc::new(move |m: &dyn Any| m.downcast_ref::<M>().map(|m| hash_key(&key(m)))),
        }
    }

    /// `Err` if the key function takes another type than the handler's `M`.
    pub(crate) fn check<M: Any>(&self) -> Result<(), String> {
        match self {
            KeyOf::Typed {
                type_id, type_name, ..
            } if *type_id != TypeId::of::<M>() => Err(format!(
                "HandlerOptions::ordered_by takes a key of {type_name}, but the handler handles {}",
                std::any::type_name::<M>()
            )),
            _ => Ok(()),
        }
    }
}

/// The lanes of one handler: the queue of every key with a running lane, and the bound on the
/// messages taken.
pub(super) struct Lanes<T> {
    /// A key is here while its lane runs; its queue holds the messages waiting behind the one
    /// being handled.
    running: Mutex<HashMap<u64, VecDeque<T>, FxBuildHasher>>,
    /// Messages taken and not finished (lane queues included), at most [`Lanes::bound`].
    pub(super) taken: Slots,
    pub(super) key: KeyOf,
}

impl<T> Lanes<T> {
    /// Messages a handler of `concurrency` takes before one finishes: enough to find a message of
    /// a free key while some keys are busy, as many as a durable consumer prefetches.
    pub(super) fn bound(concurrency: usize) -> usize {
        (concurrency * 4).clamp(8, 512)
    }

    pub(super) fn new(key: KeyOf, concurrency: usize) -> Self {
        Lanes {
            running: Mutex::new(HashMap::default()),
            taken: Slots::new(Self::bound(concurrency)),
            key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, VecDeque<T>, FxBuildHasher>> {
        // Plain data behind it: a panic while holding it leaves nothing half-done.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message of `key` taken: `Some(msg)` if it starts a lane (no message of its key is
    /// running), `None` if it waits in its key's queue.
    pub(super) fn admit(&self, key: u64, msg: T) -> Option<T> {
        let mut running = self.lock();
        match running.get_mut(&key) {
            Some(queue) => {
                queue.push_back(msg);
                None
            }
            None => {
                running.insert(key, VecDeque::new());
                Some(msg)
            }
        }
    }

    /// A message of `key` finished: the next one of its lane, or `None` (the lane ends).
    pub(super) fn finished(&self, key: u64) -> Option<T> {
        self.taken.give_back();
        let mut running = self.lock();
        let next = running.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            running.remove(&key);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_key_queues_and_a_finished_lane_ends() {
        let lanes = Lanes::new(KeyOf::Subject, 2);
        assert_eq!(lanes.admit(1, "a1"), Some("a1"));
        assert_eq!(lanes.admit(1, "a2"), None);
        assert_eq!(lanes.admit(2, "b1"), Some("b1"));
        assert_eq!(lanes.admit(1, "a3"), None);
        assert_eq!(lanes.finished(1), Some("a2"));
        assert_eq!(lanes.finished(1), Some("a3"));
        assert_eq!(lanes.finished(1), None);
        // The lane ended: the next message of the key starts a new one.
        assert_eq!(lanes.admit(1, "a4"), Some("a4"));
        assert_eq!(lanes.finished(2), None);
    }

    #[test]
    fn a_key_of_another_type_is_refused() {
        let key = KeyOf::typed(|s: &String| s.len());
        assert!(key.check::<String>().is_ok());
        let err = key.check::<u32>().unwrap_err();
        assert!(err.contains("ordered_by"), "{err}");
    }
}
