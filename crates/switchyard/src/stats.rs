//! The figures the bus keeps per subscription: counters, and what the registry shows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crate::config::SubscriptionKind;

/// Counters of one subscription. Nothing is dropped without being counted here.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// Counted only where a message is expired (`expired.rs`), never on the hot path.
    pub(crate) expired: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) decode_failed: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) intake_warned: AtomicU64,
    pub(crate) intake_rejected: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counts the re-attempts a retry inside a subscription's handler makes (the resilience
/// stack's, which the bus does not see) in that subscription's `retried`: hand it to the
/// retry as its observer (`ResilienceConfig::on_retry`). Given by
/// [`WrapTarget::retries`](crate::WrapTarget::retries); counts once the subscription is
/// registered, and nothing after it is gone.
#[derive(Debug, Clone, Default)]
pub struct RetryCounter {
    sub: Arc<OnceLock<Weak<crate::state::SubShared>>>,
}

impl RetryCounter {
    /// Counts one re-attempt.
    pub fn count(&self) {
        if let Some(sub) = self.sub.get().and_then(Weak::upgrade) {
            inc(&sub.counters.retried);
        }
    }

    /// Points the counter at the subscription it was made for, once it exists.
    pub(crate) fn bind(&self, sub: &Arc<crate::state::SubShared>) {
        let _ = self.sub.set(Arc::downgrade(sub));
    }
}

/// A snapshot of one subscription's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionStats {
    /// Handler calls (attempts), including the bus's retries. A retry layer inside the
    /// handler (the resilience stack's) makes its re-attempts within one call: they are
    /// counted in `retried`, not here.
    pub delivered: u64,
    /// Messages settled successfully (ack or reply).
    pub acked: u64,
    /// Attempts that ended in an error or panic; under a retry layer inside the handler,
    /// the calls that ended so once that layer gave up (its failed re-attempts are not seen).
    pub failed: u64,
    /// Attempts that panicked (also counted in `failed`), and messages whose filter,
    /// intake check or ordering key panicked (dead-lettered before any attempt, not
    /// counted in `failed`).
    pub panicked: u64,
    /// Retries: those the bus schedules itself (in place), the re-attempts of a retry inside
    /// the handler that reports them (the default resilience stack's, see [`RetryCounter`]),
    /// and deliveries a transport hands out again (attempt > 1 as it arrives: a nack, an ack
    /// wait that ran out, a restart; early hand-backs of a delayed message are not attempts).
    pub retried: u64,
    /// Messages the handler rejected.
    pub rejected: u64,
    /// Messages sent to the dead-letter sink (any reason).
    pub dead_lettered: u64,
    /// Messages whose sender's deadline passed before the handler got them (dead-lettered
    /// `Expired`, also counted in `dead_lettered`): taken by a worker, evicted from a full
    /// queue, or arrived from another process already past it. The handler never ran.
    pub expired: u64,
    /// Messages evicted by `Overflow::DropOldest`.
    pub dropped: u64,
    /// Publishes refused because the queue was full.
    pub refused_full: u64,
    /// Messages whose payload could not be decoded (into the handler's type, or by a
    /// transport codec such as decryption).
    pub decode_failed: u64,
    /// Messages a filter kept out of the queue.
    pub filtered: u64,
    /// Messages from the transport the bus's intake check let through with a warning.
    pub intake_warned: u64,
    /// Messages from the transport the bus's intake check rejected (dead-lettered, also
    /// counted in `dead_lettered`).
    pub intake_rejected: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SubscriptionStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubscriptionStats {
            delivered: g(&self.delivered),
            acked: g(&self.acked),
            failed: g(&self.failed),
            panicked: g(&self.panicked),
            retried: g(&self.retried),
            rejected: g(&self.rejected),
            dead_lettered: g(&self.dead_lettered),
            expired: g(&self.expired),
            dropped: g(&self.dropped),
            refused_full: g(&self.refused_full),
            decode_failed: g(&self.decode_failed),
            filtered: g(&self.filtered),
            intake_warned: g(&self.intake_warned),
            intake_rejected: g(&self.intake_rejected),
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
