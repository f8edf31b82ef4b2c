//! Messages lent to a single-message worker: the queue keeps no reference to the envelope of
//! a message such a worker holds (its in-flight slot records only the seq), and gets it back
//! when the message is completed, or when the worker's [`Lending`] is dropped unfinished
//! (ARCHITECTURE.md, "A single-message worker holds the queue's reference to its envelope").

use std::sync::Arc;

use smol_str::SmolStr;
use switchyard_core::Envelope;

use super::{Popped, Queue, State, Wake};

/// What a single-message worker holds of the message it handles when the queue keeps no
/// reference to its envelope ([`Queue::try_pop_lent`], [`Queue::complete_and_pop`]): the
/// queue's own, lent, so taking and completing a message touch its reference count no more
/// than moving it does. One per worker, for all its messages: [`hold`](Self::hold) when
/// taken, given back when completed ([`Queue::complete_lent`], [`Queue::complete_and_pop`]).
/// Dropped holding one (its worker aborted at the shutdown deadline, or unwinding), it puts
/// the envelope back into the worker's in-flight slot, so the shutdown report still names
/// the message and dead-letters it.
pub(crate) struct Lending<'q> {
    pub(super) queue: &'q Queue,
    pub(super) worker: usize,
    /// The message held: its seq and envelope (`None` between messages).
    pub(super) seq: u64,
    pub(super) env: Option<Arc<Envelope>>,
}

impl Lending<'_> {
    /// Holds `env`, of message `seq` taken lent, until it is completed; the envelope, to
    /// handle the message with.
    #[inline]
    pub(crate) fn hold(&mut self, seq: u64, env: Arc<Envelope>) -> &Arc<Envelope> {
        self.seq = seq;
        self.env.insert(env)
    }

    /// The message held (its seq and envelope), given back.
    #[inline]
    fn give_back(&mut self) -> (u64, Option<Arc<Envelope>>) {
        (self.seq, self.env.take())
    }
}

impl Drop for Lending<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(env) = self.env.take() {
            self.queue.restore(self.worker, self.seq, env);
        }
    }
}

impl State {
    /// A lent envelope dropped unfinished ([`Lending`]'s drop) goes back into its slot, for the
    /// shutdown report.
    #[cold]
    fn restore(&mut self, worker: usize, seq: u64, env: Arc<Envelope>) {
        if let Some(slot) = self
            .in_flight
            .get_mut(worker)
            .and_then(|slots| slots.iter_mut().find(|(s, _)| *s == seq))
        {
            slot.1.get_or_insert(env);
        }
    }
}

impl Queue {
    /// [`try_pop`](Self::try_pop), the envelope lent: the worker holds it in its
    /// [`Lending`] at once ([`Lending::hold`]) and completes the message with
    /// [`complete_lent`](Self::complete_lent) or [`complete_and_pop`](Self::complete_and_pop).
    pub(crate) fn try_pop_lent(&self, lending: &Lending<'_>) -> Popped {
        self.try_pop_with(lending.worker, true)
    }

    /// What `worker` holds of the messages it takes lent (none yet).
    pub(crate) fn lending(&self, worker: usize) -> Lending<'_> {
        Lending {
            queue: self,
            worker,
            seq: 0,
            env: None,
        }
    }

    /// [`Lending`]'s drop while it held a message: its envelope goes back into its slot.
    #[cold]
    #[inline(never)]
    fn restore(&self, worker: usize, seq: u64, env: Arc<Envelope>) {
        self.lock().restore(worker, seq, env);
    }

    /// [`complete`](Self::complete) of the message `lending` holds, its envelope given back.
    pub(crate) fn complete_lent(&self, lending: &mut Lending<'_>, lane: Option<&SmolStr>) {
        let (seq, back) = lending.give_back();
        self.complete_with(lending.worker, seq, lane, back);
    }

    /// [`complete_lent`](Self::complete_lent), then a non-waiting
    /// [`try_pop_lent`](Self::try_pop_lent) for the same worker, under one lock: what a
    /// worker does between two messages when its handler is ready at once.
    pub(crate) fn complete_and_pop(
        &self,
        lending: &mut Lending<'_>,
        lane: Option<&SmolStr>,
    ) -> Popped {
        let worker = lending.worker;
        let (seq, back) = lending.give_back();
        let mut wake = Wake::default();
        let mut st = self.lock();
        let done = self.complete_locked(&mut st, worker, seq, lane, back, &mut wake);
        let popped = self.take_locked(&mut st, worker, true, &mut wake);
        drop(st);
        if matches!(popped, Popped::Empty) {
            // What is left waits on lanes other workers hold: nobody else could take it now.
            wake.not_empty = false;
        }
        self.wake(wake);
        drop(done);
        popped
    }
}
