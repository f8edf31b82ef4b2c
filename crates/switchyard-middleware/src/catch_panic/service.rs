use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::Service;

use super::PanicError;

/// Turns panics of the inner service (in `call` or in its future) into [`PanicError`]s.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> CatchPanic<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Service<Envelope> for CatchPanic<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.call(env))) {
            Ok(fut) => Box::pin(AssertUnwindSafe(fut).catch_unwind().map(|r| match r {
                Ok(result) => result,
                Err(payload) => Err(PanicError::from_payload(payload).into()),
            })),
            Err(payload) => {
                let err: BoxError = PanicError::from_payload(payload).into();
                Box::pin(futures::future::ready(Err(err)))
            }
        }
    }
}
