//! What a subscription is made of: its kind, its settings, its handler.

use std::any::TypeId;
use std::sync::Arc;
use std::time::Duration;

use smol_str::SmolStr;
use switchyard_core::{Backoff, Envelope, Pattern};

use crate::handler::{BoxBatchHandler, BoxHandler, BoxPrefetchHandler, SingleHandler};
use crate::queue::Overflow;

/// Header carrying the session a message belongs to.
pub const SESSION_HEADER: &str = "session-id";

/// Extracts the ordering key of a message: messages with equal keys are handled one at a time,
/// in order; different keys in parallel.
pub type OrderingKey = Arc<dyn Fn(&Envelope) -> Option<SmolStr> + Send + Sync>;

/// The default of [`BusBuilder::max_hold`](crate::BusBuilder::max_hold) (and of a
/// subscription's [`max_hold`](crate::SubscriptionBuilder::max_hold)): 5 minutes.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(300);

/// Whether a subscription receives events or is the one handler of a command topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// Receives every matching event.
    Event,
    /// The one handler of a command topic.
    Command,
}

/// Per-subscription settings; every default is documented on [`crate::BusBuilder`].
#[derive(Clone)]
pub(crate) struct SubscriptionConfig {
    pub(crate) name: SmolStr,
    pub(crate) pattern: Pattern,
    pub(crate) workers: usize,
    pub(crate) capacity: usize,
    pub(crate) overflow: Overflow,
    pub(crate) max_attempts: u32,
    /// The delays between attempts, whoever makes them (the worker, or the resilience stack).
    pub(crate) backoff: Backoff,
    /// How long a transport delivery a worker holds is kept alive past its ack wait
    /// (`keep_alive.rs`; [`SubscriptionBuilder::max_hold`](crate::SubscriptionBuilder::max_hold)).
    pub(crate) max_hold: Duration,
    pub(crate) ordering_key: Option<OrderingKey>,
    pub(crate) filters: Vec<Filter>,
    pub(crate) session: Option<SmolStr>,
    pub(crate) handler_priority: i32,
    pub(crate) batch: Option<BatchConfig>,
    /// On a transport: subscribe without a consumer group (see
    /// [`SubscriptionBuilder::ephemeral`]).
    pub(crate) ephemeral: bool,
    /// The message type whose published value the handler takes as it is (a typed `on`
    /// handler), while nothing between the queue and that handler reads the payload (no
    /// layer, bus-wide wrap, filter or ordering key; see [`SubscriptionConfig::takes`]): a
    /// publish of that type reaching only such subscriptions leaves its payload unencoded.
    pub(crate) takes_value: Option<TypeId>,
}

impl SubscriptionConfig {
    /// Whether a publish of `ty` may reach this subscription without its payload: its
    /// handler takes the value, and nothing else on the way reads the bytes.
    #[inline]
    pub(crate) fn takes(&self, ty: TypeId) -> bool {
        self.takes_value == Some(ty) && self.filters.is_empty() && self.ordering_key.is_none()
    }

    /// Whether `env` is in this subscription's session scope: always for a subscription
    /// outside sessions, else when `env` carries its session's [`SESSION_HEADER`].
    #[inline]
    pub(crate) fn in_session_scope(&self, env: &Envelope) -> bool {
        match &self.session {
            None => true,
            Some(id) => env.header(SESSION_HEADER) == Some(id.as_str()),
        }
    }
}

/// A predicate applied before a message is queued; messages it refuses are counted as
/// `filtered`, not delivered.
pub type Filter = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// How a batch subscription groups messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchConfig {
    pub(crate) max_size: usize,
    pub(crate) max_wait: Duration,
}

/// The handler a subscription's workers call: one message at a time, or batches.
#[derive(Clone)]
pub(crate) enum Handler {
    Single(BoxHandler),
    /// One message at a time, as registration made it (inside the resilience stack): what
    /// the workers call.
    Stacked(SingleHandler),
    Batch(BoxBatchHandler),
    /// One message at a time, handed over up to `max` at once (see `prefetch.rs`).
    Prefetch {
        handler: BoxPrefetchHandler,
        max: usize,
    },
}
