//! Per-handler concurrency limit and token-bucket rate limit, both reported as
//! backpressure: `poll_ready` returns `Pending` while the handler is at its limit, so the
//! bus stops taking messages off the subscription queue instead of failing them.
//!
//! - [`ConcurrencyLimitLayer`] is tower's own (a semaphore shared by the clones of one
//!   service; one permit per call, released when the call's future completes or is dropped).
//! - [`RateLimitLayer`] is a token bucket shared by the clones of one service (tower's own
//!   `RateLimit` is not `Clone`, which handlers must be): `rate` tokens per `per`, holding at
//!   most `burst` tokens, refilled continuously. A ready service holds one token until it is
//!   called, and gives it back if it is dropped unused.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::{BoxError, Envelope, Outcome};
//! use switchyard_middleware::limit::{ConcurrencyLimitLayer, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(100, Duration::from_secs(1)).burst(10))
//!     .layer(ConcurrencyLimitLayer::new(4))
//!     .service_fn(|_env: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) });
//! # let _ = svc;
//! ```

mod rate;

pub use rate::{RateLimit, RateLimitLayer};
pub use tower::limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
