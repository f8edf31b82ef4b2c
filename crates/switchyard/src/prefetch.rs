//! Prefetching workers (`Bus::subscribe_prefetch`): a worker hands its handler up to `max`
//! queued messages in one call (with several workers, at most its share of the backlog) and
//! settles each by its own answer. Unlike a batch, every
//! message keeps its own outcome: an acked one is settled, a failed one goes through the
//! worker's retries (one message per call, in place) before the worker hands over the
//! messages after it, so one worker keeps the order. Messages the handler left unanswered
//! (it stops after a failure) were not handled: they lead the next hand-over.

use std::collections::VecDeque;
use std::sync::Arc;

use switchyard_core::Envelope;

use crate::dispatch::YIELD_EVERY;
use crate::handler::{BoxPrefetchHandler, SingleHandler, prefetch_one};
use crate::queue::{Entry, Popped, Taken};
use crate::state::{Parent, SubShared};

impl SubShared {
    /// One prefetching worker (number `worker`, its in-flight slot): stops when the queue is
    /// closed and drained and nothing is left over from the last hand-over.
    pub(crate) async fn run_prefetch_worker(
        self: Arc<Self>,
        worker: usize,
        mut svc: BoxPrefetchHandler,
        max: usize,
    ) {
        // Failed messages are retried with one message per call.
        let mut one = SingleHandler::Boxed(prefetch_one(svc.clone()));
        if self.bus.upgrade().is_some_and(|b| b.lifecycle_events()) {
            // Lifecycle events are published around each attempt: one message per call.
            return self.run_worker(worker, one).await;
        }
        let max = max.max(1);
        let workers = self.config.workers.max(1);
        // Taken and not handled yet (left unanswered by the last hand-over), oldest first.
        let mut left: VecDeque<Taken> = VecDeque::new();
        let mut streak: u32 = 0;
        loop {
            if streak >= YIELD_EVERY {
                streak = 0;
                tokio::task::yield_now().await;
            }
            let first = match left.pop_front() {
                Some(t) => t,
                None => match self.queue.pop(worker).await {
                    Some(t) => t,
                    None => break,
                },
            };
            // With several workers a hand-over takes at most its share of what is waiting
            // (rounded up): a backlog spreads over the workers (`workers` handler calls in
            // flight) instead of the first free worker taking it all and handing it over as
            // one sequence of calls. Per-key order is the queue's (`try_pop`), as before.
            let cap = if workers > 1 {
                let waiting = 1 + left.len() + self.queue.len();
                max.min(waiting.div_ceil(workers))
            } else {
                max
            };
            let mut taken = vec![first];
            while taken.len() < cap {
                if let Some(t) = left.pop_front() {
                    taken.push(t);
                    continue;
                }
                match self.queue.try_pop(worker) {
                    Popped::Taken(t) => taken.push(t),
                    Popped::Empty | Popped::Closed => break,
                }
            }
            let Some(bus) = self.bus.upgrade() else { break };
            // Those whose deadline passed while they waited are not handed over.
            let taken = self.drop_expired(&bus, worker, taken).await;
            if taken.is_empty() {
                continue;
            }
            // What the handler sees: each message's first attempt.
            let now = switchyard_core::clock::now();
            let envs: Vec<Envelope> = taken
                .iter()
                .map(|t| {
                    let mut env = Envelope::clone(&t.entry.env);
                    env.delivery.attempt += 1;
                    env.delivery.first_delivered_at.get_or_insert(now);
                    env
                })
                .collect();
            let parent = Parent::of(&taken[0].entry.env);
            let answers = match self.call(&mut svc, || envs, parent, false).await {
                Ok(Ok(answers)) => answers.into_iter().map(Ok).collect(),
                // The call as a whole failed: the first message's failure.
                Ok(Err(e)) => vec![Ok(Err(e))],
                Err(panic) => vec![Err(panic)],
            };
            let mut answers = answers.into_iter();
            let mut taken = taken.into_iter();
            for t in taken.by_ref() {
                let Some(answer) = answers.next() else {
                    // Not handled: it leads the next hand-over, before what is left over.
                    left.push_front(t);
                    break;
                };
                streak += 1;
                let seq = t.seq();
                let Entry {
                    env,
                    reply,
                    lane,
                    delivery,
                    accepted,
                    ..
                } = t.entry;
                // The bookkeeping the handler saw, counted as delivered here.
                let stamp = self.next_attempt(env.delivery, || now);
                let made = self.classify(answer, &env, stamp.attempt);
                let ok = self
                    .process(
                        &bus,
                        &mut one,
                        env,
                        reply,
                        false,
                        Some((made, stamp)),
                        &mut None,
                        delivery.is_some(),
                    )
                    .await;
                if let Some(delivery) = delivery {
                    self.settle_as(&bus, *delivery, ok).await;
                }
                self.queue.complete(worker, seq, lane.as_ref());
                accepted.settle(ok.settled());
            }
            // `left` now starts with the first unanswered message (if any): the rest of this
            // hand-over goes right after it, in order.
            let mut rest: VecDeque<Taken> = taken.collect();
            if !rest.is_empty() {
                if let Some(head) = left.pop_front() {
                    rest.push_front(head);
                }
                rest.extend(left.drain(..));
                left = rest;
            }
        }
        drop(left);
        self.worker_exited();
    }
}
