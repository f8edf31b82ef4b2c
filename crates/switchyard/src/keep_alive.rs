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

use switchyard_core::Delivery;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::SubShared;

/// The task keeping one delivery alive. Dropped without [`stop`](Self::stop) (the worker
/// aborted at the shutdown deadline), it aborts the task, which drops the delivery unsettled:
/// the transport redelivers it, as it would have without keep-alive.
pub(crate) struct Keeper {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Box<Delivery>>,
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
        let held = delivery.take()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep(held, plan, Arc::clone(sub), stopped));
        Some(Self {
            stop: Some(stop),
            task,
        })
    }

    /// Stops keeping the delivery alive and hands it back (`None` only if the task did not
    /// end normally: the delivery was dropped, i.e. handed back to the transport).
    #[cold]
    #[inline(never)]
    pub(crate) async fn stop(mut self) -> Option<Box<Delivery>> {
        drop(self.stop.take());
        (&mut self.task).await.ok()
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

/// Tells the transport every `plan.every` that `delivery` is still being worked on, until the
/// worker takes it back (`stopped`), the subscription is removed, or `plan.until` passes;
/// in the last two cases it stops telling and waits for the worker all the same. A
/// keep-alive the transport has to send runs on a task of its own, so a slow send never
/// holds the delivery back from being settled.
async fn keep(
    delivery: Box<Delivery>,
    plan: Plan,
    sub: Arc<SubShared>,
    mut stopped: oneshot::Receiver<()>,
) -> Box<Delivery> {
    let mut tick = tokio::time::interval_at(plan.first, plan.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bound = tokio::time::sleep_until(plan.until);
    let removed = sub.removed();
    tokio::pin!(bound, removed);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return delivery,
            () = &mut removed => {
                tracing::debug!(subscription = %sub.name(), message_id = %delivery.envelope.id,
                    "subscription removed while its handler holds a delivery: no longer kept \
                     alive, the transport hands it out again after its ack wait");
                break;
            }
            () = &mut bound => {
                tracing::warn!(subscription = %sub.name(), message_id = %delivery.envelope.id,
                    max_hold = ?sub.config.max_hold,
                    "a delivery was held past max_hold: no longer kept alive, the transport \
                     hands it out again after its ack wait while the handler may still run");
                break;
            }
            _ = tick.tick() => {
                if let Some(send) = delivery.keep_alive() {
                    let id = delivery.envelope.id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = send.await {
                            tracing::debug!(message_id = %id, error = %e, "cannot keep a delivery alive");
                        }
                    });
                }
            }
        }
    }
    // Still the worker's to settle (an ack that comes late, a hand-back), when it ends.
    let _ = stopped.await;
    delivery
}
