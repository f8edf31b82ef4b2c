//! Keeping a held transport delivery alive, within bounds. A transport that redelivers a
//! delivery not settled within its ack wait (the log, NATS) asks to be told, every so often,
//! that the delivery is still being worked on ([`Delivery::keep_alive_every`]). While a
//! worker handles such a delivery (handler running, in-place retries waiting), it leaves the
//! delivery in its [`Keeper`]'s slot, which one task per worker (started when needed, gone
//! while the worker holds nothing to keep) tends: it tells the transport when the delivery's
//! next keep-alive is due, sleeping until then. The worker takes the delivery back out of
//! the slot to settle it. Deliveries that do not ask (and messages with no delivery: the
//! in-memory path) cost one branch; those that do, two uncontended locks, no task and no
//! timer of their own.
//!
//! The keep-alive stops, the delivery still held (so the transport hands it out again one
//! ack wait later, to another member of the group too), when:
//! - the subscription is removed (its handle dropped) while the bus runs: a member that
//!   leaves with a handler that never returns must not keep its message for good;
//! - the delivery was held for the subscription's `max_hold` (5 minutes by default), counted
//!   from when the transport handed it out: the bound on a handler that hangs;
//! - the worker is aborted at the shutdown deadline: its keeper is dropped with it, which
//!   aborts the task and drops the delivery unsettled, handing it back to the transport.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::Delivery;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::SubShared;

/// One worker's keeper: the slot its held delivery waits in and the task tending the slot,
/// both made the first time the worker holds a delivery to keep alive. The worker puts the
/// delivery in and takes it back without waiting (no await between a handler's end and its
/// settling, so a worker aborted at the shutdown deadline never leaves a handled message
/// reported as handed back). Dropped (the worker aborted at the shutdown deadline), it aborts
/// the task and drops the delivery unsettled: the transport redelivers it, as it would have
/// without keep-alive.
#[derive(Default)]
pub(crate) struct Keeper(Option<Box<Tender>>);

/// The slot and its task.
struct Tender {
    slot: Arc<Mutex<Slot>>,
    task: Option<JoinHandle<()>>,
}

/// What the worker holds, and the state of the task tending it.
#[derive(Default)]
struct Slot {
    held: Option<Held>,
    /// A task tends the slot (it ends, clearing this, when it finds nothing to keep alive).
    running: bool,
    /// When the running task wakes next.
    planned: Option<Instant>,
    /// The subscription was removed: nothing more is kept alive.
    stopped: bool,
}

/// A held delivery and when to tell its transport, until when.
struct Held {
    delivery: Box<Delivery>,
    every: Duration,
    /// When the next keep-alive is due.
    next: Instant,
    /// The end of `max_hold`.
    until: Instant,
    /// Still kept alive (false past `max_hold` or once the subscription is removed).
    kept: bool,
}

impl Keeper {
    /// Takes `delivery` into the slot, to be kept alive, when its transport asks for
    /// keep-alive, the subscription's `max_hold` is not used up and the subscription is not
    /// removed; otherwise leaves it where it is. True when taken: [`stop`](Self::stop) hands
    /// it back.
    #[inline]
    pub(crate) fn take(
        &mut self,
        delivery: &mut Option<Box<Delivery>>,
        sub: &Arc<SubShared>,
    ) -> bool {
        match delivery {
            None => false,
            Some(_) => self.take_slow(delivery, sub),
        }
    }

    #[cold]
    #[inline(never)]
    fn take_slow(&mut self, delivery: &mut Option<Box<Delivery>>, sub: &Arc<SubShared>) -> bool {
        let Some(d) = delivery.as_ref() else {
            return false;
        };
        let Some(every) = d.keep_alive_every() else {
            return false;
        };
        // How long it waited (in the transport's client, the pump, the queue) before this
        // worker took it: its ack wait has been running since it was handed out.
        let waited = d.handed_out_at().map_or(Duration::ZERO, |t| t.elapsed());
        let hold = match sub.config.max_hold.checked_sub(waited) {
            Some(hold) if !hold.is_zero() => hold,
            _ => return false,
        };
        let now = Instant::now();
        // The first keep-alive one interval after it was handed out: at once when it waited
        // longer than that.
        let next = now + every.saturating_sub(waited);
        let until = now.checked_add(hold).unwrap_or_else(far_future);
        let tender = self.0.get_or_insert_with(|| {
            Box::new(Tender {
                slot: Arc::default(),
                task: None,
            })
        });
        let spawn = {
            let mut slot = tender.slot.lock();
            if slot.stopped {
                return false;
            }
            let Some(delivery) = delivery.take() else {
                return false;
            };
            slot.held = Some(Held {
                delivery,
                every,
                next,
                until,
                kept: true,
            });
            // A task is started when none runs, or when this delivery is due before the
            // running one wakes (it may have waited longer than the one before).
            let wake = next.min(until);
            let spawn = !slot.running || slot.planned.is_none_or(|p| wake < p);
            if spawn {
                slot.running = true;
                slot.planned = Some(wake);
            }
            spawn
        };
        if spawn {
            if let Some(task) = tender.task.take() {
                task.abort();
            }
            tender.task = Some(tokio::spawn(tend(
                Arc::clone(&tender.slot),
                Arc::clone(sub),
            )));
        }
        true
    }

    /// Hands back the delivery [`take`](Self::take) took, at once: it is no longer kept alive.
    #[cold]
    #[inline(never)]
    pub(crate) fn stop(&mut self) -> Option<Box<Delivery>> {
        let tender = self.0.as_ref()?;
        tender.slot.lock().held.take().map(|h| h.delivery)
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(tender) = self.0.take() {
            if let Some(task) = &tender.task {
                task.abort();
            }
            // Unsettled: the transport hands it out again.
            drop(tender.slot.lock().held.take());
        }
    }
}

/// About thirty years from now: an `until` past any test or process.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Tends `slot`: tells the transport that the delivery held there is still being worked on
/// whenever its next keep-alive is due, sleeping in between, until the slot holds nothing to
/// keep alive (the worker took its delivery back: the task ends, and the worker starts
/// another for its next one), the subscription is removed or the delivery's `max_hold`
/// passes; in the last two cases it stops telling, the delivery left in the slot for the
/// worker to settle. A keep-alive the transport has to send runs on a task of its own, so a
/// slow send never holds the delivery back from being settled.
async fn tend(slot: Arc<Mutex<Slot>>, sub: Arc<SubShared>) {
    let removed = sub.removed();
    tokio::pin!(removed);
    loop {
        let Some(wake) = sweep(&slot, &sub) else {
            return;
        };
        tokio::select! {
            biased;
            () = &mut removed => {
                let id = {
                    let mut s = slot.lock();
                    s.stopped = true;
                    s.running = false;
                    s.held
                        .as_mut()
                        .filter(|h| h.kept)
                        .map(|h| {
                            h.kept = false;
                            h.delivery.envelope.id.clone()
                        })
                };
                if let Some(id) = id {
                    tracing::debug!(subscription = %sub.name(), message_id = %id,
                        "subscription removed while its handler holds a delivery: no longer kept \
                         alive, the transport hands it out again after its ack wait");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// One look at the slot: sends the keep-alive when due; returns when to look next, or `None`
/// when there is nothing to keep alive (the task ends).
fn sweep(slot: &Mutex<Slot>, sub: &SubShared) -> Option<Instant> {
    let mut s = slot.lock();
    let now = Instant::now();
    let Some(held) = s.held.as_mut().filter(|h| h.kept) else {
        s.running = false;
        return None;
    };
    if now >= held.until {
        held.kept = false;
        let id = held.delivery.envelope.id.clone();
        s.running = false;
        drop(s);
        tracing::warn!(subscription = %sub.name(), message_id = %id,
            max_hold = ?sub.config.max_hold,
            "a delivery was held past max_hold: no longer kept alive, the transport \
             hands it out again after its ack wait while the handler may still run");
        return None;
    }
    let send = if now >= held.next {
        held.next = now + held.every;
        held.delivery
            .keep_alive()
            .map(|send| (send, held.delivery.envelope.id.clone()))
    } else {
        None
    };
    let wake = held.next.min(held.until);
    s.planned = Some(wake);
    drop(s);
    if let Some((send, id)) = send {
        tokio::spawn(async move {
            if let Err(e) = send.await {
                tracing::debug!(message_id = %id, error = %e, "cannot keep a delivery alive");
            }
        });
    }
    Some(wake)
}
