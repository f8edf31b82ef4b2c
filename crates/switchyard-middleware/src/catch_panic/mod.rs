//! Panic capture: a handler that panics produces a [`PanicError`] instead of unwinding into
//! the worker that drives it.
//!
//! The layer wraps both the synchronous part of `call` and the returned future in
//! `catch_unwind`, so a panic anywhere in the handler becomes an ordinary error that the
//! retry layer and the dead-letter queue can route by policy. The service stays usable: the
//! next message is handled as if nothing happened.
//!
//! ```
//! use switchyard_core::{BoxError, Envelope, Outcome, Topic};
//! use switchyard_middleware::catch_panic::{CatchPanicLayer, PanicError};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let handler = tower::service_fn(|env: Envelope| async move {
//!     if env.payload.as_ref() == b"boom" { panic!("bad payload") }
//!     Ok::<_, BoxError>(Outcome::Ack)
//! });
//! let svc = CatchPanicLayer::new().layer(handler);
//! let err = svc.clone().oneshot(Envelope::new(Topic::new("a.b")?, "boom")).await.unwrap_err();
//! assert!(err.downcast_ref::<PanicError>().is_some());
//! assert_eq!(svc.oneshot(Envelope::new(Topic::new("a.b")?, "ok")).await?, Outcome::Ack);
//! # Ok(()) }
//! ```

mod error;
mod layer;
mod service;

pub use error::PanicError;
pub use layer::CatchPanicLayer;
pub use service::{CatchPanic, CatchPanicFuture};
