use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{self, CatchUnwind, Either, Map, Ready};
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::Service;

use super::PanicError;

type Caught = Result<Result<Outcome, BoxError>, Box<dyn Any + Send>>;

fn flatten(caught: Caught) -> Result<Outcome, BoxError> {
    caught.unwrap_or_else(|payload| Err(PanicError::from_payload(payload).into()))
}

/// The future returned by [`CatchPanic`].
pub type CatchPanicFuture<F> = Either<
    Map<CatchUnwind<AssertUnwindSafe<F>>, fn(Caught) -> Result<Outcome, BoxError>>,
    Ready<Result<Outcome, BoxError>>,
>;

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
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.call(env))) {
            Ok(fut) => Either::Left(AssertUnwindSafe(fut).catch_unwind().map(flatten)),
            Err(payload) => {
                Either::Right(future::ready(Err(PanicError::from_payload(payload).into())))
            }
        }
    }
}
