//! Topic routing: a segment trie of patterns plus a bounded cache of topic → matches.
//!
//! The router never blocks on I/O: lookups take a read lock on the cache (hit) or on the trie
//! (miss); changes take the write locks briefly and bump a generation so stale cache entries
//! are never served.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use smol_str::SmolStr;
use switchyard_core::{Pattern, Topic};

/// Default number of topics kept in the match cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

struct Node<T> {
    children: HashMap<SmolStr, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<(u64, T)>,
    /// Set on a `#` node that has another `#` above it: only such a node can be reached at
    /// the same topic position along two routes, so only its visits are remembered (see
    /// [`Walk::seen`]). Fixed by the node's path, so it never goes stale.
    nested_hash: bool,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: HashMap::default(),
            star: None,
            hash: None,
            values: Vec::new(),
            nested_hash: false,
        }
    }
}

/// One lookup: the topic, the matches found so far, and the visits already made.
struct Walk<'s, 'o, T> {
    segs: &'s [&'s str],
    out: &'o mut Vec<(u64, T)>,
    /// (address of a nested `#` node, topic position) already walked. Without it a
    /// pattern like `#.#.#.z` is walked once per way of splitting the topic among its
    /// `#`s, C(n+k, k) times; with it each pair is walked once, so a lookup takes at most
    /// (topic segments + 1) × (trie nodes) steps. Allocates only for such patterns.
    seen: HashSet<(usize, usize)>,
}

impl<T: Clone> Node<T> {
    fn insert<'a>(
        &mut self,
        mut segs: impl Iterator<Item = &'a str>,
        under_hash: bool,
        id: u64,
        value: T,
    ) {
        match segs.next() {
            None => self.values.push((id, value)),
            Some("*") => self
                .star
                .get_or_insert_with(Default::default)
                .insert(segs, under_hash, id, value),
            Some("#") => self
                .hash
                .get_or_insert_with(|| {
                    Box::new(Node {
                        nested_hash: under_hash,
                        ..Node::default()
                    })
                })
                .insert(segs, true, id, value),
            Some(s) => self
                .children
                .entry(SmolStr::new(s))
                .or_default()
                .insert(segs, under_hash, id, value),
        }
    }

    fn is_leaf(&self) -> bool {
        self.children.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    /// Removes `id` below this node; returns true when the node became empty. `removed` is
    /// set when `id` was found.
    fn remove(&mut self, segs: &[&str], id: u64, removed: &mut bool) -> bool {
        match segs.split_first() {
            None => {
                let before = self.values.len();
                self.values.retain(|(i, _)| *i != id);
                *removed |= self.values.len() < before;
            }
            Some((&"*", rest)) => {
                if self
                    .star
                    .as_mut()
                    .is_some_and(|n| n.remove(rest, id, removed))
                {
                    self.star = None;
                }
            }
            Some((&"#", rest)) => {
                if self
                    .hash
                    .as_mut()
                    .is_some_and(|n| n.remove(rest, id, removed))
                {
                    self.hash = None;
                }
            }
            Some((s, rest)) => {
                if self
                    .children
                    .get_mut(*s)
                    .is_some_and(|n| n.remove(rest, id, removed))
                {
                    self.children.remove(*s);
                }
            }
        }
        self.values.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    /// Adds the values of every pattern below this node that matches the topic from
    /// position `at` on.
    fn collect(&self, at: usize, w: &mut Walk<'_, '_, T>) {
        if let Some(h) = &self.hash {
            h.absorb(at, w);
        }
        match w.segs.get(at) {
            None => w.out.extend(self.values.iter().cloned()),
            Some(s) => {
                if let Some(c) = self.children.get(*s) {
                    c.collect(at + 1, w);
                }
                if let Some(c) = &self.star {
                    c.collect(at + 1, w);
                }
            }
        }
    }

    /// This node is a `#` reached with the topic at `from`: it absorbs zero or more
    /// segments, and the rest of its patterns go on from each position after them.
    fn absorb(&self, from: usize, w: &mut Walk<'_, '_, T>) {
        if self.is_leaf() {
            // The pattern ends with this `#`: it takes whatever is left of the topic.
            w.out.extend(self.values.iter().cloned());
            return;
        }
        for at in from..=w.segs.len() {
            // Seen means an earlier visit walked `at` and every position after it (no
            // visit is in progress: this node cannot be reached from below itself).
            if self.nested_hash && !w.seen.insert((std::ptr::from_ref(self).addr(), at)) {
                break;
            }
            self.collect(at, w);
        }
    }
}

/// Topic → (router generation it was computed at, matches).
type MatchCache<T> = HashMap<SmolStr, (u64, Arc<[T]>)>;

/// Maps topics to the values registered under matching patterns.
pub(crate) struct Router<T> {
    trie: RwLock<Node<T>>,
    generation: AtomicU64,
    cache: RwLock<MatchCache<T>>,
    cache_capacity: usize,
    len: AtomicU64,
}

fn read<X>(l: &RwLock<X>) -> RwLockReadGuard<'_, X> {
    l.read()
}

fn write<X>(l: &RwLock<X>) -> RwLockWriteGuard<'_, X> {
    l.write()
}

impl<T: Clone> Router<T> {
    pub(crate) fn new(cache_capacity: usize) -> Self {
        Self {
            trie: RwLock::new(Node::default()),
            generation: AtomicU64::new(0),
            cache: RwLock::new(HashMap::default()),
            cache_capacity: cache_capacity.max(1),
            len: AtomicU64::new(0),
        }
    }

    pub(crate) fn insert(&self, pattern: &Pattern, id: u64, value: T) {
        let mut trie = write(&self.trie);
        trie.insert(pattern.segments(), false, id, value);
        self.generation.fetch_add(1, Ordering::Release);
        drop(trie);
        self.len.fetch_add(1, Ordering::Relaxed);
        write(&self.cache).clear();
    }

    pub(crate) fn remove(&self, pattern: &Pattern, id: u64) {
        let segs: Vec<&str> = pattern.segments().collect();
        let mut trie = write(&self.trie);
        let mut removed = false;
        trie.remove(&segs, id, &mut removed);
        self.generation.fetch_add(1, Ordering::Release);
        drop(trie);
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        write(&self.cache).clear();
    }

    /// Every value whose pattern matches `topic`, each once, in registration order.
    pub(crate) fn route(&self, topic: &Topic) -> Arc<[T]> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((g, hit)) = read(&self.cache).get(topic.as_str())
            && *g == generation
        {
            return hit.clone();
        }
        let segs: Vec<&str> = topic.segments().collect();
        let mut found = Vec::new();
        read(&self.trie).collect(
            0,
            &mut Walk {
                segs: &segs,
                out: &mut found,
                seen: HashSet::default(),
            },
        );
        found.sort_by_key(|(id, _)| *id);
        found.dedup_by_key(|(id, _)| *id);
        let result: Arc<[T]> = found.into_iter().map(|(_, v)| v).collect();
        let mut cache = write(&self.cache);
        if cache.len() >= self.cache_capacity
            && let Some(victim) = cache.keys().next().cloned()
        {
            cache.remove(&victim);
        }
        cache.insert(SmolStr::new(topic.as_str()), (generation, result.clone()));
        result
    }

    /// Number of registered patterns.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    /// Number of cached topics (for tests of the bound).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        read(&self.cache).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }
    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn cache_is_bounded_and_invalidated() {
        let r = Router::new(8);
        r.insert(&p("a.*"), 1, 1);
        for i in 0..100 {
            assert_eq!(&*r.route(&t(&format!("a.x{i}"))), &[1]);
        }
        assert!(r.cached() <= 8);
        r.insert(&p("a.#"), 2, 2);
        assert_eq!(&*r.route(&t("a.x1")), &[1, 2]);
        r.remove(&p("a.*"), 1);
        assert_eq!(&*r.route(&t("a.x1")), &[2]);
        assert_eq!(r.len(), 1);
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned())
        ]
    }

    fn pattern_segment() -> impl Strategy<Value = String> {
        prop_oneof![3 => segment(), 1 => Just("*".to_owned()), 1 => Just("#".to_owned())]
    }

    /// The plain recursive definition of a match (exponential with many `#`, fine for the
    /// small cases of the property test): what the trie must agree with.
    fn reference(p: &[&str], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((&"#", rest)) => (0..=t.len()).any(|skip| reference(rest, &t[skip..])),
            Some((&seg, rest)) => match t.split_first() {
                Some((&tseg, trest)) => (seg == "*" || seg == tseg) && reference(rest, trest),
                None => false,
            },
        }
    }

    /// Issue 13 item 6: eight `#` in one pattern against the topic with the most segments
    /// (128 one-byte segments make 255 bytes) took C(n+k, k) trie steps, practically
    /// forever, under the trie's read lock.
    #[test]
    fn many_hashes_against_the_longest_topic_finish() {
        let r = Router::new(16);
        r.insert(&p("#.#.#.#.#.#.#.#.z"), 1, 1);
        r.insert(&p("#.a.#.a.#.a.#"), 2, 2);
        r.insert(&p("a.#"), 3, 3);
        r.insert(&p("#"), 4, 4);
        let miss = t(&["a"; 128].join("."));
        let mut segs = vec!["a"; 127];
        segs.push("z");
        let hit = t(&segs.join("."));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((r.route(&miss).to_vec(), r.route(&hit).to_vec()));
        });
        // A guard, not a timing claim: linear routing takes microseconds.
        let (miss, hit) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("routing did not finish within 5 s");
        assert_eq!(miss, [2, 3, 4]);
        assert_eq!(hit, [1, 2, 3, 4]);
    }

    fn long_pattern_segment() -> impl Strategy<Value = String> {
        prop_oneof![2 => segment(), 1 => Just("*".to_owned()), 2 => Just("#".to_owned())]
    }

    proptest! {
        /// Patterns heavy in `#` (several per pattern, adjacent ones too) on longer topics,
        /// against the recursive definition.
        #[test]
        fn trie_agrees_with_the_recursive_definition(
            patterns in prop::collection::vec(prop::collection::vec(long_pattern_segment(), 1..8), 1..12),
            topics in prop::collection::vec(prop::collection::vec(segment(), 1..14), 1..8),
        ) {
            let router = Router::new(4);
            for (i, pat) in patterns.iter().enumerate() {
                router.insert(&p(&pat.join(".")), i as u64, i);
            }
            for segs in &topics {
                let topic = t(&segs.join("."));
                let tsegs: Vec<&str> = segs.iter().map(String::as_str).collect();
                let expected: Vec<usize> = (0..patterns.len())
                    .filter(|&i| {
                        let psegs: Vec<&str> = patterns[i].iter().map(String::as_str).collect();
                        reference(&psegs, &tsegs)
                    })
                    .collect();
                prop_assert_eq!(&*router.route(&topic), &expected[..]);
            }
            // Removing every pattern leaves nothing behind.
            for (i, pat) in patterns.iter().enumerate() {
                router.remove(&p(&pat.join(".")), i as u64);
            }
            prop_assert_eq!(router.len(), 0);
            prop_assert!(router.route(&t("a.b.c")).is_empty());
        }

        #[test]
        fn trie_agrees_with_reference(
            patterns in prop::collection::vec(prop::collection::vec(pattern_segment(), 1..5), 1..12),
            topics in prop::collection::vec(prop::collection::vec(segment(), 1..6), 1..12),
        ) {
            let router = Router::new(4);
            let patterns: Vec<Pattern> = patterns.iter().map(|s| p(&s.join("."))).collect();
            for (i, pat) in patterns.iter().enumerate() {
                router.insert(pat, i as u64, i);
            }
            for topic in topics.iter().map(|s| t(&s.join("."))) {
                let expected: Vec<usize> =
                    (0..patterns.len()).filter(|&i| patterns[i].matches(&topic)).collect();
                // twice: once filling the cache, once reading it
                prop_assert_eq!(&*router.route(&topic), &expected[..]);
                prop_assert_eq!(&*router.route(&topic), &expected[..]);
            }
        }
    }
}
