//! Keeping a held transport delivery alive, within bounds. A transport that redelivers a
//! delivery not settled within its ack wait (the log, NATS) asks to be told, every so often,
//! that the delivery is still being worked on ([`Delivery::keep_alive_every`]). While a
//! worker handles such a delivery (handler running, in-place retries waiting), a task of its
//! own holds the delivery and tells the transport; the worker takes it back to settle it.
//! Deliveries that do not ask (and messages with no delivery: the in-memory path) cost one
//! branch.
//!
//! The keep-alive stops, the delivery still held (so the transport hands it out again one
//! ack wait later, to another member of the group too), when:
//! - the subscription is removed (its handle dropped) while the bus runs: a member that
//!   leaves with a handler that never returns must not keep its message for good;
//! - the delivery was held for the subscription's `max_hold` (5 minutes by default), counted
//!   from when the transport handed it out: the bound on a handler that hangs;
//! - the worker is aborted at the shutdown deadline: the task is aborted with it and drops
//!   the delivery unsettled, which hands it back to the transport.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::Delivery;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::SubShared;

/// The task keeping one delivery alive, and the delivery, in a slot the worker takes it back
/// from without waiting (no await between a handler's end and its settling, so a worker
/// aborted at the shutdown deadline never leaves a handled message reported as handed back).
/// Dropped without [`stop`](Self::stop) (the worker aborted at the shutdown deadline), it
/// aborts the task and the delivery is dropped unsettled: the transport redelivers it, as it
/// would have without keep-alive.
pub(crate) struct Keeper {
    held: Arc<Mutex<Option<Box<Delivery>>>>,
    task: JoinHandle<()>,
}

impl Keeper {
    /// Takes `delivery` into a keeper when its transport asks for keep-alive and the
    /// subscription's `max_hold` is not used up; otherwise leaves it where it is.
    #[inline]
    pub(crate) fn take(delivery: &mut Option<Box<Delivery>>, sub: &Arc<SubShared>) -> Option<Self> {
        match delivery {
            None => None,
            Some(_) => Self::take_slow(delivery, sub),
        }
    }

    #[cold]
    #[inline(never)]
    fn take_slow(delivery: &mut Option<Box<Delivery>>, sub: &Arc<SubShared>) -> Option<Self> {
        let held = delivery.as_ref()?;
        let every = held.keep_alive_every()?;
        // How long it waited (in the transport's client, the pump, the queue) before this
        // worker took it: its ack wait has been running since it was handed out.
        let waited = held.handed_out_at().map_or(Duration::ZERO, |t| t.elapsed());
        let hold = sub.config.max_hold.checked_sub(waited)?;
        if hold.is_zero() {
            return None;
        }
        let now = Instant::now();
        let plan = Plan {
            every,
            // The first keep-alive one interval after it was handed out: at once when it
            // waited longer than that.
            first: now + every.saturating_sub(waited),
            until: now.checked_add(hold).unwrap_or_else(far_future),
        };
        let held = Arc::new(Mutex::new(delivery.take()));
        let task = tokio::spawn(keep(Arc::clone(&held), plan, Arc::clone(sub)));
        Some(Self { held, task })
    }

    /// Stops keeping the delivery alive and hands it back, at once.
    #[cold]
    #[inline(never)]
    pub(crate) fn stop(self) -> Option<Box<Delivery>> {
        self.task.abort();
        self.held.lock().take()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When to tell the transport, and until when.
struct Plan {
    every: Duration,
    first: Instant,
    /// The end of `max_hold`.
    until: Instant,
}

/// About thirty years from now: an `until` past any test or process.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Tells the transport every `plan.every` that the delivery in `held` is still being worked
/// on, until the worker takes it back (and aborts this task), the subscription is removed,
/// or `plan.until` passes; in the last two cases it stops telling, the delivery left in
/// `held` for the worker to settle. A keep-alive the transport has to send runs on a task of
/// its own, so a slow send never holds the delivery back from being settled.
async fn keep(held: Arc<Mutex<Option<Box<Delivery>>>>, plan: Plan, sub: Arc<SubShared>) {
    let mut tick = tokio::time::interval_at(plan.first, plan.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bound = tokio::time::sleep_until(plan.until);
    let removed = sub.removed();
    tokio::pin!(bound, removed);
    loop {
        tokio::select! {
            biased;
            () = &mut removed => {
                tracing::debug!(subscription = %sub.name(), message_id = ?id(&held),
                    "subscription removed while its handler holds a delivery: no longer kept \
                     alive, the transport hands it out again after its ack wait");
                return;
            }
            () = &mut bound => {
                tracing::warn!(subscription = %sub.name(), message_id = ?id(&held),
                    max_hold = ?sub.config.max_hold,
                    "a delivery was held past max_hold: no longer kept alive, the transport \
                     hands it out again after its ack wait while the handler may still run");
                return;
            }
            _ = tick.tick() => {
                let send = held
                    .lock()
                    .as_ref()
                    .and_then(|d| d.keep_alive().map(|send| (send, d.envelope.id.clone())));
                if let Some((send, id)) = send {
                    tokio::spawn(async move {
                        if let Err(e) = send.await {
                            tracing::debug!(message_id = %id, error = %e, "cannot keep a delivery alive");
                        }
                    });
                }
            }
        }
    }
}

/// The id of the held message, for the logs.
fn id(held: &Mutex<Option<Box<Delivery>>>) -> Option<switchyard_core::MessageId> {
    held.lock().as_ref().map(|d| d.envelope.id.clone())
}
