//! [`Completions`]: the msg ids a handler finished within its window, in bounded memory.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Most completions a handler keeps in memory (per handler): about 100 bytes each, so about
/// 10 MB at most. Past it the oldest are forgotten before their window ends: without an outbox
/// file a copy of such a message arriving later runs again; with one, the file answers.
pub(crate) const MEMORY_CAP: usize = 100_000;

/// The msg ids finished within the last `window_ms`: a map from id to completion time and the
/// same ids in time order, evicted past the window or, oldest first, past `cap`.
#[derive(Debug)]
pub(crate) struct Completions {
    at: FxHashMap<Arc<str>, i64>,
    order: VecDeque<(i64, Arc<str>)>,
    window_ms: i64,
    cap: usize,
    /// The completion time of the youngest id evicted by the cap: until it is past the window,
    /// a miss does not prove the id was not finished.
    evicted_upto: Option<i64>,
}

impl Completions {
    /// Completions within `window_ms`, at most `cap` of them.
    pub(crate) fn new(window_ms: i64, cap: usize) -> Self {
        Completions {
            at: FxHashMap::default(),
            order: VecDeque::new(),
            window_ms,
            cap: cap.max(1),
            evicted_upto: None,
        }
    }

    /// Forgets what is past the window at `now` (unix ms).
    fn prune(&mut self, now: i64) {
        let horizon = now - self.window_ms;
        while let Some((t, _)) = self.order.front() {
            if *t >= horizon {
                break;
            }
            if let Some((t, id)) = self.order.pop_front() {
                if self.at.get(&id) == Some(&t) {
                    self.at.remove(&id);
                }
            }
        }
        if self.evicted_upto.is_some_and(|t| t < horizon) {
            self.evicted_upto = None;
        }
    }

    /// Records that `id` was finished at `now` (unix ms).
    pub(crate) fn insert(&mut self, id: Arc<str>, now: i64) {
        self.prune(now);
        while self.at.len() >= self.cap {
            let Some((t, old)) = self.order.pop_front() else {
                break;
            };
            if self.at.get(&old) == Some(&t) {
                self.at.remove(&old);
                self.evicted_upto = Some(self.evicted_upto.map_or(t, |e| e.max(t)));
            }
        }
        self.at.insert(Arc::clone(&id), now);
        self.order.push_back((now, id));
    }

    /// Whether `id` was finished within the window at `now`: `Some(true)` yes, `Some(false)`
    /// no, `None` unknown (completions within the window were evicted by the cap).
    pub(crate) fn contains(&mut self, id: &str, now: i64) -> Option<bool> {
        self.prune(now);
        if self.at.contains_key(id) {
            return Some(true);
        }
        match self.evicted_upto {
            Some(_) => None,
            None => Some(false),
        }
    }

    /// How many are kept.
    #[cfg(any(test, feature = "outbox"))]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Completions;

    #[test]
    fn forgets_past_the_window() {
        let mut c = Completions::new(1_000, 100);
        c.insert("a".into(), 10_000);
        c.insert("b".into(), 10_500);
        assert_eq!(c.contains("a", 10_900), Some(true));
        assert_eq!(c.contains("a", 11_001), Some(false));
        assert_eq!(c.contains("b", 11_001), Some(true));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn stays_within_its_cap_and_says_when_it_cannot_know() {
        let mut c = Completions::new(60_000, 3);
        for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            c.insert(id.into(), 1_000 + i as i64);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.order.len(), 3);
        assert_eq!(c.contains("e", 2_000), Some(true));
        assert_eq!(c.contains("c", 2_000), Some(true));
        // "a" and "b" were evicted young: a miss proves nothing until they are past the window.
        assert_eq!(c.contains("a", 2_000), None);
        assert_eq!(c.contains("zz", 2_000), None);
        assert_eq!(c.contains("zz", 1_001 + 60_001), Some(false));
    }

    #[test]
    fn a_second_completion_of_one_id_keeps_the_later_time() {
        let mut c = Completions::new(1_000, 10);
        c.insert("a".into(), 0);
        c.insert("a".into(), 900);
        assert_eq!(c.contains("a", 1_500), Some(true));
        assert_eq!(c.len(), 1);
    }
}
