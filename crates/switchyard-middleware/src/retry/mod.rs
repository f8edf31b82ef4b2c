//! Retry with exponential backoff and full jitter, inside one handler call.
//!
//! The [`Retry`] service calls the inner service up to [`RetryPolicy::max_attempts`] times for
//! one delivery. Before each attempt it sets `envelope.delivery.attempt` on the clone it passes
//! down (starting from the attempt number the bus set, 1 when unset), so the handler sees which
//! attempt it is on. Between attempts it waits the policy's backoff delay
//! ([`RetryPolicy::delay_for`]): `random(0 ..= min(max_delay, initial_delay * multiplier^(n-1)))`
//! with full jitter (the default), the upper half of that range with [`Jitter::Equal`], or the
//! capped deterministic delay with [`Jitter::None`].
//!
//! [`RetryPolicy`], [`Backoff`] and [`Jitter`] are `switchyard_core::retry`'s, re-exported
//! here: the bus, the pipeline and the components' error handler use the same types.
//!
//! What is retried:
//! - `Outcome::Retry { after }`: always (waiting `after`, capped at `max_delay`, when the
//!   handler gives one and [`RetryPolicy::honor_retry_after`] is on);
//! - errors the policy's classifier ([`RetryPolicy::classifier`], by default
//!   `Classifier::default()`) calls retryable: typed errors implementing [`Retryable`] once
//!   registered, [`Transient`]/[`Permanent`] markers, timeouts (default: retried), panics
//!   (default: not retried) and codec failures (`switchyard_core::CodecError`, never
//!   retried: a payload that does not decode, which the bus dead-letters as `DecodeFailed`,
//!   or a typed reply or publish that does not encode, also as a `PublishError`/`SendError`
//!   encode error), everything else by [`Classifier::unknown_retryable`] (default: yes).
//!
//! `Ack`, `Reply` and `Reject` are returned at once. When the layer gives up it returns a
//! [`RetryError`] (`Exhausted` or `Permanent`, the last error as its source) wrapped in
//! `switchyard_core::Permanent`: the layer's answer is final, and the bus, which checks for
//! `Permanent`, dead-letters it at once instead of retrying again. [`RetryError::find`] digs
//! the `RetryError` out of the chain.
//!
//! Defaults ([`RetryPolicy::default`]): 3 attempts, 100 ms initial delay, 10 s max delay,
//! multiplier 2, full jitter, `Retry { after }` honoured.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::{BoxError, Envelope, Outcome, Topic};
//! use switchyard_middleware::retry::{RetryLayer, RetryPolicy};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let flaky = tower::service_fn(|env: Envelope| async move {
//!     if env.delivery.attempt < 3 { Err::<Outcome, BoxError>("not yet".into()) } else { Ok(Outcome::Ack) }
//! });
//! let policy = RetryPolicy::default().initial_delay(Duration::from_millis(1));
//! let svc = RetryLayer::new(policy).layer(flaky);
//! assert_eq!(svc.oneshot(Envelope::new(Topic::new("a.b")?, "x")).await?, Outcome::Ack);
//! # Ok(()) }
//! ```

mod classify;
mod error;
mod layer;
mod service;

pub use classify::{Classifier, Retryable, Transient};
pub use error::{RetryError, RetryErrorKind, RetryRequested};
pub use layer::RetryLayer;
pub use service::Retry;
pub(crate) use service::{Verdict, back_off, in_time, judge, plan};
pub use switchyard_core::Permanent;
pub use switchyard_core::retry::{Backoff, Classify, Jitter, RetryPolicy};
