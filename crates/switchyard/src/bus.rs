//! The handle users hold: [`Bus`], cheap to clone, and what it tells about itself (registry,
//! metrics, pending count). Its other methods are where they work: `builder` (new, build),
//! `subscription` (on, subscribe, handle), `publish`, `schedule`, `command` (send, request),
//! `session`, `shutdown`.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use switchyard_core::{Capabilities, DeadLetter, InMemoryDeadLetters};

use crate::state::{BusInner, RUNNING};
use crate::stats::SubscriptionInfo;

/// The message bus: cheap to clone, every clone is the same bus.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard::{Bus, Message};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct UserCreated { id: u64 }
/// impl Message for UserCreated { const TOPIC: &'static str = "users.created"; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::new();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let _sub = bus
///     .on("welcome-mail", move |ev: UserCreated, _ctx| {
///         let tx = tx.clone();
///         async move { tx.send(ev.id).map_err(|e| e.to_string()) }
///     })
///     .start()
///     .await?;
/// bus.publish(UserCreated { id: 7 }).await?;
/// assert_eq!(rx.recv().await, Some(7));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<BusInner>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("subscriptions", &self.inner.router.len())
            .field("pending", &self.inner.pending.count())
            .finish()
    }
}

impl Bus {
    pub(crate) fn from_weak(inner: &Weak<BusInner>) -> Option<Self> {
        inner.upgrade().map(|inner| Self { inner })
    }

    pub(crate) fn weak(&self) -> Weak<BusInner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn inner(&self) -> &Arc<BusInner> {
        &self.inner
    }

    /// Every live subscription and command handler with pattern, policy, depth and counters.
    pub fn registry(&self) -> Vec<SubscriptionInfo> {
        self.inner.subs().iter().map(|s| s.info()).collect()
    }

    /// The default in-memory dead-letter store, where this bus's dead letters go; `None` when
    /// they go elsewhere: a sink given to [`BusBuilder::dead_letters`], or the file queue of
    /// `with_default_resilience` under a data directory (read those through your handle on
    /// the sink). To add a letter wherever they go, use [`dead_letter`](Self::dead_letter).
    pub fn dead_letters(&self) -> Option<&InMemoryDeadLetters> {
        self.inner.memory_dead_letters.as_deref()
    }

    /// A JSON-serializable snapshot of the bus's own figures: every subscription's counters,
    /// queue depth and in-flight count, the pending total, and the default dead-letter store's
    /// size and evictions (when it is in use). Per-handler latency histograms and Prometheus
    /// output come from `switchyard_middleware::metrics`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = switchyard::Bus::new();
    /// let json = serde_json::to_string(&bus.metrics_snapshot()).unwrap();
    /// assert!(json.contains("\"pending\":0"));
    /// # }
    /// ```
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let dlq = self.dead_letters();
        MetricsSnapshot {
            pending: self.pending(),
            subscriptions: self.registry(),
            dead_letters: dlq.map(InMemoryDeadLetters::len),
            dead_letters_evicted: dlq.map(InMemoryDeadLetters::evicted),
            dead_letter_bytes: dlq.map(InMemoryDeadLetters::bytes),
            shutting_down: self.is_shutting_down(),
        }
    }

    /// Sends a dead letter to the configured sink (the default in-memory store, or the one
    /// given to [`BusBuilder::dead_letters`]); for components that give up on a message
    /// themselves, such as a flow-level error handler. On a bus with a transport, codecs that
    /// keep dead letters encoded ([`TransportCodec::encodes_dead_letters`](crate::TransportCodec::encodes_dead_letters))
    /// encode it first, as they do the bus's own dead letters.
    pub fn dead_letter(&self, letter: DeadLetter) {
        self.inner.dead_letter(letter);
    }

    /// Attempts the bus makes of a message whose handler fails, unless a subscription sets
    /// its own (`SubscriptionBuilder::max_attempts`): [`BusBuilder::max_attempts`], else the
    /// resilience stack's default, else 3. A handler compares it with
    /// [`Ctx::attempt`](crate::Ctx::attempt) to know whether its failure will be retried.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// Messages accepted and not yet settled.
    pub fn pending(&self) -> usize {
        self.inner.pending.count()
    }

    /// Waits until every accepted message is settled (handled or dead-lettered), including
    /// retries and messages published by handlers meanwhile. Under a paused tokio clock,
    /// retry delays advance automatically.
    pub async fn run_until_idle(&self) {
        self.inner.pending.idle().await;
    }

    /// What the transport can promise, or `None` when the bus runs in memory.
    pub fn transport_capabilities(&self) -> Option<Capabilities> {
        self.inner.transport.as_ref().map(|t| t.capabilities())
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) != RUNNING
    }
}

/// What [`Bus::metrics_snapshot`] returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Accepted messages not yet settled.
    pub pending: usize,
    /// Every subscription and command handler, with counters.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Entries in the default in-memory dead-letter store; `None` when another sink takes
    /// the dead letters (see [`Bus::dead_letters`]).
    pub dead_letters: Option<usize>,
    /// Entries that store evicted because it was full (in entries or bytes); `None` as for
    /// `dead_letters`.
    pub dead_letters_evicted: Option<u64>,
    /// Bytes that store holds now (it is bounded in bytes too); `None` as for `dead_letters`.
    pub dead_letter_bytes: Option<usize>,
    /// True once shutdown started.
    pub shutting_down: bool,
}
