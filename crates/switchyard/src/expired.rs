//! Messages whose sender's deadline (`delivery.deadline`: a request's, or what was left of
//! one when it came from another process) passed before their handler got them: nobody can
//! receive their result (the sender already has `Timeout`), so the handler is not called.
//! They are dead-lettered `Expired` ("deadline passed while queued (N ms late)", attempts
//! 0), counted in `expired` and `dead_lettered`, browsable and replayable like any dead
//! letter; a sender still listening is answered `Timeout` (what a sender past its deadline
//! hears, wherever the deadline passed: a local `request` turns it into its own deadline, a
//! sender in another process hears `timeout`), a transport's delivery is terminated (settled
//! for good, as any message dead-lettered by the bus).
//!
//! Found where a message leaves its queue (a worker takes it: `dispatch.rs`, `batch.rs`,
//! `prefetch.rs`), where a full queue makes room (`queue/expiry.rs`, then
//! [`give_up_expired`](SubShared::give_up_expired)), and where a command arrives from
//! another process already past its deadline (`command.rs`). A message without a deadline
//! pays one branch on each of these paths.

use std::time::Duration;

use switchyard_core::{DeadLetterReason, Delivery, Envelope, SendError};

use crate::attempt::Handled;
use crate::pending::Settled;
use crate::queue::{Entry, Taken};
use crate::reply::CommandReply;
use crate::state::{BusInner, SubShared};
use crate::stats::inc;

/// Where the deadline of a message a worker takes passed: "while queued".
pub(crate) const QUEUED: &str = "while queued";

impl SubShared {
    /// Dead-letters `Expired` the messages a full queue took out because their sender's
    /// deadline had passed (`Pushed::Expired`).
    #[cold]
    #[inline(never)]
    pub(crate) fn give_up_expired(&self, bus: &BusInner, gone: Vec<Entry>) {
        for entry in gone {
            let why = expired_text(&entry.env);
            tracing::debug!(subscription = %self.name(), message_id = %entry.env.id,
                correlation_id = %entry.env.correlation_id, error = %why,
                "expired message evicted from a full queue");
            // Never a transport's delivery: a full queue leaves those to their worker.
            let answer = self.dead_letter_expired(bus, entry.env.as_ref().clone(), why);
            if let Some(reply) = entry.reply {
                let _ = reply.send(Err(answer));
            }
            entry.accepted.settle(Settled::DeadLettered);
        }
    }

    /// Counts (`dead_lettered`, `expired`) and dead-letters `Expired` a message whose
    /// sender's deadline passed before its handler got it (attempts 0: the handler never
    /// ran, whatever a transport's delivery count says); returns what its sender is
    /// answered, `Timeout` (the deadline it carried is spent: zero). Where a queued message
    /// expires (a worker took it, a full queue evicted it) and where a command arrives from
    /// another process already expired (`command.rs`).
    #[cold]
    #[inline(never)]
    pub(crate) fn dead_letter_expired(
        &self,
        bus: &BusInner,
        env: Envelope,
        why: String,
    ) -> SendError {
        inc(&self.counters.dead_lettered);
        inc(&self.counters.expired);
        let mut letter = self.letter(env, DeadLetterReason::Expired, why);
        letter.attempts = 0;
        bus.dead_letter(letter);
        SendError::Timeout {
            deadline: Duration::ZERO,
        }
    }

    /// Settles a message a worker took whose deadline passed while it waited (`why`),
    /// without calling the handler: dead-lettered `Expired`, its sender answered, its
    /// transport delivery terminated. The caller completes it in the queue and settles its
    /// pending count as the returned [`Handled::DeadLettered`] says.
    #[cold]
    #[inline(never)]
    pub(crate) async fn expire_taken(
        &self,
        bus: &BusInner,
        env: &Envelope,
        reply: Option<CommandReply>,
        delivery: Option<Box<Delivery>>,
        why: String,
    ) -> Handled {
        tracing::debug!(subscription = %self.name(), message_id = %env.id,
            correlation_id = %env.correlation_id, error = %why,
            "expired message dead-lettered, not handled");
        let answer = self.dead_letter_expired(bus, env.clone(), why);
        if let Some(reply) = reply {
            // Its sender stopped waiting, or is about to: a timeout.
            let _ = reply.send(Err(answer));
        }
        if let Some(delivery) = delivery {
            self.settle(*delivery, false).await;
        }
        Handled::DeadLettered
    }

    /// The messages of `taken` (a batch or a prefetch hand-over) that may still be handled:
    /// those whose deadline passed are settled here ([`expire_taken`](Self::expire_taken))
    /// and completed in the queue of `worker`.
    pub(crate) async fn drop_expired(
        &self,
        bus: &BusInner,
        worker: usize,
        taken: Vec<Taken>,
    ) -> Vec<Taken> {
        if taken
            .iter()
            .all(|t| t.entry.env.delivery.deadline.is_none())
        {
            return taken;
        }
        let mut kept = Vec::with_capacity(taken.len());
        for t in taken {
            let Some(why) = crate::deadline::expired(t.entry.env.delivery.deadline, QUEUED) else {
                kept.push(t);
                continue;
            };
            let seq = t.seq();
            let Entry {
                env,
                reply,
                lane,
                delivery,
                accepted,
                ..
            } = t.entry;
            let how = self.expire_taken(bus, &env, reply, delivery, why).await;
            self.queue.complete(worker, seq, lane.as_ref());
            accepted.settle(how.settled());
        }
        kept
    }
}

/// The dead letter's text for a message a full queue took out: how late it is now.
fn expired_text(env: &Envelope) -> String {
    crate::deadline::expired(env.delivery.deadline, QUEUED)
        .unwrap_or_else(|| format!("deadline passed {QUEUED}"))
}
