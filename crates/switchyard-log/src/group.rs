//! Consumer-group state of one (stream, group): the read cursor, the unsettled messages and
//! the dispatch rule (per-key order, ack-wait expiry, delayed redelivery, max-deliver).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smol_str::SmolStr;
use switchyard_core::{DeadLetter, DeadLetterReason, Envelope, Pattern};
use tokio::time::Instant;

use crate::error::ReadError;
use crate::offsets::Position;
use crate::stream::{StreamShared, lock};
use crate::writer::{Commit, PendingCommits};

/// Group settings taken from the log config.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub ack_wait: Duration,
    pub max_deliver: u32,
    pub max_ack_pending: usize,
    pub ordering_header: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum PState {
    /// Waiting to be handed out (not before the instant, if any).
    Ready(Option<Instant>),
    /// Handed out; redelivered if not settled by the instant.
    InFlight(Instant),
}

#[derive(Debug)]
struct Pending {
    envelope: Envelope,
    key: Option<SmolStr>,
    /// Deliveries made (the number the next delivery's `attempt` counts on from).
    attempts: u32,
    /// Of those, deliveries handed back unworked ([`GroupShared::hand_back`]): not counted
    /// towards `max_deliver`.
    handed_back: u32,
    first_delivered: Option<SystemTime>,
    generation: u64,
    state: PState,
    /// An earlier delivery settled it (a late ack or term) while a newer one is out: it is
    /// done and not delivered again, but it stays (keeping its key busy, so the next message
    /// of the key waits, per-key order) until the newer delivery is settled, put back or
    /// runs out of its ack wait.
    settled_early: bool,
}

impl Pending {
    /// A record just read, not handed out yet.
    fn fresh(envelope: Envelope, key: Option<SmolStr>) -> Self {
        Self {
            envelope,
            key,
            attempts: 0,
            handed_back: 0,
            first_delivered: None,
            generation: 0,
            state: PState::Ready(None),
            settled_early: false,
        }
    }
}

/// Mutable part of a group.
///
/// Records are read in log order into `pending` (the read-ahead window, at most
/// `max_ack_pending`). When every message there waits behind a busy key, the group looks
/// further ahead (`ahead`) for messages of other keys: those it takes join `pending` too and
/// are remembered in `ahead_taken` so the in-order read skips them; the keys it passes over go
/// to `ahead_keys` and wait for the in-order read (per-key order). Both sets are bounded by
/// `max_ack_pending` and emptied once the in-order read catches up with `ahead`.
///
/// What is settled above the floor (the committed offset) is written with it
/// ([`GroupState::position`]): the records in `floor..next_read` not in `pending`, the
/// records of `ahead_taken` not in `pending`, and `skip`. A group that opens with such
/// records (`skip`, from the offsets file) passes over them in both reads.
#[derive(Debug)]
pub(crate) struct GroupState {
    pub pattern: Pattern,
    /// Next offset to read from the stream in log order.
    pub next_read: u64,
    pending: BTreeMap<u64, Pending>,
    /// Messages of `pending` handed out at least once (unsettled): at most `max_ack_pending`.
    delivered: usize,
    /// The look-ahead cursor (at least `next_read`).
    ahead: u64,
    /// Keys of records in `next_read..ahead` the look-ahead passed over.
    ahead_keys: HashSet<SmolStr>,
    /// Records in `next_read..ahead` the look-ahead took (pending, or settled since).
    ahead_taken: BTreeSet<u64>,
    /// Records settled before this group state began (restored from the offsets file, or
    /// kept by [`GroupShared::reset`]), at or after `next_read`, as sorted, disjoint
    /// half-open ranges: neither read hands them out. Ranges the in-order read has passed
    /// are dropped.
    skip: VecDeque<(u64, u64)>,
    /// A message was settled since the position was last reported to the writer.
    unsaved: bool,
    /// The group is in the pending commits and the writer has not taken its position yet:
    /// a report then only has to update the state, which the writer reads.
    queued: bool,
    /// Live subscriptions in this group.
    pub members: usize,
    committed_sent: u64,
    /// The group was deleted (`LogTransport::delete_group`): a late settle of one of its
    /// deliveries no longer reports an offset (which would bring the group back).
    pub deleted: bool,
}

impl GroupState {
    /// Every offset below this is settled: the group's committed offset.
    pub fn floor(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .map_or(self.next_read, |&o| o.min(self.next_read))
    }

    /// Drops look-ahead state the in-order read has caught up with.
    fn trim_ahead(&mut self) {
        if self.ahead <= self.next_read {
            self.ahead = self.next_read;
            self.ahead_keys.clear();
            self.ahead_taken.clear();
        } else if self
            .ahead_taken
            .first()
            .is_some_and(|&o| o < self.next_read)
        {
            self.ahead_taken = self.ahead_taken.split_off(&self.next_read);
        }
    }

    /// Removes a message for good (settled or dead-lettered).
    fn remove(&mut self, offset: u64) -> Option<Pending> {
        let p = self.pending.remove(&offset)?;
        if p.attempts > 0 {
            self.delivered = self.delivered.saturating_sub(1);
        }
        Some(p)
    }

    /// Unsettled messages held in memory.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The end of the `skip` range holding `offset`, if one does.
    fn skip_end(&self, offset: u64) -> Option<u64> {
        let i = self.skip.partition_point(|&(_, e)| e <= offset);
        self.skip
            .get(i)
            .and_then(|&(s, e)| (s <= offset).then_some(e))
    }

    /// Moves the in-order read past `skip` ranges it has reached (dropping them), and returns
    /// how many records it may read from there before the next one.
    fn pass_skipped(&mut self) -> u64 {
        while let Some(&(s, e)) = self.skip.front() {
            if e <= self.next_read {
                self.skip.pop_front();
            } else if s <= self.next_read {
                self.next_read = e;
                self.skip.pop_front();
            } else {
                return s - self.next_read;
            }
        }
        u64::MAX
    }

    /// The group's position to write: the floor and every record settled above it.
    pub fn position(&self) -> Position {
        let floor = self.floor();
        let mut ranges = Vec::new();
        // Below the in-order read, whatever is not pending is settled (or not the group's).
        let mut at = floor;
        for &o in self.pending.range(floor..self.next_read).map(|(o, _)| o) {
            if o > at {
                ranges.push((at, o));
            }
            at = o + 1;
        }
        if self.next_read > at {
            ranges.push((at, self.next_read));
        }
        // Past it, the records the look-ahead took and that were settled since.
        ranges.extend(
            self.ahead_taken
                .range(self.next_read..)
                .filter(|o| !self.pending.contains_key(o))
                .map(|&o| (o, o + 1)),
        );
        ranges.extend(
            self.skip
                .iter()
                .map(|&(s, e)| (s.max(self.next_read), e))
                .filter(|&(s, e)| s < e),
        );
        Position::normalised(floor, ranges)
    }
}

/// One consumer group on one stream.
#[derive(Debug)]
pub(crate) struct GroupShared {
    pub stream_idx: usize,
    pub stream: Arc<StreamShared>,
    pub name: String,
    /// Durable groups persist their committed offset; ungrouped subscriptions do not.
    pub durable: bool,
    pub state: Mutex<GroupState>,
}

/// What a dispatch attempt found.
pub(crate) enum Dispatch {
    /// Hand this message out.
    Deliver {
        offset: u64,
        generation: u64,
        envelope: Box<Envelope>,
    },
    /// Nothing now; try again at the instant (if any) or when notified.
    Wait(Option<Instant>),
}

/// Records scanned per dispatch call at most, so one call never blocks for long.
const MAX_SCAN: usize = 4096;

/// Records read per look-ahead step.
const AHEAD_CHUNK: usize = 64;

/// What [`GroupShared::fill`] left.
struct Filled {
    /// More is left to scan now (the scan budget ran out).
    more: bool,
    /// The end of the stream when it looked.
    end: u64,
}

impl GroupShared {
    /// A group starting at `start`, passing over the records of `settled` (half-open ranges
    /// above `start`, as [`Position::settled`] has them).
    pub fn new(
        stream_idx: usize,
        stream: Arc<StreamShared>,
        name: String,
        durable: bool,
        pattern: Pattern,
        start: u64,
        settled: crate::offsets::Ranges,
    ) -> Self {
        Self {
            stream_idx,
            stream,
            name,
            durable,
            state: Mutex::new(GroupState {
                pattern,
                next_read: start,
                pending: BTreeMap::new(),
                delivered: 0,
                ahead: start,
                ahead_keys: HashSet::new(),
                ahead_taken: BTreeSet::new(),
                skip: settled.into_iter().filter(|&(_, e)| e > start).collect(),
                unsaved: false,
                queued: false,
                members: 0,
                committed_sent: start,
                deleted: false,
            }),
        }
    }

    /// Reads ahead, in log order, into the pending window.
    fn fill(&self, st: &mut GroupState, s: &GroupSettings) -> Result<Filled, ReadError> {
        let (first, end) = {
            let idx = lock(&self.stream.index);
            (idx.first_offset(), idx.next_offset())
        };
        if st.next_read < first {
            tracing::warn!(
                stream = %self.stream.name,
                group = %self.name,
                skipped = first - st.next_read,
                "records removed by retention before this group read them"
            );
            st.next_read = first;
        }
        st.trim_ahead();
        let mut scanned = 0;
        while st.pending.len() < s.max_ack_pending && st.next_read < end {
            if scanned >= MAX_SCAN {
                st.trim_ahead();
                return Ok(Filled { more: true, end });
            }
            // Settled before: not read again (and a read stops short of the next ones).
            let until_skip = st.pass_skipped();
            if st.next_read >= end {
                break;
            }
            let want = (s.max_ack_pending - st.pending.len())
                .min(256)
                .min(usize::try_from(until_skip).unwrap_or(usize::MAX));
            let records = self.stream.read(st.next_read, want)?;
            if records.is_empty() {
                st.trim_ahead();
                return Ok(Filled { more: true, end });
            }
            scanned += records.len();
            for (offset, envelope) in records {
                st.next_read = offset + 1;
                // Taken by the look-ahead already (and perhaps settled since), or settled
                // before.
                if st.ahead_taken.remove(&offset)
                    || st.skip_end(offset).is_some()
                    || !st.pattern.matches(&envelope.topic)
                {
                    continue;
                }
                let key = s
                    .ordering_header
                    .as_deref()
                    .and_then(|h| envelope.header(h))
                    .map(SmolStr::new);
                st.pending.insert(offset, Pending::fresh(envelope, key));
            }
        }
        st.trim_ahead();
        Ok(Filled { more: false, end })
    }

    /// When every message of the window waits behind a busy key and the window is full,
    /// looks past it (from `ahead`) for messages whose key is free and takes them into
    /// `pending`. A key with a message in memory, or passed over here, is busy: its later
    /// records wait for the in-order read, so per-key order holds. Bounded: at most
    /// `max_ack_pending` records taken and keys passed over until the in-order read catches
    /// up. Returns the first offset taken, and whether the scan budget ran out.
    fn look_ahead(
        &self,
        st: &mut GroupState,
        s: &GroupSettings,
        end: u64,
    ) -> Result<(Option<u64>, bool), ReadError> {
        let cap = s.max_ack_pending;
        let mut busy: HashSet<SmolStr> =
            st.pending.values().filter_map(|p| p.key.clone()).collect();
        let mut taken = None;
        let mut scanned = 0;
        st.ahead = st.ahead.max(st.next_read);
        while st.ahead < end && taken.is_none() {
            if scanned >= MAX_SCAN {
                return Ok((None, true));
            }
            // Settled before: neither taken nor counted as a busy key.
            if let Some(e) = st.skip_end(st.ahead) {
                st.ahead = e;
                continue;
            }
            let records = self.stream.read(st.ahead, AHEAD_CHUNK)?;
            if records.is_empty() {
                return Ok((None, true));
            }
            scanned += records.len();
            for (offset, envelope) in records {
                if st.ahead_taken.len() >= cap {
                    return Ok((taken, false));
                }
                if !st.pattern.matches(&envelope.topic) || st.skip_end(offset).is_some() {
                    st.ahead = offset + 1;
                    continue;
                }
                let key = s
                    .ordering_header
                    .as_deref()
                    .and_then(|h| envelope.header(h))
                    .map(SmolStr::new);
                if let Some(k) = &key
                    && (busy.contains(k) || st.ahead_keys.contains(k))
                {
                    if !st.ahead_keys.contains(k) {
                        if st.ahead_keys.len() >= cap {
                            return Ok((taken, false));
                        }
                        st.ahead_keys.insert(k.clone());
                    }
                    st.ahead = offset + 1;
                    continue;
                }
                st.ahead = offset + 1;
                if let Some(k) = &key {
                    busy.insert(k.clone());
                }
                st.ahead_taken.insert(offset);
                st.pending.insert(offset, Pending::fresh(envelope, key));
                taken.get_or_insert(offset);
            }
        }
        Ok((taken, false))
    }

    /// Picks the next message to hand out. Messages that used up their deliveries are moved to
    /// `dead`.
    pub fn dispatch(
        self: &Arc<Self>,
        s: &GroupSettings,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
        commits: &PendingCommits,
    ) -> Result<Dispatch, ReadError> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let Filled { mut more, end } = self.fill(st, s)?;
        let mut blocked: HashSet<SmolStr> = HashSet::new();
        let mut chosen = None;
        let mut expired = Vec::new();
        let mut done = Vec::new();
        let mut earliest: Option<Instant> = None;
        // Only handed-out messages count against `max_ack_pending`.
        let may_start = st.delivered < s.max_ack_pending;
        for (&offset, p) in &st.pending {
            if p.key.as_ref().is_some_and(|k| blocked.contains(k)) {
                continue;
            }
            let due_at = match p.state {
                PState::Ready(None) => None,
                PState::Ready(Some(t)) | PState::InFlight(t) => Some(t),
            };
            match due_at {
                Some(t) if t > now => {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                    if let Some(k) = &p.key {
                        blocked.insert(k.clone());
                    }
                }
                // Settled by an earlier delivery, and the newer one's ack wait ran out: done.
                _ if p.settled_early => done.push(offset),
                // Hand-backs are not failed deliveries: only the others count.
                _ if s.max_deliver > 0
                    && p.attempts.saturating_sub(p.handed_back) >= s.max_deliver =>
                {
                    expired.push(offset)
                }
                _ if p.attempts == 0 && !may_start => {
                    if let Some(k) = &p.key {
                        blocked.insert(k.clone());
                    }
                }
                _ => {
                    chosen = Some(offset);
                    break;
                }
            }
        }
        // Every message of a full window waits (a busy key, a delay): look past it.
        if chosen.is_none()
            && !more
            && may_start
            && st.pending.len() >= s.max_ack_pending
            && st.next_read < end
        {
            let (taken, budget_left) = self.look_ahead(st, s, end)?;
            chosen = taken;
            more = budget_left;
        }
        for offset in done {
            st.remove(offset);
            st.unsaved = true;
        }
        for offset in expired {
            if let Some(p) = st.remove(offset) {
                st.unsaved = true;
                let counted = p.attempts.saturating_sub(p.handed_back);
                let mut env = p.envelope;
                env.delivery.attempt = counted;
                env.delivery.first_delivered_at = p.first_delivered;
                tracing::warn!(stream = %self.stream.name, group = %self.name, offset, attempts = counted, handed_back = p.handed_back, "message reached max deliveries; dead-lettering");
                let handed_back = match p.handed_back {
                    0 => String::new(),
                    n => format!(", besides {n} hand-backs"),
                };
                dead.push(
                    DeadLetter::new(
                        env,
                        DeadLetterReason::MaxDeliveries,
                        format!(
                            "not acknowledged after {counted} deliveries{handed_back} (stream {}, \
                             offset {offset})",
                            self.stream.name
                        ),
                    )
                    .with_handler(self.name.as_str()),
                );
            }
        }
        let result = match chosen.and_then(|o| st.pending.get_mut(&o).map(|p| (o, p))) {
            Some((offset, p)) => {
                if p.attempts == 0 {
                    st.delivered += 1;
                }
                p.attempts += 1;
                p.generation += 1;
                let first = *p.first_delivered.get_or_insert_with(SystemTime::now);
                p.state = PState::InFlight(now + s.ack_wait);
                let mut envelope = p.envelope.clone();
                envelope.delivery.attempt = p.attempts;
                envelope.delivery.first_delivered_at = Some(first);
                Dispatch::Deliver {
                    offset,
                    generation: p.generation,
                    envelope: Box::new(envelope),
                }
            }
            None if more => Dispatch::Wait(Some(now)),
            None => Dispatch::Wait(earliest),
        };
        self.report_floor(st, commits);
        Ok(result)
    }

    /// Hands the group to the writer when its floor moved or a message was settled above it
    /// (the writer takes the position from the state when it writes). Once handed over, later
    /// reports until the writer takes it change nothing but the state (the offset the pending
    /// commit names for compaction may then lag behind by one commit round: compaction keeps
    /// more, never less).
    fn report_floor(self: &Arc<Self>, st: &mut GroupState, commits: &PendingCommits) {
        let floor = st.floor();
        if self.durable && !st.deleted && (floor > st.committed_sent || st.unsaved) {
            st.committed_sent = st.committed_sent.max(floor);
            st.unsaved = false;
            if !st.queued {
                st.queued = true;
                lock(commits).insert(
                    (self.stream_idx, self.name.clone()),
                    Commit {
                        offset: st.committed_sent,
                        group: Some(self.clone()),
                    },
                );
            }
        }
    }

    /// The position to write, or `None` once the group is deleted. For the writer, which has
    /// taken the group out of the pending commits: the next report hands it over again.
    pub fn take_position(&self) -> Option<Position> {
        let mut st = lock(&self.state);
        st.queued = false;
        (!st.deleted).then(|| st.position())
    }

    /// Settles a message for good (ack or term) by its delivery `generation`. Late settles
    /// after a redelivery still count: the message is not delivered again; but while the
    /// newer delivery is out it stays pending, keeping its key busy (review rev33: a member
    /// that had left acked its old copy and the next message of the key was handed out while
    /// the newer copy still ran).
    pub fn settle(self: &Arc<Self>, offset: u64, generation: u64, commits: &PendingCommits) {
        let mut st = lock(&self.state);
        if let Some(p) = st.pending.get_mut(&offset)
            && p.generation != generation
            && matches!(p.state, PState::InFlight(_))
        {
            p.settled_early = true;
            return;
        }
        if st.remove(offset).is_some() {
            st.unsaved = true;
        }
        self.report_floor(&mut st, commits);
    }

    /// Puts a delivered message back for redelivery at `at` (now if `None`). Ignored if the
    /// message was redelivered since (`generation` is stale) or is already settled.
    pub fn release(&self, offset: u64, generation: u64, at: Option<Instant>) {
        self.put_back(offset, generation, at, false);
    }

    /// Puts a delivered message back like [`release`](Self::release), as handed back unworked
    /// (not counted towards `max_deliver`). Ignored like `release`.
    pub fn hand_back(&self, offset: u64, generation: u64, at: Option<Instant>) {
        self.put_back(offset, generation, at, true);
    }

    /// [`release`](Self::release) and [`hand_back`](Self::hand_back): `unworked` counts the
    /// delivery as handed back.
    fn put_back(&self, offset: u64, generation: u64, at: Option<Instant>, unworked: bool) {
        let mut st = lock(&self.state);
        if let Some(p) = st.pending.get_mut(&offset)
            && p.generation == generation
            && matches!(p.state, PState::InFlight(_))
        {
            if p.settled_early {
                // An earlier delivery settled it: done (the next dispatch reports the floor).
                st.remove(offset);
                st.unsaved = true;
                return;
            }
            p.state = PState::Ready(at);
            if unworked {
                p.handed_back = p.handed_back.saturating_add(1);
            }
        }
    }

    /// Starts a delivered message's ack wait again: it is redelivered if not settled by
    /// `until`. Ignored if the message was redelivered since (`generation` is stale) or is
    /// already settled or released.
    pub fn keep_alive(&self, offset: u64, generation: u64, until: Instant) {
        let mut st = lock(&self.state);
        if let Some(p) = st.pending.get_mut(&offset)
            && p.generation == generation
            && matches!(p.state, PState::InFlight(_))
        {
            p.state = PState::InFlight(until);
        }
    }

    /// Forgets unsettled messages and restarts reading at the floor (when the last member of
    /// a group leaves, so a changed pattern takes effect from there), passing over what was
    /// settled above it, as a restart does.
    pub fn reset(&self, pattern: Pattern) {
        let mut st = lock(&self.state);
        let Position { offset, settled } = st.position();
        st.pending.clear();
        st.delivered = 0;
        st.next_read = offset;
        st.ahead = offset;
        st.ahead_keys.clear();
        st.ahead_taken.clear();
        st.skip = settled.into();
        st.pattern = pattern;
    }
}
