//! What waits in a queue: the compact slot of one message, the priority levels of unkeyed
//! messages and the lanes of keyed ones.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::VecDeque;
use std::sync::Arc;

use smol_str::SmolStr;
use switchyard_core::{Delivery, Envelope, Priority};

use super::Entry;
use crate::pending::Accepted;
use crate::reply::CommandReply;

/// Where a waiting message stands: priority first (highest first), then arrival.
pub(super) type Key = (Reverse<Priority>, u64);

/// An [`Entry`] as it waits in the queue, in 32 bytes (an `Entry` takes 72): the fields
/// every message has, and one box for those only a command or a transport delivery has.
/// Its lane is not kept: a keyed message waits in its lane's deque, under the lane's name,
/// and gets the name back when it leaves. A million queued messages hold a million of
/// these (ARCHITECTURE.md, "Memory per queued message").
pub(super) struct Slot {
    pub(super) env: Arc<Envelope>,
    pub(super) accepted: Accepted,
    pub(super) seq: u64,
    pub(super) rare: Option<Box<SlotRare>>,
}

/// The parts of an [`Entry`] few messages have.
pub(super) struct SlotRare {
    reply: Option<CommandReply>,
    delivery: Option<Box<Delivery>>,
}

// Every queued message pays for a slot: fail the build rather than grow it unnoticed.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    /// The slot of `entry`, numbered `seq`, and the entry's lane.
    #[inline]
    pub(super) fn new(entry: Entry, seq: u64) -> (Self, Option<SmolStr>) {
        let Entry {
            env,
            reply,
            lane,
            delivery,
            accepted,
            ..
        } = entry;
        let rare = if reply.is_none() && delivery.is_none() {
            // Both `None`: nothing to drop. Forgotten, not dropped: dropping them called the
            // drop glue of both types out of line on every push of an event.
            std::mem::forget(reply);
            std::mem::forget(delivery);
            None
        } else {
            Some(Box::new(SlotRare { reply, delivery }))
        };
        let slot = Self {
            env,
            accepted,
            seq,
            rare,
        };
        (slot, lane)
    }

    /// Whether it is a transport's delivery (settled with the transport once handled).
    #[inline]
    pub(super) fn delivered(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.delivery.is_some())
    }

    /// The entry again, with its lane.
    #[inline]
    pub(super) fn into_entry(self, lane: Option<SmolStr>) -> Entry {
        let (reply, delivery) = match self.rare {
            None => (None, None),
            Some(rare) => (rare.reply, rare.delivery),
        };
        Entry {
            env: self.env,
            reply,
            lane,
            delivery,
            accepted: self.accepted,
            seq: self.seq,
        }
    }
}

/// Waiting messages in priority order, FIFO within one priority. Only a few priority levels
/// are in use at once, so a short sorted vector of deques beats an ordered map: entries are
/// never shifted in memory, push and pop are O(1) within a level. Emptied levels are kept, so
/// a queue that keeps draining does not reallocate its deque on every message.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) levels: Vec<(Reverse<Priority>, VecDeque<Slot>)>,
}

impl Waiting {
    #[inline]
    pub(super) fn push(&mut self, entry: Slot) {
        let p = Reverse(entry.env.priority);
        match self.levels.binary_search_by_key(&p, |(k, _)| *k) {
            Ok(i) => self.levels[i].1.push_back(entry),
            Err(i) => self.levels.insert(i, (p, VecDeque::from([entry]))),
        }
    }

    #[inline]
    pub(super) fn first_level(&self) -> Option<usize> {
        self.levels.iter().position(|(_, q)| !q.is_empty())
    }

    /// Key of the message that would come out next.
    #[inline]
    pub(super) fn first_key(&self) -> Option<Key> {
        let (p, q) = &self.levels[self.first_level()?];
        q.front().map(|e| (*p, e.seq))
    }

    #[inline]
    pub(super) fn pop_first(&mut self) -> Option<Slot> {
        let i = self.first_level()?;
        self.levels[i].1.pop_front()
    }

    /// Removes the oldest message of one priority level (drop-oldest).
    #[inline]
    pub(super) fn pop_front_of(&mut self, p: Reverse<Priority>) -> Option<Slot> {
        let i = self.levels.binary_search_by_key(&p, |(k, _)| *k).ok()?;
        self.levels[i].1.pop_front()
    }

    #[inline]
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Slot> + use<> {
        std::mem::take(&mut self.levels)
            .into_iter()
            .flat_map(|(_, q)| q)
    }
}

#[derive(Default)]
pub(super) struct Lane {
    /// Strictly FIFO: within one key, publish order wins over priority. The head's priority
    /// only decides which lane goes first.
    pub(super) items: LaneItems,
    pub(super) busy: bool,
}

#[derive(Default)]
pub(super) struct LaneItems(VecDeque<Slot>);

impl LaneItems {
    #[inline]
    pub(super) fn push(&mut self, entry: Slot) {
        self.0.push_back(entry);
    }

    #[inline]
    pub(super) fn first_key(&self) -> Option<Key> {
        self.0.front().map(|e| (Reverse(e.env.priority), e.seq))
    }

    #[inline]
    pub(super) fn pop_first(&mut self) -> Option<Slot> {
        self.0.pop_front()
    }

    #[inline]
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Slot> + use<> {
        std::mem::take(&mut self.0).into_iter()
    }

    /// Takes out the messages `gone` picks, keeping the order of the rest.
    pub(super) fn take_where(&mut self, gone: impl Fn(&Slot) -> bool) -> Vec<Slot> {
        if !self.0.iter().any(&gone) {
            return Vec::new();
        }
        take_where(&mut self.0, gone)
    }

    /// Each waiting message, in order.
    pub(super) fn for_each(&self, f: impl FnMut(&Slot)) {
        self.0.iter().for_each(f);
    }
}

#[derive(PartialEq, Eq)]
pub(super) struct ReadyLane {
    pub(super) key: Key,
    pub(super) lane: SmolStr,
}

impl Ord for ReadyLane {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // BinaryHeap is a max-heap; the smallest key (highest priority, oldest) must come out first.
        other.key.cmp(&self.key)
    }
}

impl PartialOrd for ReadyLane {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// Takes out of `items` the messages `gone` picks, keeping the order of the rest.
pub(super) fn take_where(items: &mut VecDeque<Slot>, gone: impl Fn(&Slot) -> bool) -> Vec<Slot> {
    let mut out = Vec::new();
    let mut kept = VecDeque::with_capacity(items.len());
    for slot in std::mem::take(items) {
        if gone(&slot) {
            out.push(slot);
        } else {
            kept.push_back(slot);
        }
    }
    *items = kept;
    out
}
