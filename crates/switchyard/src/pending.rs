//! The pending count: messages the bus accepted and has not settled yet.
//!
//! Every accepted message carries an [`Accepted`] guard from the moment it is counted until it
//! is settled. The guard is the only way to take the count back: [`Accepted::settle`] says
//! how the message ended (counted for the shutdown report), and dropping a guard that was
//! never settled (a publish refused or cancelled while it waited for room, a worker aborted
//! at the shutdown deadline) releases the count all the same. So a message can neither be
//! settled twice nor be left counted, and `run_until_idle` cannot hang on a lost count.
//! One holder is its message's guard itself: an inline command run's slot (`inline.rs`),
//! which holds the bus anyway and takes the count back once, when it finishes or is dropped
//! ([`Pending::accept_held`]), so a command run on its sender's task counts no reference.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use smol_str::SmolStr;
use tokio::sync::Notify;

/// How an accepted message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Handled: acked or replied (or, for a transport delivery, not meant for this
    /// subscription and acked at once).
    Acked,
    /// Sent to the dead-letter sink by its handler's failure, a rejection, a decode failure
    /// or an eviction.
    DeadLettered,
    /// Handed back to its transport to come again later (a delayed message not yet due).
    Nacked,
    /// Reported by shutdown (left over or returned to the transport): not counted as drained.
    LeftOver,
}

/// The counters behind every accepted message of one bus.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Accepted messages not yet settled, plus the deliveries a transport still owes.
    count: CachePadded<AtomicUsize>,
    /// Messages settled other than by shutdown (the shutdown report's `drained`).
    settled: CachePadded<AtomicU64>,
    /// Deliveries counted at publish time that have not arrived from the transport yet.
    expected: AtomicUsize,
    /// Notified when the count drops to zero.
    idle: Notify,
    /// Tasks in [`idle`](Self::idle): a count that drops to zero notifies only when there
    /// are some (`notify_waiters` takes a lock, and with traffic that ebbs to zero after each
    /// message, as sequential commands do, it would take it once per message).
    idle_waiters: AtomicUsize,
    /// Notified when `expected` drops to zero: the transport owes nothing more.
    owed_none: Notify,
    /// The readers deliveries are owed to, live while a pump reads for them (`OwedTo`).
    readers: Mutex<HashMap<Reader, Weak<OwedTo>>>,
}

/// Who reads a transport's deliveries for this bus: a consumer group (the subscriptions of
/// one name share it, the transport delivers each message to one of them) or one
/// subscription consuming on its own (ephemeral, every session's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Reader {
    /// A consumer group, by its subscriptions' name.
    Group(SmolStr),
    /// One subscription, by its id.
    Own(u64),
}

/// The deliveries a transport owes one [`Reader`] of this bus (part of `Pending::expected`).
/// Held by the pumps reading for it (and by a publish while it counts): when the last one
/// stops (its subscriptions dropped, or their transport streams ended), nothing can receive
/// what is still owed here, so the count is released, and neither `run_until_idle` nor the
/// shutdown waits for deliveries that will never arrive. A durable transport keeps them
/// (for the group's next consumer); one that keeps nothing has no reader to lose them to.
#[derive(Debug)]
pub(crate) struct OwedTo {
    n: AtomicUsize,
    pending: Arc<Pending>,
}

impl OwedTo {
    /// Takes one owed delivery off, if any is left.
    fn take_one(&self) -> bool {
        self.n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Drop for OwedTo {
    fn drop(&mut self) {
        let n = self.n.swap(0, Ordering::AcqRel);
        self.pending.unowe(n);
    }
}

impl Pending {
    /// Counts one accepted message; the guard takes the count back.
    #[inline]
    pub(crate) fn accept(self: &Arc<Self>) -> Accepted {
        self.count.fetch_add(1, Ordering::AcqRel);
        Accepted {
            pending: Arc::clone(self),
        }
    }

    /// Counts one accepted message whose holder keeps the bus anyway and is its guard itself
    /// (an inline command run's slot, `inline.rs`): no [`Accepted`] and no reference count of
    /// its own. The holder takes the count back exactly once, with
    /// [`settle_held`](Self::settle_held) or [`release_held`](Self::release_held), also when
    /// it is dropped unfinished.
    #[inline]
    pub(crate) fn accept_held(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// A message counted by [`accept_held`](Self::accept_held) ended as `how` (as
    /// [`Accepted::settle`] and the guard's drop).
    #[inline]
    pub(crate) fn settle_held(&self, how: Settled) {
        self.count_settled(how);
        self.release(1);
    }

    /// Counts a message that ended as `how` among the settled ones (a left-over is not).
    #[inline]
    fn count_settled(&self, how: Settled) {
        if how != Settled::LeftOver {
            self.settled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message counted by [`accept_held`](Self::accept_held) is let go of unsettled (as
    /// an [`Accepted`] dropped unsettled).
    #[inline]
    pub(crate) fn release_held(&self) {
        self.release(1);
    }

    /// The owed count of `reader`, shared with its other pumps: kept alive by the pumps that
    /// read for it (see [`OwedTo`]).
    pub(crate) fn reader(self: &Arc<Self>, reader: Reader) -> Arc<OwedTo> {
        let mut readers = self.readers.lock();
        if let Some(live) = readers.get(&reader).and_then(Weak::upgrade) {
            return live;
        }
        readers.retain(|_, r| r.strong_count() > 0);
        let owed = Arc::new(OwedTo {
            n: AtomicUsize::new(0),
            pending: Arc::clone(self),
        });
        readers.insert(reader, Arc::downgrade(&owed));
        owed
    }

    /// Counts one delivery a transport will make to each of `readers`. The count stays until
    /// each arrives ([`arrival`](Self::arrival)), its reader stops reading (the last
    /// [`OwedTo`] dropped), or the returned expectation is dropped without being
    /// [kept](Expectation::keep) (the publish failed).
    pub(crate) fn expect(self: &Arc<Self>, readers: OwedReaders) -> Expectation {
        let n = readers.len();
        // The totals first: a reader's count is taken off them only after it was taken off
        // the reader's.
        self.count.fetch_add(n, Ordering::AcqRel);
        self.expected.fetch_add(n, Ordering::AcqRel);
        for r in &readers {
            r.n.fetch_add(1, Ordering::AcqRel);
        }
        Expectation { readers }
    }

    /// A delivery arrived from the transport for `reader`: one that was expected (already
    /// counted) or a new one (published elsewhere, redelivered, or older than this process).
    pub(crate) fn arrival(self: &Arc<Self>, reader: &OwedTo) -> Accepted {
        if reader.take_one() {
            // Its count is taken over by the guard.
            if self.expected.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.owed_none.notify_waiters();
            }
        } else {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        Accepted {
            pending: Arc::clone(self),
        }
    }

    /// `n` owed deliveries will not arrive: no longer owed nor pending.
    fn unowe(&self, n: usize) {
        if n == 0 {
            return;
        }
        if self.expected.fetch_sub(n, Ordering::AcqRel) == n {
            self.owed_none.notify_waiters();
        }
        self.release(n);
    }

    /// Waits until the transport delivered every delivery counted at publish time.
    pub(crate) async fn owed_delivered(&self) {
        loop {
            let notified = self.owed_none.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.expected.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops waiting for the deliveries still owed (shutdown, once intake stopped): their
    /// count is released. Returns how many there were.
    pub(crate) fn forget_owed(&self) -> usize {
        let readers: Vec<_> = self
            .readers
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let n = readers.iter().map(|r| r.n.swap(0, Ordering::AcqRel)).sum();
        self.unowe(n);
        n
    }

    /// Messages accepted and not yet settled.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Messages settled so far, other than by shutdown.
    pub(crate) fn settled(&self) -> u64 {
        self.settled.load(Ordering::Relaxed)
    }

    /// Waits until no accepted message is left unsettled.
    pub(crate) async fn idle(&self) {
        // Registered before the count is read (both sequentially consistent, as the count's
        // decrement and the release's read of this): a release that reads no waiter comes
        // before that read of the count, which then sees its decrement.
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        let _registered = Unregister(&self.idle_waiters);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    #[inline]
    fn release(&self, n: usize) {
        // Saturating: the deliveries of a publish that reported an error may have settled.
        let before = match n {
            1 => self.count.fetch_sub(1, Ordering::SeqCst),
            _ => self
                .count
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                    Some(p.saturating_sub(n))
                })
                .unwrap_or(0),
        };
        if n > 0 && before <= n && self.idle_waiters.load(Ordering::SeqCst) > 0 {
            self.idle.notify_waiters();
        }
    }
}

/// Takes one registration back when dropped (also when the waiting future is dropped).
struct Unregister<'a>(&'a AtomicUsize);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One accepted message's place in the pending count: settle it once with
/// [`settle`](Self::settle); dropped unsettled, it releases the count without counting the
/// message as settled.
#[must_use = "an accepted message must be settled (dropping the guard releases its count)"]
#[derive(Debug)]
pub(crate) struct Accepted {
    pending: Arc<Pending>,
}

impl Accepted {
    /// The message ended as `how`; its count is released (by the drop that follows).
    #[inline]
    pub(crate) fn settle(self, how: Settled) {
        self.pending.count_settled(how);
    }
}

impl Drop for Accepted {
    #[inline]
    fn drop(&mut self) {
        self.pending.release(1);
    }
}

/// Deliveries a transport owes local subscriptions for one publish; see [`Pending::expect`].
#[must_use = "drop the expectation when the publish failed, keep it when it went out"]
pub(crate) struct Expectation {
    readers: OwedReaders,
}

/// The readers one publish owes a delivery ([`Pending::expect`]): inline for the usual 0 or 1
/// (one consumer group, or none on this node), so a transport publish allocates nothing for
/// them.
pub(crate) type OwedReaders = smallvec::SmallVec<[Arc<OwedTo>; 1]>;

impl Expectation {
    /// The publish went out: the deliveries will arrive and be settled one by one.
    pub(crate) fn keep(mut self) {
        self.readers.clear();
    }
}

impl Drop for Expectation {
    fn drop(&mut self) {
        // Only what is still owed: a delivery that arrived meanwhile took its count over
        // (`arrival`), and its guard releases it.
        for r in &self.readers {
            if r.take_one() {
                r.pending.unowe(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` deliveries owed to one reader (whose pump, holding it, is `r`).
    fn owe(p: &Arc<Pending>, r: &Arc<OwedTo>, n: usize) -> Expectation {
        p.expect(smallvec::smallvec![Arc::clone(r); n])
    }

    #[test]
    fn a_dropped_guard_releases_without_settling() {
        let p = Arc::new(Pending::default());
        let a = p.accept();
        let b = p.accept();
        assert_eq!(p.count(), 2);
        drop(a);
        assert_eq!((p.count(), p.settled()), (1, 0));
        b.settle(Settled::Acked);
        assert_eq!((p.count(), p.settled()), (0, 1));
    }

    #[test]
    fn left_over_is_not_counted_as_settled() {
        let p = Arc::new(Pending::default());
        p.accept().settle(Settled::LeftOver);
        assert_eq!((p.count(), p.settled()), (0, 0));
    }

    #[test]
    fn an_expectation_is_released_unless_kept_and_arrivals_consume_it() {
        let p = Arc::new(Pending::default());
        let r = p.reader(Reader::Own(1));
        drop(owe(&p, &r, 3));
        assert_eq!(p.count(), 0);
        owe(&p, &r, 2).keep();
        assert_eq!(p.count(), 2);
        let first = p.arrival(&r);
        assert_eq!(p.count(), 2, "an expected delivery is already counted");
        let second = p.arrival(&r);
        let extra = p.arrival(&r);
        assert_eq!(p.count(), 3, "an unexpected delivery is counted on arrival");
        drop((first, second, extra));
        assert_eq!(p.count(), 0);
    }

    #[test]
    fn forgetting_the_owed_releases_their_count() {
        let p = Arc::new(Pending::default());
        let r = p.reader(Reader::Group("g".into()));
        owe(&p, &r, 3).keep();
        let arrived = p.arrival(&r);
        assert_eq!(p.forget_owed(), 2);
        assert_eq!(p.count(), 1, "the arrived one is still pending");
        drop(arrived);
        assert_eq!((p.count(), p.forget_owed()), (0, 0));
    }

    #[test]
    fn what_is_owed_to_a_reader_that_stopped_is_released() {
        let p = Arc::new(Pending::default());
        let gone = p.reader(Reader::Own(1));
        let group = p.reader(Reader::Group("g".into()));
        let member = p.reader(Reader::Group("g".into()));
        assert!(
            Arc::ptr_eq(&group, &member),
            "a group's members share its count"
        );
        p.expect(smallvec::smallvec![gone.clone(), group.clone()])
            .keep();
        assert_eq!(p.count(), 2);
        drop(gone);
        assert_eq!(
            p.count(),
            1,
            "the stopped reader's delivery is no longer owed"
        );
        drop(group);
        assert_eq!(p.count(), 1, "the group still has a member reading");
        let arrived = p.arrival(&member);
        drop(member);
        assert_eq!(p.count(), 1);
        drop(arrived);
        assert_eq!((p.count(), p.forget_owed()), (0, 0));
    }

    #[tokio::test]
    async fn idle_wakes_when_the_last_message_settles() {
        let p = Arc::new(Pending::default());
        let a = p.accept();
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.idle().await }
        });
        // Until the waiter has registered, settling would not need to notify anyone.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while p.idle_waiters.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter registers");
        assert!(!waiter.is_finished(), "one message is still pending");
        a.settle(Settled::Acked);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle returns once the count drops to zero")
            .expect("the waiter does not panic");
        assert_eq!(p.idle_waiters.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn owed_delivered_waits_for_the_last_arrival() {
        let p = Arc::new(Pending::default());
        let r = p.reader(Reader::Own(1));
        owe(&p, &r, 2).keep();
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.owed_delivered().await }
        });
        let first = p.arrival(&r);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one delivery is still owed");
        let second = p.arrival(&r);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("owed_delivered returns once the last owed delivery arrived")
            .expect("the waiter does not panic");
        drop((first, second));
    }

    #[test]
    fn an_expectation_dropped_after_an_arrival_releases_only_what_is_still_owed() {
        // A publish that reported an error after the transport delivered one of its two
        // deliveries: the arrived one's guard holds its count. Before, the expectation's drop
        // released both (clamped at zero) and the guard's release then wrapped the count
        // around to `usize::MAX`, so `run_until_idle` never returned.
        let p = Arc::new(Pending::default());
        let r = p.reader(Reader::Own(1));
        let expectation = owe(&p, &r, 2);
        let arrived = p.arrival(&r);
        drop(expectation);
        assert_eq!(p.count(), 1, "the arrived delivery is still pending");
        arrived.settle(Settled::Acked);
        assert_eq!((p.count(), p.settled()), (0, 1));
    }

    /// Accepts on one thread, settles on another, while a third reads the count: with a guard
    /// held throughout, it must never read zero. (For a count split across counters, as
    /// tried on branch h-pend: with `accepted` read before `released`, an accept and a release
    /// between the two reads made them equal, and this test failed within seconds. A
    /// rendezvous channel keeps accepts and releases a message or two apart.)
    #[test]
    fn the_idle_check_never_sees_zero_while_a_message_is_pending() {
        const N: usize = 200_000;
        let p = Arc::new(Pending::default());
        let anchor = p.accept();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checker = std::thread::spawn({
            let (p, stop) = (p.clone(), stop.clone());
            move || {
                let mut checks = 0u64;
                while !stop.load(Ordering::Acquire) {
                    assert!(p.count() >= 1, "idle while a message is pending");
                    checks += 1;
                }
                checks
            }
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Accepted>(0);
        let settler = std::thread::spawn(move || {
            for accepted in rx {
                accepted.settle(Settled::Acked);
            }
        });
        for _ in 0..N {
            tx.send(p.accept()).expect("the settler runs");
        }
        drop(tx);
        settler.join().expect("the settler does not panic");
        stop.store(true, Ordering::Release);
        let checks = checker.join().expect("the idle check never saw zero");
        assert!(checks > 0);
        assert_eq!((p.count(), p.settled()), (1, N as u64));
        anchor.settle(Settled::Acked);
        assert_eq!(p.count(), 0);
    }

    /// Many rounds of messages settled by two threads while a task waits for idle: the wait
    /// returns every time (no missed last release), and only once all were settled.
    #[test]
    fn idle_returns_after_the_last_release_of_two_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let p = Arc::new(Pending::default());
        for round in 0..2_000 {
            let n = 1 + round % 7;
            let guards: Vec<Accepted> = (0..n).map(|_| p.accept()).collect();
            let settled_before = p.settled();
            let waiter = rt.spawn({
                let p = p.clone();
                async move { p.idle().await }
            });
            let (a, b): (Vec<_>, Vec<_>) = guards
                .into_iter()
                .enumerate()
                .partition(|(i, _)| i % 2 == 0);
            let threads: Vec<_> = [a, b]
                .into_iter()
                .map(|half| {
                    std::thread::spawn(move || {
                        for (_, g) in half {
                            g.settle(Settled::Acked);
                        }
                    })
                })
                .collect();
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                    .await
                    .expect("idle returns after the last release")
                    .expect("the waiter does not panic");
            });
            assert_eq!(
                p.settled() - settled_before,
                n as u64,
                "idle returned before every message was settled (round {round})"
            );
            for t in threads {
                t.join().expect("a settler does not panic");
            }
        }
        assert_eq!(p.count(), 0);
    }
}
