//! The bounded queue in front of each subscription: lanes for per-key order, priorities for
//! waiting messages, and the overflow policy that tells publishers when it is full.
//!
//! Owned by one subscription; its workers `pop`, handle, then `complete`. A lane (one ordering
//! key) is handed to at most one worker at a time, so messages of one key are handled in order
//! while different keys run in parallel. Unkeyed messages go to any free worker.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use smol_str::SmolStr;
use switchyard_core::{Delivery, Envelope};
use tokio::sync::Notify;

use crate::pending::Accepted;
use crate::reply::CommandReply;
pub use overflow::Overflow;
use waiting::{Key, Lane, ReadyLane, Slot, Waiting};

/// A message waiting in (or taken from) a queue.
pub(crate) struct Entry {
    /// Shared, so fan-out, in-flight tracking and moves through the queue copy a pointer,
    /// not the whole envelope.
    pub(crate) env: Arc<Envelope>,
    pub(crate) reply: Option<CommandReply>,
    pub(crate) lane: Option<SmolStr>,
    /// The transport's handle, when the message came from a transport: settled (ack/term)
    /// after handling, or dropped unsettled (so redelivered) when it is not handled.
    /// Boxed: a delivery holds a whole envelope, and entries move through the queue.
    pub(crate) delivery: Option<Box<Delivery>>,
    /// The message's place in the bus's pending count, from acceptance until it is settled
    /// (or, never accepted, dropped with the entry).
    pub(crate) accepted: Accepted,
    seq: u64,
}

impl Entry {
    pub(crate) fn new(
        env: Arc<Envelope>,
        reply: Option<CommandReply>,
        lane: Option<SmolStr>,
        accepted: Accepted,
    ) -> Self {
        Self {
            env,
            reply,
            lane,
            delivery: None,
            accepted,
            seq: 0,
        }
    }
}

/// Why a push did not enqueue; the entry is handed back (moved, not boxed: a blocked
/// publisher retries with it, and boxing would allocate on that path).
#[allow(clippy::large_enum_variant)]
pub(crate) enum PushError {
    Full(Entry),
    Closed(Entry),
}

/// Most settled envelopes a queue keeps for its next pushes to drop (see `State::spent`).
const SPENT_MAX: usize = 256;
/// What `spent` is trimmed to when a worker finds nothing to do, so an idle queue keeps
/// little: bursts need the room, a queue with no traffic does not.
const SPENT_IDLE: usize = 16;
/// Larger payloads are freed by the worker at once, so little memory waits in `spent`.
const SPENT_MAX_PAYLOAD: usize = 512;

#[derive(Default)]
struct State {
    free: Waiting,
    lanes: HashMap<SmolStr, Lane>,
    ready: BinaryHeap<ReadyLane>,
    /// seq → (key, lane) of every waiting message; kept only for `DropOldest`.
    order: Option<BTreeMap<u64, (Key, Option<SmolStr>)>>,
    /// What each worker holds right now (seq, envelope), one slot list per worker, so
    /// shutdown can report in-flight messages. A single-message worker holds at most one,
    /// a batch worker up to its batch size; a slot list never shrinks its allocation. The
    /// envelope is `None` while it is lent to the worker ([`Lending`](lending::Lending): the queue keeps no copy
    /// of its own), and comes back if the worker drops it unfinished.
    in_flight: Vec<Vec<(u64, Option<Arc<Envelope>>)>>,
    /// Envelopes of settled messages, left for the next push to drop. A publisher allocates
    /// each envelope and, without this, a worker on another thread frees it: with the system
    /// allocator that free takes the slow path (the freeing thread's cache for that size is
    /// full, the allocating thread's is empty), several hundred instructions per message.
    /// Dropped by the pusher, the memory goes back to the thread that allocates the next
    /// one. Only small envelopes wait here, at most [`SPENT_MAX`] of them, and at most
    /// [`SPENT_IDLE`] once a worker finds the queue empty.
    spent: Vec<Arc<Envelope>>,
    len: usize,
    next_seq: u64,
    closed: bool,
    /// The worker limit: at most this many messages of this subscription are handled at
    /// once, by workers or by senders running a command inline (`queue/inline.rs`).
    limit: usize,
    /// Slots in use: workers holding at least one taken message, plus inline runs.
    busy: usize,
    /// Commands run on their sender's task (seq, envelope): in flight like a worker's.
    inline: Vec<(u64, Arc<Envelope>)>,
    /// Inline runs not finished yet (an aborted one stays in `inline` for the report).
    inline_runs: usize,
    /// Set at the shutdown deadline: inline runs stop, as aborted workers do.
    abort_inline: bool,
    /// The earliest sender's deadline of a waiting message, or earlier (`queue/expiry.rs`):
    /// a full queue looks for expired messages to evict only once it has passed.
    earliest: Option<std::time::Instant>,
    /// `not_full.notify_one` calls a blocked pusher has not answered yet (by trying again,
    /// see [`Queue::wait_for_room`]). A worker taking messages wakes a pusher only while
    /// more are blocked than this: while the woken one has not run (its thread busy, often
    /// with the very worker that woke it), every further take used to notify again and
    /// store a permit nobody needed. Every try of a blocked pusher lowers it (by one, to
    /// zero at least), also one no notification was meant for: it may come out low (an
    /// extra wake-up, harmless), never high, since every notification ends in a try (the
    /// woken pusher's; one dropped unanswered is handed on by tokio to the next waiter, or
    /// kept as a permit the next waiter takes before its first try).
    pushers_woken: usize,
    /// The handler clones inline runs take and give back (`queue/inline.rs`; their run boxes
    /// are kept per thread, in `crate::inline`).
    runs: inline::Spare,
}

/// What completing a message leaves to drop outside the queue's lock.
#[derive(Default)]
struct Done {
    /// The envelope, when it is not left for the next push.
    env: Option<Arc<Envelope>>,
    /// The value of a message carried unencoded, taken out of an envelope left for reuse.
    value: switchyard_core::Local,
}

impl State {
    fn insert(&mut self, entry: Entry) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let key = (Reverse(entry.env.priority), seq);
        if let Some(deadline) = entry.env.delivery.deadline {
            self.note_deadline(deadline);
        }
        let (slot, lane) = Slot::new(entry, seq);
        if let Some(order) = &mut self.order {
            order.insert(seq, (key, lane.clone()));
        }
        self.len += 1;
        match lane {
            None => self.free.push(slot),
            Some(name) => {
                let lane = match self.lanes.get_mut(&name) {
                    Some(lane) => lane,
                    None => self.lanes.entry(name.clone()).or_default(),
                };
                let is_new_head = lane.items.first_key().is_none();
                lane.items.push(slot);
                if !lane.busy && is_new_head {
                    self.ready.push(ReadyLane { key, lane: name });
                }
            }
        }
    }

    /// Removes the oldest waiting message. It is the front of its (lane, priority) deque,
    /// since each deque is FIFO.
    fn remove_oldest(&mut self) -> Option<Entry> {
        let (_, (key, lane)) = self.order.as_mut()?.pop_first()?;
        self.len -= 1;
        match lane {
            None => self.free.pop_front_of(key.0).map(|s| s.into_entry(None)),
            Some(name) => {
                let lane = self.lanes.get_mut(&name)?;
                // A lane is FIFO, so its oldest message is its head.
                let slot = lane.items.pop_first();
                if !lane.busy {
                    match lane.items.first_key() {
                        None => {
                            self.lanes.remove(&name);
                        }
                        Some(key) => {
                            let ready = ReadyLane {
                                key,
                                lane: name.clone(),
                            };
                            self.ready.push(ready);
                        }
                    }
                }
                slot.map(|s| s.into_entry(Some(name)))
            }
        }
    }

    /// Drops ready entries that no longer describe a free lane's head.
    fn best_ready(&mut self) -> Option<Key> {
        while let Some(top) = self.ready.peek() {
            let valid = self
                .lanes
                .get(&top.lane)
                .is_some_and(|l| !l.busy && l.items.first_key() == Some(top.key));
            if valid {
                return Some(top.key);
            }
            self.ready.pop();
        }
        None
    }

    /// True when some worker could take a message now (an unkeyed one, or the head of a
    /// lane no worker holds).
    fn has_takeable(&mut self) -> bool {
        self.busy < self.limit && (self.free.first_key().is_some() || self.best_ready().is_some())
    }

    /// Takes the best message `worker` may take. `lend`: the worker gets the queue's own
    /// reference to the envelope and wraps it in a [`Lending`](lending::Lending) (no copy kept in the slot).
    #[inline(always)]
    fn take(&mut self, worker: usize, lend: bool) -> Option<Entry> {
        // A worker that holds nothing takes a slot: none is free while inline runs hold
        // them all. (Without inline runs a worker with nothing in hand always finds one.)
        let holds = self.in_flight.get(worker).is_some_and(|s| !s.is_empty());
        if !holds && self.busy >= self.limit {
            return None;
        }
        let (slot, lane) = if self.ready.is_empty() {
            // No lane waits for a worker: the best unkeyed message, without comparing keys.
            (self.free.pop_first()?, None)
        } else {
            let free = self.free.first_key();
            let laned = self.best_ready();
            match (free, laned) {
                (Some(f), Some(l)) if l < f => self.take_lane()?,
                (Some(_), _) => (self.free.pop_first()?, None),
                (None, Some(_)) => self.take_lane()?,
                (None, None) => return None,
            }
        };
        self.len -= 1;
        if let Some(order) = &mut self.order {
            order.remove(&slot.seq);
        }
        if self.in_flight.len() <= worker {
            self.in_flight.resize_with(worker + 1, Vec::new);
        }
        let kept = (!lend).then(|| slot.env.clone());
        self.in_flight[worker].push((slot.seq, kept));
        if !holds {
            self.busy += 1;
        }
        Some(slot.into_entry(lane))
    }

    /// The head of the best ready lane, which becomes busy, and the lane's name.
    fn take_lane(&mut self) -> Option<(Slot, Option<SmolStr>)> {
        let top = self.ready.pop()?;
        let lane = self.lanes.get_mut(&top.lane)?;
        lane.busy = true;
        let slot = lane.items.pop_first()?;
        Some((slot, Some(top.lane)))
    }

    /// Frees the lane and the in-flight slot; returns what the caller should drop (outside the
    /// lock): the envelope, unless it is left for the next push, or the value of one carried
    /// unencoded (whose size nothing measured) that is left without it. `back`: the envelope
    /// lent to the worker ([`Lending`](lending::Lending)), given back.
    #[inline(always)]
    fn complete(
        &mut self,
        worker: usize,
        seq: u64,
        lane: Option<&SmolStr>,
        back: Option<Arc<Envelope>>,
    ) -> Done {
        let mut done = Done::default();
        if let Some(slots) = self.in_flight.get_mut(worker)
            && let Some(i) = slots.iter().position(|(s, _)| *s == seq)
        {
            let (_, kept) = slots.swap_remove(i);
            if slots.is_empty() {
                self.busy -= 1;
            }
            // One of the two: the slot's copy, or the one lent to the worker.
            let Some(mut env) = kept.or(back) else {
                self.release_lane(lane);
                return done;
            };
            // A message carried with its value (unencoded, or encoded beside it) keeps a
            // value of any size that nothing measured: it is left for the next push only
            // without its value (taken out when this is the last holder), else let go of,
            // so no value of a handled message waits in `spent` (review rev1: a handler's
            // `Shared<M>` was not the last holder).
            let keepable = env.local.is_empty()
                || Arc::get_mut(&mut env).is_some_and(|e| {
                    done.value = std::mem::take(&mut e.local);
                    true
                });
            if keepable && self.spent.len() < SPENT_MAX && env.payload.len() <= SPENT_MAX_PAYLOAD {
                self.spent.push(env);
            } else {
                done.env = Some(env);
            }
        }
        self.release_lane(lane);
        done
    }

    /// Frees `lane` (if the message had one) for its next message.
    #[inline]
    fn release_lane(&mut self, lane: Option<&SmolStr>) {
        if let Some(name) = lane {
            self.release_named_lane(name);
        }
    }

    /// [`release_lane`](Self::release_lane) of a keyed message (out of line: unkeyed
    /// messages, the most common, do not pay for the call).
    #[inline(never)]
    fn release_named_lane(&mut self, name: &SmolStr) {
        let Some(l) = self.lanes.get_mut(name) else {
            return;
        };
        l.busy = false;
        match l.items.first_key() {
            None => {
                self.lanes.remove(name);
            }
            Some(key) => self.ready.push(ReadyLane {
                key,
                lane: name.clone(),
            }),
        }
    }

    fn drain_all(&mut self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self.free.drain().map(|s| s.into_entry(None)).collect();
        for (name, lane) in &mut self.lanes {
            out.extend(lane.items.drain().map(|s| s.into_entry(Some(name.clone()))));
        }
        self.lanes.retain(|_, l| l.busy);
        self.ready.clear();
        if let Some(order) = &mut self.order {
            order.clear();
        }
        self.len = 0;
        out.sort_by_key(|e| e.seq);
        out
    }
}

/// A taken message: settle it with [`Queue::complete`] (or, taken lent,
/// [`Queue::complete_lent`] or [`Queue::complete_and_pop`]).
pub(crate) struct Taken {
    pub(crate) entry: Entry,
}

/// The bounded, lane-aware queue of one subscription.
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
    overflow: Overflow,
    not_empty: Notify,
    not_full: Notify,
    on_close: Notify,
    /// Notified when the last inline run finishes (shutdown waits for it).
    inline_idle: Notify,
    /// Notified when shutdown aborts the inline runs at its deadline.
    inline_abort: Notify,
    /// Workers registered (or registering) on `not_empty`. Pushes and freed lanes wake a
    /// worker only when this is non-zero: a worker that keeps finding messages never waits,
    /// and is not handed permits it does not need. Incremented before the waiter checks the
    /// state under the lock, read under the lock by whoever changes it, so no wake-up is lost.
    idle_workers: AtomicUsize,
    /// Publishers (or transport pumps) registered on `not_full`, the same way.
    blocked_pushers: AtomicUsize,
}

/// Counts one registered waiter for as long as it lives (also when its future is dropped).
struct WaiterCount<'a>(&'a AtomicUsize);

impl<'a> WaiterCount<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for WaiterCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whom to wake once the lock is released.
#[derive(Default)]
struct Wake {
    /// One waiting publisher: a message left the queue.
    not_full: bool,
    /// One idle worker: there is a message it may be able to take.
    not_empty: bool,
    /// Every idle worker: the queue is closed and empty, they exit.
    all_workers: bool,
}

/// What a non-waiting pop found.
pub(crate) enum Popped {
    /// A message, now in flight for the worker that took it.
    Taken(Taken),
    /// Nothing this worker may take right now.
    Empty,
    /// Closed and empty: the worker stops.
    Closed,
}

/// The result of a successful push.
pub(crate) enum Pushed {
    /// Enqueued.
    Queued,
    /// Enqueued after evicting this older message (DropOldest).
    Evicted(Box<Entry>),
    /// Enqueued in a full queue after taking out these messages, whose sender's deadline
    /// had passed (`queue/expiry.rs`), oldest first: the caller dead-letters them `Expired`.
    Expired(Vec<Entry>),
}

impl Queue {
    /// A queue for `workers` workers (the in-flight slots are numbered `0..workers`).
    pub(crate) fn new(capacity: usize, overflow: Overflow, workers: usize) -> Self {
        let state = State {
            order: matches!(overflow, Overflow::DropOldest).then(BTreeMap::new),
            in_flight: (0..workers).map(|_| Vec::new()).collect(),
            limit: workers.max(1),
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            capacity: capacity.max(1),
            overflow,
            not_empty: Notify::new(),
            not_full: Notify::new(),
            on_close: Notify::new(),
            inline_idle: Notify::new(),
            inline_abort: Notify::new(),
            idle_workers: AtomicUsize::new(0),
            blocked_pushers: AtomicUsize::new(0),
        }
    }

    /// Queues `entry`, releases the lock, wakes an idle worker if there is one, and leaves a
    /// settled envelope on this (the publisher's) thread, outside the lock, for the next
    /// publish to reuse its block ([`spare`]).
    fn insert_and_wake(&self, mut st: MutexGuard<'_, State>, entry: Entry) {
        st.insert(entry);
        let wake = self.idle_workers.load(Ordering::SeqCst) > 0;
        let spent = st.spent.pop();
        drop(st);
        if wake {
            self.not_empty.notify_one();
        }
        if let Some(spent) = spent {
            spare::keep(spent);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn wake(&self, wake: Wake) {
        if wake.all_workers {
            self.not_empty.notify_waiters();
        } else if wake.not_empty {
            self.not_empty.notify_one();
        }
        if wake.not_full {
            self.not_full.notify_one();
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Waiting messages (not counting in-flight ones).
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    /// Messages being handled right now.
    pub(crate) fn in_flight(&self) -> usize {
        let st = self.lock();
        st.in_flight.iter().map(Vec::len).sum::<usize>() + st.inline.len()
    }

    /// Enqueues without waiting.
    #[allow(clippy::result_large_err)] // see `PushError`
    pub(crate) fn try_push(&self, entry: Entry) -> Result<Pushed, PushError> {
        self.try_push_with(
            entry,
            matches!(self.overflow, Overflow::DropOldest),
            true,
            false,
        )
    }

    /// `evict`: a full queue evicts its oldest message (drop-oldest). `expire`: a full
    /// queue first takes out the messages whose deadline passed (`queue/expiry.rs`).
    /// `waiter`: the try of a pusher blocked in [`wait_for_room`](Self::wait_for_room),
    /// which answers one wake-up (`State::pushers_woken`).
    #[allow(clippy::result_large_err)] // see `PushError`
    fn try_push_with(
        &self,
        entry: Entry,
        evict: bool,
        expire: bool,
        waiter: bool,
    ) -> Result<Pushed, PushError> {
        let mut st = self.lock();
        if waiter {
            st.pushers_woken = st.pushers_woken.saturating_sub(1);
        }
        if st.closed {
            return Err(PushError::Closed(entry));
        }
        let mut evicted = None;
        if st.len >= self.capacity {
            let expired = if expire {
                st.take_expired()
            } else {
                Vec::new()
            };
            if !expired.is_empty() {
                self.insert_and_wake(st, entry);
                return Ok(Pushed::Expired(expired));
            }
            if !evict {
                return Err(PushError::Full(entry));
            }
            evicted = st.remove_oldest();
        }
        self.insert_and_wake(st, entry);
        Ok(evicted.map_or(Pushed::Queued, |e| Pushed::Evicted(Box::new(e))))
    }

    /// Enqueues if the overflow policy settles the push without waiting: always for
    /// `RejectNew` and `DropOldest`; for `Block` when there is room; for `Adaptive` when the
    /// queue is at most half full (where [`push`](Self::push) would not slow the publisher
    /// down). Otherwise hands the entry back for [`push`](Self::push).
    #[allow(clippy::result_large_err)] // see `PushError`
    pub(crate) fn try_push_now(&self, entry: Entry) -> Result<Result<Pushed, PushError>, Entry> {
        let limit = match self.overflow {
            Overflow::DropOldest | Overflow::RejectNew => return Ok(self.try_push(entry)),
            Overflow::Block { .. } => self.capacity,
            // `push` sleeps when more than half is in use (and below capacity).
            Overflow::Adaptive { .. } => (self.capacity / 2 + 1).min(self.capacity),
        };
        let mut st = self.lock();
        if st.closed {
            return Ok(Err(PushError::Closed(entry)));
        }
        if st.len >= limit {
            // Messages nobody waits for any more make room first (below capacity after
            // that, the message is queued without `Adaptive`'s slow-down this once).
            let expired = st.take_expired();
            if expired.is_empty() {
                return Err(entry);
            }
            self.insert_and_wake(st, entry);
            return Ok(Ok(Pushed::Expired(expired)));
        }
        self.insert_and_wake(st, entry);
        Ok(Ok(Pushed::Queued))
    }

    /// Enqueues following the overflow policy, waiting where the policy says so.
    #[allow(clippy::result_large_err)] // see `PushError`
    pub(crate) async fn push(&self, entry: Entry) -> Result<Pushed, PushError> {
        let timeout = match self.overflow {
            Overflow::DropOldest | Overflow::RejectNew => return self.try_push(entry),
            Overflow::Block { timeout } => timeout,
            Overflow::Adaptive { max_delay, timeout } => {
                let len = self.len();
                let half = self.capacity / 2;
                if len > half && len < self.capacity {
                    let fill = (len - half) as f64 / (self.capacity - half).max(1) as f64;
                    // A close (shutdown, unsubscribe) ends the slow-down: the push below
                    // then answers `Closed` at once instead of after the sleep.
                    let slow_down = max_delay.mul_f64(fill.min(1.0));
                    let _ = tokio::time::timeout(slow_down, self.closed()).await;
                }
                timeout
            }
        };
        // Fast path: room right away, no clock read, no waiter registration.
        let entry = match self.try_push(entry) {
            Err(PushError::Full(back)) => back,
            other => return other,
        };
        let deadline = crate::deadline::after(timeout);
        self.wait_for_room(entry, Some(deadline), true).await
    }

    /// Enqueues, waiting as long as it takes for room (or until the queue closes). For
    /// messages fed by a transport, which keeps the rest: the queue is then a prefetch window
    /// and the overflow policy does not apply.
    #[allow(clippy::result_large_err)] // see `PushError`
    pub(crate) async fn push_wait(&self, entry: Entry) -> Result<(), PushError> {
        // Nothing is evicted for it: its pushes never answer `Pushed::Expired`.
        self.wait_for_room(entry, None, false).await.map(|_| ())
    }

    /// Retries the push each time a message leaves the queue, until it fits, the queue
    /// closes, or `deadline` passes (then one last try). Never evicts the oldest; with
    /// `expire`, takes out expired messages to make room (see `try_push_with`).
    #[allow(clippy::result_large_err)] // see `PushError`
    async fn wait_for_room(
        &self,
        mut entry: Entry,
        deadline: Option<tokio::time::Instant>,
        expire: bool,
    ) -> Result<Pushed, PushError> {
        let _blocked = WaiterCount::new(&self.blocked_pushers);
        loop {
            let notified = self.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_push_with(entry, false, expire, true) {
                Err(PushError::Full(back)) => entry = back,
                other => return other,
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.try_push_with(entry, false, expire, true);
                    }
                }
            }
        }
    }

    /// Takes the best message `worker` may take, if any, and notes what to wake.
    #[inline(always)]
    fn take_locked(&self, st: &mut State, worker: usize, lend: bool, wake: &mut Wake) -> Popped {
        if let Some(entry) = st.take(worker, lend) {
            // One wake-up per blocked pusher not woken yet (see `State::pushers_woken`).
            if self.blocked_pushers.load(Ordering::SeqCst) > st.pushers_woken {
                st.pushers_woken += 1;
                wake.not_full = true;
            }
            // Another worker may be able to take the next one right away.
            wake.not_empty = st.len > 0 && self.idle_workers.load(Ordering::SeqCst) > 0;
            return Popped::Taken(Taken { entry });
        }
        if st.closed && st.len == 0 {
            return Popped::Closed;
        }
        Popped::Empty
    }

    /// Takes the next message without waiting.
    pub(crate) fn try_pop(&self, worker: usize) -> Popped {
        self.try_pop_with(worker, false)
    }

    #[inline(always)]
    fn try_pop_with(&self, worker: usize, lend: bool) -> Popped {
        let mut wake = Wake::default();
        let mut st = self.lock();
        let popped = self.take_locked(&mut st, worker, lend, &mut wake);
        drop(st);
        self.wake(wake);
        popped
    }

    /// Takes the next message for `worker` (its in-flight slot records it until
    /// [`complete`](Self::complete)); `None` once the queue is closed and empty.
    pub(crate) async fn pop(&self, worker: usize) -> Option<Taken> {
        // Fast path: a message is there; no waiter registration.
        match self.try_pop(worker) {
            Popped::Taken(t) => Some(t),
            Popped::Closed => None,
            Popped::Empty => self.pop_waiting(worker).await,
        }
    }

    /// [`pop`](Self::pop) after a non-waiting pop found nothing: registers as an idle worker
    /// first, then looks again, then waits.
    pub(crate) async fn pop_waiting(&self, worker: usize) -> Option<Taken> {
        let _idle = WaiterCount::new(&self.idle_workers);
        loop {
            let notified = self.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut wake = Wake::default();
            let (popped, trimmed) = {
                let mut st = self.lock();
                let popped = self.take_locked(&mut st, worker, false, &mut wake);
                // About to wait: nothing is flowing, so keep only a few spent envelopes.
                let trimmed = (matches!(popped, Popped::Empty) && st.spent.len() > SPENT_IDLE)
                    .then(|| st.spent.split_off(SPENT_IDLE));
                (popped, trimmed)
            };
            self.wake(wake);
            drop(trimmed);
            match popped {
                Popped::Taken(t) => return Some(t),
                Popped::Closed => return None,
                Popped::Empty => {}
            }
            notified.await;
        }
    }

    /// Waits as an idle worker until some worker could take a message, without taking it,
    /// so the worker can check that its handler is ready first (a worker must not take a
    /// message its handler cannot handle now: it would hold it while a breaker is open,
    /// instead of leaving it queued). Returns `false` once the queue is closed and empty.
    pub(crate) async fn wait_for_work(&self) -> bool {
        let _idle = WaiterCount::new(&self.idle_workers);
        loop {
            let notified = self.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (answer, trimmed) = {
                let mut st = self.lock();
                let answer = if st.has_takeable() {
                    Some(true)
                } else if st.closed && st.len == 0 {
                    Some(false)
                } else {
                    None
                };
                // About to wait: nothing is flowing, so keep only a few spent envelopes.
                let trimmed = (answer.is_none() && st.spent.len() > SPENT_IDLE)
                    .then(|| st.spent.split_off(SPENT_IDLE));
                (answer, trimmed)
            };
            drop(trimmed);
            if let Some(answer) = answer {
                return answer;
            }
            notified.await;
        }
    }

    /// Wakes one idle worker if some worker could take a message now: called by a worker
    /// that was woken for work but whose handler is not ready, so the wake-up is not lost
    /// to workers whose handler is.
    pub(crate) fn offer_to_idle(&self) {
        if self.idle_workers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let work = self.lock().has_takeable();
        if work {
            self.not_empty.notify_one();
        }
    }

    #[inline(always)]
    fn complete_locked(
        &self,
        st: &mut State,
        worker: usize,
        seq: u64,
        lane: Option<&SmolStr>,
        back: Option<Arc<Envelope>>,
        wake: &mut Wake,
    ) -> Done {
        let done = st.complete(worker, seq, lane, back);
        if st.closed && st.len == 0 {
            wake.all_workers = true;
        } else if st.len > 0 && self.idle_workers.load(Ordering::SeqCst) > 0 {
            // A freed lane may have made its next message available.
            wake.not_empty = true;
        }
        done
    }

    /// Settles a taken message, freeing its lane for the next message of the same key.
    pub(crate) fn complete(&self, worker: usize, seq: u64, lane: Option<&SmolStr>) {
        self.complete_with(worker, seq, lane, None);
    }

    #[inline(always)]
    fn complete_with(
        &self,
        worker: usize,
        seq: u64,
        lane: Option<&SmolStr>,
        back: Option<Arc<Envelope>>,
    ) {
        let mut wake = Wake::default();
        let mut st = self.lock();
        let done = self.complete_locked(&mut st, worker, seq, lane, back, &mut wake);
        drop(st);
        self.wake(wake);
        drop(done);
    }

    /// Stops intake; workers drain what is queued, then `pop` returns `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_waiters();
        self.not_full.notify_waiters();
        self.on_close.notify_waiters();
    }

    /// Resolves once the queue is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.on_close.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().closed {
                return;
            }
            notified.await;
        }
    }

    /// Removes every waiting message (used when a drain deadline passes).
    pub(crate) fn drain_waiting(&self) -> Vec<Entry> {
        self.lock().drain_all()
    }

    /// Envelopes of messages being handled right now, oldest first (for the shutdown report,
    /// once the workers ended: an envelope lent to a worker ([`Lending`](lending::Lending)) is there once the
    /// worker dropped it).
    pub(crate) fn in_flight_envelopes(&self) -> Vec<Arc<Envelope>> {
        let st = self.lock();
        let mut v: Vec<(u64, Arc<Envelope>)> = st
            .in_flight
            .iter()
            .flatten()
            .filter_map(|(seq, env)| Some((*seq, Arc::clone(env.as_ref()?))))
            .chain(st.inline.iter().cloned())
            .collect();
        drop(st);
        v.sort_by_key(|(s, _)| *s);
        v.into_iter().map(|(_, e)| e).collect()
    }
}

impl Taken {
    pub(crate) fn seq(&self) -> u64 {
        self.entry.seq
    }
}

mod expiry;
pub(crate) mod inline;
mod lending;
mod overflow;
pub(crate) mod spare;
mod waiting;

#[cfg(test)]
mod tests;
