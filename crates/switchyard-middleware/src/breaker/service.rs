use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use switchyard_core::{BoxError, Envelope, Outcome};
use tokio::time::{Sleep, sleep_until};
use tower::Service;

use super::state::{Admission, Shared};
use super::{BreakerHandle, BreakerOpenError, BreakerState};

pin_project! {
    /// The future returned by [`Breaker`]: the inner call, whose result is recorded by the
    /// breaker when it completes; or an immediate [`BreakerOpenError`].
    pub struct BreakerFuture<F> {
        #[pin]
        state: CallState<F>,
    }
}

pin_project! {
    #[project = CallStateProj]
    enum CallState<F> {
        Running {
            #[pin]
            inner: F,
            shared: Arc<Shared>,
            admitted: Option<Admitted>,
        },
        Refused {
            error: Option<BreakerOpenError>,
        },
    }
}

impl<F> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Outcome, BoxError>>,
{
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            CallStateProj::Running {
                inner,
                shared,
                admitted,
            } => {
                let result = std::task::ready!(inner.poll(cx));
                let failed = shared.config.is_failure(&result);
                match admitted.take() {
                    Some(Admitted::Normal(generation)) => shared.record(generation, false, failed),
                    Some(Admitted::Trial(mut permit)) => {
                        permit.armed = false;
                        shared.record(permit.generation, true, failed);
                    }
                    None => {}
                }
                Poll::Ready(result)
            }
            CallStateProj::Refused { error } => Poll::Ready(Err(match error.take() {
                Some(e) => Box::new(e),
                None => "breaker future polled after completion".into(),
            })),
        }
    }
}

/// A reserved half-open trial slot; given back if dropped unused.
struct TrialPermit {
    shared: Arc<Shared>,
    generation: u64,
    armed: bool,
}

impl Drop for TrialPermit {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release_trial(self.generation);
        }
    }
}

enum Admitted {
    Normal(u64),
    Trial(TrialPermit),
}

/// A circuit breaker around one handler. Clones share the breaker state; a clone never
/// inherits a readiness reservation.
pub struct Breaker<S> {
    inner: S,
    shared: Arc<Shared>,
    admitted: Option<Admitted>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: fmt::Debug> fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared)
            .finish()
    }
}

impl<S: Clone> Clone for Breaker<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            admitted: None,
            sleep: None,
        }
    }
}

impl<S> Breaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            admitted: None,
            sleep: None,
        }
    }

    /// A handle to this breaker's shared state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.shared.clone())
    }

    fn permit(&self, generation: u64) -> TrialPermit {
        TrialPermit {
            shared: self.shared.clone(),
            generation,
            armed: true,
        }
    }
}

impl<S> Service<Envelope> for Breaker<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if matches!(self.admitted, Some(Admitted::Trial(_))) {
                return self.inner.poll_ready(cx);
            }
            match self.shared.admit(Some(cx.waker())) {
                Admission::Normal(generation) => {
                    self.admitted = Some(Admitted::Normal(generation));
                    self.sleep = None;
                    return self.inner.poll_ready(cx);
                }
                Admission::Trial(generation) => {
                    self.admitted = Some(Admitted::Trial(self.permit(generation)));
                    self.sleep = None;
                    return self.inner.poll_ready(cx);
                }
                Admission::WaitUntil(until) => {
                    self.admitted = None;
                    if self.sleep.as_ref().map(|s| s.deadline()) != Some(until) {
                        self.sleep = Some(Box::pin(sleep_until(until)));
                    }
                    if let Some(sleep) = self.sleep.as_mut()
                        && sleep.as_mut().poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    // The cool-down is over: the next admission moves to half-open.
                }
                Admission::WaitForTrial => {
                    self.admitted = None;
                    return Poll::Pending;
                }
            }
        }
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let admitted = match self.admitted.take() {
            Some(a) => a,
            // Called without readiness: decide now, failing fast when the breaker is open.
            None => match self.shared.admit(None) {
                Admission::Normal(generation) => Admitted::Normal(generation),
                Admission::Trial(generation) => Admitted::Trial(self.permit(generation)),
                Admission::WaitUntil(_) | Admission::WaitForTrial => {
                    let state = match self.shared.state() {
                        BreakerState::Closed => BreakerState::Open,
                        s => s,
                    };
                    return BreakerFuture {
                        state: CallState::Refused {
                            error: Some(BreakerOpenError {
                                handler: self.shared.name.clone(),
                                state,
                            }),
                        },
                    };
                }
            },
        };
        BreakerFuture {
            state: CallState::Running {
                inner: self.inner.call(env),
                shared: self.shared.clone(),
                admitted: Some(admitted),
            },
        }
    }
}
