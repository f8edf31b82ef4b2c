//! Deduplication by message id or by a key taken from the envelope, bounded by a TTL and a
//! size.
//!
//! A message whose key was already handled successfully (the inner service answered `Ack` or
//! `Reply`) within the TTL is a duplicate: it is acked (`Outcome::Ack`) without calling the
//! inner service and counted ([`DedupHandle::duplicates`], `switchyard_dedup_duplicates_total`).
//!
//! Only success marks a key as seen. A failed attempt, a `Retry` or a `Reject` leaves the key
//! unseen, so the bus's own re-attempts and a later replay from the dead-letter queue (which
//! keeps the message id) still reach the handler, and a replay that already succeeded once is
//! acked as a duplicate: replay is idempotent with dedup on. A duplicate that arrives while the
//! first copy is still being handled waits for it and then either is acked (the first
//! succeeded) or handled (the first failed).
//!
//! Memory is bounded: seen keys expire after the TTL, and when more than `capacity` keys are
//! held the oldest seen keys are evicted (counted in [`DedupHandle::evicted`]).
//!
//! Defaults ([`DedupConfig::default`]): key = message id, TTL 10 minutes, 100 000 keys.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::{BoxError, Envelope, Outcome, Topic};
//! use switchyard_middleware::dedup::{DedupConfig, DedupLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let layer = DedupLayer::new(DedupConfig::default().by_header("idempotency-key").ttl(Duration::from_secs(60)));
//! let handle = layer.handle();
//! let svc = layer.layer(tower::service_fn(|_e: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) }));
//! let env = Envelope::new(Topic::new("orders.placed")?, "{}").with_header("idempotency-key", "order-7");
//! svc.clone().oneshot(env.clone()).await?;
//! svc.oneshot(env).await?;
//! assert_eq!(handle.duplicates(), 1);
//! # Ok(()) }
//! ```

mod layer;
mod service;
mod store;

pub use layer::DedupLayer;
pub use service::Dedup;
pub(crate) use service::{InFlight as DedupClaim, TryClaim, claim, handled, try_claim};
pub(crate) use store::Store;
pub use store::{DedupHandle, DedupKey};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smol_str::SmolStr;
use switchyard_core::Envelope;

pub(crate) type KeyFn = Arc<dyn Fn(&Envelope) -> Option<DedupKey> + Send + Sync>;

/// Configuration of the dedup layer. Every default is listed on [`DedupConfig::default`].
#[derive(Clone)]
pub struct DedupConfig {
    pub(crate) ttl: Duration,
    pub(crate) capacity: usize,
    pub(crate) key: KeyFn,
}

impl Default for DedupConfig {
    /// Key = message id, TTL 10 minutes, at most 100 000 keys.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            capacity: 100_000,
            key: Arc::new(|env: &Envelope| Some(DedupKey::Id(env.id.clone()))),
        }
    }
}

impl fmt::Debug for DedupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupConfig")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl DedupConfig {
    /// How long a handled key is remembered.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many keys are remembered at most (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Deduplicates by message id (the default).
    pub fn by_id(mut self) -> Self {
        self.key = Arc::new(|env: &Envelope| Some(DedupKey::Id(env.id.clone())));
        self
    }

    /// Deduplicates by the value of a header; messages without it are not deduplicated.
    pub fn by_header(mut self, name: impl Into<SmolStr>) -> Self {
        let name: SmolStr = name.into();
        self.key = Arc::new(move |env: &Envelope| env.header(&name).map(DedupKey::from));
        self
    }

    /// Deduplicates by a custom key; `None` lets the message through undeduplicated.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Envelope) -> Option<DedupKey> + Send + Sync + 'static,
    {
        self.key = Arc::new(f);
        self
    }
}
