//! Publishing an event: hooks, routing, handler-priority groups, and queueing in every
//! matching subscription under its overflow policy (or, on a transport, handing it over).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use smol_str::SmolStr;
use switchyard_core::message::set_typed_fields;
use switchyard_core::{
    DeadLetter, DeadLetterReason, Envelope, Local, Message, PublishError, SendError, TooLarge,
    Topic, TopicError, TransportError, TransportErrorKind,
};

use crate::bus::Bus;
use crate::config::SESSION_HEADER;
use crate::pending::OwedReaders;
use crate::queue::spare::shared;
use crate::queue::{Entry, PushError, Pushed};
use crate::reply::{AnswerRx, CommandReply};
use crate::state::{Admission, BusInner, DELIVER_AT_HEADER, RUNNING, SubShared};
use crate::stats::inc;
use crate::transport_link::ErasedTransport;

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued for the workers.
    Queued,
    /// A filter (or the session scope) kept it out; counted as `filtered`.
    Filtered,
    /// A filter or the ordering key panicked: dead-lettered for this subscription (its
    /// reply channel, if any, answered with the error).
    Panicked,
}

/// Why an enqueue failed.
pub(crate) enum EnqueueError {
    Full,
    Closed,
}

impl SubShared {
    /// Puts a message in the queue under the overflow policy. On success the bus's pending
    /// count includes it until a worker (or shutdown) settles it.
    /// `bus` is the bus this subscription belongs to (the caller holds it, so it is alive).
    pub(crate) async fn enqueue(
        &self,
        bus: &BusInner,
        env: Arc<Envelope>,
        reply: Option<CommandReply>,
    ) -> Result<Enqueued, EnqueueError> {
        let lane = match self.admission(&env) {
            Admission::Lane(lane) => lane,
            Admission::Filtered => {
                inc(&self.counters.filtered);
                return Ok(Enqueued::Filtered);
            }
            Admission::Panicked(why) => {
                let error = self.give_up_panicked(bus, &env, why);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
                return Ok(Enqueued::Panicked);
            }
        };
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
        let lane = match self.admission(env) {
            Admission::Lane(lane) => lane,
            Admission::Filtered => {
                inc(&self.counters.filtered);
                return Ok(Ok(Enqueued::Filtered));
            }
            Admission::Panicked(why) => {
                self.give_up_panicked(bus, env, why);
                return Ok(Ok(Enqueued::Panicked));
            }
        };
        let entry = Entry::new(env.clone(), None, lane, bus.pending.accept());
        match self.queue.try_push_now(entry) {
            Ok(pushed) => Ok(self.pushed(bus, pushed)),
            Err(entry) => Err(entry),
        }
    }

    /// For a command: the session scope and filters, then its ordering key (lane). Kept
    /// out by them, it is counted as `filtered` and refused (`SendError::Rejected`); when a
    /// filter or the key panicked, it is dead-lettered for this handler and refused with
    /// `SendError::Failed` naming the panic.
    pub(crate) fn admit(
        &self,
        bus: &BusInner,
        env: &Envelope,
    ) -> Result<Option<SmolStr>, SendError> {
        match self.admission(env) {
            Admission::Lane(lane) => Ok(lane),
            Admission::Filtered => {
                inc(&self.counters.filtered);
                Err(crate::command::filtered(self))
            }
            Admission::Panicked(why) => Err(self.give_up_panicked(bus, env, why)),
        }
    }

    /// [`try_enqueue`](Self::try_enqueue) for a command [admitted](Self::admit), whose result
    /// goes back on `reply`.
    #[allow(clippy::result_large_err)] // the entry goes back by value, as in `PushError`
    pub(crate) fn try_push_command(
        &self,
        bus: &BusInner,
        env: Arc<Envelope>,
        reply: CommandReply,
        lane: Option<SmolStr>,
    ) -> Result<Result<Enqueued, EnqueueError>, Entry> {
        let entry = Entry::new(env, Some(reply), lane, bus.pending.accept());
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
    #[inline(always)]
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
            Ok(Pushed::Expired(gone)) => {
                self.give_up_expired(bus, gone);
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
}

impl Bus {
    /// Runs the publish hooks, then checks the size limit (so a hook that compresses or
    /// encrypts is measured by its output): what every publish, send, request and schedule
    /// goes through before the message is accepted.
    #[inline]
    pub(crate) fn run_hooks(&self, env: &mut Envelope) -> Result<(), PublishError> {
        if !self.inner.hooks.is_empty() {
            // A hook may rewrite the payload: a value carried beside it (an envelope passed
            // on from a handler) no longer matches it for sure, so typed handlers decode.
            env.local.clear();
            self.inner.hooks.iter().try_for_each(|hook| hook(env))?;
        }
        self.check_size(env)
    }

    /// The bus's message size limit (its own or its transport's, the smaller).
    #[inline]
    pub(crate) fn check_size(&self, env: &Envelope) -> Result<(), PublishError> {
        let (limit, limit_of) = self.inner.size_limit;
        if env.payload.len() > limit {
            return Err(PublishError::TooLarge(TooLarge {
                size: env.payload.len(),
                limit,
                limit_of,
            }));
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn check_running(&self) -> Result<(), PublishError> {
        if self.inner.state.load(Ordering::Acquire) == RUNNING {
            Ok(())
        } else {
            Err(PublishError::ShuttingDown)
        }
    }

    /// Publishes a typed event on `M::TOPIC`. Returns once every matching subscription has
    /// accepted it (queued), or says which refused it.
    ///
    /// When every subscription it reaches is a typed handler of `M` (with nothing between
    /// queue and handler that reads the payload: no layer, bus-wide wrap, filter or ordering
    /// key; and no transport or publish hook on the bus), the message is not encoded at all:
    /// the handlers take the value ([`Envelope::set_unencoded`]), and the bytes are made only if the
    /// message is dead-lettered or a handler asks for its envelope. The size limit
    /// ([`BusBuilder::max_message_bytes`](crate::BusBuilder::max_message_bytes)) applies to
    /// encoded messages, so such a message is not measured; nor does an encoding error fail
    /// the publish then: it shows where the bytes are made (a dead letter keeps an empty
    /// payload and its error says why; [`Ctx::envelope`](crate::Ctx::envelope) logs it).
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), PublishError> {
        let env = blank_shared::<M>()?;
        self.publish_local(env, Typed(msg)).await
    }

    /// Publishes a typed event on another topic than `M::TOPIC` (encoded or not, as
    /// [`publish`](Self::publish)).
    pub async fn publish_to<M: Message>(&self, topic: &str, msg: M) -> Result<(), PublishError> {
        let mut env = blank_shared::<M>()?;
        Arc::make_mut(&mut env).topic = Topic::new(topic)?;
        self.publish_local(env, Typed(msg)).await
    }

    /// Publishes an envelope to every subscription whose pattern matches its topic.
    ///
    /// When called from a handler, the envelope is recorded as caused by the message being
    /// handled and inherits its correlation id (unless one was set).
    ///
    /// A publish is a new delivery: the envelope's delivery bookkeeping
    /// ([`delivery.attempt`](switchyard_core::DeliveryInfo::attempt) and
    /// `first_delivered_at`) starts afresh, so an envelope taken from a dead letter and
    /// published again gets the subscriptions' full attempts (its id, correlation, causation,
    /// headers and payload are kept). The same on a transport.
    ///
    /// Only events are published: a command or request envelope (`Kind::Command`,
    /// `Kind::Request`) is refused with [`PublishError::NotAnEvent`] (with the
    /// [`DELIVER_AT_HEADER`](crate::DELIVER_AT_HEADER), [`PublishError::DelayedCommand`]) and
    /// delivered nowhere; send it to its handler with [`send_envelope`](Self::send_envelope).
    pub fn publish_envelope(
        &self,
        env: Envelope,
    ) -> impl Future<Output = Result<(), PublishError>> + '_ {
        // The one async layer is `publish_local`'s (not an `async fn` here: a second layer
        // would copy the envelope once more per publish).
        self.publish_local(env, NoValue)
    }

    /// [`Bus::publish_envelope`] of `env`, or for a typed publish ([`Typed`]) of the
    /// envelope `blank_envelope::<M>` describes: encoded where anything may read the bytes
    /// (a hook, a transport, a subscription that is not a plain typed handler of `M`), with
    /// the value beside the payload on the in-process path when no publish hook could have
    /// rewritten the payload (typed handlers of its type take it instead of decoding), and
    /// not encoded at all when only such handlers get it. One async layer for every publish.
    ///
    /// `env` is the envelope, or (a typed publish) the envelope already in its `Arc`
    /// ([`blank_shared`]), not shared yet: changed in place. A typed publish passes only a
    /// pointer through the caller's layers into this future (issue 18: its 200-byte envelope
    /// passed by value was copied at each layer the compiler did not see through, and which
    /// those were changed with unrelated code elsewhere: the typed workloads moved by
    /// +60..+210 instructions). An envelope publish's future takes the envelope itself (put
    /// in its `Arc` first, the future copied into the caller's costs more).
    pub(crate) async fn publish_local<V: Published>(
        &self,
        env: impl IntoShared,
        value: V,
    ) -> Result<(), PublishError> {
        self.check_running()?;
        let mut env = env.into_shared();
        // Unshared: `make_mut` hands out the envelope itself, it never copies here.
        let unshared = Arc::make_mut(&mut env);
        // A typed event's kind is a constant: no test at all there.
        if value.not_an_event(unshared) {
            return Err(not_an_event(unshared));
        }
        inherit_parent(unshared);
        value.fresh_delivery(unshared);
        let bytes_read_on_the_way = self.inner.transport.is_some() || !self.inner.hooks.is_empty();
        if bytes_read_on_the_way {
            value.encode_into(unshared)?;
        }
        self.run_hooks(unshared)?;
        if let Some(transport) = &self.inner.transport {
            return self
                .publish_via(transport.as_ref(), Arc::unwrap_or_clone(env))
                .await;
        }
        let targets = self.inner.route(&unshared.topic);
        // With hooks, the payload is what they made of it: no value goes beside it.
        if !bytes_read_on_the_way && value.attach(unshared, &targets)? {
            self.check_size(unshared)?;
        }
        let first = match priority_groups(&targets) {
            None => match self.try_deliver_events(&targets, &env) {
                Ok(done) => done,
                Err(blocked) => self.finish_deliver_events(&targets, &env, blocked).await,
            },
            Some(mut groups) => {
                let later = groups.split_off(1);
                let mut first = self.deliver_group(&groups[0], &env, true).await;
                if !first.shutting_down {
                    let waiters = std::mem::take(&mut first.waiters);
                    self.dispatch_later_groups(later, env, waiters);
                }
                first
            }
        };
        if first.shutting_down {
            return Err(PublishError::ShuttingDown);
        }
        if first.refused.is_empty() {
            Ok(())
        } else {
            Err(PublishError::Full {
                subscriptions: first.refused,
                delivered: first.delivered,
            })
        }
    }

    /// Hands an event to the transport; the local subscriptions it will come back to are
    /// counted as pending until their deliveries arrive and are settled.
    async fn publish_via(
        &self,
        transport: &dyn ErasedTransport,
        mut env: Envelope,
    ) -> Result<(), PublishError> {
        if !self.inner.codecs.is_empty() {
            self.inner
                .codecs
                .iter()
                .try_for_each(|codec| codec.encode(&mut env))?;
            self.check_size(&env)?;
        }
        let expected = owed_deliveries(&self.inner.route(&env.topic), &env);
        // Dropped (publish failed or cancelled) unless kept: then no delivery is owed.
        let expectation = self.inner.pending.expect(expected);
        // A shutdown begun since `check_running` may have looked for owed deliveries already
        // and found none: this one would then come back after its pumps stopped, accepted and
        // lost. Counted first, the state read after (a fence on each side, as in
        // `shutdown_once`): either this publish sees the shutdown and is refused (nothing
        // published, its count dropped with `expectation`), or the shutdown sees the count and
        // waits for the delivery.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.check_running()?;
        let result = transport.publish(env).await;
        if result.is_ok() {
            expectation.keep();
        }
        result
    }

    /// Queues an event in every subscription of one priority group, without waiting and
    /// without a future: done when each accepts (or refuses) at once, the usual case; else
    /// stopped at the first one whose overflow policy makes the publisher wait, for
    /// [`finish_deliver_events`](Self::finish_deliver_events).
    #[inline]
    fn try_deliver_events(
        &self,
        group: &[Arc<SubShared>],
        env: &Arc<Envelope>,
    ) -> Result<GroupDelivery, Box<Blocked>> {
        let mut out = GroupDelivery::default();
        for (i, sub) in group.iter().enumerate() {
            match sub.try_enqueue(&self.inner, env) {
                // The common answer counted here; the others out of line.
                Ok(Ok(Enqueued::Queued)) => out.delivered += 1,
                Ok(result) => out.record(self, sub, result),
                Err(entry) => {
                    // Boxed: the rare path, kept out of the common one's result.
                    return Err(Box::new(Blocked { out, at: i, entry }));
                }
            }
        }
        Ok(out)
    }

    /// Finishes a [`try_deliver_events`](Self::try_deliver_events) that stopped at a
    /// subscription whose policy makes the publisher wait: waits there, then queues in the
    /// rest of the group the same way (as [`deliver_group`](Self::deliver_group) does).
    async fn finish_deliver_events(
        &self,
        group: &[Arc<SubShared>],
        env: &Arc<Envelope>,
        blocked: Box<Blocked>,
    ) -> GroupDelivery {
        let Blocked { mut out, at, entry } = *blocked;
        let sub = &group[at];
        let result = sub.finish_enqueue(&self.inner, entry).await;
        out.record(self, sub, result);
        for sub in &group[at + 1..] {
            let result = sub.enqueue(&self.inner, env.clone(), None).await;
            out.record(self, sub, result);
        }
        out
    }

    /// Queues `env` in every subscription of one priority group. With `wait`, each accepted
    /// message carries a channel on which its handler's result comes back.
    async fn deliver_group(
        &self,
        group: &[Arc<SubShared>],
        env: &Arc<Envelope>,
        wait: bool,
    ) -> GroupDelivery {
        let mut out = GroupDelivery::default();
        for sub in group {
            let (tx, rx) = if wait {
                let (tx, rx) = CommandReply::channel(None);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            match sub.enqueue(&self.inner, env.clone(), tx).await {
                Ok(Enqueued::Queued) => {
                    out.delivered += 1;
                    if let Some(rx) = rx {
                        out.waiters.push((sub.name().to_owned(), rx));
                    }
                }
                Ok(Enqueued::Filtered) => out.filtered += 1,
                // Answered on its channel with the panic: reported as that subscription's
                // failure.
                Ok(Enqueued::Panicked) => {
                    if let Some(rx) = rx {
                        out.waiters.push((sub.name().to_owned(), rx));
                    }
                }
                Err(EnqueueError::Full) => out.refused.push(sub.name().to_owned()),
                // Unsubscribed concurrently: it no longer wants messages. Unless the whole
                // bus is shutting down.
                Err(EnqueueError::Closed) => out.shutting_down |= self.is_shutting_down(),
            }
        }
        out
    }

    /// Hands `env` to lower priority groups, each once the group before it has finished.
    /// Runs in a task: `publish` returns when the first group has accepted the message.
    fn dispatch_later_groups(
        &self,
        groups: Vec<Vec<Arc<SubShared>>>,
        env: Arc<Envelope>,
        mut waiters: Vec<Waiter>,
    ) {
        let bus = self.clone();
        // Counted as pending until the last group has the message (or the task is aborted).
        let hold = bus.inner.pending.accept();
        let task = tokio::spawn(async move {
            let _hold = hold;
            for group in groups {
                for (_, rx) in waiters.drain(..) {
                    let _ = rx.await;
                }
                let delivery = bus.deliver_group(&group, &env, true).await;
                for name in delivery.refused {
                    bus.inner.dead_letter(
                        DeadLetter::new(
                            Envelope::clone(&env),
                            DeadLetterReason::Dropped,
                            "queue full when its priority group's turn came",
                        )
                        .with_handler(name),
                    );
                }
                if delivery.shutting_down {
                    bus.inner.dead_letter(DeadLetter::new(
                        Envelope::clone(&env),
                        DeadLetterReason::Shutdown,
                        "bus shut down before lower priority groups got the message",
                    ));
                    break;
                }
                waiters = delivery.waiters;
            }
        });
        let mut dispatchers = self.inner.dispatchers.lock();
        dispatchers.retain(|t| !t.is_finished());
        dispatchers.push(task);
    }

    /// Publishes and waits until every matching handler has finished with the message (priority
    /// groups in order), reporting each failure. For tests and flows that need the outcome.
    pub async fn publish_and_wait<M: Message>(&self, msg: M) -> Result<WaitReport, PublishError> {
        self.publish_envelope_and_wait(msg.to_envelope()?).await
    }

    /// [`publish_and_wait`](Self::publish_and_wait) for an envelope.
    pub async fn publish_envelope_and_wait(
        &self,
        mut env: Envelope,
    ) -> Result<WaitReport, PublishError> {
        self.check_running()?;
        if self.inner.transport.is_some() {
            return Err(PublishError::Transport(TransportError::new(
                TransportErrorKind::Unsupported,
                "publish_and_wait needs the in-memory bus: on a transport, handlers (in any process) \
                 get events asynchronously and report to no publisher; to wait for a \
                 handler's result use a command (bus.send / bus.request), which works \
                 across processes on NATS",
            )));
        }
        if is_command(&env) {
            return Err(not_an_event(&env));
        }
        inherit_parent(&mut env);
        NoValue.fresh_delivery(&mut env);
        // An envelope passed on as it was delivered gets its bytes (every reader may see it).
        env.encode_payload()?;
        self.run_hooks(&mut env)?;
        let env = Arc::new(env);
        let targets = self.inner.route(&env.topic);
        let mut report = WaitReport::default();
        let groups = priority_groups(&targets).unwrap_or_else(|| vec![targets.to_vec()]);
        for group in &groups {
            let delivery = self.deliver_group(group, &env, true).await;
            if delivery.shutting_down {
                return Err(PublishError::ShuttingDown);
            }
            report.filtered += delivery.filtered;
            for name in delivery.refused {
                let error = SendError::Full {
                    handler: name.clone(),
                };
                report.failures.push(HandlerFailure {
                    subscription: name,
                    error,
                });
            }
            for (name, rx) in delivery.waiters {
                match rx.await {
                    Ok(Ok(_)) => report.handled += 1,
                    Ok(Err(error)) => report.failures.push(HandlerFailure {
                        subscription: name,
                        error,
                    }),
                    Err(_) => report.failures.push(HandlerFailure {
                        subscription: name,
                        error: SendError::NotProcessed(
                            "the subscription stopped before handling it".into(),
                        ),
                    }),
                }
            }
        }
        Ok(report)
    }

    /// Publishes several messages in order; stops at the first error and says how many went out.
    pub async fn publish_batch<M: Message>(
        &self,
        msgs: impl IntoIterator<Item = M>,
    ) -> Result<usize, BatchPublishError> {
        let mut published = 0;
        for msg in msgs {
            let result = match msg.to_envelope() {
                Ok(env) => self.publish_envelope(env).await,
                Err(e) => Err(e),
            };
            result.map_err(|error| BatchPublishError { published, error })?;
            published += 1;
        }
        Ok(published)
    }
}

/// What [`Bus::publish_and_wait`] learned from every matching handler.
#[derive(Debug, Default)]
pub struct WaitReport {
    /// Subscriptions that handled the message successfully.
    pub handled: usize,
    /// Subscriptions a filter kept the message from.
    pub filtered: usize,
    /// Subscriptions whose handler failed, rejected it, or could not decode it.
    pub failures: Vec<HandlerFailure>,
}

impl WaitReport {
    /// `Ok` when no handler failed, else the first failure.
    pub fn into_result(self) -> Result<usize, HandlerFailure> {
        match self.failures.into_iter().next() {
            None => Ok(self.handled),
            Some(f) => Err(f),
        }
    }
}

/// One handler's failure, as reported by [`Bus::publish_and_wait`].
#[derive(Debug, thiserror::Error)]
#[error("subscription {subscription} failed: {error}")]
pub struct HandlerFailure {
    /// The subscription's name.
    pub subscription: String,
    /// What went wrong.
    #[source]
    pub error: SendError,
}

/// Starts `env`'s delivery bookkeeping afresh (attempt 0, never delivered): a publish or a
/// send of an envelope the caller gives is a new delivery, whatever it went through before
/// (a dead letter's attempts, a handler's delivery); id, correlation, causation, headers and
/// payload are kept.
#[inline(always)]
pub(crate) fn new_delivery(env: &mut Envelope) {
    env.delivery.attempt = 0;
    env.delivery.first_delivered_at = None;
}

/// What a publish carries beside its envelope: nothing ([`NoValue`], an envelope publish) or
/// the typed message it is made from ([`Typed`]).
pub(crate) trait Published {
    /// Starts the envelope's delivery bookkeeping afresh: a publish is a new delivery, not a
    /// redelivery (those the workers and the transports make without publishing).
    fn fresh_delivery(&self, env: &mut Envelope);
    /// Fills the payload, for a publish whose bytes something on the way reads.
    fn encode_into(&self, env: &mut Envelope) -> Result<(), PublishError>;
    /// On the in-process path with no hooks: attaches the value to the envelope, encoded
    /// unless every subscription in `targets` takes it as it is. Returns whether it encoded
    /// the payload now (to be measured against the size limit).
    fn attach(self, env: &mut Envelope, targets: &[Arc<SubShared>]) -> Result<bool, PublishError>;
    /// Whether `env` is a command or a request, which a publish refuses ([`not_an_event`]).
    fn not_an_event(&self, env: &Envelope) -> bool;
}

/// A command or a request: for its one handler (`send`/`request`), never published.
#[inline(always)]
pub(crate) fn is_command(env: &Envelope) -> bool {
    env.kind.is_command()
}

/// Why a publish refuses a command ([`is_command`]): delayed (the `deliver-at` header) or not.
#[cold]
pub(crate) fn not_an_event(env: &Envelope) -> PublishError {
    PublishError::refused_command(env.kind, env.header(DELIVER_AT_HEADER).is_some())
}

/// An envelope publish: the payload is what the caller gave.
pub(crate) struct NoValue;

impl Published for NoValue {
    // An envelope given by the caller may have been delivered before (a dead letter's, one
    // passed on from a handler): its attempts are not this publish's.
    #[inline(always)]
    fn fresh_delivery(&self, env: &mut Envelope) {
        new_delivery(env);
    }

    // An envelope passed on as it was delivered may still carry a typed value unencoded
    // (`Envelope::needs_encoding`): it gets its bytes as a typed publish would.
    #[inline(always)]
    fn encode_into(&self, env: &mut Envelope) -> Result<(), PublishError> {
        Ok(env.encode_payload()?)
    }

    #[inline(always)]
    fn attach(self, env: &mut Envelope, targets: &[Arc<SubShared>]) -> Result<bool, PublishError> {
        if env.needs_encoding()
            && let Some(ty) = env.local.value_type()
            && !targets.iter().all(|sub| sub.config.takes(ty))
        {
            env.encode_payload()?;
            return Ok(true);
        }
        Ok(false)
    }

    #[inline(always)]
    fn not_an_event(&self, env: &Envelope) -> bool {
        is_command(env)
    }
}

/// A typed publish: the envelope `blank_envelope::<M>` describes (empty payload).
pub(crate) struct Typed<M>(pub(crate) M);

impl<M: Message> Published for Typed<M> {
    // The envelope `blank_envelope::<M>` made: never delivered.
    #[inline(always)]
    fn fresh_delivery(&self, _env: &mut Envelope) {}

    fn encode_into(&self, env: &mut Envelope) -> Result<(), PublishError> {
        env.payload = self.0.encode()?;
        Ok(())
    }

    #[inline(always)]
    fn attach(self, env: &mut Envelope, targets: &[Arc<SubShared>]) -> Result<bool, PublishError> {
        let ty = std::any::TypeId::of::<M>();
        if targets.iter().all(|sub| sub.config.takes(ty)) {
            env.set_unencoded(self.0);
            return Ok(false);
        }
        env.payload = self.0.encode()?;
        env.local = Local::new(self.0, &env.payload);
        Ok(true)
    }

    // `M`'s kind is the envelope's (`blank_envelope`), a constant.
    #[inline(always)]
    fn not_an_event(&self, _env: &Envelope) -> bool {
        M::KIND.is_command()
    }
}

/// An envelope to publish, or one already in its shared allocation (not shared yet).
pub(crate) trait IntoShared {
    /// The envelope in its `Arc` ([`shared`]), unshared.
    fn into_shared(self) -> Arc<Envelope>;
}

impl IntoShared for Envelope {
    #[inline(always)]
    fn into_shared(self) -> Arc<Envelope> {
        shared(self)
    }
}

impl IntoShared for Arc<Envelope> {
    #[inline(always)]
    fn into_shared(self) -> Arc<Envelope> {
        self
    }
}

/// `blank_envelope::<M>` in its shared allocation ([`shared`]), made in place (see
/// [`set_typed_fields`]). Issue 18: the 200-byte envelope is made and moved into its block
/// here, and only the pointer crosses the publish's async layers, whatever the compiler
/// inlines around it.
#[inline]
pub(crate) fn blank_shared<M: Message>() -> Result<Arc<Envelope>, TopicError> {
    let mut env = Envelope::new(M::topic()?, bytes::Bytes::new());
    set_typed_fields::<M>(&mut env);
    Ok(shared(env))
}

/// Sets causation and correlation from the message being handled on this task, if any.
pub(crate) fn inherit_parent(env: &mut Envelope) {
    if env.causation_id().is_some() {
        return;
    }
    let _ = switchyard_core::delivered::with(|parent| follow_parent(env, parent));
}

/// Makes `env` a consequence of `parent`: caused by it, in its flow (its correlation, unless
/// `env` has one of its own) and in its session (the `session-id` header, unless `env` has
/// one).
pub(crate) fn follow_parent(env: &mut Envelope, parent: &Envelope) {
    env.set_causation_id(Some(parent.id.clone()));
    if env.correlation_id == env.id {
        env.correlation_id = parent.correlation_id.clone();
    }
    if let Some(session) = parent.header(SESSION_HEADER)
        && env.header(SESSION_HEADER).is_none()
    {
        env.headers_mut().insert(SESSION_HEADER, session);
    }
}

type Waiter = (String, AnswerRx);

/// Where [`Bus::try_deliver_events`] stopped: what it delivered so far, the index of the
/// subscription whose policy makes the publisher wait, and the entry for it (already
/// counted as pending).
struct Blocked {
    out: GroupDelivery,
    at: usize,
    entry: Entry,
}

/// What delivering to one priority group did.
#[derive(Default)]
struct GroupDelivery {
    delivered: usize,
    filtered: usize,
    refused: Vec<String>,
    waiters: Vec<Waiter>,
    shutting_down: bool,
}

impl GroupDelivery {
    /// Counts one subscription's answer to an event (no reply channel).
    #[inline(never)]
    fn record(&mut self, bus: &Bus, sub: &SubShared, result: Result<Enqueued, EnqueueError>) {
        match result {
            Ok(Enqueued::Queued) => self.delivered += 1,
            Ok(Enqueued::Filtered) => self.filtered += 1,
            // Dead-lettered for that subscription; the others still get the message.
            Ok(Enqueued::Panicked) => {}
            Err(EnqueueError::Full) => self.refused.push(sub.name().to_owned()),
            // Unsubscribed concurrently: it no longer wants messages. Unless the whole bus
            // is shutting down.
            Err(EnqueueError::Closed) => self.shutting_down |= bus.is_shutting_down(),
        }
    }
}

/// The deliveries a transport makes to these local subscriptions for one message (`env` as
/// the transport gets it) that the bus waits for, by reader: one per consumer group
/// (subscriptions of one name share theirs) and one per ephemeral subscription
/// (`.ephemeral()`, and every session's: see `Bus::register`). A session's subscription gets
/// every message of its topic, but only its session's count: its pump settles the others
/// without counting them (`SubShared::enqueue_delivery`), so one session ending while
/// another's messages are on the way leaves nothing owed behind. A subscription whose reader
/// stopped (dropped, its pump gone) is owed nothing: nothing would receive it.
/// Kept inline (no allocation) for the usual 0 or 1 reader.
fn owed_deliveries(targets: &[Arc<SubShared>], env: &Envelope) -> OwedReaders {
    let mut owed = OwedReaders::new();
    for s in targets {
        if !s.config.in_session_scope(env) {
            continue;
        }
        let Some(reader) = s.owed.get().and_then(std::sync::Weak::upgrade) else {
            continue;
        };
        if !owed.iter().any(|r| Arc::ptr_eq(r, &reader)) {
            owed.push(reader);
        }
    }
    owed
}

/// Splits matching subscriptions into handler-priority groups, highest first; `None` when
/// they all share one priority (the common case, which then costs no allocation).
#[inline]
fn priority_groups(targets: &[Arc<SubShared>]) -> Option<Vec<Vec<Arc<SubShared>>>> {
    let (first, rest) = targets.split_first()?;
    let p = first.config.handler_priority;
    if rest.iter().all(|s| s.config.handler_priority == p) {
        return None;
    }
    group_by_priority(targets)
}

/// [`priority_groups`] when the targets' priorities differ (rare: out of line).
#[cold]
#[inline(never)]
fn group_by_priority(targets: &[Arc<SubShared>]) -> Option<Vec<Vec<Arc<SubShared>>>> {
    let mut sorted: Vec<Arc<SubShared>> = targets.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.config.handler_priority));
    Some(
        sorted
            .chunk_by(|a, b| a.config.handler_priority == b.config.handler_priority)
            .map(<[_]>::to_vec)
            .collect(),
    )
}

/// [`Bus::publish_batch`] stopped at an error.
#[derive(Debug, thiserror::Error)]
#[error("batch publish stopped after {published} message(s): {error}")]
pub struct BatchPublishError {
    /// Messages published before the error.
    pub published: usize,
    /// The error.
    #[source]
    pub error: PublishError,
}
