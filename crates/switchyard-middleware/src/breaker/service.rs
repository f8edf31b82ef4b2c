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
                if let Some(admitted) = admitted.take() {
                    admitted.settle(shared, &result, quanta::Instant::now());
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
pub(crate) struct TrialPermit {
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

/// Leave to make one call through the breaker.
pub(crate) enum Admitted {
    Normal(u64),
    Trial(TrialPermit),
}

impl Admitted {
    /// Records how the call admitted by this ended.
    #[inline]
    pub(crate) fn settle(
        self,
        shared: &Shared,
        result: &Result<Outcome, BoxError>,
        ended: quanta::Instant,
    ) {
        self.settle_in(shared, result, |s| s.counter_index(ended));
    }

    /// [`settle`](Self::settle) for a call that ended at the raw reading `end` of `clock`.
    #[inline]
    pub(crate) fn settle_raw(
        self,
        shared: &Shared,
        result: &Result<Outcome, BoxError>,
        clock: &quanta::Clock,
        end: u64,
    ) {
        self.settle_in(shared, result, |s| s.counter_index_raw(clock, end));
    }

    #[inline]
    fn settle_in(
        self,
        shared: &Shared,
        result: &Result<Outcome, BoxError>,
        ended: impl FnOnce(&Shared) -> u64,
    ) {
        if shared.config.is_neutral(result) {
            // A hand-back (or undecodable input) is neither a success nor a failure: nothing
            // is recorded, and a trial's slot is given back (the permit's drop) for the next
            // call.
            return;
        }
        let failed = shared.config.is_failure(result);
        match self {
            Self::Normal(generation) => shared.record(generation, false, failed, ended),
            Self::Trial(mut permit) => {
                permit.armed = false;
                shared.record(permit.generation, true, failed, ended);
            }
        }
    }
}

/// The admission half of a breaker, shared by [`Breaker`] and the fused resilience service:
/// waits for the breaker to let a call through and holds the leave until the call is made.
pub(crate) struct Gate {
    pub(crate) shared: Arc<Shared>,
    admitted: Option<Admitted>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Gate {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            admitted: None,
            sleep: None,
        }
    }

    fn permit(&self, generation: u64) -> TrialPermit {
        TrialPermit {
            shared: self.shared.clone(),
            generation,
            armed: true,
        }
    }

    /// Ready when the breaker admits a call (kept until [`Gate::take`]); pending while it is
    /// open or every half-open trial slot is taken.
    #[inline]
    pub(crate) fn poll_admit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A closed breaker, nothing reserved and no cool-down timer: one atomic load (what
        // `admit` does first), without the general path's bookkeeping.
        if self.sleep.is_none()
            && !matches!(self.admitted, Some(Admitted::Trial(_)))
            && let Some(generation) = self.shared.admit_closed()
        {
            self.admitted = Some(Admitted::Normal(generation));
            return Poll::Ready(());
        }
        self.poll_admit_slow(cx)
    }

    /// [`poll_admit`](Self::poll_admit) past its fast path (a reservation, a timer, or a
    /// breaker that is not simply closed): out of line, so the fast path inlines into every
    /// readiness check.
    #[inline(never)]
    fn poll_admit_slow(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if matches!(self.admitted, Some(Admitted::Trial(_))) {
                return Poll::Ready(());
            }
            match self.shared.admit(Some(cx.waker())) {
                Admission::Normal(generation) => {
                    self.admitted = Some(Admitted::Normal(generation));
                    self.sleep = None;
                    return Poll::Ready(());
                }
                Admission::Trial(generation) => {
                    self.admitted = Some(Admitted::Trial(self.permit(generation)));
                    self.sleep = None;
                    return Poll::Ready(());
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

    /// Gives back a half-open trial slot [`poll_admit`](Self::poll_admit) reserved and no
    /// call used, so that another caller (another worker's retry) can take it; a closed
    /// breaker's leave costs nothing to keep and stays.
    pub(crate) fn release_trial(&mut self) {
        if matches!(self.admitted, Some(Admitted::Trial(_))) {
            self.admitted = None;
        }
    }

    /// The leave obtained by [`Gate::poll_admit`]; without one, decides now and refuses
    /// when the breaker is not letting calls through.
    #[inline]
    pub(crate) fn take(&mut self) -> Result<Admitted, BreakerOpenError> {
        if let Some(a) = self.admitted.take() {
            return Ok(a);
        }
        match self.shared.admit(None) {
            Admission::Normal(generation) => Ok(Admitted::Normal(generation)),
            Admission::Trial(generation) => Ok(Admitted::Trial(self.permit(generation))),
            Admission::WaitUntil(_) | Admission::WaitForTrial => {
                let state = match self.shared.state() {
                    BreakerState::Closed => BreakerState::Open,
                    s => s,
                };
                Err(BreakerOpenError {
                    handler: self.shared.name.clone(),
                    state,
                })
            }
        }
    }
}

impl Clone for Gate {
    /// A clone shares the breaker but never inherits a reservation.
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

/// A circuit breaker around one handler. Clones share the breaker state; a clone never
/// inherits a readiness reservation.
pub struct Breaker<S> {
    inner: S,
    gate: Gate,
}

impl<S: fmt::Debug> fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("breaker", &self.gate.shared)
            .finish()
    }
}

impl<S: Clone> Clone for Breaker<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<S> Breaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            gate: Gate::new(shared),
        }
    }

    /// A handle to this breaker's shared state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.gate.shared.clone())
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
        std::task::ready!(self.gate.poll_admit(cx));
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        match self.gate.take() {
            Ok(admitted) => BreakerFuture {
                state: CallState::Running {
                    inner: self.inner.call(env),
                    shared: self.gate.shared.clone(),
                    admitted: Some(admitted),
                },
            },
            Err(error) => BreakerFuture {
                state: CallState::Refused { error: Some(error) },
            },
        }
    }
}
