//! Topic routing: a segment trie of patterns plus a bounded cache of topic → matches.
//!
//! The router never blocks on I/O: lookups take a read lock on the cache (hit) or on the trie
//! (miss); changes take the write locks briefly and bump a generation so stale cache entries
//! are never served. In front of the shared cache, each thread remembers its last lookup
//! ([`LAST_ROUTE`]): a publisher that keeps publishing on one topic finds its matches there
//! without the lock or the hash.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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
    /// This router among all routers of the process, for [`LAST_ROUTE`] (an address could
    /// be reused by a later router).
    uid: u64,
}

/// Source of [`Router::uid`].
static NEXT_ROUTER: AtomicU64 = AtomicU64::new(1);

/// A thread's last lookup, of whichever router: a hit when the same router, at the same
/// generation, is asked about the same topic, and the matches are still alive.
struct LastRoute {
    router: u64,
    generation: u64,
    topic: Topic,
    /// A `Weak<[T]>` of that router's `T`, pointing at the matches the shared cache holds.
    /// Weak, so that a thread that stops publishing keeps no subscription alive: once the
    /// cache lets go of them (a subscription came or went, or the entry was evicted), the
    /// entry is dead and the next lookup goes to the cache.
    matches: Box<dyn Any>,
}

thread_local! {
    /// One entry per thread: the cost of a cache hit (the read lock, hashing the topic, the
    /// probe and the string comparison, ~130 instructions) dropped to a few comparisons and
    /// a reference count increment (issue 18).
    static LAST_ROUTE: RefCell<Option<LastRoute>> = const { RefCell::new(None) };
}

fn read<X>(l: &RwLock<X>) -> RwLockReadGuard<'_, X> {
    l.read()
}

fn write<X>(l: &RwLock<X>) -> RwLockWriteGuard<'_, X> {
    l.write()
}

impl<T: Clone + 'static> Router<T> {
    pub(crate) fn new(cache_capacity: usize) -> Self {
        Self {
            trie: RwLock::new(Node::default()),
            generation: AtomicU64::new(0),
            cache: RwLock::new(HashMap::default()),
            cache_capacity: cache_capacity.max(1),
            len: AtomicU64::new(0),
            uid: NEXT_ROUTER.fetch_add(1, Ordering::Relaxed),
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
    #[inline]
    pub(crate) fn route(&self, topic: &Topic) -> Arc<[T]> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(hit) = self.last_route(generation, topic) {
            return hit;
        }
        let found = self.route_shared(generation, topic);
        self.remember(generation, topic, &found);
        found
    }

    /// This thread's last lookup, if it was this one (same router, generation and topic)
    /// and its matches are still alive. At generation `generation` the matches of a topic
    /// are what the shared cache holds for it, so the answer is the cache's.
    #[inline]
    fn last_route(&self, generation: u64, topic: &Topic) -> Option<Arc<[T]>> {
        LAST_ROUTE
            .try_with(|last| {
                let last = last.try_borrow().ok()?;
                let last = last.as_ref()?;
                if last.router != self.uid
                    || last.generation != generation
                    || last.topic.as_str() != topic.as_str()
                {
                    return None;
                }
                last.matches.downcast_ref::<Weak<[T]>>()?.upgrade()
            })
            .ok()
            .flatten()
    }

    /// Makes `matches` this thread's last lookup (in place when the entry already holds
    /// this router's type: no allocation).
    #[inline(never)]
    fn remember(&self, generation: u64, topic: &Topic, matches: &Arc<[T]>) {
        let _ = LAST_ROUTE.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return;
            };
            let weak = Arc::downgrade(matches);
            if let Some(entry) = last.as_mut()
                && let Some(slot) = entry.matches.downcast_mut::<Weak<[T]>>()
            {
                *slot = weak;
                entry.router = self.uid;
                entry.generation = generation;
                if entry.topic.as_str() != topic.as_str() {
                    entry.topic = topic.clone();
                }
                return;
            }
            *last = Some(LastRoute {
                router: self.uid,
                generation,
                topic: topic.clone(),
                matches: Box::new(weak),
            });
        });
    }

    /// [`route`](Self::route) through the shared cache (and on a miss, the trie).
    #[inline(never)]
    fn route_shared(&self, generation: u64, topic: &Topic) -> Arc<[T]> {
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

    /// The thread's last lookup is one router's: another router asked about the same topic
    /// on the same thread gets its own matches, and a change of either is seen at once.
    #[test]
    fn routers_on_one_thread_keep_their_own_matches() {
        let a = Router::new(8);
        let b = Router::new(8);
        a.insert(&p("x.y"), 1, 10);
        b.insert(&p("x.y"), 1, 20);
        for _ in 0..3 {
            assert_eq!(&*a.route(&t("x.y")), &[10]);
            assert_eq!(&*a.route(&t("x.y")), &[10]);
            assert_eq!(&*b.route(&t("x.y")), &[20]);
        }
        b.insert(&p("x.*"), 2, 21);
        assert_eq!(&*b.route(&t("x.y")), &[20, 21]);
        assert_eq!(&*a.route(&t("x.y")), &[10]);
        a.remove(&p("x.y"), 1);
        assert!(a.route(&t("x.y")).is_empty());
        assert_eq!(&*b.route(&t("x.y")), &[20, 21]);
        // A router dropped and another made (its address may be the same) starts afresh.
        drop(a);
        let c: Router<i32> = Router::new(8);
        assert!(c.route(&t("x.y")).is_empty());
    }

    /// The thread's last lookup holds no value alive once the router let go of it.
    #[test]
    fn the_last_lookup_keeps_no_value_alive() {
        let value = Arc::new(7);
        let r = Router::new(8);
        r.insert(&p("x.y"), 1, value.clone());
        assert_eq!(r.route(&t("x.y")).len(), 1);
        assert_eq!(r.route(&t("x.y")).len(), 1);
        r.remove(&p("x.y"), 1);
        assert_eq!(Arc::strong_count(&value), 1);
        r.insert(&p("x.y"), 2, value.clone());
        assert_eq!(r.route(&t("x.y")).len(), 1);
        drop(r);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    /// Every subscribe and unsubscribe bumps the generation, so the thread's last lookup of a
    /// topic published again and again is not served past it, even while the old matches
    /// are still alive (held by a publish under way, as `held` here): a pattern added or
    /// removed shows on the very next lookup, with nothing else asked in between.
    #[test]
    fn subscribe_and_unsubscribe_move_the_last_lookup_on() {
        let r = Router::new(8);
        r.insert(&p("o.placed"), 1, 1);
        let mut generation = r.generation.load(Ordering::Acquire);
        for _ in 0..3 {
            assert_eq!(&*r.route(&t("o.placed")), &[1]);
        }
        let held = r.route(&t("o.placed"));
        r.insert(&p("o.*"), 2, 2);
        assert!(r.generation.load(Ordering::Acquire) > generation);
        generation = r.generation.load(Ordering::Acquire);
        assert_eq!(&*r.route(&t("o.placed")), &[1, 2]);
        let held_too = r.route(&t("o.placed"));
        assert_eq!(&*held_too, &[1, 2]);
        r.remove(&p("o.placed"), 1);
        assert!(r.generation.load(Ordering::Acquire) > generation);
        assert_eq!(&*r.route(&t("o.placed")), &[2]);
        r.remove(&p("o.*"), 2);
        assert!(r.route(&t("o.placed")).is_empty());
        r.insert(&p("o.placed"), 3, 3);
        assert_eq!(&*r.route(&t("o.placed")), &[3]);
        assert_eq!((&*held, &*held_too), (&[1][..], &[1, 2][..]));
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
