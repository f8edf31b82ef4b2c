use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::Service;
use tracing::Span;

use super::TraceContext;

/// Runs each call in a delivery span with W3C trace context propagated through headers.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    handler: SmolStr,
}

impl<S> Trace<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, handler: SmolStr) -> Self {
        Self { inner, handler }
    }
}

impl<S> Service<Envelope> for Trace<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut env: Envelope) -> Self::Future {
        let incoming = TraceContext::from_envelope(&env);
        let ctx = incoming.map_or_else(|| TraceContext::root_for(&env), |c| c.child());
        ctx.inject(&mut env);
        let span = delivery_span(&env, env.delivery.attempt, &self.handler, ctx, incoming);
        let inner = &mut self.inner;
        let fut = ctx.sync_scope(|| {
            let _entered = span.enter();
            inner.call(env)
        });
        TraceFuture {
            inner: fut,
            ctx,
            span,
        }
    }
}

/// The `switchyard.deliver` span of one delivery (`attempt`: the envelope's delivery
/// attempt as the handler's caller stamped it) handled at position `ctx` of its trace.
#[inline(always)]
pub(crate) fn delivery_span(
    env: &Envelope,
    attempt: u32,
    handler: &SmolStr,
    ctx: TraceContext,
    incoming: Option<TraceContext>,
) -> Span {
    let span = ::tracing::info_span!(
        "switchyard.deliver",
        topic = %env.topic,
        message_id = %env.id,
        correlation_id = %env.correlation_id,
        attempt = attempt,
        handler = %handler.as_str(),
        trace_id = %ctx.trace_id(),
        span_id = %ctx.span_id(),
        parent_span_id = ::tracing::field::Empty,
        outcome = ::tracing::field::Empty,
    );
    if let Some(parent) = incoming
        && !span.is_disabled()
    {
        span.record(
            "parent_span_id",
            ::tracing::field::display(parent.span_id()),
        );
    }
    span
}

/// Records how a delivery ended on its span (`None`: the span was disabled and not kept),
/// and logs a failure.
#[inline]
pub(crate) fn end_span(span: Option<&Span>, result: &Result<Outcome, BoxError>) {
    if let Some(span) = span.filter(|s| !s.is_disabled()) {
        let outcome = match result {
            Ok(Outcome::Ack) => "ack",
            Ok(Outcome::Reply(_)) => "reply",
            Ok(Outcome::Retry { .. }) => "retry",
            Ok(Outcome::Reject { .. }) => "reject",
            Err(_) => "error",
        };
        span.record("outcome", outcome);
    }
    if let Err(e) = result {
        ::tracing::warn!(error = %e, "handler failed");
    }
}

pin_project! {
    /// The future returned by [`Trace`]: polls the inner call inside the delivery span with the
    /// delivery's [`TraceContext`] as the current one, and records the outcome on the span.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        ctx: TraceContext,
        span: Span,
    }
}

impl<F> Future for TraceFuture<F>
where
    F: Future<Output = Result<Outcome, BoxError>>,
{
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let inner = this.inner;
        let result = std::task::ready!(this.ctx.sync_scope(|| inner.poll(cx)));
        end_span(Some(this.span), &result);
        Poll::Ready(result)
    }
}
