//! Subscriptions: a pattern, a bounded queue, N workers and a handler.
//!
//! Each worker is a tokio task that owns one clone of the handler. It loops on
//! `queue.pop()`, handles the message (retrying in place, so per-key order holds), settles it
//! and frees its lane. It stops when the queue is closed and empty (drop of the handle,
//! or shutdown), or when shutdown aborts it at the deadline.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crossbeam_utils::CachePadded;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use smol_str::SmolStr;
use switchyard_core::{
    BoxError, CodecDirection, CodecError, DeadLetter, DeadLetterReason, Delivery, DeliveryInfo,
    Envelope, Outcome, Pattern, Permanent, SendError, SubscribeError,
};
use tokio::task::JoinHandle;

use crate::bus::{Bus, BusInner, Parent};
use crate::command::{CommandReply, CommandResult};
use crate::handler::{self, BoxBatchHandler, BoxHandler};
use crate::pending::{Accepted, Settled};
use crate::queue::{Entry, Overflow, Popped, PushError, Pushed, Queue};
use crate::session::{SESSION_HEADER, SessionSubs};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

/// A worker that never has to wait yields to other tasks after this many messages.
const YIELD_EVERY: u32 = 128;

/// Extracts the ordering key of a message: messages with equal keys are handled one at a time,
/// in order; different keys in parallel.
pub type OrderingKey = Arc<dyn Fn(&Envelope) -> Option<SmolStr> + Send + Sync>;

/// Whether a subscription receives events or is the one handler of a command topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// Receives every matching event.
    Event,
    /// The one handler of a command topic.
    Command,
}

/// Per-subscription settings; every default is documented on [`crate::BusBuilder`].
#[derive(Clone)]
pub(crate) struct SubscriptionConfig {
    pub(crate) name: SmolStr,
    pub(crate) pattern: Pattern,
    pub(crate) workers: usize,
    pub(crate) capacity: usize,
    pub(crate) overflow: Overflow,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) ordering_key: Option<OrderingKey>,
    pub(crate) filters: Vec<Filter>,
    pub(crate) session: Option<SmolStr>,
    pub(crate) handler_priority: i32,
    pub(crate) batch: Option<BatchConfig>,
    /// On a transport: subscribe without a consumer group (see
    /// [`SubscriptionBuilder::ephemeral`]).
    pub(crate) ephemeral: bool,
}

/// A predicate applied before a message is queued; messages it refuses are counted as
/// `filtered`, not delivered.
pub type Filter = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// How a batch subscription groups messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchConfig {
    pub(crate) max_size: usize,
    pub(crate) max_wait: Duration,
}

/// The handler a subscription's workers call: one message at a time, or batches.
#[derive(Clone)]
pub(crate) enum Handler {
    Single(BoxHandler),
    Batch(BoxBatchHandler),
}

/// Counters of one subscription. Nothing is dropped without being counted here.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    refused_full: AtomicU64,
    decode_failed: AtomicU64,
    filtered: AtomicU64,
}

/// The bus as a worker keeps it from one message to the next, counted in
/// `BusInner::worker_holds` so a worker can tell when nothing but workers keeps it alive.
struct HeldBus(Arc<BusInner>);

impl HeldBus {
    fn new(bus: Arc<BusInner>) -> Self {
        bus.worker_holds.fetch_add(1, Ordering::AcqRel);
        Self(bus)
    }

    /// True when every strong reference to the bus is a worker's: the application dropped
    /// all its handles, so the workers must let go for the bus to be freed.
    fn orphaned(&self) -> bool {
        Arc::strong_count(&self.0) <= self.0.worker_holds.load(Ordering::Acquire)
    }
}

impl std::ops::Deref for HeldBus {
    type Target = Arc<BusInner>;
    fn deref(&self) -> &Arc<BusInner> {
        &self.0
    }
}

impl Drop for HeldBus {
    fn drop(&mut self) {
        // Before the reference itself goes (the field drops after this), so another worker
        // never sees more holds than references.
        self.0.worker_holds.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handled message a worker has not completed in its queue yet: completed (and settled)
/// under the lock that takes the next one when the handler is ready at once.
struct Done {
    seq: u64,
    lane: Option<SmolStr>,
    bus: HeldBus,
    accepted: Accepted,
    how: Settled,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of one subscription's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionStats {
    /// Handler calls (attempts), including retries.
    pub delivered: u64,
    /// Messages settled successfully (ack or reply).
    pub acked: u64,
    /// Attempts that ended in an error or panic.
    pub failed: u64,
    /// Attempts that panicked (also counted in `failed`).
    pub panicked: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages the handler rejected.
    pub rejected: u64,
    /// Messages sent to the dead-letter sink (any reason).
    pub dead_lettered: u64,
    /// Messages evicted by `Overflow::DropOldest`.
    pub dropped: u64,
    /// Publishes refused because the queue was full.
    pub refused_full: u64,
    /// Messages whose payload could not be decoded.
    pub decode_failed: u64,
    /// Messages a filter kept out of the queue.
    pub filtered: u64,
}

impl Counters {
    fn snapshot(&self) -> SubscriptionStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubscriptionStats {
            delivered: g(&self.delivered),
            acked: g(&self.acked),
            failed: g(&self.failed),
            panicked: g(&self.panicked),
            retried: g(&self.retried),
            rejected: g(&self.rejected),
            dead_lettered: g(&self.dead_lettered),
            dropped: g(&self.dropped),
            refused_full: g(&self.refused_full),
            decode_failed: g(&self.decode_failed),
            filtered: g(&self.filtered),
        }
    }
}

/// What the registry shows about one subscription or command handler.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionInfo {
    /// Name given at registration.
    pub name: String,
    /// Pattern (for command handlers: the command topic).
    pub pattern: String,
    /// Event subscription or command handler.
    #[serde(serialize_with = "kind_name")]
    pub kind: SubscriptionKind,
    /// Worker tasks.
    pub workers: usize,
    /// Queue capacity.
    pub capacity: usize,
    /// Overflow policy name.
    pub overflow: &'static str,
    /// Messages waiting.
    pub depth: usize,
    /// Messages being handled.
    pub in_flight: usize,
    /// False once the handle was dropped and the queue is draining.
    pub active: bool,
    /// The session it belongs to, if any.
    pub session: Option<String>,
    /// Its handler priority group (higher groups finish before lower ones start).
    pub handler_priority: i32,
    /// Number of filters applied before queueing.
    pub filters: usize,
    /// Batch size limit, for batch subscriptions.
    pub batch_size: Option<usize>,
    /// Counters.
    pub stats: SubscriptionStats,
}

fn kind_name<S: serde::Serializer>(k: &SubscriptionKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match k {
        SubscriptionKind::Event => "event",
        SubscriptionKind::Command => "command",
    })
}

/// State shared by a subscription's handle, its workers and the router.
pub(crate) struct SubShared {
    pub(crate) id: u64,
    pub(crate) kind: SubscriptionKind,
    pub(crate) config: SubscriptionConfig,
    pub(crate) queue: Queue,
    /// Written by the workers on every message: kept off the cache lines publishers read
    /// (`CachePadded` pads to 128 bytes where adjacent-line prefetch pairs lines).
    counters: CachePadded<Counters>,
    pub(crate) workers: Mutex<Vec<JoinHandle<()>>>,
    pump: Mutex<Option<JoinHandle<()>>>,
    live_workers: AtomicUsize,
    active: AtomicBool,
    bus: Weak<BusInner>,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued for the workers.
    Queued,
    /// A filter (or the session scope) kept it out; counted as `filtered`.
    Filtered,
}

/// Why an enqueue failed.
pub(crate) enum EnqueueError {
    Full,
    Closed,
}

impl SubShared {
    pub(crate) fn new(
        id: u64,
        kind: SubscriptionKind,
        config: SubscriptionConfig,
        bus: Weak<BusInner>,
    ) -> Self {
        Self {
            id,
            kind,
            queue: Queue::new(config.capacity, config.overflow, config.workers),
            config,
            counters: CachePadded::default(),
            workers: Mutex::new(Vec::new()),
            pump: Mutex::new(None),
            live_workers: AtomicUsize::new(0),
            active: AtomicBool::new(true),
            bus,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn info(&self) -> SubscriptionInfo {
        SubscriptionInfo {
            name: self.config.name.to_string(),
            pattern: self.config.pattern.to_string(),
            kind: self.kind,
            workers: self.config.workers,
            capacity: self.queue.capacity(),
            overflow: self.queue.overflow().name(),
            depth: self.queue.len(),
            in_flight: self.queue.in_flight(),
            active: self.active.load(Ordering::Relaxed),
            session: self.config.session.as_ref().map(ToString::to_string),
            handler_priority: self.config.handler_priority,
            filters: self.config.filters.len(),
            batch_size: self.config.batch.map(|b| b.max_size),
            stats: self.counters.snapshot(),
        }
    }

    pub(crate) fn stats(&self) -> SubscriptionStats {
        self.counters.snapshot()
    }

    /// Session scope and filters, checked before queueing.
    #[inline]
    fn accepts(&self, env: &Envelope) -> bool {
        if let Some(session) = &self.config.session
            && env.header(SESSION_HEADER) != Some(session.as_str())
        {
            return false;
        }
        self.config.filters.iter().all(|f| f(env))
    }

    /// Puts a message in the queue under the overflow policy. On success the bus's pending
    /// count includes it until a worker (or shutdown) settles it.
    /// `bus` is the bus this subscription belongs to (the caller holds it, so it is alive).
    pub(crate) async fn enqueue(
        &self,
        bus: &BusInner,
        env: Arc<Envelope>,
        reply: Option<CommandReply>,
    ) -> Result<Enqueued, EnqueueError> {
        if !self.accepts(&env) {
            inc(&self.counters.filtered);
            return Ok(Enqueued::Filtered);
        }
        let lane = self.config.ordering_key.as_ref().and_then(|k| k(&env));
        // Cancelled while it waits for room, the push drops the entry and with it the count.
        let entry = Entry::new(env, reply, lane, bus.pending.accept());
        let pushed = self.queue.push(entry).await;
        self.pushed(bus, pushed)
    }

    /// [`enqueue`](Self::enqueue) without waiting, for an event (no reply channel): the
    /// result when the overflow policy settles it at once, or the entry (already counted
    /// as pending) when the policy makes the publisher wait or slow down; hand that to
    /// [`finish_enqueue`](Self::finish_enqueue).
    #[allow(clippy::result_large_err)] // the entry goes back by value, as in `PushError`
    pub(crate) fn try_enqueue(
        &self,
        bus: &BusInner,
        env: &Arc<Envelope>,
    ) -> Result<Result<Enqueued, EnqueueError>, Entry> {
        if !self.accepts(env) {
            inc(&self.counters.filtered);
            return Ok(Ok(Enqueued::Filtered));
        }
        let lane = self.config.ordering_key.as_ref().and_then(|k| k(env));
        let entry = Entry::new(env.clone(), None, lane, bus.pending.accept());
        match self.queue.try_push_now(entry) {
            Ok(pushed) => Ok(self.pushed(bus, pushed)),
            Err(entry) => Err(entry),
        }
    }

    /// Completes a [`try_enqueue`](Self::try_enqueue) that has to wait.
    pub(crate) async fn finish_enqueue(
        &self,
        bus: &BusInner,
        entry: Entry,
    ) -> Result<Enqueued, EnqueueError> {
        let pushed = self.queue.push(entry).await;
        self.pushed(bus, pushed)
    }

    /// Accounts for the outcome of a push whose message was counted as pending.
    #[inline]
    fn pushed(
        &self,
        bus: &BusInner,
        pushed: Result<Pushed, PushError>,
    ) -> Result<Enqueued, EnqueueError> {
        match pushed {
            Ok(Pushed::Queued) => Ok(Enqueued::Queued),
            Ok(Pushed::Evicted(old)) => {
                inc(&self.counters.dropped);
                self.give_up(
                    bus,
                    *old,
                    DeadLetterReason::Dropped,
                    "evicted: queue full (drop-oldest)".into(),
                );
                Ok(Enqueued::Queued)
            }
            // Refused: never accepted, so not settled either (dropping the entry releases
            // its count; shutdown does not count it as drained).
            Err(PushError::Full(entry)) => {
                inc(&self.counters.refused_full);
                drop(entry);
                Err(EnqueueError::Full)
            }
            Err(PushError::Closed(entry)) => {
                drop(entry);
                Err(EnqueueError::Closed)
            }
        }
    }

    /// Dead-letters a message that will not be handled, answers its sender and settles it.
    pub(crate) fn give_up(
        &self,
        bus: &BusInner,
        entry: Entry,
        reason: DeadLetterReason,
        error: String,
    ) {
        inc(&self.counters.dead_lettered);
        if let Some(reply) = entry.reply {
            let _ = reply.send(Err(SendError::NotProcessed(error.clone())));
        }
        bus.dead_letter(
            DeadLetter::new(Arc::unwrap_or_clone(entry.env), reason, error)
                .with_handler(self.config.name.clone()),
        );
        entry.accepted.settle(match reason {
            DeadLetterReason::Shutdown => Settled::LeftOver,
            _ => Settled::DeadLettered,
        });
    }

    /// Starts the worker tasks.
    pub(crate) fn spawn_workers(self: &Arc<Self>, handler: Handler) {
        let mut workers = self.workers.lock();
        for worker in 0..self.config.workers {
            self.live_workers.fetch_add(1, Ordering::Relaxed);
            let sub = Arc::clone(self);
            let handler = handler.clone();
            workers.push(tokio::spawn(async move {
                match handler {
                    Handler::Single(svc) => sub.run_worker(worker, svc).await,
                    Handler::Batch(svc) => sub.run_batch_worker(worker, svc).await,
                }
            }));
        }
    }

    fn worker_exited(&self) {
        if self.live_workers.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(bus) = self.bus.upgrade()
        {
            bus.forget_subscription(self.id);
        }
    }

    /// The pump: owns the transport subscription, feeds its deliveries into the queue, and
    /// stops (dropping the transport subscription) when the queue closes.
    pub(crate) fn spawn_pump(
        self: &Arc<Self>,
        mut stream: futures_util::stream::BoxStream<'static, Delivery>,
    ) {
        let sub = Arc::clone(self);
        let pump = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = sub.queue.closed() => break,
                    next = stream.next() => next,
                };
                let Some(delivery) = next else { break };
                if sub.enqueue_delivery(delivery).await.is_err() {
                    break;
                }
            }
        });
        *self.pump.lock() = Some(pump);
    }

    /// Waits for the pump to stop (it does once the queue is closed), at most until `until`;
    /// a pump stuck in a transport call past that is aborted (its delivery stays unsettled,
    /// so the transport redelivers it).
    pub(crate) async fn stop_pump(&self, until: tokio::time::Instant) {
        let pump = self.pump.lock().take();
        if let Some(mut pump) = pump
            && tokio::time::timeout_at(until, &mut pump).await.is_err()
        {
            pump.abort();
            tracing::warn!(subscription = %self.name(), "transport pump did not stop before the deadline");
        }
    }

    /// One worker (number `worker`: its in-flight slot in the queue): owns a handler clone;
    /// stops when the queue is closed and drained.
    async fn run_worker(self: Arc<Self>, worker: usize, mut svc: BoxHandler) {
        // The message handled last, not yet completed in the queue: when the handler is ready
        // at once, it is completed under the same lock that takes the next one.
        let mut prev: Option<Done> = None;
        // The bus, kept from one message to the next while they flow (upgrading the weak
        // handle per message would write a counter the publishers write too); let go before
        // waiting, so an idle worker does not keep the bus alive, and as soon as workers are
        // all that keep it alive.
        let mut held: Option<HeldBus> = None;
        // Messages taken since this worker last waited or yielded.
        let mut streak: u32 = 0;
        loop {
            // Fairness: with a handler that is always ready and a queue that never empties,
            // nothing here waits, so the worker would never give its thread to other tasks.
            // Every `YIELD_EVERY` messages it yields, with the last message completed first
            // (a handled message is never held across a wait). Counting locally costs less
            // than asking tokio's budget on every message.
            streak += 1;
            if streak >= YIELD_EVERY {
                streak = 0;
                if let Some(done) = prev.take() {
                    self.queue.complete(worker, done.seq, done.lane.as_ref());
                    done.accepted.settle(done.how);
                }
                tokio::task::yield_now().await;
            }
            // Wait until the handler can take work before taking a message off the queue: an
            // open breaker or a rate limit then leaves messages queued (where the overflow
            // policy applies) instead of holding one per worker.
            let ready = {
                let mut ready = std::pin::pin!(AssertUnwindSafe(svc.ready()).catch_unwind());
                let result = match futures_util::poll!(ready.as_mut()) {
                    std::task::Poll::Ready(result) => result,
                    std::task::Poll::Pending => {
                        // Not ready: settle the last message now, not once the handler is.
                        if let Some(done) = prev.take() {
                            self.queue.complete(worker, done.seq, done.lane.as_ref());
                            done.accepted.settle(done.how);
                        }
                        // A wake-up for work this worker cannot do now goes to another.
                        self.queue.offer_to_idle();
                        ready.await
                    }
                };
                match result {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(subscription = %self.name(), error = %e, "handler not ready");
                        false
                    }
                    Err(_) => false,
                }
            };
            let popped = match prev.take() {
                Some(done) => {
                    let popped = self
                        .queue
                        .complete_and_pop(worker, done.seq, done.lane.as_ref());
                    done.accepted.settle(done.how);
                    if !done.bus.orphaned() {
                        held = Some(done.bus);
                    }
                    popped
                }
                None => self.queue.try_pop(worker),
            };
            // A message is only taken right after the handler was seen ready (nothing awaited
            // since), so that readiness holds for its first attempt.
            let taken = match popped {
                Popped::Taken(taken) => taken,
                Popped::Closed => break,
                Popped::Empty => {
                    held = None;
                    streak = 0;
                    // Wait for work without taking it: readiness is checked again first (the
                    // handler may stop being ready while this worker waits).
                    if self.queue.wait_for_work().await {
                        continue;
                    }
                    break;
                }
            };
            let seq = taken.seq();
            let Entry {
                env,
                reply,
                lane,
                delivery,
                accepted,
                ..
            } = taken.entry;
            let Some(bus) = held.take().or_else(|| self.bus.upgrade().map(HeldBus::new)) else {
                break;
            };
            let ok = self.process(&bus, &mut svc, env, reply, ready).await;
            if let Some(delivery) = delivery {
                self.settle(*delivery, ok).await;
            }
            let how = if ok {
                Settled::Acked
            } else {
                Settled::DeadLettered
            };
            prev = Some(Done {
                seq,
                lane,
                bus,
                accepted,
                how,
            });
        }
        self.worker_exited();
    }

    /// One batch worker: waits for a first message, then collects more until the batch is
    /// full or `max_wait` has passed since the first, and hands them over together.
    async fn run_batch_worker(self: Arc<Self>, worker: usize, mut svc: BoxBatchHandler) {
        let Some(batch) = self.config.batch else {
            return self.worker_exited();
        };
        while let Some(first) = self.queue.pop(worker).await {
            let deadline = tokio::time::Instant::now() + batch.max_wait;
            let mut taken = vec![first];
            while taken.len() < batch.max_size {
                match tokio::time::timeout_at(deadline, self.queue.pop(worker)).await {
                    Ok(Some(t)) => taken.push(t),
                    Ok(None) | Err(_) => break,
                }
            }
            let Some(bus) = self.bus.upgrade() else { break };
            let mut settle = Vec::with_capacity(taken.len());
            let mut envs = Vec::with_capacity(taken.len());
            for t in taken {
                let seq = t.seq();
                let Entry {
                    env,
                    reply,
                    lane,
                    delivery,
                    accepted,
                    ..
                } = t.entry;
                settle.push((seq, lane, reply, delivery, accepted));
                envs.push(Arc::unwrap_or_clone(env));
            }
            let result = self.process_batch(&bus, &mut svc, envs).await;
            let how = if result.is_ok() {
                Settled::Acked
            } else {
                Settled::DeadLettered
            };
            for (seq, lane, reply, delivery, accepted) in settle {
                if let Some(delivery) = delivery {
                    self.settle(*delivery, result.is_ok()).await;
                }
                if let Some(reply) = reply {
                    let answer = match &result {
                        Ok(attempts) => Ok(CommandResult {
                            reply: None,
                            handler: self.config.name.clone(),
                            attempts: *attempts,
                        }),
                        Err((error, attempts)) => Err(SendError::Failed {
                            error: error.clone(),
                            attempts: *attempts,
                        }),
                    };
                    let _ = reply.send(answer);
                }
                self.queue.complete(worker, seq, lane.as_ref());
                accepted.settle(how);
            }
        }
        self.worker_exited();
    }

    /// Calls the handler once, catching panics in readiness, in `call` and in the future.
    /// The request is built only once the handler is ready and moves straight into the
    /// (boxed) handler future: these futures hold pointers, not envelopes, which keeps them
    /// small and cheap to move.
    ///
    /// With `ready`, the caller has just seen the handler ready (no await since), so its
    /// readiness is not polled again.
    async fn call<R: Send + 'static>(
        &self,
        svc: &mut BoxCloneService<R, Outcome, BoxError>,
        request: impl FnOnce() -> R,
        parent: Parent,
        ready: bool,
    ) -> Result<Result<Outcome, BoxError>, Box<dyn std::any::Any + Send>> {
        let ready = if ready {
            svc
        } else {
            match AssertUnwindSafe(svc.ready()).catch_unwind().await? {
                Ok(ready) => ready,
                Err(e) => return Ok(Err(e)),
            }
        };
        // `call` only builds the future (publishing is async, so nothing in it needs the
        // task-local); the future itself runs inside the scope below.
        let fut = std::panic::catch_unwind(AssertUnwindSafe(|| ready.call(request())))?;
        crate::bus::CURRENT
            .scope(parent, AssertUnwindSafe(fut).catch_unwind())
            .await
    }

    /// Settles a transport delivery after handling: ack when handled, term when it was
    /// dead-lettered here (so the transport does not redeliver it).
    async fn settle(&self, delivery: Delivery, handled: bool) {
        let id = delivery.envelope.id;
        let result = if handled {
            delivery.ack().await
        } else {
            delivery.term("dead-lettered by the bus").await
        };
        if let Err(e) = result {
            // The transport will redeliver it; dedup or idempotent handlers absorb the repeat.
            tracing::warn!(subscription = %self.name(), message_id = %id, error = %e, "could not settle delivery");
        }
    }

    /// Feeds one delivery from the transport into the queue, waiting for room. Filtered
    /// deliveries are acked at once (they are not for this subscription).
    pub(crate) async fn enqueue_delivery(&self, delivery: Delivery) -> Result<(), EnqueueError> {
        let Some(bus) = self.bus.upgrade() else {
            return Err(EnqueueError::Closed);
        };
        let accepted = bus.pending.arrival();
        if let Some(due) = crate::bus::deliver_at(&delivery.envelope)
            && let Ok(early) = due.duration_since(std::time::SystemTime::now())
            && !early.is_zero()
        {
            // Delayed and not due yet: back to the transport until it is.
            if let Err(e) = delivery.nack(Some(early)).await {
                tracing::warn!(subscription = %self.name(), error = %e, "could not defer a delayed message");
            }
            accepted.settle(Settled::Nacked);
            return Ok(());
        }
        if !self.accepts(&delivery.envelope) {
            inc(&self.counters.filtered);
            self.settle(delivery, true).await;
            accepted.settle(Settled::Acked);
            return Ok(());
        }
        let mut env = delivery.envelope.clone();
        // One count: the transport numbers this delivery from 1, and the worker numbers every
        // call it makes by adding one to what the queued envelope says, as it does for an
        // in-memory message (attempt 0 while queued). So a queued envelope carries the attempts
        // already made: one fewer than the delivery's number.
        env.delivery.attempt = env.delivery.attempt.saturating_sub(1);
        let env = Arc::new(env);
        let lane = self.config.ordering_key.as_ref().and_then(|k| k(&env));
        let mut entry = Entry::new(env, None, lane, accepted);
        entry.delivery = Some(Box::new(delivery));
        match self.queue.push_wait(entry).await {
            Ok(()) => Ok(()),
            // Closed: the delivery is dropped unsettled and comes back later; its count goes
            // with the entry.
            Err(_) => Err(EnqueueError::Closed),
        }
    }

    /// One handler call with panic capture, classified.
    async fn attempt<R: Send + 'static>(
        &self,
        svc: &mut BoxCloneService<R, Outcome, BoxError>,
        request: impl FnOnce() -> R,
        parent: Parent,
        first: &Envelope,
        attempt: u32,
        ready: bool,
    ) -> Attempt {
        let c = &self.counters;
        let result = self.call(svc, request, parent, ready).await;
        match result {
            Ok(Ok(Outcome::Ack)) => Attempt::Done(None),
            Ok(Ok(Outcome::Reply(r))) => Attempt::Done(Some(r)),
            Ok(Ok(Outcome::Reject { reason })) => Attempt::Rejected(reason),
            Ok(Ok(Outcome::Retry { after })) => Attempt::Failed {
                reason: DeadLetterReason::HandlerFailed,
                error: "handler asked for a retry".to_owned(),
                delay: after,
                permanent: false,
                last_attempt: attempt,
            },
            Ok(Err(e)) => {
                let text = error_chain(&*e);
                match decode_failure(&e) {
                    Some(display) => Attempt::Undecodable { text, display },
                    None => {
                        inc(&c.failed);
                        let permanent = e.is::<Permanent>();
                        let last_attempt = attempts_inside(&*e, attempt);
                        tracing::warn!(subscription = %self.name(), message_id = %first.id,
                            correlation_id = %first.correlation_id, attempt, permanent,
                            error = %text, "handler failed");
                        Attempt::Failed {
                            reason: DeadLetterReason::HandlerFailed,
                            error: text,
                            delay: None,
                            permanent,
                            last_attempt,
                        }
                    }
                }
            }
            Err(panic) => {
                inc(&c.failed);
                inc(&c.panicked);
                let text = format!("handler panicked: {}", panic_message(&*panic));
                tracing::error!(subscription = %self.name(), message_id = %first.id,
                    correlation_id = %first.correlation_id, attempt,
                    error = %text, "handler panicked; worker continues");
                Attempt::Failed {
                    reason: DeadLetterReason::Panicked,
                    error: text,
                    delay: None,
                    permanent: false,
                    last_attempt: attempt,
                }
            }
        }
    }

    /// Handles one message until it is acked, replied, rejected or out of attempts. With
    /// `ready`, the worker saw the handler ready just before it took the message (no await
    /// since), so the first attempt does not poll readiness again.
    async fn process(
        &self,
        bus: &Arc<BusInner>,
        svc: &mut BoxHandler,
        env: Arc<Envelope>,
        reply: Option<CommandReply>,
        ready: bool,
    ) -> bool {
        let c = &self.counters;
        let lifecycle = bus.lifecycle_events() && env.kind != switchyard_core::Kind::Event;
        let started = lifecycle.then(std::time::Instant::now);
        let mut ready = ready && !lifecycle;
        if lifecycle {
            bus.command_started(&env, self.name()).await;
        }
        // The shared envelope stays as it was queued; each attempt gets its own copy
        // stamped with the delivery bookkeeping.
        let mut delivery = env.delivery;
        let stamped = |delivery: DeliveryInfo| {
            let mut copy = Envelope::clone(&env);
            copy.delivery = delivery;
            copy
        };
        let (ok, error) = loop {
            delivery.attempt += 1;
            delivery
                .first_delivered_at
                .get_or_insert_with(SystemTime::now);
            inc(&c.delivered);
            let attempt = delivery.attempt;
            let outcome = self
                .attempt(
                    svc,
                    || stamped(delivery),
                    Parent::of(&env),
                    &env,
                    attempt,
                    std::mem::take(&mut ready),
                )
                .await;
            let (reason, error, delay, permanent) = match outcome {
                Attempt::Done(r) => {
                    inc(&c.acked);
                    self.answer(reply, Ok(r), attempt);
                    break (true, None);
                }
                Attempt::Rejected(reason) => {
                    inc(&c.rejected);
                    inc(&c.dead_lettered);
                    tracing::warn!(subscription = %self.name(), message_id = %env.id,
                        correlation_id = %env.correlation_id, %reason, "handler rejected message");
                    self.answer(
                        reply,
                        Err(SendError::Rejected {
                            reason: reason.clone(),
                        }),
                        attempt,
                    );
                    bus.dead_letter(self.letter(
                        stamped(delivery),
                        DeadLetterReason::Rejected,
                        reason.clone(),
                    ));
                    break (false, Some(reason));
                }
                Attempt::Undecodable { text, display } => {
                    inc(&c.decode_failed);
                    inc(&c.dead_lettered);
                    tracing::warn!(subscription = %self.name(), message_id = %env.id,
                        correlation_id = %env.correlation_id, error = %text, "undecodable payload dead-lettered");
                    self.answer(reply, Err(SendError::NotProcessed(display)), attempt);
                    bus.dead_letter(self.letter(
                        stamped(delivery),
                        DeadLetterReason::DecodeFailed,
                        text.clone(),
                    ));
                    break (false, Some(text));
                }
                Attempt::Failed {
                    reason,
                    error,
                    delay,
                    permanent,
                    last_attempt,
                } => {
                    // A retry layer inside the handler may have made more attempts than this
                    // one call: the count goes on from its last.
                    delivery.attempt = last_attempt;
                    (reason, error, delay, permanent)
                }
            };
            let attempt = delivery.attempt;
            if permanent || attempt >= self.config.max_attempts {
                inc(&c.dead_lettered);
                self.answer(
                    reply,
                    Err(SendError::Failed {
                        error: error.clone(),
                        attempts: attempt,
                    }),
                    attempt,
                );
                bus.dead_letter(self.letter(stamped(delivery), reason, error.clone()));
                break (false, Some(error));
            }
            inc(&c.retried);
            tokio::time::sleep(delay.unwrap_or(self.config.retry_delay)).await;
        };
        if let Some(started) = started {
            bus.command_finished(
                &stamped(delivery),
                self.name(),
                ok,
                error,
                started.elapsed(),
            )
            .await;
        }
        ok
    }

    /// Handles one batch: all messages succeed or fail together.
    async fn process_batch(
        &self,
        bus: &BusInner,
        svc: &mut BoxBatchHandler,
        mut envs: Vec<Envelope>,
    ) -> Result<u32, (String, u32)> {
        let c = &self.counters;
        let Some(first) = envs.first().cloned().map(Arc::new) else {
            return Ok(0);
        };
        loop {
            for env in envs.iter_mut() {
                env.delivery.attempt += 1;
                env.delivery
                    .first_delivered_at
                    .get_or_insert_with(SystemTime::now);
            }
            let attempt_no = envs[0].delivery.attempt;
            c.delivered.fetch_add(envs.len() as u64, Ordering::Relaxed);
            let (reason, error) = match self
                .attempt(
                    svc,
                    || envs.clone(),
                    Parent::of(&first),
                    &envs[0],
                    attempt_no,
                    false,
                )
                .await
            {
                Attempt::Done(_) => {
                    c.acked.fetch_add(envs.len() as u64, Ordering::Relaxed);
                    return Ok(attempt_no);
                }
                Attempt::Rejected(reason) => (DeadLetterReason::Rejected, reason),
                Attempt::Undecodable { text, .. } => (DeadLetterReason::DecodeFailed, text),
                Attempt::Failed {
                    reason,
                    error,
                    delay,
                    permanent,
                    // A batch handler takes no retry layer (those take one envelope), and the
                    // messages of a batch keep their own counts.
                    last_attempt: _,
                } => {
                    if !permanent && attempt_no < self.config.max_attempts {
                        inc(&c.retried);
                        tokio::time::sleep(delay.unwrap_or(self.config.retry_delay)).await;
                        continue;
                    }
                    (reason, error)
                }
            };
            for env in envs {
                inc(&c.dead_lettered);
                bus.dead_letter(self.letter(env, reason, error.clone()));
            }
            return Err((error, attempt_no));
        }
    }

    fn letter(&self, env: Envelope, reason: DeadLetterReason, error: String) -> DeadLetter {
        DeadLetter::new(env, reason, error).with_handler(self.config.name.clone())
    }

    #[inline]
    fn answer(
        &self,
        reply: Option<CommandReply>,
        result: Result<Option<Box<Envelope>>, SendError>,
        attempts: u32,
    ) {
        if let Some(tx) = reply {
            let result = result.map(|reply| CommandResult {
                reply: reply.map(|r| *r),
                handler: self.config.name.clone(),
                attempts,
            });
            // The sender may have given up (deadline passed); its late result is discarded.
            let _ = tx.send(result);
        }
    }

    /// Marks the subscription inactive and stops intake; workers drain the queue and exit.
    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::Relaxed);
        self.queue.close();
    }
}

/// How one handler call ended. Moved once per attempt, so kept small: a reply stays in the
/// box the handler's [`Outcome::Reply`] put it in.
enum Attempt {
    /// Acked, or replied.
    Done(Option<Box<Envelope>>),
    /// Refused for good.
    Rejected(String),
    /// The payload did not decode (not retried).
    Undecodable { text: String, display: String },
    /// Error, panic or retry request: try again or dead-letter.
    Failed {
        reason: DeadLetterReason,
        error: String,
        delay: Option<Duration>,
        /// No further attempts (the handler returned [`Permanent`]).
        permanent: bool,
        /// The number of the last attempt made: this call's, or the last one a retry layer
        /// inside the handler made.
        last_attempt: u32,
    },
}

/// The number of the last attempt a retry layer inside the handler made, when the error
/// comes from one (`switchyard_middleware::retry::RetryError`); else `attempt`, this call's.
#[cfg(feature = "middleware")]
fn attempts_inside(e: &(dyn std::error::Error + 'static), attempt: u32) -> u32 {
    switchyard_middleware::retry::RetryError::find(e)
        .map_or(attempt, |r| r.last_attempt(attempt).max(attempt))
}

/// Without the `middleware` feature no retry layer is known: this call's number.
#[cfg(not(feature = "middleware"))]
fn attempts_inside(_e: &(dyn std::error::Error + 'static), attempt: u32) -> u32 {
    attempt
}

fn decode_failure(e: &BoxError) -> Option<String> {
    e.downcast_ref::<CodecError>()
        .filter(|c| c.direction == CodecDirection::Decode)
        .map(ToString::to_string)
}

/// The error and its sources, joined with `: `.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// A live subscription or command handler. Dropping it unsubscribes: no new messages are
/// routed to it, and its workers finish what is already queued.
#[must_use = "dropping a Subscription unsubscribes at once; keep it, or call .detach()"]
pub struct Subscription {
    shared: Arc<SubShared>,
    bus: Weak<BusInner>,
    detached: bool,
}

impl Subscription {
    pub(crate) fn new(shared: Arc<SubShared>, bus: Weak<BusInner>) -> Self {
        Self {
            shared,
            bus,
            detached: false,
        }
    }

    /// The name given at registration.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The pattern (or command topic).
    pub fn pattern(&self) -> &Pattern {
        &self.shared.config.pattern
    }

    /// Counters so far.
    pub fn stats(&self) -> SubscriptionStats {
        self.shared.stats()
    }

    /// Registry view: queue depth, in-flight, policy and counters.
    pub fn info(&self) -> SubscriptionInfo {
        self.shared.info()
    }

    /// Keeps the subscription registered until the bus shuts down, without holding the handle.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(bus) = self.bus.upgrade() {
            bus.unroute(&self.shared);
        }
        self.shared.deactivate();
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.shared.config.name)
            .field("pattern", &self.shared.config.pattern)
            .field("kind", &self.shared.kind)
            .finish()
    }
}

/// Configures a subscription or command handler before it starts. Made by [`Bus::on`],
/// [`Bus::subscribe`], [`Bus::handle`] and [`Bus::handle_envelope`].
#[must_use = "a subscription does nothing until .start().await"]
pub struct SubscriptionBuilder {
    bus: Bus,
    kind: SubscriptionKind,
    config: SubscriptionConfig,
    handler: Handler,
    error: Option<SubscribeError>,
    session: Option<Arc<SessionSubs>>,
}

impl SubscriptionBuilder {
    pub(crate) fn with_error(
        bus: Bus,
        kind: SubscriptionKind,
        config: SubscriptionConfig,
        handler: Handler,
        error: Option<SubscribeError>,
    ) -> Self {
        Self {
            bus,
            kind,
            config,
            handler,
            error,
            session: None,
        }
    }

    /// Scopes the subscription to a session: it sees only that session's messages and is
    /// removed when the session ends.
    pub(crate) fn in_session(mut self, id: SmolStr, subs: Arc<SessionSubs>) -> Self {
        self.config.session = Some(id);
        self.session = Some(subs);
        self
    }

    /// Queues only messages for which `predicate` is true; the others are counted in
    /// `stats().filtered`. Several filters must all pass.
    pub fn filter<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&Envelope) -> bool + Send + Sync + 'static,
    {
        self.config.filters.push(Arc::new(predicate));
        self
    }

    /// Queues only messages whose header `name` equals `value`.
    pub fn filter_header(self, name: &'static str, value: impl Into<SmolStr>) -> Self {
        let value = value.into();
        self.filter(move |env| env.header(name) == Some(value.as_str()))
    }

    /// Handler priority group. When one event matches subscriptions of different groups, the
    /// higher groups' handlers finish (ack, dead-letter or give up) before lower groups get
    /// the event; subscriptions of one group run concurrently. Default 0.
    pub fn handler_priority(mut self, priority: i32) -> Self {
        self.config.handler_priority = priority;
        self
    }

    /// For batch subscriptions ([`Bus::on_batch`]): hand over at most `max_size` messages,
    /// waiting at most `max_wait` after the first for the batch to fill.
    pub fn batch(mut self, max_size: usize, max_wait: Duration) -> Self {
        match (&self.handler, max_size) {
            (Handler::Single(_), _) => {
                self.error.get_or_insert(SubscribeError::InvalidConfig(
                    "batch() needs a batch handler (Bus::on_batch)",
                ));
            }
            (_, 0) => {
                self.error.get_or_insert(SubscribeError::InvalidConfig(
                    "batch size must be at least 1",
                ));
            }
            _ => self.config.batch = Some(BatchConfig { max_size, max_wait }),
        }
        self
    }

    /// Listens on a pattern (`*` one segment, `#` zero or more) instead of the message type's topic.
    /// Not allowed for command handlers (a command has exactly one topic).
    pub fn pattern(mut self, pattern: &str) -> Self {
        if self.kind == SubscriptionKind::Command
            && !pattern.is_empty()
            && pattern.contains(['*', '#'])
        {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "command handlers take an exact topic",
            ));
        }
        match Pattern::new(pattern) {
            Ok(p) => self.config.pattern = p,
            Err(e) => {
                self.error.get_or_insert(SubscribeError::InvalidPattern(e));
            }
        }
        self
    }

    /// On a transport, subscribes without a consumer group: the subscription shares its
    /// messages with no one (two of the same name each get every message) and the transport
    /// keeps nothing for it once it ends. It starts where the transport starts ungrouped
    /// subscriptions (NATS: new messages only; the log: its configured start position).
    /// By default a subscription on a transport is a durable consumer group named after it,
    /// which resumes where it left off. Without a transport every subscription is ephemeral
    /// anyway. Not for command handlers (they never subscribe to the transport).
    pub fn ephemeral(mut self) -> Self {
        if self.kind == SubscriptionKind::Command {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "command handlers do not subscribe to the transport",
            ));
        }
        self.config.ephemeral = true;
        self
    }

    /// Number of worker tasks (default from the bus builder, 1 unless changed).
    pub fn workers(mut self, n: usize) -> Self {
        if n == 0 {
            self.error
                .get_or_insert(SubscribeError::InvalidConfig("workers must be at least 1"));
        }
        self.config.workers = n;
        self
    }

    /// Queue capacity (messages waiting, not counting in-flight).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        if n == 0 {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "queue capacity must be at least 1",
            ));
        }
        self.config.capacity = n;
        self
    }

    /// What happens when the queue is full.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.config.overflow = overflow;
        self
    }

    /// Attempts before a failing message is dead-lettered (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        if n == 0 {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "max_attempts must be at least 1",
            ));
        }
        self.config.max_attempts = n;
        self
    }

    /// Delay before a retry when the handler did not say.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.config.retry_delay = d;
        self
    }

    /// Per-key ordering: messages with the same key are handled one at a time, in order.
    pub fn ordering_key<F>(mut self, key: F) -> Self
    where
        F: Fn(&Envelope) -> Option<SmolStr> + Send + Sync + 'static,
    {
        self.config.ordering_key = Some(Arc::new(key));
        self
    }

    /// Per-key ordering by the value of one header.
    pub fn ordering_header(self, header: &'static str) -> Self {
        self.ordering_key(move |env| env.header(header).map(SmolStr::new))
    }

    /// Wraps the handler in a `tower::Layer` (retry, timeout, breaker...). Layers added later
    /// wrap the earlier ones: the last `.layer` is the outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<BoxHandler>,
        L::Service:
            tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
        <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
    {
        match self.handler {
            Handler::Single(h) => self.handler = Handler::Single(handler::layered(h, layer)),
            Handler::Batch(_) => {
                self.error.get_or_insert(SubscribeError::InvalidConfig(
                    "layers wrap single-message handlers",
                ));
            }
        }
        self
    }

    /// Registers the subscription and starts its workers.
    pub async fn start(self) -> Result<Subscription, SubscribeError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let sub = self
            .bus
            .register(self.kind, self.config, self.handler)
            .await?;
        if let Some(session) = self.session {
            session.push(sub.shared.clone());
        }
        Ok(sub)
    }
}
