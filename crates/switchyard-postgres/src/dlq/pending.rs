//! The bounded queue of writes waiting for PostgreSQL, shared by the handles and the writer.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use switchyard::{DeadLetter, MessageId};
use tokio::sync::{Notify, oneshot};

use crate::{Schema, names};

/// One write for the table, in the order the handles made them.
pub(super) enum Op {
    Put(Box<DeadLetter>),
    Remove(Vec<MessageId>),
    Flush(oneshot::Sender<()>),
}

/// The writer task is gone (it panicked, or its runtime shut down).
#[derive(Debug)]
pub(super) struct Stopped;

struct State {
    ops: VecDeque<Op>,
    /// How many of `ops` are puts.
    puts: usize,
    /// The most puts that wait; past it the oldest waiting put is dropped.
    max_puts: usize,
    /// Puts dropped from the queue since open.
    dropped: u64,
    /// A drop was logged and the queue has not emptied since (one warning per overflow).
    overflowing: bool,
    /// False once the last handle is gone: the writer ends when the queue is empty.
    handles: bool,
    /// False once the writer has ended.
    writer: bool,
    /// The writer ended because the pool was closed (see [`Pending::pool_closed`]).
    pool_closed: bool,
}

/// The writes waiting for PostgreSQL. Puts are bounded (the bus calls `put` from its workers
/// while the database may be down for long); removals and flushes, which an operator makes
/// and which are small, are not.
pub(super) struct Pending {
    state: Mutex<State>,
    wake: Notify,
    schema: Schema,
}

impl Pending {
    pub(super) fn new(schema: Schema, max_puts: usize) -> Self {
        Self {
            state: Mutex::new(State {
                ops: VecDeque::new(),
                puts: 0,
                max_puts: max_puts.max(1),
                dropped: 0,
                overflowing: false,
                handles: true,
                writer: true,
                pool_closed: false,
            }),
            wake: Notify::new(),
            schema,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_max_puts(&self, max_puts: usize) {
        self.lock().max_puts = max_puts.max(1);
    }

    /// Queues `op`. A put past the bound drops the oldest waiting put first (its entry stays
    /// in memory): the newest letters are the ones the table keeps when it trims.
    pub(super) fn push(&self, op: Op) -> Result<(), Stopped> {
        let mut state = self.lock();
        if !state.writer {
            return Err(Stopped);
        }
        if matches!(op, Op::Put(_)) {
            if state.puts >= state.max_puts {
                self.drop_oldest_put(&mut state);
            }
            state.puts += 1;
        }
        state.ops.push_back(op);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    fn drop_oldest_put(&self, state: &mut State) {
        let Some(at) = state.ops.iter().position(|op| matches!(op, Op::Put(_))) else {
            return;
        };
        let Some(Op::Put(letter)) = state.ops.remove(at) else {
            return;
        };
        state.puts -= 1;
        state.dropped += 1;
        ::metrics::counter!(names::DEAD_LETTERS_WRITE_DROPPED, "schema" => self.schema.to_string())
            .increment(1);
        if !state.overflowing {
            state.overflowing = true;
            tracing::warn!(schema = %self.schema, max = state.max_puts, message_id = %letter.envelope.id,
                "dead-letter write queue full (PostgreSQL slow or down): dropping the oldest \
                 waiting writes; their entries stay in memory only");
        }
    }

    /// The next op, waiting for one; `None` once the handles are gone and the queue is empty.
    pub(super) async fn next(&self) -> Option<Op> {
        loop {
            {
                let mut state = self.lock();
                if let Some(op) = state.ops.pop_front() {
                    if matches!(op, Op::Put(_)) {
                        state.puts -= 1;
                    }
                    if state.ops.is_empty() && state.overflowing {
                        state.overflowing = false;
                        tracing::info!(schema = %self.schema, dropped = state.dropped,
                            "dead-letter write queue caught up");
                    }
                    return Some(op);
                }
                if !state.handles {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Writes waiting now (not counting the one being written).
    pub(super) fn len(&self) -> usize {
        self.lock().ops.len()
    }

    /// Puts dropped since open.
    pub(super) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The last handle is gone.
    pub(super) fn close(&self) {
        self.lock().handles = false;
        self.wake.notify_one();
    }

    /// The pool was closed, which is final: the writer ends, later pushes fail, and the
    /// writes still waiting are handed back (for the writer to give up and count).
    pub(super) fn pool_was_closed(&self) -> Vec<Op> {
        let mut state = self.lock();
        state.writer = false;
        state.pool_closed = true;
        state.puts = 0;
        state.ops.drain(..).collect()
    }

    /// Whether the writer ended because the pool was closed.
    pub(super) fn pool_closed(&self) -> bool {
        self.lock().pool_closed
    }

    /// The writer has ended: later pushes fail, and waiting flushes are answered with an
    /// error (their senders dropped).
    pub(super) fn writer_ended(&self) {
        let mut state = self.lock();
        state.writer = false;
        state.ops.clear();
        state.puts = 0;
    }
}

#[cfg(test)]
mod tests {
    use switchyard::{DeadLetterReason, Envelope, Topic};

    use super::*;

    fn put(n: u8) -> Op {
        let topic = Topic::new("a.b").unwrap_or_else(|e| panic!("{e}"));
        Op::Put(Box::new(DeadLetter::new(
            Envelope::new(topic, vec![n]),
            DeadLetterReason::Rejected,
            "x",
        )))
    }

    fn payload(op: &Op) -> Option<u8> {
        match op {
            Op::Put(l) => l.envelope.payload.first().copied(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn past_the_bound_the_oldest_put_goes_and_removals_and_flushes_stay() {
        let p = Pending::new(Schema::default(), 2);
        let (tx, mut rx) = oneshot::channel();
        assert!(p.push(put(1)).is_ok());
        assert!(p.push(Op::Remove(vec![MessageId::new()])).is_ok());
        assert!(p.push(put(2)).is_ok());
        assert!(p.push(Op::Flush(tx)).is_ok());
        assert!(p.push(put(3)).is_ok());
        assert_eq!((p.len(), p.dropped()), (4, 1));
        let mut order = Vec::new();
        p.close();
        while let Some(op) = p.next().await {
            order.push(match &op {
                Op::Put(_) => format!("put {}", payload(&op).unwrap_or(0)),
                Op::Remove(_) => "remove".into(),
                Op::Flush(_) => "flush".into(),
            });
        }
        assert_eq!(order, ["remove", "put 2", "flush", "put 3"]);
        // The flush's sender was handed out (and dropped here): its waiter is answered.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn once_the_writer_ended_pushes_fail_and_waiting_flushes_are_answered() {
        let p = Pending::new(Schema::default(), 2);
        let (tx, rx) = oneshot::channel();
        assert!(p.push(Op::Flush(tx)).is_ok());
        p.writer_ended();
        assert!(rx.await.is_err(), "the flush was left waiting");
        assert!(p.push(put(1)).is_err());
    }

    #[tokio::test]
    async fn a_closed_pool_hands_back_the_waiting_writes_and_refuses_later_ones() {
        let p = Pending::new(Schema::default(), 2);
        assert!(p.push(put(1)).is_ok());
        assert!(p.push(Op::Remove(vec![MessageId::new()])).is_ok());
        assert!(!p.pool_closed());
        let waiting = p.pool_was_closed();
        assert_eq!(waiting.len(), 2);
        assert!(p.pool_closed());
        assert_eq!(p.len(), 0);
        assert!(p.push(put(2)).is_err());
    }
}
