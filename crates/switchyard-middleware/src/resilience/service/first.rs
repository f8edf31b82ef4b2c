//! The bus's first attempt of a call, made and polled without building the call's future
//! ([`Resilient::start_lent`]).
//!
//! Most calls end at their first poll with a final outcome. For those the stack's work is
//! done with what `make` computes held in locals: the handler is called and polled in place,
//! the breaker, the span and the metrics are settled, and the handler's future is handed back
//! to the caller for recycling. No [`ResilientFuture`] is written (about 240 bytes, field by
//! field), projected, taken apart for the recycle and dropped. A call that does anything else
//! (yields, fails, asks for a retry, panics, is refused by the breaker, or is deduplicated)
//! becomes the same future `call_lent` makes, in the state its first poll left it in, and is
//! polled on by the general code: the two paths share everything after the first poll.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use switchyard_core::{BoxError, DeliveryInfo, Envelope, Outcome};
use tokio::time::sleep_until;
use tower::Service;
use tracing::Span;

use super::{Kept, Phase, Resilient, ResilientFuture, end_phase, finish};
use crate::catch_panic::PanicError;
use crate::metrics::Measured;
use crate::resilience::layer::Recycle;
use crate::timeout::TimeoutError;
use crate::trace::{TraceContext, delivery_span};

/// What [`Resilient::start_lent`] made of a call.
// Not boxed: the large variant is the rare one, and a box is what this saves.
#[allow(clippy::large_enum_variant)]
pub enum FirstPoll<F, S> {
    /// The call ended at its first poll: its result, and the handler's future of that
    /// attempt, to hand back with [`Resilient::recycle_first`] (or drop).
    Ended(Result<Outcome, BoxError>, F),
    /// The call as [`call_lent`](Resilient::call_lent) makes it, polled once: handed back
    /// with [`recycle`](Resilient::recycle) when that poll ended it, else polled on with
    /// [`poll_lent`](Resilient::poll_lent) (or given [`own`](Resilient::own) state first).
    Polled(ResilientFuture<F, S>, Poll<Result<Outcome, BoxError>>),
}

impl<S> Resilient<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Recycle + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
{
    /// Calls the stack with `env` as delivered with `delivery` (what
    /// `env.copy_with_delivery(delivery)` makes) as [`call_lent`](Self::call_lent) and polls
    /// the call once, as [`poll_lent`](Self::poll_lent) would, with the same effects; a call
    /// that ends at that poll with a final outcome is finished without its future being built
    /// (see [`FirstPoll`]). The handler's envelope is made inside the call's panic capture,
    /// where the handler's call takes it: it is not built here and moved twice more (into
    /// this call, then into the capture). For a stack
    /// [`called_as_delivered`](super::super::ResilienceLayer::called_as_delivered), called in
    /// the bus's delivered scope.
    #[inline]
    pub fn start_lent(
        &mut self,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        cx: &mut Context<'_>,
    ) -> FirstPoll<S::Future, S> {
        let core = &*self.core;
        // The envelope for later attempts, left in the delivered scope: its address now, the
        // rest below. Without a scope (or with dedup, or not called as delivered) the general
        // path, which keeps a copy.
        let retries = core.policy.get_max_attempts() > 1;
        let at = if !core.called_as_delivered || core.dedup.is_some() {
            None
        } else if retries {
            switchyard_core::delivered::with(|d| {
                debug_assert!(
                    d.same_message(env),
                    "a stack declared called_as_delivered got an envelope the bus did not deliver as it is"
                );
                Some(Arc::as_ptr(d).addr())
            })
        } else {
            Some(None)
        };
        let Some(at) = at else {
            return self.start_general(env.copy_with_delivery(delivery), cx);
        };
        // As `make`, in the same order, reading the shared envelope and `delivery` (the
        // delivered envelope's own delivery bookkeeping is as queued).
        let mut delivery = delivery;
        let incoming = TraceContext::from_envelope(env);
        let ctx = incoming.map_or_else(|| TraceContext::root_for(env), |c| c.child());
        let span = delivery_span(env, delivery.attempt, &core.handler, ctx, incoming);
        let measured = self.topics.begin(&core.metrics, env);
        let start = core.clock.raw();
        let timeout_base = tokio::time::Instant::now();
        let start_offset = self.wall.offset_fresh(&core.clock, start);
        let base = delivery.attempt.max(1);
        if delivery.first_delivered_at.is_none() {
            delivery.first_delivered_at = Some(self.wall.wall(start_offset));
        }
        delivery.attempt = base;
        let start_unix = self.wall.unix.saturating_add(start_offset);
        let admitted = self.gate.take();
        // The future as `make` builds it, with the phase the first poll left (only on the
        // paths that need it: nothing of it is built for a call that ends at its first poll).
        macro_rules! parts {
            ($phase:expr) => {
                Parts {
                    phase: $phase,
                    kept: at.map(|at| Kept::InScope {
                        at,
                        timestamp: env.timestamp,
                        delivery,
                    }),
                    base,
                    ctx,
                    span,
                    measured,
                    timeout_base,
                    start,
                    start_unix,
                }
            };
        }
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refused) => {
                let phase = Phase::Judge {
                    result: Some(Err(refused.into())),
                    admitted: None,
                    call: None,
                };
                return self.poll_made(parts!(phase), cx);
            }
        };
        // The call and its first poll, with the handler's trace position current and its
        // span entered (`make` enters them for the call, `poll` again for the poll and what
        // follows it: the breaker's settling and the end of the measurement).
        let guards = (ctx.enter(), span.enter());
        let inner = &mut self.inner;
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
            inner.call(env.copy_with_delivery(delivery))
        }));
        let (result, call) = match called {
            Ok(mut call) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut call).poll(cx))) {
                    // Final whatever the policy: finished here, as `poll` finishes it.
                    Ok(Poll::Ready(Ok(outcome))) if !matches!(outcome, Outcome::Retry { .. }) => {
                        let end = core.clock.raw();
                        let result = Ok(outcome);
                        admitted.settle_raw(&core.breaker, &result, &core.clock, end);
                        finish(
                            core,
                            Some(measured),
                            Some(&span),
                            start,
                            start_unix,
                            end,
                            &result,
                        );
                        drop(guards);
                        return FirstPoll::Ended(result, call);
                    }
                    Ok(Poll::Ready(result)) => (result, Some(call)),
                    Ok(Poll::Pending) => {
                        // Armed as `poll` arms it when the handler yields.
                        let mut timer = Box::pin(sleep_until(crate::clock::deadline(
                            timeout_base,
                            core.timeout,
                        )));
                        if timer.as_mut().poll(cx).is_pending() {
                            drop(guards);
                            let phase = Phase::First {
                                call,
                                timer: Some(timer),
                                admitted: Some(admitted),
                            };
                            return FirstPoll::Polled(parts!(phase).made(), Poll::Pending);
                        }
                        drop_call(call);
                        let timed_out = TimeoutError {
                            timeout: core.timeout,
                        };
                        (Err(timed_out.into()), None)
                    }
                    Err(payload) => {
                        // Dropped as the phase drops it: a panic out of its `Drop` is logged.
                        drop_call(call);
                        (Err(PanicError::from_payload(payload).into()), None)
                    }
                }
            }
            Err(payload) => (Err(PanicError::from_payload(payload).into()), None),
        };
        // Anything else is judged by the general code, from the state `poll` would be in.
        drop(guards);
        let phase = Phase::Judge {
            result: Some(result),
            admitted: Some(admitted),
            call,
        };
        self.poll_made(parts!(phase), cx)
    }

    /// A call [`start_lent`](Self::start_lent) leaves to the general path from the start:
    /// made by `call_lent` and polled once.
    #[cold]
    #[inline(never)]
    fn start_general(&mut self, env: Envelope, cx: &mut Context<'_>) -> FirstPoll<S::Future, S> {
        let mut fut = self.call_lent(env);
        let polled = self.poll_lent(Pin::new(&mut fut), cx);
        FirstPoll::Polled(fut, polled)
    }

    /// Polls a call `start_lent` made into a future.
    #[cold]
    #[inline(never)]
    fn poll_made(&self, parts: Parts<S::Future>, cx: &mut Context<'_>) -> FirstPoll<S::Future, S> {
        let mut fut = parts.made();
        let polled = self.poll_lent(Pin::new(&mut fut), cx);
        FirstPoll::Polled(fut, polled)
    }

    /// Takes back the handler's future of a call that [`start_lent`](Self::start_lent)
    /// ended ([`FirstPoll::Ended`]), as [`recycle`](Self::recycle) does for a call's future.
    #[inline]
    pub fn recycle_first(&mut self, call: S::Future) {
        self.inner.recycle(call);
    }
}

/// What [`Resilient::start_lent`] made of a call that becomes a future.
struct Parts<F> {
    phase: Phase<F>,
    kept: Option<Kept>,
    base: u32,
    ctx: TraceContext,
    span: Span,
    measured: Measured,
    timeout_base: tokio::time::Instant,
    start: u64,
    start_unix: u64,
}

impl<F> Parts<F> {
    /// The future as `make` builds it (lent: without its own reference to the shared state).
    #[cold]
    fn made<S>(self) -> ResilientFuture<F, S> {
        ResilientFuture {
            phase: self.phase,
            core: None,
            kept: self.kept,
            claimed: None,
            base: self.base,
            ctx: self.ctx,
            span: (!self.span.is_disabled()).then(|| Box::new(self.span)),
            measured: Some(self.measured),
            timeout_base: self.timeout_base,
            start: self.start,
            start_unix: self.start_unix,
        }
    }
}

/// Drops a first attempt's call that did not end on its own, as the phase drops it (a panic
/// out of its `Drop` is logged).
#[cold]
fn drop_call<F>(call: F) {
    end_phase(std::pin::pin!(Phase::First {
        call,
        timer: None,
        admitted: None,
    }));
}
