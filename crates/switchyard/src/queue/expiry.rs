//! Waiting messages whose sender's deadline (`delivery.deadline`) has passed: nobody waits
//! for their result, so when the queue is full they are taken out (the caller dead-letters
//! them `Expired`) to make room for a fresh message, instead of the fresh one being refused
//! or made to wait. A worker that reaches one first settles it without calling the handler
//! (`dispatch.rs`).
//!
//! The queue notes the earliest deadline of what waits (at insert, one branch for a message
//! without one); a full queue looks for expired messages only once that has passed, and
//! after a look notes the earliest deadline of what is left. A message taken by a worker
//! leaves the note early, never late: at worst one look finds nothing.

use std::sync::Arc;

use switchyard_core::Envelope;

use super::waiting::{ReadyLane, Slot, take_where};
use super::{Entry, State};
use crate::deadline::is_past;

impl State {
    /// Notes the deadline of a message being queued.
    #[inline]
    pub(super) fn note_deadline(&mut self, deadline: std::time::Instant) {
        if self.earliest.is_none_or(|e| deadline < e) {
            self.earliest = Some(deadline);
        }
    }

    /// Takes out every waiting message whose deadline has passed (oldest first), unless none
    /// can have: the noted earliest deadline is still ahead. A transport's delivery stays
    /// (its worker settles it with the transport when it reaches it).
    #[cold]
    #[inline(never)]
    pub(super) fn take_expired(&mut self) -> Vec<Entry> {
        let Some(earliest) = self.earliest else {
            return Vec::new();
        };
        let now = crate::deadline::now_std();
        if earliest > now {
            return Vec::new();
        }
        let mut left = None;
        let mut note = |env: &Arc<Envelope>| {
            if let Some(d) = env.delivery.deadline {
                left = Some(left.map_or(d, |l: std::time::Instant| l.min(d)));
            }
        };
        let expired = |slot: &Slot| is_past(slot.env.delivery.deadline, now) && !slot.delivered();
        let mut out = Vec::new();
        for (_, level) in &mut self.free.levels {
            if !level.iter().any(expired) {
                level.iter().for_each(|s| note(&s.env));
                continue;
            }
            let gone = take_where(level, expired);
            level.iter().for_each(|s| note(&s.env));
            out.extend(gone.into_iter().map(|s| s.into_entry(None)));
        }
        let mut emptied = Vec::new();
        for (name, lane) in &mut self.lanes {
            let head = lane.items.first_key();
            let gone = lane.items.take_where(expired);
            lane.items.for_each(|s| note(&s.env));
            if gone.is_empty() {
                continue;
            }
            out.extend(gone.into_iter().map(|s| s.into_entry(Some(name.clone()))));
            // A free lane whose head left: its next message is ready (or it is done).
            if !lane.busy && lane.items.first_key() != head {
                match lane.items.first_key() {
                    None => emptied.push(name.clone()),
                    Some(key) => self.ready.push(ReadyLane {
                        key,
                        lane: name.clone(),
                    }),
                }
            }
        }
        for name in emptied {
            self.lanes.remove(&name);
        }
        self.earliest = left;
        self.len -= out.len();
        if let Some(order) = &mut self.order {
            for e in &out {
                order.remove(&e.seq);
            }
        }
        out.sort_by_key(|e| e.seq);
        out
    }
}
