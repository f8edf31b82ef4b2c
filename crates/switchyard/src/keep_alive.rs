//! Keeping a held transport delivery alive, within bounds. A transport that redelivers a
//! delivery not settled within its ack wait (the log, NATS) asks to be told, every so often,
//! that the delivery is still being worked on ([`Delivery::keep_alive_every`]). While a
//! worker handles such a delivery (handler running, in-place retries waiting), the worker's
//! own future carries a timer ([`kept`]) and tells the transport when it fires; the delivery
//! stays with the worker throughout, so it settles it with no hand-over. Deliveries that do
//! not ask (and messages with no delivery: the in-memory path) cost one branch, and a
//! handler that finishes before its first poll returns pending costs no timer either.
//!
//! The keep-alive stops, the delivery still held (so the transport hands it out again one
//! ack wait later, to another member of the group too), when:
//! - the subscription is removed (its handle dropped) while the bus runs: a member that
//!   leaves with a handler that never returns must not keep its message for good;
//! - the delivery was held for the subscription's `max_hold` (5 minutes by default), counted
//!   from when the transport handed it out: the bound on a handler that hangs;
//! - the worker is aborted at the shutdown deadline: its future, timer and delivery are
//!   dropped, the delivery unsettled, which hands it back to the transport.
//!
//! Both bounds are checked when the timer fires, before each keep-alive: none is sent after
//! either, which is all they promise. (The first version spawned a task per held delivery,
//! with an interval, two more timers, an `Arc<Mutex>` and an abort; this one makes nothing
//! for a handling that ends at its first poll. `examples/keep_alive_cost.rs` could not tell
//! the two apart on a 2-core machine at load 6-9: its CPU-time ratio on/off read 1.26-1.53
//! before and 0.62-1.45 after, spread by the log writer's polling.)

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use switchyard_core::Delivery;
use tokio::time::{Instant, Sleep};

use crate::state::SubShared;

/// When to tell the transport next, and until when: made for a delivery whose transport asks
/// for keep-alive while the subscription's `max_hold` is not used up.
pub(crate) struct Plan {
    every: Duration,
    next: Instant,
    /// The end of `max_hold`.
    until: Instant,
}

impl Plan {
    /// The plan for `delivery`, or `None` when it needs no keep-alive.
    #[inline]
    pub(crate) fn of(delivery: &Option<Box<Delivery>>, sub: &SubShared) -> Option<Self> {
        match delivery {
            None => None,
            Some(held) => Self::of_held(held, sub),
        }
    }

    #[cold]
    #[inline(never)]
    fn of_held(held: &Delivery, sub: &SubShared) -> Option<Self> {
        let every = held.keep_alive_every()?;
        // How long it waited (in the transport's client, the pump, the queue) before this
        // worker took it: its ack wait has been running since it was handed out.
        let waited = held.handed_out_at().map_or(Duration::ZERO, |t| t.elapsed());
        let hold = sub.config.max_hold.checked_sub(waited)?;
        if hold.is_zero() {
            return None;
        }
        let now = Instant::now();
        Some(Self {
            every,
            // The first keep-alive one interval after it was handed out: at once when it
            // waited longer than that.
            next: now + every.saturating_sub(waited),
            until: now.checked_add(hold).unwrap_or_else(far_future),
        })
    }
}

/// About thirty years from now: an `until` past any test or process.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Runs `work` (the handling of `delivery`) and, while it is pending, tells the transport
/// every `plan.every` that `delivery` is still being worked on, until `work` ends, the
/// subscription is removed or `plan.until` passes; in the last two cases it stops telling
/// and `work` goes on. The timer is made only when `work` first returns pending. A
/// keep-alive the transport has to send runs on a task of its own, so a slow send never
/// holds the handling back.
pub(crate) async fn kept<F: Future>(
    // `&mut`: a `Delivery` is `Send` but not `Sync`, and this future is held across awaits.
    delivery: &mut Delivery,
    mut plan: Plan,
    sub: &SubShared,
    work: F,
) -> F::Output {
    let mut work = pin!(work);
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut telling = true;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        while telling {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(plan.next)));
            if t.as_mut().poll(cx).is_pending() {
                break;
            }
            telling = tell(delivery, &plan, sub);
            if telling {
                plan.next = Instant::now() + plan.every;
                t.as_mut().reset(plan.next);
            } else {
                timer = None;
            }
        }
        Poll::Pending
    })
    .await
}

/// The timer fired: tells the transport, unless a bound was reached (then says so in the
/// logs and returns `false`).
#[cold]
#[inline(never)]
fn tell(delivery: &Delivery, plan: &Plan, sub: &SubShared) -> bool {
    let id = &delivery.envelope.id;
    if sub.is_removed() {
        tracing::debug!(subscription = %sub.name(), message_id = %id,
            "subscription removed while its handler holds a delivery: no longer kept \
             alive, the transport hands it out again after its ack wait");
        return false;
    }
    if Instant::now() >= plan.until {
        tracing::warn!(subscription = %sub.name(), message_id = %id,
            max_hold = ?sub.config.max_hold,
            "a delivery was held past max_hold: no longer kept alive, the transport \
             hands it out again after its ack wait while the handler may still run");
        return false;
    }
    if let Some(send) = delivery.keep_alive() {
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = send.await {
                tracing::debug!(message_id = %id, error = %e, "cannot keep a delivery alive");
            }
        });
    }
    true
}
