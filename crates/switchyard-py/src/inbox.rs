//! The inbox: how Rust hands work to the Python event loop without holding the GIL.
//!
//! Tokio threads never take the GIL on a hot path: a Python thread that is busy running
//! Python code only gives the GIL up every `sys.getswitchinterval()` (5 ms), so a tokio
//! thread waiting for it would stall the whole bus. Instead they push an [`Item`] here and, if
//! the event loop has not been told yet, write one byte to a socket the loop watches
//! (`loop.add_reader`). The loop's reader callback drains the socket and takes every item in
//! one call, so a burst costs one wake-up however many items it carries.
//!
//! While the loop is draining ([`Inbox::take`] until [`Inbox::rest`]) it is *active*: pushes
//! write no wake-up byte, and the loop, having just answered an invocation at once, waits a
//! few microseconds with the GIL released ([`Inbox::take_wait`]) for the next one the
//! answer lets the bus's worker hand over. The worker, seeing the loop active, waits as
//! briefly for the answer before it parks ([`Inbox::spin_recv`]). A subscription with one
//! worker whose handler finishes at once then costs no thread wake-up and no socket round
//! trip per message; both waits are bounded and end as soon as the loop goes back to
//! asyncio.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchyard::{BoxError, Envelope, Outcome};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use crate::ops::Done;

/// What a Python handler answers: the outcome the bus's worker acts on.
pub(crate) type HandlerResult = Result<Outcome, BoxError>;

/// One piece of work for the event loop.
pub(crate) enum Item {
    /// Call the Python handler of subscription `sub` with one message.
    Invoke {
        token: u64,
        sub: u64,
        env: Arc<Envelope>,
        reply: oneshot::Sender<HandlerResult>,
        command: bool,
    },
    /// Call the Python handler of prefetch subscription `sub` with several messages, one
    /// after the other, answering each (see `bus::python_prefetch_handler`).
    InvokeMany {
        token: u64,
        sub: u64,
        envs: Vec<Arc<Envelope>>,
        reply: oneshot::Sender<Vec<HandlerResult>>,
    },
    /// Call a Python batch handler with several payloads (`env` is the first message).
    InvokeBatch {
        token: u64,
        sub: u64,
        env: Arc<Envelope>,
        payloads: Vec<bytes::Bytes>,
        reply: oneshot::Sender<HandlerResult>,
    },
    /// The bus gave up on an invocation (shutdown deadline, unsubscribe): cancel its task.
    Cancel { token: u64 },
    /// An operation Python awaits has finished.
    Done { token: u64, result: Box<Done> },
}

struct Queue {
    items: Vec<Item>,
    /// A byte was written since the loop last took the items.
    notified: bool,
}

/// How long a bus worker waits, without parking, for the answer of an invocation it handed
/// to an active loop.
const ANSWER_SPIN: Duration = Duration::from_micros(50);

/// The queue of items for one bus and the socket pair that wakes its event loop.
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    reader: UnixStream,
    writer: UnixStream,
    next_token: AtomicU64,
    /// Operations spawned for Python whose result someone still awaits.
    calls: Mutex<HashSet<u64>>,
    /// The loop is draining (between `take` and `rest`): it will look at the queue again
    /// before it goes back to asyncio, so a push needs no wake-up byte. Written under the
    /// queue lock; read without it by spinning waiters.
    active: AtomicBool,
    /// Items are queued (a hint for `take_wait`'s spin, which does not take the lock).
    queued: AtomicBool,
}

impl Inbox {
    /// A new inbox with its wake-up socket pair (both ends non-blocking).
    pub(crate) fn new() -> std::io::Result<Arc<Self>> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Arc::new(Self {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                notified: false,
            }),
            reader,
            writer,
            next_token: AtomicU64::new(1),
            calls: Mutex::new(HashSet::new()),
            active: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh token naming one invocation or operation.
    pub(crate) fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// The descriptor the event loop watches.
    pub(crate) fn fileno(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Queues an item and wakes the loop unless it was already woken or is draining.
    /// Returns true when the loop is draining (it will see the item within microseconds).
    pub(crate) fn push(&self, item: Item) -> bool {
        let (wake, active) = {
            let mut q = self.lock();
            q.items.push(item);
            self.queued.store(true, Ordering::Release);
            if self.active.load(Ordering::Acquire) {
                (false, true)
            } else {
                (!std::mem::replace(&mut q.notified, true), false)
            }
        };
        if wake {
            self.wake();
        }
        active
    }

    fn wake(&self) {
        // A full socket buffer means wake-ups are already waiting to be read.
        let _ = (&self.writer).write(&[1]);
    }

    /// Everything queued so far. Called by the loop's reader callback: the wake-up bytes are
    /// read first, so an item pushed after this returns always comes with a new byte.
    ///
    /// The loop is active from here until [`Inbox::rest`].
    pub(crate) fn take(&self) -> Vec<Item> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut q = self.lock();
        q.notified = false;
        self.active.store(true, Ordering::Release);
        self.queued.store(false, Ordering::Relaxed);
        std::mem::take(&mut q.items)
    }

    /// Like [`Inbox::take`] for an active loop, but when nothing is queued waits up to
    /// `wait` (on this thread, which must not hold the GIL) for an item first. Empty when
    /// none came.
    pub(crate) fn take_wait(&self, wait: Duration) -> Vec<Item> {
        if !spin_until(wait, || self.queued.load(Ordering::Acquire)) {
            return Vec::new();
        }
        let mut q = self.lock();
        self.queued.store(false, Ordering::Relaxed);
        std::mem::take(&mut q.items)
    }

    /// The loop stops draining and goes back to asyncio: pushes wake it through the socket
    /// again, and items that came since its last take wake it now.
    pub(crate) fn rest(&self) {
        let wake = {
            let mut q = self.lock();
            self.active.store(false, Ordering::Release);
            !q.items.is_empty() && !std::mem::replace(&mut q.notified, true)
        };
        if wake {
            self.wake();
        }
    }

    /// The answer to an invocation pushed while the loop was active: waits for it up to
    /// [`ANSWER_SPIN`] without parking (a handler that finishes at once answers within
    /// microseconds, and parking would cost a thread wake-up per message), while the loop
    /// stays active; `None` when it did not come (await the receiver then).
    pub(crate) fn spin_recv<T>(&self, rx: &mut oneshot::Receiver<T>) -> Option<Result<T, ()>> {
        let mut answer = None;
        spin_until(ANSWER_SPIN, || {
            match rx.try_recv() {
                Ok(a) => answer = Some(Ok(a)),
                Err(TryRecvError::Closed) => answer = Some(Err(())),
                Err(TryRecvError::Empty) => {}
            }
            // Stop as soon as the loop rests: it will not answer within microseconds now.
            answer.is_some() || !self.active.load(Ordering::Acquire)
        });
        answer
    }

    /// Items waiting (for tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Spawns the task of an operation and remembers that Python awaits it. The set is
    /// locked across the spawn: the task's own `untrack` cannot run before the insert.
    pub(crate) fn track_spawn<F>(&self, token: u64, rt: &tokio::runtime::Runtime, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        drop(rt.spawn(task));
        calls.insert(token);
    }

    /// Forgets a finished operation; true when it was still tracked.
    pub(crate) fn untrack(&self, token: u64) -> bool {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token)
    }

    /// Forgets an operation whose awaiting Python task was cancelled: its result will be
    /// discarded. The task itself runs on to its end and is not aborted, because dropping a
    /// bus publish or send while it waits for queue room leaves the message counted as
    /// pending (see `tests/bus_contract.rs`); so a cancelled publish still goes in when room
    /// comes (or fails at its overflow timeout), and a cancelled command still runs, like a
    /// request past its deadline. False when the operation had already finished.
    pub(crate) fn cancel(&self, token: u64) -> bool {
        self.untrack(token)
    }

    /// Operations spawned for Python and not finished yet.
    pub(crate) fn calls_in_flight(&self) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Calls `done` until it returns true (then true) or `limit` has passed (then false),
/// without parking (parking would cost a wake-up per message): a short busy spin between
/// calls, and the core yielded every few of them, because the thread this one waits for
/// often shares its core (measured on a loaded 2-core machine: a 5 µs busy spin before the
/// first yield made every hand-over cost 17 µs instead of 6 µs).
fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut n: u32 = 0;
    loop {
        if done() {
            return true;
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(32) {
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Tells the loop to cancel the Python side of an invocation when the Rust side is dropped
/// before an answer came (the worker was aborted at the shutdown deadline).
pub(crate) struct CancelOnDrop {
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) token: u64,
    pub(crate) armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.inbox.push(Item::Cancel { token: self.token });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wake-up bytes waiting in the socket (reading them, as the loop's `take` does).
    fn wake_ups(inbox: &Inbox) -> usize {
        let mut buf = [0u8; 64];
        match (&inbox.reader).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn one_wake_up_per_burst_and_a_new_one_after_take() {
        let inbox = Inbox::new().unwrap();
        assert_eq!(wake_ups(&inbox), 0);
        for token in 0..3 {
            inbox.push(Item::Cancel { token });
        }
        assert_eq!(wake_ups(&inbox), 1, "three pushes, one wake-up");
        assert_eq!(inbox.take().len(), 3);
        inbox.rest();
        inbox.push(Item::Cancel { token: 9 });
        assert_eq!(
            wake_ups(&inbox),
            1,
            "a push after take wakes the loop again"
        );
        inbox.push(Item::Cancel { token: 10 });
        assert_eq!(
            wake_ups(&inbox),
            0,
            "not again before the loop took the items"
        );
        assert_eq!(inbox.len(), 2);
    }

    #[test]
    fn a_draining_loop_is_not_woken_and_rest_wakes_it_for_what_came_meanwhile() {
        let inbox = Inbox::new().unwrap();
        assert!(!inbox.push(Item::Cancel { token: 1 }), "idle loop");
        assert_eq!(wake_ups(&inbox), 1);
        assert_eq!(inbox.take().len(), 1);
        assert!(
            inbox.push(Item::Cancel { token: 2 }),
            "the loop drains: the pusher is told"
        );
        assert_eq!(wake_ups(&inbox), 0, "no byte while the loop drains");
        assert_eq!(inbox.take_wait(Duration::ZERO).len(), 1);
        inbox.push(Item::Cancel { token: 3 });
        inbox.rest();
        assert_eq!(
            wake_ups(&inbox),
            1,
            "rest wakes the loop for the item it left"
        );
        inbox.rest();
        assert_eq!(wake_ups(&inbox), 0, "not twice");
        assert_eq!(inbox.take().len(), 1);
        inbox.rest();
        inbox.rest();
        assert_eq!(wake_ups(&inbox), 0, "nothing queued, nothing to wake for");
    }

    #[test]
    fn take_wait_gets_an_item_pushed_by_another_thread_and_times_out_without_one() {
        let inbox = Inbox::new().unwrap();
        let _ = inbox.take();
        assert!(inbox.take_wait(Duration::from_micros(200)).is_empty());
        let pusher = inbox.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            ready_rx.recv().unwrap();
            pusher.push(Item::Cancel { token: 5 })
        });
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        // Bounded: the pusher runs within this many waits on any machine.
        for _ in 0..100_000 {
            got = inbox.take_wait(Duration::from_millis(10));
            if !got.is_empty() {
                break;
            }
        }
        assert!(t.join().unwrap(), "pushed while the loop drained");
        assert!(matches!(got[..], [Item::Cancel { token: 5 }]));
        assert_eq!(wake_ups(&inbox), 0);
    }

    #[test]
    fn spin_recv_returns_an_answer_and_gives_up_when_the_loop_rests() {
        let inbox = Inbox::new().unwrap();
        let _ = inbox.take();
        let (tx, mut rx) = oneshot::channel::<HandlerResult>();
        tx.send(Ok(Outcome::Ack)).unwrap();
        assert!(matches!(
            inbox.spin_recv(&mut rx),
            Some(Ok(Ok(Outcome::Ack)))
        ));
        let (tx, mut rx) = oneshot::channel::<HandlerResult>();
        drop(tx);
        assert!(matches!(inbox.spin_recv(&mut rx), Some(Err(()))));
        let (_tx, mut rx) = oneshot::channel::<HandlerResult>();
        inbox.rest();
        assert!(
            inbox.spin_recv(&mut rx).is_none(),
            "the loop is not draining"
        );
    }

    #[test]
    fn dropping_an_armed_guard_queues_a_cancel() {
        let inbox = Inbox::new().unwrap();
        drop(CancelOnDrop {
            inbox: inbox.clone(),
            token: 7,
            armed: true,
        });
        drop(CancelOnDrop {
            inbox: inbox.clone(),
            token: 8,
            armed: false,
        });
        let items = inbox.take();
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Item::Cancel { token: 7 }));
    }
}
