//! Worker slots taken by a command's sender, which then runs the handler on its own task
//! (`crate::inline`). Such a run counts against the worker limit like a worker holding a
//! message, holds its lane like one, and is in flight for the shutdown report.

use std::sync::Arc;

use parking_lot::Mutex;
use smol_str::SmolStr;
use switchyard_core::Envelope;

use super::{Lane, Queue, Wake};
use crate::handler::SingleHandler;

/// The handler clones inline runs use, kept in the queue's state so that a run takes and
/// gives back its clone under the lock it takes for its slot anyway: made from the workers'
/// handler on demand and kept for the next run (at most as many as the handler has workers).
#[derive(Default)]
pub(super) struct Spare {
    /// The handler to clone; `None` for handlers that never run inline (events, batches)
    /// and once the subscription is deactivated. Shared behind a lock of its own, so that a
    /// clone is made after the queue's lock: a handler's `Clone` is the application's code,
    /// which must not run under it.
    proto: Option<Arc<Mutex<SingleHandler>>>,
    spare: Vec<SingleHandler>,
}

impl Spare {
    /// Keeps `handler` for the next run; one that is not kept is handed back, to be dropped
    /// after the lock (a handler may hold a clone of the bus).
    fn give_back(&mut self, handler: SingleHandler, max: usize) -> Option<SingleHandler> {
        if self.proto.is_none() || self.spare.len() >= max {
            return Some(handler);
        }
        self.spare.push(handler);
        None
    }
}

impl Queue {
    /// Takes a worker slot for `env`, to be handled on its sender's task, when no rule
    /// stands in the way: the queue is open, nothing waits in it (so nothing is overtaken),
    /// a slot is free (the worker limit holds) and no worker holds the message's lane.
    /// Returns the in-flight number to hand back to [`finish_inline`](Self::finish_inline)
    /// and a handler clone to run it with; `None` too when the handler does not run inline.
    pub(crate) fn try_take_inline(
        &self,
        env: &Arc<Envelope>,
        lane: Option<&SmolStr>,
    ) -> Option<(u64, SingleHandler)> {
        let free = |st: &super::State| {
            !(st.closed || st.len > 0 || st.busy >= st.limit || st.abort_inline)
        };
        let mut st = self.lock();
        if !free(&st) {
            return None;
        }
        let handler = match st.runs.spare.pop() {
            Some(h) => h,
            None => {
                // A new clone (at most one per worker of the handler), made without the lock
                // and checked again after it.
                let proto = st.runs.proto.clone()?;
                drop(st);
                let handler = proto.lock().clone();
                st = self.lock();
                if !free(&st) || st.runs.proto.is_none() {
                    drop(st);
                    drop(handler);
                    return None;
                }
                handler
            }
        };

        if let Some(name) = lane {
            if st.lanes.contains_key(name) {
                let limit = st.limit;
                let dropped = st.runs.give_back(handler, limit);
                drop(st);
                drop(dropped);
                return None;
            }
            st.lanes.insert(
                name.clone(),
                Lane {
                    busy: true,
                    ..Lane::default()
                },
            );
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        st.busy += 1;
        st.inline_runs += 1;
        st.inline.push((seq, Arc::clone(env)));
        Some((seq, handler))
    }

    /// Lets commands run inline with clones of `handler`.
    pub(crate) fn enable_inline(&self, handler: &SingleHandler) {
        let proto = Arc::new(Mutex::new(handler.clone()));
        self.lock().runs.proto = Some(proto);
    }

    /// No more inline runs: the clones are dropped (a handler may hold a clone of the bus,
    /// which holds this subscription: kept here, they would keep the bus alive once its
    /// workers exited). A run going on drops its clone when it ends.
    pub(crate) fn disable_inline(&self) {
        let dropped = std::mem::take(&mut self.lock().runs);
        drop(dropped);
    }

    /// Gives back the slot of inline run `seq`: its lane is freed, and a worker is woken when
    /// messages were queued meanwhile. With `aborted` (shutdown's deadline stopped it), the
    /// message stays recorded in flight, for the shutdown report. `kept` (the run's handler
    /// clone) is kept for the next run, under the same lock. Returns whether this was the
    /// last run of a closed queue.
    pub(crate) fn finish_inline(
        &self,
        seq: u64,
        lane: Option<&SmolStr>,
        aborted: bool,
        kept: Option<SingleHandler>,
    ) -> bool {
        let mut wake = Wake::default();
        let mut st = self.lock();
        let limit = st.limit;
        let dropped = kept.and_then(|kept| st.runs.give_back(kept, limit));
        let done = match st.inline.iter().position(|(s, _)| *s == seq) {
            Some(i) if !aborted => Some(st.inline.swap_remove(i).1),
            _ => None,
        };
        st.busy -= 1;
        st.inline_runs -= 1;
        // Only shutdown waits for the last run, and only once the queue is closed: an open
        // queue's runs need not take the `Notify`'s lock.
        let idle = st.inline_runs == 0 && st.closed;
        st.release_lane(lane);
        if st.closed && st.len == 0 {
            wake.all_workers = true;
        } else if st.len > 0 && self.idle_workers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            wake.not_empty = true;
        }
        drop(st);
        drop(dropped);
        self.wake(wake);
        if idle {
            self.inline_idle.notify_waiters();
        }
        // On the sender's thread: its next command may reuse the block.
        if let Some(done) = done {
            super::spare::keep(done);
        }
        idle
    }

    /// Whether a command runs inline right now.
    pub(crate) fn inline_running(&self) -> bool {
        self.lock().inline_runs > 0
    }

    /// Resolves once no inline run is going on; for a closed queue (see `finish_inline`).
    pub(crate) async fn inline_finished(&self) {
        loop {
            let notified = self.inline_idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().inline_runs == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops the inline runs (shutdown's deadline passed) and refuses new ones.
    pub(crate) fn abort_inline(&self) {
        self.lock().abort_inline = true;
        self.inline_abort.notify_waiters();
    }

    /// Resolves once [`abort_inline`](Self::abort_inline) was called.
    pub(crate) async fn inline_aborted(&self) {
        loop {
            let notified = self.inline_abort.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().abort_inline {
                return;
            }
            notified.await;
        }
    }
}
