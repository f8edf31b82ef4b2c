//! Transport intake: each event subscription on a transport has a pump task that owns the
//! transport subscription and feeds its deliveries into the subscription's queue (a bounded
//! prefetch window), waiting for room.

use std::sync::Arc;

use futures_util::StreamExt;
use switchyard_core::{DeadLetter, DeadLetterReason, Delivery};

use crate::intake::IntakeVerdict;
use crate::pending::{OwedTo, Settled};
use crate::publish::EnqueueError;
use crate::queue::{Entry, PushError};
use crate::state::{SubShared, deliver_at};
use crate::stats::inc;

/// Why a command or request that a transport delivered to an event subscription (another
/// client published it, e.g. `nats pub` on the topic's stream subject with `Sy-Kind:
/// command`) is dead-lettered `Rejected`: it arrived without a reply subject.
const UNANSWERABLE_COMMAND: &str = "a command arrived without a reply subject \
     (published on an event subject, not sent as a request): nobody could receive its answer, \
     so it was not handled; send it to its one handler as a request (bus.send / bus.request, \
     or over NATS a request to `_sy.cmd.<topic>`, the default command_prefix)";

impl SubShared {
    /// The pump: owns the transport subscription, feeds its deliveries into the queue, and
    /// stops (dropping the transport subscription) when the queue closes.
    /// `owed` is what the transport owes its reader: the pump holds it while it reads, so
    /// once every pump of the reader stopped, what is still owed is released.
    pub(crate) fn spawn_pump(
        self: &Arc<Self>,
        mut stream: futures_util::stream::BoxStream<'static, Delivery>,
        owed: Arc<OwedTo>,
    ) {
        let sub = Arc::clone(self);
        let pump = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = sub.queue.closed() => break,
                    next = stream.next() => next,
                };
                let Some(delivery) = next else { break };
                if sub.enqueue_delivery(delivery, &owed).await.is_err() {
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

    /// Feeds one delivery from the transport into the queue, waiting for room. Filtered
    /// deliveries are acked at once (they are not for this subscription); the others pass
    /// the bus's intake check, if it has one, and a rejected one is dead-lettered.
    pub(crate) async fn enqueue_delivery(
        &self,
        delivery: Delivery,
        owed: &OwedTo,
    ) -> Result<(), EnqueueError> {
        let Some(bus) = self.bus.upgrade() else {
            return Err(EnqueueError::Closed);
        };
        if !self.config.in_session_scope(&delivery.envelope) {
            // Another session's message (or no session's): the publish did not count it as
            // owed to this subscription (`owed_deliveries`), so it is settled without being
            // counted as pending.
            inc(&self.counters.filtered);
            self.settle(delivery, true).await;
            return Ok(());
        }
        let accepted = bus.pending.arrival(owed);
        if let Some(due) = deliver_at(&delivery.envelope)
            && let Ok(early) = due.duration_since(std::time::SystemTime::now())
            && !early.is_zero()
        {
            // Delayed and not due yet: back to the transport until it is (not an attempt:
            // noted, so the due delivery's number does not count it).
            bus.deferred
                .note(&self.config.name, &delivery.envelope.id, due);
            if let Err(e) = delivery.hand_back(Some(early)).await {
                tracing::warn!(subscription = %self.name(), error = %e, "could not defer a delayed message");
            }
            accepted.settle(Settled::Nacked);
            return Ok(());
        }
        if delivery.envelope.kind.is_command() {
            // Published as a command by some client (as `publish_envelope` refuses to here):
            // it came without a reply subject, so nobody can hear its answer, and it is for
            // its one handler, never for an event handler. Refused, saying what to do.
            self.dead_letter_delivery(
                &bus,
                delivery,
                accepted,
                DeadLetterReason::Rejected,
                UNANSWERABLE_COMMAND.into(),
            )
            .await;
            return Ok(());
        }
        // Decoded (e.g. decrypted) before anything looks at the payload; the delivery keeps
        // the envelope as it arrived, which is what a dead letter carries.
        let decoded = if bus.codecs.is_empty() {
            None
        } else {
            let mut env = delivery.envelope.clone();
            let failed = bus
                .codecs
                .iter()
                .rev()
                .find_map(|codec| codec.decode(&mut env).err());
            if let Some(why) = failed {
                inc(&self.counters.decode_failed);
                tracing::warn!(
                    subscription = %self.name(),
                    topic = %delivery.envelope.topic,
                    message_id = %delivery.envelope.id,
                    "could not decode a message from the transport: {why}"
                );
                self.dead_letter_delivery(
                    &bus,
                    delivery,
                    accepted,
                    DeadLetterReason::DecodeFailed,
                    why,
                )
                .await;
                return Ok(());
            }
            Some(env)
        };
        let arrived = decoded.as_ref().unwrap_or(&delivery.envelope);
        match self.passes_filters(arrived) {
            Ok(true) => {}
            Ok(false) => {
                inc(&self.counters.filtered);
                self.settle(delivery, true).await;
                accepted.settle(Settled::Acked);
                return Ok(());
            }
            Err(why) => {
                self.admission_panicked(&bus, delivery, accepted, why).await;
                return Ok(());
            }
        }
        if let Some(check) = &bus.intake {
            // A panicking check (a validator's upcaster step, say) gives this message up as
            // a panicking filter does; the pump goes on with the next one.
            let verdict = match crate::intake::run_check(check, arrived) {
                Ok(verdict) => verdict,
                Err(why) => {
                    self.admission_panicked(&bus, delivery, accepted, why).await;
                    return Ok(());
                }
            };
            match verdict {
                IntakeVerdict::Accept => {}
                IntakeVerdict::Warn(why) => {
                    inc(&self.counters.intake_warned);
                    tracing::warn!(
                        subscription = %self.name(),
                        topic = %arrived.topic,
                        message_id = %arrived.id,
                        "intake check: {why}"
                    );
                }
                IntakeVerdict::Reject(why) => {
                    // Dead-lettered before the delivery is settled: a crash in between
                    // redelivers it (and it is rejected again), it is never lost.
                    inc(&self.counters.intake_rejected);
                    self.dead_letter_delivery(
                        &bus,
                        delivery,
                        accepted,
                        DeadLetterReason::Rejected,
                        why,
                    )
                    .await;
                    return Ok(());
                }
            }
        }
        let mut env = decoded.unwrap_or_else(|| delivery.envelope.clone());
        // One count: the transport numbers this delivery from 1, and the worker numbers every
        // call it makes by adding one to what the queued envelope says, as it does for an
        // in-memory message (attempt 0 while queued). So a queued envelope carries the attempts
        // already made: one fewer than the delivery's number.
        // Early hand-backs of a delayed message, and a handler's hand-backs, were deliveries
        // to the transport, not attempts (`deferred.rs`).
        let deferred = if deliver_at(&env).is_some() || bus.deferred.any() {
            bus.deferred.take(&self.config.name, &env.id)
        } else {
            0
        };
        env.delivery.attempt = env.delivery.attempt.saturating_sub(1 + deferred);
        // Attempts already made: the transport hands it out again (a nack, an ack wait that
        // ran out, a restart), which is a retry as the user sees it. The bus's own retries
        // in place (and a retry layer's) are counted where they are made and never come
        // through here, so nothing is counted twice.
        let redelivered = env.delivery.attempt > 0;
        let lane = match self.lane(&env) {
            Ok(lane) => lane,
            Err(why) => {
                self.admission_panicked(&bus, delivery, accepted, why).await;
                return Ok(());
            }
        };
        let env = Arc::new(env);
        let id = env.id.clone();
        let mut entry = Entry::new(env, None, lane, accepted);
        entry.delivery = Some(Box::new(delivery));
        match self.queue.push_wait(entry).await {
            Ok(()) => {
                if redelivered {
                    inc(&self.counters.retried);
                }
                Ok(())
            }
            // Closed (the subscription was removed, or the bus stops): never handled, so
            // handed back, not a failed delivery, and not an attempt when it comes back here
            // (before, it was dropped unsettled, which the log counted as a delivery). Closed
            // by a shutdown (which waited for the deliveries owed until they arrived, not
            // until they were queued), the report names it as handed back: a transport that
            // keeps nothing loses it when it closes.
            Err(PushError::Closed(entry) | PushError::Full(entry)) => {
                if self.hand_back_unhandled(&bus, entry).await.is_err() {
                    tracing::warn!(subscription = %self.name(), message_id = %id, "a transport delivery refused by its closed queue had no delivery handle");
                }
                if bus.state.load(std::sync::atomic::Ordering::Acquire) != crate::state::RUNNING {
                    bus.handed_back.lock().push(id);
                }
                Err(EnqueueError::Closed)
            }
        }
    }

    /// A delivery whose filter, intake check or ordering key panicked for this subscription: noted
    /// (`panicked`, an error log) and dead-lettered as it arrived.
    async fn admission_panicked(
        &self,
        bus: &crate::state::BusInner,
        delivery: Delivery,
        accepted: crate::pending::Accepted,
        why: String,
    ) {
        self.note_admission_panic(&delivery.envelope, &why);
        self.dead_letter_delivery(bus, delivery, accepted, DeadLetterReason::Panicked, why)
            .await;
    }

    /// Gives up a delivery before it is queued: dead-lettered as it arrived (raw bytes),
    /// then terminated at the transport and its pending count settled. Dead-lettered first:
    /// a crash in between redelivers it (and it is given up again), it is never lost.
    async fn dead_letter_delivery(
        &self,
        bus: &crate::state::BusInner,
        delivery: Delivery,
        accepted: crate::pending::Accepted,
        reason: DeadLetterReason,
        why: String,
    ) {
        inc(&self.counters.dead_lettered);
        bus.dead_letter_as_arrived(
            DeadLetter::new(delivery.envelope.clone(), reason, why)
                .with_handler(self.config.name.clone()),
        );
        self.settle(delivery, false).await;
        accepted.settle(Settled::DeadLettered);
    }
}
