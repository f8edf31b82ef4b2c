//! Per-call timeout: a handler call that does not finish in time fails with a
//! [`TimeoutError`].
//!
//! The inner future is dropped when the time is up, so its late result is discarded and never
//! reaches the bus. A timed-out call counts as a failure: the retry layer retries it when its
//! classifier says timeouts are retryable (the default), and the circuit breaker counts it.
//!
//! Default: 30 s ([`DEFAULT_TIMEOUT`]).
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::{BoxError, Envelope, Outcome, Topic};
//! use switchyard_middleware::timeout::{TimeoutError, TimeoutLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let slow = tower::service_fn(|_env: Envelope| async move {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, BoxError>(Outcome::Ack)
//! });
//! let svc = TimeoutLayer::new(Duration::from_millis(10)).layer(slow);
//! let err = svc.oneshot(Envelope::new(Topic::new("a.b")?, "x")).await.unwrap_err();
//! assert!(err.downcast_ref::<TimeoutError>().is_some());
//! # Ok(()) }
//! ```

mod error;
mod layer;
mod service;

use std::time::Duration;

pub use error::TimeoutError;
pub use layer::TimeoutLayer;
pub use service::{Timeout, TimeoutFuture};

/// The default per-call timeout: 30 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
