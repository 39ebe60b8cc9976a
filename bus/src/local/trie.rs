//! The subscription trie (after nats-server's sublist): one level per subject token, each with a
//! map of literal children, one `*` child and one `>` child, so matching a subject costs a few
//! map lookups per token however many subscriptions are installed.
//!
//! The subscriptions of one node (one pattern) are a [`Members`] list: removing one costs O(1)
//! however many share the pattern (an id index is kept once a list is long enough to need it).

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

/// What the trie stores for one subscription; `S` is the broker's subscription record.
pub(crate) trait Entry {
    /// Unique id, used to remove it.
    fn id(&self) -> u64;
}

/// The subscriptions matching one subject: plain ones (each gets the message) and queue groups
/// (one member of each gets it).
#[derive(Debug)]
pub(crate) struct MatchResult<S> {
    pub(crate) plain: Vec<Arc<S>>,
    pub(crate) groups: Vec<QueueGroup<S>>,
}

/// The members of one queue group that match a subject, possibly from several patterns.
#[derive(Debug)]
pub(crate) struct QueueGroup<S> {
    pub(crate) name: Arc<str>,
    pub(crate) members: Vec<Arc<S>>,
}

impl<S> MatchResult<S> {
    fn new() -> Self {
        MatchResult {
            plain: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Whether nothing matched.
    pub(crate) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    fn add(&mut self, node: &Node<S>) {
        self.plain.extend(node.plain.list.iter().cloned());
        for (name, members) in &node.queues {
            // A group is one group across patterns (NATS keys queue groups by name), so members
            // reached through `a.*` and `a.b` share the message.
            match self.groups.iter_mut().find(|g| g.name == *name) {
                Some(g) => g.members.extend(members.list.iter().cloned()),
                None => self.groups.push(QueueGroup {
                    name: name.clone(),
                    members: members.list.clone(),
                }),
            }
        }
    }
}

/// A list of subscriptions at which a member is found by id in O(1): a plain `Vec` (what
/// matching reads) and, once the list is longer than [`Members::INDEX_FROM`], a map from id to
/// position, kept right by `swap_remove`. Short lists (almost all of them) scan instead: no map
/// to allocate for the common one-subscription pattern.
#[derive(Debug)]
struct Members<S> {
    list: Vec<Arc<S>>,
    // Boxed: 8 bytes in every node instead of a 40-byte map that almost no node ever uses.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<u64, usize, FxBuildHasher>>>,
}

impl<S> Default for Members<S> {
    fn default() -> Self {
        Members {
            list: Vec::new(),
            index: None,
        }
    }
}

impl<S> Members<S> {
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl<S: Entry> Members<S> {
    /// Lists up to this long are scanned; longer ones keep the index.
    const INDEX_FROM: usize = 32;

    fn push(&mut self, entry: Arc<S>) {
        let at = self.list.len();
        match &mut self.index {
            Some(index) => {
                index.insert(entry.id(), at);
            }
            None if at >= Self::INDEX_FROM => {
                let mut index: HashMap<u64, usize, FxBuildHasher> = HashMap::default();
                index.reserve(at + 1);
                index.extend(self.list.iter().enumerate().map(|(i, e)| (e.id(), i)));
                index.insert(entry.id(), at);
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        self.list.push(entry);
    }

    /// Removes the member with `id`; the last member takes its place. Returns whether it was
    /// there.
    fn remove(&mut self, id: u64) -> bool {
        let at = match &mut self.index {
            Some(index) => index.remove(&id),
            None => self.list.iter().position(|e| e.id() == id),
        };
        let Some(at) = at else { return false };
        self.list.swap_remove(at);
        if let (Some(index), Some(moved)) = (&mut self.index, self.list.get(at)) {
            index.insert(moved.id(), at);
        }
        let len = self.list.len();
        if len < Self::INDEX_FROM / 2 {
            // Shrunk back to a short list: scanning is cheaper than the map's memory.
            self.index = None;
        } else if let Some(index) = &mut self.index {
            if index.capacity() > 4 * len {
                index.shrink_to(2 * len);
            }
        }
        // Many subscriptions gone from one pattern give their memory back (halving at most
        // once per doubling, so the amortised cost stays O(1)).
        if self.list.capacity() > 4 * len.max(4) {
            self.list.shrink_to(2 * len);
        }
        true
    }
}

#[derive(Debug)]
struct Level<S> {
    literals: HashMap<Box<str>, Node<S>, FxBuildHasher>,
    star: Option<Box<Node<S>>>,
    full: Option<Box<Node<S>>>,
}

impl<S> Default for Level<S> {
    fn default() -> Self {
        Level {
            literals: HashMap::default(),
            star: None,
            full: None,
        }
    }
}

impl<S> Level<S> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.star.is_none() && self.full.is_none()
    }
}

#[derive(Debug)]
struct Node<S> {
    next: Option<Box<Level<S>>>,
    plain: Members<S>,
    queues: Vec<(Arc<str>, Members<S>)>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            next: None,
            plain: Members::default(),
            queues: Vec::new(),
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.next.is_none() && self.plain.is_empty() && self.queues.is_empty()
    }
}

/// A subscription trie. The caller validates patterns and subjects first.
#[derive(Debug)]
pub(crate) struct Trie<S> {
    root: Level<S>,
    count: usize,
}

impl<S> Default for Trie<S> {
    fn default() -> Self {
        Trie {
            root: Level::default(),
            count: 0,
        }
    }
}

impl<S: Entry> Trie<S> {
    /// Number of subscriptions installed.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Installs `entry` under `pattern` (a valid pattern), in queue group `queue` if given.
    pub(crate) fn insert(&mut self, pattern: &str, queue: Option<&str>, entry: Arc<S>) {
        let mut level = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        let node = loop {
            let token = tokens.next().expect("split yields at least one token");
            let node: &mut Node<S> = match token {
                "*" => level.star.get_or_insert_with(Default::default),
                ">" => level.full.get_or_insert_with(Default::default),
                lit => level.literals.entry(lit.into()).or_default(),
            };
            if tokens.peek().is_none() {
                break node;
            }
            level = node.next.get_or_insert_with(Default::default);
        };
        match queue {
            None => node.plain.push(entry),
            Some(q) => match node.queues.iter_mut().find(|(name, _)| &**name == q) {
                Some((_, members)) => members.push(entry),
                None => {
                    let mut members = Members::default();
                    members.push(entry);
                    node.queues.push((q.into(), members));
                }
            },
        }
        self.count += 1;
    }

    /// Removes the entry with `id` installed under `pattern`; prunes nodes left empty.
    /// Returns whether it was found.
    pub(crate) fn remove(&mut self, pattern: &str, queue: Option<&str>, id: u64) -> bool {
        let removed = remove_in(&mut self.root, pattern, queue, id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Every subscription whose pattern matches `subject` (a valid concrete subject).
    pub(crate) fn matches(&self, subject: &str) -> MatchResult<S> {
        let mut out = MatchResult::new();
        collect(&self.root, subject, &mut out);
        out
    }
}

#[inline]
fn split_first(s: &str) -> (&str, Option<&str>) {
    // A byte scan: `str::split_once(char)` goes through the generic char searcher, measurably
    // slower on short tokens. `.` is ASCII, so the split is on a char boundary.
    match s.bytes().position(|b| b == b'.') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

// Walks the subject without tokenizing it into a collection: no allocation on the match path
// besides the result itself.
fn collect<S>(level: &Level<S>, subject: &str, out: &mut MatchResult<S>) {
    let (token, rest) = split_first(subject);
    if let Some(full) = &level.full {
        // A `>` here matches this token and everything after it (one or more tokens).
        out.add(full);
    }
    if let Some(star) = &level.star {
        descend(star, rest, out);
    }
    if let Some(node) = level.literals.get(token) {
        descend(node, rest, out);
    }
}

fn descend<S>(node: &Node<S>, rest: Option<&str>, out: &mut MatchResult<S>) {
    match rest {
        None => out.add(node),
        Some(rest) => {
            if let Some(next) = &node.next {
                collect(next, rest, out);
            }
        }
    }
}

fn remove_in<S: Entry>(level: &mut Level<S>, pattern: &str, queue: Option<&str>, id: u64) -> bool {
    let (token, rest) = split_first(pattern);
    let (removed, now_empty) = {
        let node = match token {
            "*" => level.star.as_deref_mut(),
            ">" => level.full.as_deref_mut(),
            lit => level.literals.get_mut(lit),
        };
        let Some(node) = node else {
            return false;
        };
        let removed = match rest {
            None => remove_here(node, queue, id),
            Some(rest) => match node.next.as_deref_mut() {
                Some(next) => {
                    let removed = remove_in(next, rest, queue, id);
                    if next.is_empty() {
                        node.next = None;
                    }
                    removed
                }
                None => false,
            },
        };
        (removed, node.is_empty())
    };
    if now_empty {
        match token {
            "*" => level.star = None,
            ">" => level.full = None,
            lit => {
                level.literals.remove(lit);
            }
        }
    }
    removed
}

fn remove_here<S: Entry>(node: &mut Node<S>, queue: Option<&str>, id: u64) -> bool {
    match queue {
        None => node.plain.remove(id),
        Some(q) => {
            let Some(g) = node.queues.iter().position(|(name, _)| &**name == q) else {
                return false;
            };
            // Member order may change (the last member takes the removed one's place): the
            // round robin position is a shared counter, so every member still gets its share.
            let members = &mut node.queues[g].1;
            if !members.remove(id) {
                return false;
            }
            if members.is_empty() {
                node.queues.swap_remove(g);
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(u64);
    impl Entry for E {
        fn id(&self) -> u64 {
            self.0
        }
    }

    fn ids(r: &MatchResult<E>) -> Vec<u64> {
        let mut v: Vec<u64> = r.plain.iter().map(|e| e.0).collect();
        for g in &r.groups {
            v.extend(g.members.iter().map(|e| e.0));
        }
        v.sort_unstable();
        v
    }

    #[test]
    fn wildcards() {
        let mut t = Trie::default();
        let pats = ["a", "a.*", "a.>", ">", "*.*", "a.b", "*", "a.*.c"];
        for (i, p) in pats.iter().enumerate() {
            t.insert(p, None, Arc::new(E(i as u64)));
        }
        for subject in ["a", "a.b", "a.b.c", "b", "x.y", "a.x.c", "a-b_c.d"] {
            let want: Vec<u64> = pats
                .iter()
                .enumerate()
                .filter(|(_, p)| bus_subject::matches(p, subject))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(ids(&t.matches(subject)), want, "subject {subject}");
        }
    }

    #[test]
    fn remove_prunes() {
        let mut t = Trie::default();
        t.insert("a.b.c", None, Arc::new(E(1)));
        t.insert("a.*.>", Some("q"), Arc::new(E(2)));
        t.insert("a.*.>", Some("q"), Arc::new(E(3)));
        assert_eq!(t.len(), 3);
        assert!(!t.remove("a.b.c", None, 9));
        assert!(!t.remove("a.b.c", Some("q"), 1));
        assert!(t.remove("a.b.c", None, 1));
        assert_eq!(ids(&t.matches("a.b.c")), [2, 3]);
        assert_eq!(t.matches("a.b.c").groups.len(), 1);
        assert!(t.remove("a.*.>", Some("q"), 2));
        assert!(t.remove("a.*.>", Some("q"), 3));
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty(), "{:?}", t.root);
    }

    /// Many subscriptions on one pattern, removed in a scrambled order with inserts in between:
    /// every match sees exactly the live ones, through the id index and back to a short list.
    #[test]
    fn many_on_one_pattern_remove_in_any_order() {
        for queue in [None, Some("q")] {
            let mut t = Trie::default();
            let n = 1000u64;
            for i in 0..n {
                t.insert("a.*", queue, Arc::new(E(i)));
            }
            let mut live: Vec<u64> = (0..n).collect();
            // A fixed scramble (multiplication by a unit mod n), so the order is not the
            // insertion order nor its reverse.
            let order: Vec<u64> = (0..n).map(|i| (i * 617) % n).collect();
            for (k, id) in order.iter().enumerate() {
                assert!(t.remove("a.*", queue, *id), "remove {id}");
                assert!(!t.remove("a.*", queue, *id), "removed {id} twice");
                live.retain(|x| x != id);
                if k.is_multiple_of(97) {
                    let fresh = n + k as u64;
                    t.insert("a.*", queue, Arc::new(E(fresh)));
                    live.push(fresh);
                    live.sort_unstable();
                }
                if k.is_multiple_of(50) || live.len() < 40 {
                    assert_eq!(ids(&t.matches("a.b")), live, "after removing {k}");
                }
            }
            for id in live.clone() {
                assert!(t.remove("a.*", queue, id));
            }
            assert_eq!(t.len(), 0);
            assert!(t.root.is_empty(), "{:?}", t.root);
        }
    }

    /// A member that is not there is not found, in a short list and in an indexed one.
    #[test]
    fn remove_of_an_unknown_id_changes_nothing() {
        let mut t = Trie::default();
        for i in 0..100 {
            t.insert("a", None, Arc::new(E(i)));
        }
        assert!(!t.remove("a", None, 1000));
        assert!(!t.remove("a", Some("q"), 1));
        assert_eq!(t.len(), 100);
        assert_eq!(ids(&t.matches("a")), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn queue_groups_merge_by_name_across_patterns() {
        let mut t = Trie::default();
        t.insert("a.b", Some("q"), Arc::new(E(1)));
        t.insert("a.*", Some("q"), Arc::new(E(2)));
        t.insert("a.*", Some("r"), Arc::new(E(3)));
        let r = t.matches("a.b");
        assert_eq!(r.groups.len(), 2);
        let q = r.groups.iter().find(|g| &*g.name == "q").unwrap();
        assert_eq!(q.members.len(), 2);
    }
}
