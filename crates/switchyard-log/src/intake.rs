//! The hand-over between publishers and the writer thread.
//!
//! A publish encodes its envelopes (outside any lock), then under one short lock appends
//! them to the open batch, takes a ticket (the sequence number of the publish) and leaves
//! its task's waker. The writer takes the whole open batch at once, writes and syncs it,
//! then settles every ticket of the batch in one step (one atomic store, plus a failure
//! record if the batch failed) and wakes the waiting tasks. So a publish costs no channel
//! message, no oneshot and no allocation of its own; what is left per publish is its
//! encoding, a copy into the batch and the wake-up of its task.
//!
//! Waking a task from the writer thread (outside the runtime) goes through the runtime's
//! shared queue under its lock, and cost the writer ~0.1-0.2 µs per publish with 256 in
//! flight, in series before the next round. So for a large batch the writer wakes only its
//! first publisher and leaves the other wakers in a relay list; the first publisher polled
//! after that (on a runtime worker) wakes them, which schedules them on its own worker's
//! queue without a lock. A relay nobody took within [`RELAY_WAIT`] (its task not polled, or
//! dropped unpolled: a dropped publish also runs it) is woken by the writer itself, at the
//! next round at the latest, and when the writer stops.
//!
//! Requests other than appends (flush, retention, close) are rare and keep a oneshot reply.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::AppendError;
use crate::stream::lock;

/// Where the writer answers a flush, retention run or close.
pub(crate) type Reply = oneshot::Sender<Result<(), AppendError>>;

/// A request to the writer other than an append.
pub(crate) enum Control {
    /// Sync everything and write pending commits.
    Flush(Reply),
    /// Enforce retention now.
    Retention(Reply),
    /// Flush, then stop.
    Close(Reply),
}

/// Encoded envelopes back to back in one buffer, with the stream and end of each.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// The encodings, concatenated.
    pub bytes: Vec<u8>,
    /// (stream index, end of its encoding in `bytes`) of each record.
    pub ends: Vec<(usize, usize)>,
}

impl Records {
    /// (stream index, encoding) of each record, in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(stream, end)| {
            let rec = self.bytes.get(start..end).unwrap_or(&[]);
            start = end;
            (stream, rec)
        })
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// Why a ticket did not end well.
#[derive(Debug)]
pub(crate) enum Unsettled {
    /// The batch holding it could not be written or synced.
    Failed(AppendError),
    /// The writer stopped before the batch holding it was written.
    Stopped,
}

/// Tickets of a batch that failed, kept until each of their waiting publishers took the error.
struct Failure {
    start: u64,
    end: u64,
    error: AppendError,
    /// Publishers of the batch that have not collected the error yet.
    waiting: usize,
}

struct State {
    /// Records of the publishes not taken by the writer yet.
    records: Records,
    /// Publishes in `records`.
    publishes: usize,
    /// The ticket of the next publish.
    next_ticket: u64,
    control: Vec<Control>,
    /// (ticket, waker) of each publish not settled yet, in ticket order.
    waiters: VecDeque<(u64, Waker)>,
    failures: Vec<Failure>,
    /// Publishes and requests are taken (false once close was asked or the writer stopped).
    accepting: bool,
    /// The writer has stopped: a ticket not settled by now never will be.
    stopped: bool,
    /// Every handle is gone: the writer syncs and stops.
    disconnected: bool,
    /// Set while the writer sleeps: the publish that brings `publishes` to this wakes it
    /// (any request wakes it at once).
    wake_at: Option<usize>,
    /// Wakers of settled publishes left for the next publisher polled to wake (see the
    /// module docs), and when they were left.
    relay: Vec<Waker>,
    relay_since: Option<Instant>,
}

/// A settled batch with more waiting publishers than this has its wake-ups relayed (see the
/// module docs); smaller ones are woken by the writer, which is cheap for a few and spares
/// them the relay's extra hop.
const RELAY_MIN: usize = 16;

/// How long a relay may wait for a publisher to take it before the writer wakes its
/// publishers itself.
pub(crate) const RELAY_WAIT: Duration = Duration::from_micros(200);

/// What the writer took for one round.
pub(crate) struct Taken {
    /// Tickets of the publishes whose records were taken.
    pub start: u64,
    pub end: u64,
    pub control: Vec<Control>,
    /// Every handle is gone.
    pub disconnected: bool,
}

/// The shared hand-over point (see the module docs).
pub(crate) struct Intake {
    state: Mutex<State>,
    /// The writer sleeps on it.
    writer: Condvar,
    /// Every ticket below this is settled.
    settled: AtomicU64,
    /// Some failure is waiting to be collected.
    failed: AtomicBool,
    /// Something is waiting for the writer (lets it poll without the lock).
    pending: AtomicBool,
    /// `State::relay` holds wakers (lets publishers look without the lock).
    relayed: AtomicBool,
}

impl Intake {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                records: Records::default(),
                publishes: 0,
                next_ticket: 0,
                control: Vec::new(),
                waiters: VecDeque::new(),
                failures: Vec::new(),
                accepting: true,
                stopped: false,
                disconnected: false,
                wake_at: None,
                relay: Vec::new(),
                relay_since: None,
            }),
            writer: Condvar::new(),
            settled: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            relayed: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Adds the records of one publish (`ends` relative to `bytes`) to the open batch and
    /// leaves `waker` to be woken when it is settled. `None` when the log no longer takes
    /// publishes.
    pub fn submit(&self, bytes: &[u8], ends: &[(usize, usize)], waker: Waker) -> Option<u64> {
        let mut st = self.state();
        if !st.accepting {
            return None;
        }
        let base = st.records.bytes.len();
        st.records.bytes.extend_from_slice(bytes);
        st.records
            .ends
            .extend(ends.iter().map(|&(stream, end)| (stream, base + end)));
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.publishes += 1;
        st.waiters.push_back((ticket, waker));
        let wake = st.wake_at.is_some_and(|n| st.publishes >= n);
        if wake {
            st.wake_at = None;
        }
        self.pending.store(true, Ordering::Release);
        drop(st);
        if wake {
            self.writer.notify_one();
        }
        Some(ticket)
    }

    /// Queues a request; gives it back when the log no longer takes requests. A close stops
    /// further publishes and requests at once.
    pub fn request(&self, c: Control) -> Result<(), Control> {
        let mut st = self.state();
        if !st.accepting {
            return Err(c);
        }
        if matches!(c, Control::Close(_)) {
            st.accepting = false;
        }
        st.control.push(c);
        st.wake_at = None;
        self.pending.store(true, Ordering::Release);
        drop(st);
        self.writer.notify_one();
        Ok(())
    }

    /// Every handle is gone: the writer syncs, writes offsets and stops.
    pub fn disconnect(&self) {
        let mut st = self.state();
        st.accepting = false;
        st.disconnected = true;
        st.wake_at = None;
        self.pending.store(true, Ordering::Release);
        drop(st);
        self.writer.notify_one();
    }

    /// Whether `ticket` is settled (without the lock).
    pub fn is_settled(&self, ticket: u64) -> bool {
        self.settled.load(Ordering::Acquire) > ticket
    }

    /// Whether the state of a ticket is final: `Ready` with its outcome, else `Pending` with
    /// `cx`'s waker left for the writer.
    pub fn poll_ticket(&self, ticket: u64, cx: &mut Context<'_>) -> Poll<Result<(), Unsettled>> {
        if self.settled.load(Ordering::Acquire) > ticket {
            return Poll::Ready(self.outcome(ticket));
        }
        let mut st = self.state();
        if self.settled.load(Ordering::Acquire) > ticket {
            drop(st);
            return Poll::Ready(self.outcome(ticket));
        }
        if st.stopped {
            return Poll::Ready(Err(Unsettled::Stopped));
        }
        // Unsettled tickets keep their entry (settling removes it under this lock).
        if let Ok(i) = st.waiters.binary_search_by_key(&ticket, |w| w.0)
            && let Some(w) = st.waiters.get_mut(i)
            && !w.1.will_wake(cx.waker())
        {
            w.1 = cx.waker().clone();
        }
        Poll::Pending
    }

    /// The outcome of a settled ticket (taken once per ticket).
    fn outcome(&self, ticket: u64) -> Result<(), Unsettled> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.state();
        match take_failure(&mut st.failures, ticket) {
            Some(e) => {
                self.failed
                    .store(!st.failures.is_empty(), Ordering::Release);
                Err(Unsettled::Failed(e))
            }
            None => Ok(()),
        }
    }

    /// A publish stopped waiting for `ticket` before taking its outcome (its future was
    /// dropped): its records are still written, but nobody is woken or told for it.
    pub fn abandon(&self, ticket: u64) {
        {
            let mut st = self.state();
            if self.settled.load(Ordering::Acquire) > ticket {
                if take_failure(&mut st.failures, ticket).is_some() {
                    self.failed
                        .store(!st.failures.is_empty(), Ordering::Release);
                }
            } else if let Ok(i) = st.waiters.binary_search_by_key(&ticket, |w| w.0) {
                st.waiters.remove(i);
            }
        }
        // A publish dropped after the writer woke it may hold the relay for others. Run after
        // the lock, not before: a settle between the two (the publish dropped while its batch
        // was being settled) has left the relay by then.
        self.run_relay();
    }

    /// Writer: whether anything waits for it (without the lock).
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Writer: waits until anything waits for it or `timeout` passed; `false` on timeout.
    pub fn wait_any(&self, timeout: Duration) -> bool {
        let mut st = self.state();
        if !has_work(&st) {
            st.wake_at = Some(1);
            st = match self.writer.wait_timeout(st, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            st.wake_at = None;
        }
        has_work(&st)
    }

    /// Writer: publishes in the open batch, and whether a request or disconnection waits.
    pub fn open(&self) -> (usize, bool) {
        let st = self.state();
        (st.publishes, !st.control.is_empty() || st.disconnected)
    }

    /// Writer: sleeps until the open batch holds `target` publishes, a request comes or
    /// `timeout` passed; returns what `open` returns.
    pub fn wait_for(&self, target: usize, timeout: Duration) -> (usize, bool) {
        let mut st = self.state();
        let waiting =
            |st: &State| st.publishes < target && st.control.is_empty() && !st.disconnected;
        if waiting(&st) {
            st.wake_at = Some(target);
            st = match self.writer.wait_timeout(st, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            st.wake_at = None;
        }
        (st.publishes, !st.control.is_empty() || st.disconnected)
    }

    /// Writer: takes the open batch (swapped with `spare`, which must be empty) and the
    /// requests.
    pub fn take(&self, spare: &mut Records) -> Taken {
        let mut st = self.state();
        std::mem::swap(&mut st.records, spare);
        let start = st.next_ticket - st.publishes as u64;
        st.publishes = 0;
        self.pending.store(false, Ordering::Release);
        Taken {
            start,
            end: st.next_ticket,
            control: std::mem::take(&mut st.control),
            disconnected: st.disconnected,
        }
    }

    /// Writer: settles every ticket below `end` with `result` and wakes their publishers
    /// (`wake` is a reused buffer, left empty).
    ///
    /// A batch of more than [`RELAY_MIN`] waiting publishers has only its first woken here,
    /// the others are left in the relay list for the first publisher polled (see the module
    /// docs). A relay still untaken from an earlier batch is woken here.
    pub fn settle(&self, end: u64, result: Result<(), AppendError>, wake: &mut Vec<Waker>) {
        let mut st = self.state();
        let start = self.settled.load(Ordering::Relaxed);
        wake.append(&mut st.relay);
        st.relay_since = None;
        let earlier = wake.len();
        while st.waiters.front().is_some_and(|w| w.0 < end) {
            if let Some((_, w)) = st.waiters.pop_front() {
                wake.push(w);
            }
        }
        let waiting = wake.len() - earlier;
        if let Err(error) = result
            && waiting > 0
        {
            st.failures.push(Failure {
                start,
                end,
                error,
                waiting,
            });
            self.failed.store(true, Ordering::Release);
        }
        // Before the relay is left and anyone is woken: a publisher that sees the relay
        // sees its own ticket settled.
        self.settled.store(end, Ordering::Release);
        if waiting > RELAY_MIN {
            // Keeps this batch's first waker (the one at `earlier`) to wake here.
            st.relay.extend(wake.drain(earlier + 1..));
            st.relay_since = Some(Instant::now());
        }
        self.relayed.store(!st.relay.is_empty(), Ordering::Release);
        drop(st);
        for w in wake.drain(..) {
            w.wake();
        }
    }

    /// Wakes the publishers in the relay list, if any (called by publishers; cheap when the
    /// list is empty).
    pub fn run_relay(&self) {
        if !self.relayed.load(Ordering::Acquire) {
            return;
        }
        let relay = {
            let mut st = self.state();
            st.relay_since = None;
            self.relayed.store(false, Ordering::Release);
            std::mem::take(&mut st.relay)
        };
        for w in relay {
            w.wake();
        }
    }

    /// Writer: wakes the relay list itself when it has waited [`RELAY_WAIT`] for a
    /// publisher to take it. Returns how long until it would, when a relay is waiting.
    pub fn relay_overdue(&self) -> Option<Duration> {
        if !self.relayed.load(Ordering::Acquire) {
            return None;
        }
        let since = self.state().relay_since?;
        let left = RELAY_WAIT.saturating_sub(since.elapsed());
        if left.is_zero() {
            self.run_relay();
            return None;
        }
        Some(left)
    }

    /// Writer, on its way out (however it ends): refuses everything from now on and wakes
    /// every publisher still waiting, which then fails with "shutting down".
    pub fn stop(&self) {
        let mut st = self.state();
        st.accepting = false;
        st.stopped = true;
        let waiters = std::mem::take(&mut st.waiters);
        let relay = std::mem::take(&mut st.relay);
        st.relay_since = None;
        self.relayed.store(false, Ordering::Release);
        // Requests that were never answered: dropping their reply tells their sender.
        let control = std::mem::take(&mut st.control);
        drop(st);
        drop(control);
        for w in relay {
            w.wake();
        }
        for (_, w) in waiters {
            w.wake();
        }
    }
}

thread_local! {
    /// The encodings of the publish being submitted on this thread, reused so a publish
    /// allocates nothing of its own.
    static SCRATCH: RefCell<Records> = const {
        RefCell::new(Records {
            bytes: Vec::new(),
            ends: Vec::new(),
        })
    };
}

/// The scratch buffer is kept unless a publish made it larger than this.
const KEEP_SCRATCH: usize = 1 << 20;

/// Runs `f` on this thread's scratch buffer (emptied), used in place; on a new one while a
/// thread is being torn down (or, never in this crate, when `f` itself asks for scratch).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Records) -> R) -> R {
    let mut f = Some(f);
    let done = SCRATCH
        .try_with(|s| {
            let mut out = s.try_borrow_mut().ok()?;
            // Taken only with the buffer in hand: a `None` here leaves `f` for the fallback.
            let f = f.take()?;
            out.clear();
            let r = f(&mut out);
            if out.bytes.capacity() > KEEP_SCRATCH {
                *out = Records::default();
            }
            Some(r)
        })
        .ok()
        .flatten();
    match (done, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut Records::default()),
        // `done` is `None` only where `f` was not taken.
        (None, None) => unreachable!("the scratch closure took `f` and returned nothing"),
    }
}

/// Waits for the writer to settle one publish's ticket. Dropped before, it tells the intake
/// (the records are still written; nobody is woken for them).
pub(crate) struct Settled<'a> {
    intake: &'a Intake,
    ticket: u64,
    /// The waker was left with the records in this very poll.
    first: bool,
    done: bool,
}

impl<'a> Settled<'a> {
    /// Waits for `ticket`, whose waker was left with its records in the current poll.
    pub fn new(intake: &'a Intake, ticket: u64) -> Self {
        Self {
            intake,
            ticket,
            first: true,
            done: false,
        }
    }
}

impl Future for Settled<'_> {
    type Output = Result<(), Unsettled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Whoever is polled first after a settle wakes the rest of its batch.
        self.intake.run_relay();
        let first = std::mem::replace(&mut self.first, false);
        let result = if first && !self.intake.is_settled(self.ticket) {
            // The writer holds this poll's waker already: nothing to update. Settling stores
            // the new mark before waking, so a settle racing with this check wakes us again.
            Poll::Pending
        } else {
            self.intake.poll_ticket(self.ticket, cx)
        };
        if result.is_ready() {
            self.done = true;
        }
        result
    }
}

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.intake.abandon(self.ticket);
        }
    }
}

fn has_work(st: &State) -> bool {
    st.publishes > 0 || !st.control.is_empty() || st.disconnected
}

/// Takes one publisher's share of the failure covering `ticket`, if any.
fn take_failure(failures: &mut Vec<Failure>, ticket: u64) -> Option<AppendError> {
    let i = failures
        .iter()
        .position(|f| f.start <= ticket && ticket < f.end)?;
    let f = failures.get_mut(i)?;
    f.waiting = f.waiting.saturating_sub(1);
    let error = f.error.clone();
    if f.waiting == 0 {
        failures.swap_remove(i);
    }
    Some(error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    fn poll(intake: &Intake, ticket: u64) -> Poll<Result<(), Unsettled>> {
        intake.poll_ticket(ticket, &mut Context::from_waker(Waker::noop()))
    }

    fn submit(intake: &Intake, w: Waker) -> u64 {
        intake.submit(b"rec", &[(0, 3)], w).unwrap()
    }

    #[test]
    fn a_batch_is_taken_whole_and_settling_wakes_only_its_publishers() {
        let intake = Intake::new();
        let (c0, w0) = waker();
        let (c1, w1) = waker();
        let (t0, t1) = (submit(&intake, w0.clone()), submit(&intake, w1));
        assert_eq!((t0, t1), (0, 1));
        let mut batch = Records::default();
        let taken = intake.take(&mut batch);
        assert_eq!((taken.start, taken.end), (0, 2));
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![(0, &b"rec"[..]); 2]);
        // A publish after the take belongs to the next batch.
        let (c2, w2) = waker();
        let t2 = submit(&intake, w2);
        assert!(
            intake
                .poll_ticket(t0, &mut Context::from_waker(&w0))
                .is_pending()
        );
        intake.settle(taken.end, Ok(()), &mut Vec::new());
        assert_eq!(c0.0.load(Ordering::SeqCst), 1);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert_eq!(c2.0.load(Ordering::SeqCst), 0, "not in the settled batch");
        assert!(matches!(poll(&intake, t0), Poll::Ready(Ok(()))));
        assert!(matches!(poll(&intake, t1), Poll::Ready(Ok(()))));
        assert!(poll(&intake, t2).is_pending());
    }

    #[test]
    fn a_failed_batch_fails_each_of_its_publishers_once_and_is_then_forgotten() {
        let intake = Intake::new();
        let tickets: Vec<u64> = (0..3).map(|_| submit(&intake, waker().1)).collect();
        let taken = intake.take(&mut Records::default());
        intake.settle(
            taken.end,
            Err(AppendError::Io("disk on fire".into())),
            &mut Vec::new(),
        );
        for &t in &tickets[..2] {
            match poll(&intake, t) {
                Poll::Ready(Err(Unsettled::Failed(AppendError::Io(m)))) => {
                    assert_eq!(m, "disk on fire")
                }
                other => panic!("expected the batch's error, got {other:?}"),
            }
        }
        // The third publisher went away after the batch was settled: its share is dropped.
        intake.abandon(tickets[2]);
        assert!(intake.state().failures.is_empty());
        assert!(!intake.failed.load(Ordering::SeqCst));
        // The next batch is unaffected.
        let t = submit(&intake, waker().1);
        let taken = intake.take(&mut Records::default());
        intake.settle(taken.end, Ok(()), &mut Vec::new());
        assert!(matches!(poll(&intake, t), Poll::Ready(Ok(()))));
    }

    #[test]
    fn an_abandoned_publish_is_still_written_but_not_woken() {
        let intake = Intake::new();
        let (c0, w0) = waker();
        let (c1, w1) = waker();
        let t0 = submit(&intake, w0);
        let t1 = submit(&intake, w1);
        intake.abandon(t0);
        let mut batch = Records::default();
        let taken = intake.take(&mut batch);
        assert_eq!(
            batch.ends.len(),
            2,
            "the abandoned publish's record is written"
        );
        intake.settle(taken.end, Err(AppendError::Io("x".into())), &mut Vec::new());
        assert_eq!(c0.0.load(Ordering::SeqCst), 0);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            poll(&intake, t1),
            Poll::Ready(Err(Unsettled::Failed(_)))
        ));
        assert!(
            intake.state().failures.is_empty(),
            "only the publisher still waiting had a share of the failure"
        );
    }

    #[test]
    fn a_stopped_writer_fails_the_waiting_publishers_and_refuses_new_ones() {
        let intake = Intake::new();
        let (c0, w0) = waker();
        let t0 = submit(&intake, w0);
        intake.stop();
        assert_eq!(c0.0.load(Ordering::SeqCst), 1, "woken, not left hanging");
        assert!(matches!(
            poll(&intake, t0),
            Poll::Ready(Err(Unsettled::Stopped))
        ));
        assert!(intake.submit(b"x", &[(0, 1)], waker().1).is_none());
        let (reply, _rx) = oneshot::channel();
        assert!(intake.request(Control::Flush(reply)).is_err());
    }

    #[test]
    fn close_refuses_later_publishes_but_keeps_earlier_ones() {
        let intake = Intake::new();
        let t0 = submit(&intake, waker().1);
        let (reply, _rx) = oneshot::channel();
        assert!(intake.request(Control::Close(reply)).is_ok());
        assert!(intake.submit(b"x", &[(0, 1)], waker().1).is_none());
        let mut batch = Records::default();
        let taken = intake.take(&mut batch);
        assert_eq!(
            (taken.start, taken.end, taken.control.len()),
            (t0, t0 + 1, 1)
        );
    }

    /// Submits `n` publishes with counting wakers; takes them as one batch.
    fn batch_of(intake: &Intake, n: usize) -> (Vec<u64>, Vec<Arc<Count>>, u64) {
        let (mut tickets, mut counts) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (c, w) = waker();
            tickets.push(submit(intake, w));
            counts.push(c);
        }
        let end = intake.take(&mut Records::default()).end;
        (tickets, counts, end)
    }

    fn woken(counts: &[Arc<Count>]) -> Vec<usize> {
        counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect()
    }

    #[test]
    fn a_large_batch_wakes_its_first_publisher_and_its_first_poll_wakes_the_rest() {
        let intake = Intake::new();
        let n = RELAY_MIN + 4;
        let (tickets, counts, end) = batch_of(&intake, n);
        intake.settle(end, Ok(()), &mut Vec::new());
        let mut expected = vec![0; n];
        expected[0] = 1;
        assert_eq!(
            woken(&counts),
            expected,
            "only the first is woken by the writer"
        );
        // The first publisher's task runs: its poll wakes every other one, once.
        let mut first = Settled::new(&intake, tickets[0]);
        first.first = false;
        let mut first = std::pin::pin!(first);
        let polled = first.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        assert_eq!(woken(&counts), vec![1; n]);
        for &t in &tickets[1..] {
            assert!(matches!(poll(&intake, t), Poll::Ready(Ok(()))));
        }
        intake.run_relay();
        assert_eq!(woken(&counts), vec![1; n], "nobody is woken twice");
    }

    #[test]
    fn a_small_batch_is_woken_by_the_writer_alone() {
        let intake = Intake::new();
        let (_, counts, end) = batch_of(&intake, RELAY_MIN);
        intake.settle(end, Ok(()), &mut Vec::new());
        assert_eq!(woken(&counts), vec![1; RELAY_MIN]);
        assert!(intake.relay_overdue().is_none(), "nothing left to relay");
    }

    #[test]
    fn a_dropped_publish_still_wakes_the_batch_it_was_to_wake() {
        let intake = Intake::new();
        let n = RELAY_MIN + 1;
        let (tickets, counts, end) = batch_of(&intake, n);
        intake.settle(end, Ok(()), &mut Vec::new());
        // The first publisher was woken but its future is dropped before it is polled.
        drop(Settled::new(&intake, tickets[0]));
        assert_eq!(woken(&counts), vec![1; n]);
    }

    #[test]
    fn a_relay_nobody_takes_is_woken_by_the_writer_after_the_relay_wait() {
        let intake = Intake::new();
        let n = RELAY_MIN + 2;
        let (_, counts, end) = batch_of(&intake, n);
        intake.settle(end, Ok(()), &mut Vec::new());
        // Before `left` is measured: a clock read after it could come late (a preempted
        // thread), making the loop below look shorter than `left`.
        let started = std::time::Instant::now();
        let left = intake.relay_overdue().expect("a relay is waiting");
        assert!(left <= RELAY_WAIT);
        assert_eq!(woken(&counts).iter().sum::<usize>(), 1);
        // The writer looks again until the wait is over (bounded: it must end).
        while intake.relay_overdue().is_some() {
            assert!(started.elapsed() < Duration::from_secs(30), "never overdue");
            std::thread::yield_now();
        }
        assert!(started.elapsed() + Duration::from_micros(1) >= left);
        assert_eq!(woken(&counts), vec![1; n]);
    }

    #[test]
    fn the_next_settle_and_a_stop_wake_a_relay_nobody_took() {
        let intake = Intake::new();
        let n = RELAY_MIN + 1;
        let (_, first_batch, end) = batch_of(&intake, n);
        intake.settle(end, Ok(()), &mut Vec::new());
        // The next batch fails: its one publisher gets the error, the earlier batch is woken
        // (with its success) by this settle.
        let (tickets, second, end) = batch_of(&intake, 1);
        intake.settle(end, Err(AppendError::Io("x".into())), &mut Vec::new());
        assert_eq!(woken(&first_batch), vec![1; n]);
        assert_eq!(woken(&second), vec![1]);
        assert!(matches!(
            poll(&intake, tickets[0]),
            Poll::Ready(Err(Unsettled::Failed(_)))
        ));
        assert!(intake.state().failures.is_empty(), "one share, taken");
        // A relay left when the writer stops is woken by the stop.
        let (_, third, end) = batch_of(&intake, n);
        intake.settle(end, Ok(()), &mut Vec::new());
        intake.stop();
        assert_eq!(woken(&third), vec![1; n]);
    }

    #[test]
    fn a_sleeping_writer_is_woken_when_the_batch_reaches_its_target() {
        let intake = Arc::new(Intake::new());
        let publisher = {
            let intake = intake.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    submit(&intake, waker().1);
                }
            })
        };
        // Without the wake-up this would sleep the whole minute.
        let started = std::time::Instant::now();
        let mut n = 0;
        while n < 3 {
            n = intake.wait_for(3, Duration::from_secs(60)).0;
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        publisher.join().unwrap();
    }
}
