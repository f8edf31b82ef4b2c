//! The inbox: how Rust hands work to the Python event loop without holding the GIL.
//!
//! Tokio threads never take the GIL on a hot path: a Python thread that is busy running
//! Python code only gives the GIL up every `sys.getswitchinterval()` (5 ms), so a tokio
//! thread waiting for it would stall the whole bus. Instead they push an [`Item`] here and, if
//! the event loop has not been told yet, write one byte to a socket the loop watches
//! (`loop.add_reader`). The loop's reader callback drains the socket and takes every item in
//! one call, so a burst costs one wake-up however many items it carries.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use switchyard::{BoxError, Envelope, Outcome};
use tokio::sync::oneshot;

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

/// The queue of items for one bus and the socket pair that wakes its event loop.
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    reader: UnixStream,
    writer: UnixStream,
    next_token: AtomicU64,
    /// Operations spawned for Python whose result someone still awaits.
    calls: Mutex<HashSet<u64>>,
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

    /// Queues an item and wakes the loop unless it was already woken.
    pub(crate) fn push(&self, item: Item) {
        let wake = {
            let mut q = self.lock();
            q.items.push(item);
            !std::mem::replace(&mut q.notified, true)
        };
        if wake {
            // A full socket buffer means wake-ups are already waiting to be read.
            let _ = (&self.writer).write(&[1]);
        }
    }

    /// Everything queued so far. Called by the loop's reader callback: the wake-up bytes are
    /// read first, so an item pushed after this returns always comes with a new byte.
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
        std::mem::take(&mut q.items)
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
