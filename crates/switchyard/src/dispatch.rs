//! The workers: each is a tokio task that owns one clone of the handler. It loops on
//! `queue.pop()`, calls the handler (retrying in place, so per-key order holds), settles the
//! message (answer, ack or dead letter, then its pending guard) and frees its lane. It stops
//! when the queue is closed and empty (drop of the handle, or shutdown), or when shutdown
//! aborts it at the deadline.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use smol_str::SmolStr;
use switchyard_core::{
    BoxError, DeadLetter, DeadLetterReason, Delivery, DeliveryInfo, Envelope, HandBack, Outcome,
    Permanent, SendError,
};

pub(crate) use crate::attempt::{Attempt, Handled};
use crate::attempt::{attempts_inside, decode_failure, error_chain, links, panicked_inside};
use crate::config::{Handler, SubscriptionKind};
use crate::handler::{Callee, Queued, SingleFuture, SingleHandler};
use crate::keep_alive::Keeper;
use crate::pending::{Accepted, Settled};
use crate::queue::{Entry, Popped};
use crate::reply::{Answer, Answered, CommandReply, TypedValue, WantedType};
use crate::state::{BusInner, Parent, SubShared, TypedSlot, panic_message};
use crate::stats::inc;

/// A worker that never has to wait yields to other tasks after this many messages (so does
/// a prefetching worker, and a sender after as many commands run on its thread, `inline.rs`).
pub(crate) const YIELD_EVERY: u32 = 128;

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
/// (Its envelope and seq: in the worker's `Lending`.)
struct Done {
    lane: Option<SmolStr>,
    bus: HeldBus,
    accepted: Accepted,
    how: Settled,
}

impl SubShared {
    /// Starts the worker tasks.
    pub(crate) fn spawn_workers(self: &Arc<Self>, handler: Handler) {
        // A command's sender may run a one-message handler itself when a worker is free.
        let handler = match handler {
            Handler::Single(svc) => Handler::Stacked(SingleHandler::Boxed(svc)),
            other => other,
        };
        if let (SubscriptionKind::Command, Handler::Stacked(svc)) = (self.kind, &handler) {
            self.queue.enable_inline(svc);
        }
        let mut workers = self.workers.lock();
        for worker in 0..self.config.workers {
            self.live_workers.fetch_add(1, Ordering::Relaxed);
            let sub = Arc::clone(self);
            let handler = handler.clone();
            workers.push(tokio::spawn(async move {
                match handler {
                    Handler::Single(svc) => sub.run_worker(worker, svc.into()).await,
                    Handler::Stacked(svc) => sub.run_worker(worker, svc).await,
                    Handler::Batch(svc) => sub.run_batch_worker(worker, svc).await,
                    Handler::Prefetch { handler, max } => {
                        sub.run_prefetch_worker(worker, handler, max).await
                    }
                }
            }));
        }
    }

    /// A worker stopped (its queue closed and drained). The last one forgets the
    /// subscription, unless a command still runs inline on its sender's task: then that run,
    /// the last to end, forgets it ([`finish_inline`](Self::finish_inline)), so that a
    /// shutdown still sees the run, waits for it until its deadline and names it when it is
    /// stopped (review rev1). The queue's lock orders the two checks: whichever of the last
    /// worker and the last run comes second sees the other gone.
    pub(crate) fn worker_exited(&self) {
        if self.live_workers.fetch_sub(1, Ordering::AcqRel) == 1 && !self.queue.inline_running() {
            self.forget();
        }
    }

    /// Gives back the slot of inline run `seq` (see `Queue::finish_inline`); the last run of a
    /// closed queue whose workers all exited forgets the subscription (see
    /// [`worker_exited`](Self::worker_exited)).
    pub(crate) fn finish_inline(
        &self,
        seq: u64,
        lane: Option<&SmolStr>,
        aborted: bool,
        kept: Option<SingleHandler>,
    ) {
        let last = self.queue.finish_inline(seq, lane, aborted, kept);
        if last && self.live_workers.load(Ordering::Acquire) == 0 {
            self.forget();
        }
    }

    fn forget(&self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.forget_subscription(self.id);
        }
    }

    /// One worker (number `worker`: its in-flight slot in the queue): owns a handler clone;
    /// stops when the queue is closed and drained.
    pub(crate) async fn run_worker(self: Arc<Self>, worker: usize, mut svc: SingleHandler) {
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
        // The message being handled: the queue lends its envelope (keeping no reference).
        let mut lending = self.queue.lending(worker);
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
                    self.queue.complete_lent(&mut lending, done.lane.as_ref());
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
                            self.queue.complete_lent(&mut lending, done.lane.as_ref());
                            done.accepted.settle(done.how);
                        }
                        // A wake-up for work this worker cannot do now goes to another.
                        self.queue.offer_to_idle();
                        // Removed while its handler cannot take work: what waits is given
                        // up now, not when the handler is ready again (`give_up_waiting`).
                        let removed = tokio::select! {
                            biased;
                            result = ready.as_mut() => Some(result),
                            () = self.removed() => None,
                        };
                        match removed {
                            Some(result) => result,
                            None => {
                                self.give_up_waiting().await;
                                break;
                            }
                        }
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
                        .complete_and_pop(&mut lending, done.lane.as_ref());
                    done.accepted.settle(done.how);
                    if !done.bus.orphaned() {
                        held = Some(done.bus);
                    }
                    popped
                }
                None => self.queue.try_pop_lent(&lending),
            };
            // A message is only taken right after the handler was seen ready (nothing awaited
            // since), so that readiness holds for its first attempt.
            let taken = match popped {
                Popped::Taken(taken) => taken,
                Popped::Closed => break,
                Popped::Empty => {
                    held = None;
                    streak = 0;
                    // Wait for work without taking it, and without what readiness reserved
                    // (another worker's retry may need it): readiness is checked again first
                    // (the handler may stop being ready while this worker waits).
                    svc.release_readiness();
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
                mut delivery,
                accepted,
                ..
            } = taken.entry;
            // The queue's own reference, lent (it keeps none while this worker holds it).
            let env = lending.hold(seq, env);
            let Some(bus) = held.take().or_else(|| self.bus.upgrade().map(HeldBus::new)) else {
                break;
            };
            // Its sender's deadline passed while it waited: nobody takes the result, the
            // handler is not called (`expired.rs`). One branch for a message without one.
            if let Some(why) =
                crate::deadline::expired(env.delivery.deadline, crate::expired::QUEUED)
            {
                let how = Box::pin(self.expire_taken(&bus, env, reply, delivery, why)).await;
                prev = Some(Done {
                    lane,
                    bus,
                    accepted,
                    how: how.settled(),
                });
                continue;
            }
            // A delivery whose transport redelivers after an ack wait is kept alive while this
            // worker holds it (handling, retrying in place), within bounds: see `keep_alive`.
            let from_transport = delivery.is_some();
            let keeper = Keeper::take(&mut delivery, &self);
            // A message nobody waits for, with the handler seen ready just now and no
            // lifecycle events to publish: its first attempt is made here, without the async
            // layers of `process` (which takes over only when that attempt did not succeed).
            let ok = if ready && reply.is_none() && !publishes_lifecycle(&bus, env) {
                let stamp = self.next_attempt(env.delivery, switchyard_core::clock::now);
                let started = switchyard_core::delivered::scope(
                    Arc::clone(env),
                    std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(start_call(&mut svc, env, stamp, &bus, cx))
                    }),
                )
                .await;
                let result = match started {
                    Started::Ended(result) => result,
                    Started::Pending(fut) => self.finish_call(&mut svc, fut, env, true).await,
                };
                match result {
                    Ok(Ok(Outcome::Ack)) => {
                        // An ack holds nothing to drop: said so, since the drop of the whole
                        // result stayed an out-of-line call here (22 instructions a message).
                        std::mem::forget(result);
                        inc(&self.counters.acked);
                        Handled::Done
                    }
                    // An event has no one to answer (and a reply to it is dropped).
                    Ok(Ok(Outcome::Reply(_))) => {
                        inc(&self.counters.acked);
                        Handled::Done
                    }
                    other => {
                        let made = self.classify_rare(other, env, stamp.attempt);
                        self.process(
                            &bus,
                            &mut svc,
                            Arc::clone(env),
                            None,
                            false,
                            Some((made, stamp)),
                            &mut None,
                            from_transport,
                        )
                        .await
                    }
                }
            } else {
                self.process(
                    &bus,
                    &mut svc,
                    Arc::clone(env),
                    reply,
                    ready,
                    None,
                    &mut None,
                    from_transport,
                )
                .await
            };
            if let Some(keeper) = keeper {
                delivery = keeper.stop();
            }
            if let Some(delivery) = delivery {
                self.settle_as(&bus, *delivery, ok).await;
            }
            let how = ok.settled();
            prev = Some(Done {
                lane,
                bus,
                accepted,
                how,
            });
        }
        self.worker_exited();
    }

    /// Calls the handler once, catching panics in readiness, in `call` and in the future.
    /// The request is built only once the handler is ready and moves straight into the
    /// handler's future, which stays small and cheap to move: a [`BoxHandler`]'s and the
    /// resilience stack's ([`SingleHandler::Resilient`]) each run in the box their handler
    /// keeps for its calls, handed back once the call ended ([`Callee::recycle`]).
    ///
    /// [`BoxHandler`]: crate::BoxHandler
    ///
    /// With `ready`, the caller has just seen the handler ready (no await since), so its
    /// readiness is not polled again.
    pub(crate) async fn call<S, R, T>(
        &self,
        svc: &mut S,
        request: impl FnOnce() -> R,
        parent: Parent,
        ready: bool,
    ) -> Result<Result<T, BoxError>, Box<dyn std::any::Any + Send>>
    where
        S: Callee<R, Response = T, Error = BoxError>,
    {
        if !ready {
            let ready = std::future::poll_fn(|cx| svc.poll_ready(cx));
            if let Err(e) = AssertUnwindSafe(ready).catch_unwind().await? {
                return Ok(Err(e));
            }
        }
        // `call` runs inside the scope too: middleware may take the delivered envelope there
        // (the resilience stack keeps it for retries instead of copying).
        switchyard_core::delivered::scope(parent.0, async move {
            let mut fut = std::panic::catch_unwind(AssertUnwindSafe(|| svc.call_in(request())))?;
            let polled = std::future::poll_fn(|cx| std::pin::Pin::new(&mut fut).poll(cx));
            let result = AssertUnwindSafe(polled).catch_unwind().await;
            // What the call was made of goes back to the handler for the next call.
            recycle_caught::<S, R>(svc, fut);
            result
        })
        .await
    }

    /// The rest of a call [`start_call`] left pending: polled to its end inside the delivered
    /// scope and a panic capture, then handed back to the handler. `just_polled`: start_call
    /// polled it just now, in this poll of this task, so the first poll here only waits for
    /// its wake.
    pub(crate) async fn finish_call(
        &self,
        svc: &mut SingleHandler,
        mut fut: SingleFuture,
        env: &Arc<Envelope>,
        just_polled: bool,
    ) -> Result<Result<Outcome, BoxError>, Box<dyn std::any::Any + Send>> {
        switchyard_core::delivered::scope(Arc::clone(env), async move {
            // start_call polled it just now, with this task's waker: wait for that wake
            // instead of polling again at once.
            let mut waited = !just_polled;
            let polled = std::future::poll_fn(|cx| {
                if !std::mem::replace(&mut waited, true) {
                    return std::task::Poll::Pending;
                }
                std::pin::Pin::new(&mut fut).poll(cx)
            });
            let result = AssertUnwindSafe(polled).catch_unwind().await;
            recycle_caught::<_, Envelope>(svc, fut);
            result
        })
        .await
    }

    /// The delivery bookkeeping of the next attempt at a message stamped `prev` so far: one
    /// attempt more, the first delivery time set if it was not (from `now`), counted as
    /// delivered.
    #[inline]
    pub(crate) fn next_attempt(
        &self,
        mut prev: DeliveryInfo,
        now: impl FnOnce() -> SystemTime,
    ) -> DeliveryInfo {
        prev.attempt += 1;
        prev.first_delivered_at.get_or_insert_with(now);
        inc(&self.counters.delivered);
        prev
    }

    /// Settles a transport delivery after handling: ack when handled, term when it was
    /// dead-lettered here (so the transport does not redeliver it).
    pub(crate) async fn settle(&self, delivery: Delivery, handled: bool) {
        let id = delivery.envelope.id.clone();
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

    /// One handler call with panic capture, classified.
    pub(crate) async fn attempt<S, R>(
        &self,
        svc: &mut S,
        request: impl FnOnce() -> R,
        parent: Parent,
        first: &Envelope,
        attempt: u32,
        ready: bool,
    ) -> Attempt
    where
        S: Callee<R, Response = Outcome, Error = BoxError>,
    {
        let result = self.call(svc, request, parent, ready).await;
        self.classify(result, first, attempt)
    }

    /// [`attempt`](Self::attempt) at a command whose sender takes an output of type `wanted`
    /// as it is, and that output if the handler left it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn attempt_typed<S, R>(
        &self,
        svc: &mut S,
        request: impl FnOnce() -> R,
        parent: Parent,
        first: &Envelope,
        attempt: u32,
        ready: bool,
        wanted: WantedType,
    ) -> (Attempt, Option<TypedValue>)
    where
        S: Callee<R, Response = Outcome, Error = BoxError>,
    {
        let slot = TypedSlot::new(wanted, &parent.0, None);
        let (result, typed) = slot.around(self.call(svc, request, parent, ready)).await;
        (self.classify(result, first, attempt), typed)
    }

    /// How one handler call ended (as [`SubShared::call`] returns it), counted and logged.
    /// Inlined for the common answers (ack, reply); the rest, which builds texts and logs,
    /// stays out of line in [`classify_rare`](Self::classify_rare), so the per-message path
    /// neither calls nor moves the whole result.
    #[inline(always)]
    pub(crate) fn classify(
        &self,
        result: Result<Result<Outcome, BoxError>, Box<dyn std::any::Any + Send>>,
        first: &Envelope,
        attempt: u32,
    ) -> Attempt {
        match result {
            Ok(Ok(Outcome::Ack)) => Attempt::Done(None),
            Ok(Ok(Outcome::Reply(r))) => Attempt::Done(Some(r)),
            other => self.classify_rare(other, first, attempt),
        }
    }

    /// [`classify`](Self::classify) of everything but an ack or a reply.
    #[cold]
    #[inline(never)]
    pub(crate) fn classify_rare(
        &self,
        result: Result<Result<Outcome, BoxError>, Box<dyn std::any::Any + Send>>,
        first: &Envelope,
        attempt: u32,
    ) -> Attempt {
        let c = &self.counters;
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
            Ok(Err(e)) if links(&*e).any(|l| l.is::<HandBack>()) => {
                let delay = links(&*e)
                    .find_map(|l| l.downcast_ref::<HandBack>())
                    .and_then(HandBack::delay);
                Attempt::HandedBack(error_chain(&*e), delay)
            }
            Ok(Err(e)) => match decode_failure(&*e) {
                Some(codec) => Attempt::Undecodable {
                    text: error_chain(codec),
                    display: codec.to_string(),
                },
                None => {
                    let text = error_chain(&*e);
                    inc(&c.failed);
                    // A `Permanent`, or a value that does not encode (a typed reply, a
                    // `ctx.publish`), anywhere in the chain: the same value fails the same
                    // way on every attempt (as the resilience stack's classifier says).
                    let permanent = links(&*e).any(|l| {
                        l.is::<Permanent>() || switchyard_core::error::is_codec_failure(l)
                    });
                    let last_attempt = attempts_inside(&*e, attempt);
                    // A panic a layer inside the handler caught (the resilience stack's) is
                    // a panic all the same: counted and dead-lettered as one.
                    let reason = if panicked_inside(&*e) {
                        inc(&c.panicked);
                        DeadLetterReason::Panicked
                    } else {
                        DeadLetterReason::HandlerFailed
                    };
                    tracing::warn!(subscription = %self.name(), message_id = %first.id,
                        correlation_id = %first.correlation_id, attempt, permanent,
                        error = %text, "handler failed");
                    Attempt::Failed {
                        reason,
                        error: text,
                        delay: None,
                        permanent,
                        last_attempt,
                    }
                }
            },
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
    /// since), so the first attempt does not poll readiness again. With `first`, the first
    /// attempt was already made (by the worker, or a prefetching worker's call): how it
    /// ended, and the delivery bookkeeping it was made with (its count already taken).
    /// `from_transport`: the message is a transport's delivery, which a [`HandBack`] gives
    /// back to it (the caller nacks it); any other message has nowhere to go back to, and a
    /// hand-back fails it for good.
    /// Returns how it ended; the answer goes to `kept` when `reply` has no channel
    /// (an out-parameter rather than a larger return value: the workers' path stays as it was).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn process(
        &self,
        bus: &Arc<BusInner>,
        svc: &mut SingleHandler,
        env: Arc<Envelope>,
        reply: Option<CommandReply>,
        ready: bool,
        mut first: Option<(Attempt, DeliveryInfo)>,
        kept: &mut Option<Answered>,
        from_transport: bool,
    ) -> Handled {
        let c = &self.counters;
        let lifecycle = publishes_lifecycle(bus, &env);
        let started = lifecycle.then(std::time::Instant::now);
        let mut ready = ready && !lifecycle;
        if lifecycle {
            // Boxed, as the lifecycle's other futures and the retry's sleep: they are rare,
            // and inline they would make every handling's future (which an inline command
            // run allocates, `inline.rs`) several times larger.
            Box::pin(bus.command_started(&env, self.name())).await;
        }
        // The shared envelope stays as it was queued; each attempt gets its own copy
        // stamped with the delivery bookkeeping, except a typed event handler nothing wraps,
        // which takes the queued envelope and the attempt's bookkeeping beside it
        // (`SingleHandler::call_queued`).
        let mut delivery = env.delivery;
        // A typed sender in this process takes the typed handler's output as it is.
        let wanted = reply.as_ref().and_then(|r| r.typed);
        let mut typed = None;
        let stamped = |delivery: DeliveryInfo| stamped_copy(&env, delivery);
        let (ok, error) = loop {
            if let Some((_, stamp)) = &first {
                // Stamped and counted by the caller, which made this attempt.
                delivery = *stamp;
            } else {
                delivery = self.next_attempt(delivery, switchyard_core::clock::now);
            }
            let attempt = delivery.attempt;
            let outcome = match first.take() {
                Some((made, _)) => made,
                None => match wanted {
                    None => {
                        self.attempt(
                            svc,
                            || Queued(&env, delivery, bus),
                            Parent::of(&env),
                            &env,
                            attempt,
                            std::mem::take(&mut ready),
                        )
                        .await
                    }
                    Some(wanted) => {
                        let (made, output) = self
                            .attempt_typed(
                                svc,
                                || Queued(&env, delivery, bus),
                                Parent::of(&env),
                                &env,
                                attempt,
                                std::mem::take(&mut ready),
                                wanted,
                            )
                            .await;
                        typed = output;
                        made
                    }
                },
            };
            let (reason, error, delay, permanent) = match outcome {
                Attempt::Done(r) => {
                    inc(&c.acked);
                    // An event has no one to answer (and a reply to it is dropped).
                    if reply.is_some() {
                        *kept = self.answer(reply, Ok((r, typed.take())), attempt);
                    }
                    break (Handled::Done, None);
                }
                Attempt::Rejected(reason) => {
                    inc(&c.rejected);
                    inc(&c.dead_lettered);
                    tracing::warn!(subscription = %self.name(), message_id = %env.id,
                        correlation_id = %env.correlation_id, %reason, "handler rejected message");
                    *kept = self.answer(
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
                    break (Handled::DeadLettered, Some(reason));
                }
                Attempt::Undecodable { text, display } => {
                    inc(&c.decode_failed);
                    inc(&c.dead_lettered);
                    tracing::warn!(subscription = %self.name(), message_id = %env.id,
                        correlation_id = %env.correlation_id, error = %text, "undecodable payload dead-lettered");
                    *kept = self.answer(reply, Err(SendError::NotProcessed(display)), attempt);
                    bus.dead_letter(self.letter(
                        stamped(delivery),
                        DeadLetterReason::DecodeFailed,
                        text.clone(),
                    ));
                    break (Handled::DeadLettered, Some(text));
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
                // Back to the transport (the caller nacks it): not an attempt, no answer.
                Attempt::HandedBack(error, delay) if from_transport => {
                    tracing::debug!(subscription = %self.name(), message_id = %env.id,
                        correlation_id = %env.correlation_id, %error, "handler handed the message back to the transport");
                    // Attempts made before this call (a retry in place may have come first).
                    let made = delivery.attempt.saturating_sub(1);
                    let after_ms = delay.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
                    break (Handled::HandedBack { after_ms, made }, None);
                }
                // Nowhere to go back to: it fails for good.
                Attempt::HandedBack(error, _) => {
                    inc(&c.failed);
                    (DeadLetterReason::HandlerFailed, error, None, true)
                }
            };
            let attempt = delivery.attempt;
            let (mut error, mut again) = (error, None);
            if !permanent && attempt < self.config.max_attempts {
                let delay = delay.unwrap_or_else(|| self.config.backoff.delay_for(attempt));
                match crate::deadline::too_late(delivery.deadline, delay) {
                    None => again = Some(delay),
                    Some(why) => error = format!("{error}; {why}"),
                }
            }
            let Some(delay) = again else {
                inc(&c.dead_lettered);
                *kept = self.answer(
                    reply,
                    Err(SendError::Failed {
                        error: error.clone(),
                        attempts: attempt,
                    }),
                    attempt,
                );
                bus.dead_letter(self.letter(stamped(delivery), reason, error.clone()));
                break (Handled::DeadLettered, Some(error));
            };
            inc(&c.retried);
            Box::pin(tokio::time::sleep(delay)).await;
        };
        // A command handed back has not finished: it starts again where it is delivered.
        if let Some(started) = started
            && !matches!(ok, Handled::HandedBack { .. })
        {
            Box::pin(bus.command_finished(
                &stamped(delivery),
                self.name(),
                ok == Handled::Done,
                error,
                started.elapsed(),
            ))
            .await;
        }
        ok
    }

    /// Settles a transport delivery as [`process`](Self::process) left it: acked, termed,
    /// or handed back (nacked, after the delay asked for; noted so that its next delivery to
    /// this subscription here does not count the hand-backs as attempts, `deferred.rs`;
    /// named in the shutdown report when the bus is stopping).
    pub(crate) async fn settle_as(&self, bus: &BusInner, delivery: Delivery, how: Handled) {
        let Handled::HandedBack { after_ms, made } = how else {
            return self.settle(delivery, how == Handled::Done).await;
        };
        let id = delivery.envelope.id.clone();
        let delay = after_ms.map(|ms| Duration::from_millis(u64::from(ms)));
        self.hand_back_noted(bus, delivery, made, delay).await;
        if bus.state.load(Ordering::Acquire) != crate::state::RUNNING {
            bus.handed_back.lock().push(id);
        }
    }

    pub(crate) fn letter(
        &self,
        env: Envelope,
        reason: DeadLetterReason,
        error: String,
    ) -> DeadLetter {
        DeadLetter::new(env, reason, error).with_handler(self.config.name.clone())
    }

    /// Answers the command's sender; the answer comes back when the reply has no channel.
    #[inline]
    fn answer(
        &self,
        reply: Option<CommandReply>,
        result: Result<(Option<Box<Envelope>>, Option<TypedValue>), SendError>,
        attempts: u32,
    ) -> Option<Answered> {
        // The reply stays in the handler's box; the sender adds the handler's name.
        reply?.send(result.map(|(reply, typed)| Answer {
            reply,
            typed,
            attempts,
        }))
    }
}

/// How [`start_call`] left a call: ended (as [`SubShared::call`] returns it), or pending
/// with its future.
pub(crate) enum Started {
    Ended(Result<Result<Outcome, BoxError>, Box<dyn std::any::Any + Send>>),
    Pending(SingleFuture),
}

/// A first attempt's call and first poll, at once (the caller runs it inside the delivered
/// scope): the handler is called at `env` for an attempt stamped `delivery`
/// ([`SingleHandler::call_queued`]: a typed handler nothing wraps takes `env` as it is, any
/// other gets its own copy stamped with `delivery`), and a panic in the call or the poll is
/// captured as [`SubShared::call`] captures it. A call ended at its first poll (also by a
/// panic) is handed back to the handler ([`Callee::recycle`]) here, outside the capture, as
/// `call` does: a future that panicked is not dropped while the panic unwinds. Out of line,
/// the call inlined into it, for both its callers
/// (the worker's first attempt at an event, an inline command's first attempt).
#[inline(never)]
pub(crate) fn start_call(
    svc: &mut SingleHandler,
    env: &Arc<Envelope>,
    delivery: DeliveryInfo,
    bus: &Arc<BusInner>,
    cx: &mut std::task::Context<'_>,
) -> Started {
    // The stack's future is polled where it is made, not through its kept box; a boxed
    // handler's runs in the box the handler keeps.
    #[cfg_attr(
        not(feature = "middleware"),
        allow(clippy::infallible_destructuring_match)
    )]
    let handler = match svc {
        SingleHandler::Boxed(handler) => handler,
        #[cfg(feature = "middleware")]
        SingleHandler::Resilient(stack) => return stack.start(env, delivery, cx),
    };
    let made = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if handler.has_queued() {
            handler.call_queued(env, delivery, bus)
        } else {
            Callee::<Envelope>::call_in(handler, env.copy_with_delivery(delivery))
        }
    }));
    let mut fut = match made {
        Ok(fut) => fut,
        Err(panic) => return Started::Ended(Err(panic)),
    };
    let polled =
        std::panic::catch_unwind(AssertUnwindSafe(|| std::pin::Pin::new(&mut fut).poll(cx)));
    let result = match polled {
        #[cfg(feature = "middleware")]
        Ok(std::task::Poll::Pending) => return Started::Pending(SingleFuture::Boxed(fut)),
        #[cfg(not(feature = "middleware"))]
        Ok(std::task::Poll::Pending) => return Started::Pending(fut),
        Ok(std::task::Poll::Ready(result)) => Ok(result),
        Err(panic) => Err(panic),
    };
    recycle_caught::<_, Envelope>(handler, fut);
    Started::Ended(result)
}

/// A handler's own copy of the queued `env`, stamped with the attempt's bookkeeping.
#[inline]
fn stamped_copy(env: &Envelope, delivery: DeliveryInfo) -> Envelope {
    env.copy_with_delivery(delivery)
}

/// Whether handling `env` publishes lifecycle events (commands and requests, when the bus
/// has them on).
#[inline]
pub(crate) fn publishes_lifecycle(bus: &BusInner, env: &Envelope) -> bool {
    bus.lifecycle_events() && env.kind != switchyard_core::Kind::Event
}

/// Hands an ended call back to the handler ([`Callee::recycle`]), which drops or keeps its
/// future: a panic in the future's `Drop` is caught and logged, so a handler cannot kill its
/// worker (the message keeps the outcome its call gave).
#[inline]
fn recycle_caught<S: Callee<R>, R>(svc: &mut S, fut: S::Future) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| svc.recycle(fut))).is_err() {
        tracing::error!(
            "a handler's future panicked while it was dropped; the message keeps the outcome its call gave"
        );
    }
}
