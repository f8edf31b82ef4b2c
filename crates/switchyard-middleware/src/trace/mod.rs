//! Tracing: a span per delivery and W3C trace context (`traceparent`) carried in envelope
//! headers, so a chain of handlers forms one trace.
//!
//! For each call, [`TraceLayer`]:
//! 1. reads the incoming `traceparent` header; a valid one is *continued* (same trace id, a
//!    new span id whose parent is the incoming one), a missing or invalid one starts a new
//!    trace;
//! 2. writes the delivery's own context into the `traceparent` header of the envelope it
//!    passes down (`tracestate` and every other header are kept);
//! 3. runs the inner call inside a `switchyard.deliver` span with the fields `topic`,
//!    `message_id`, `correlation_id`, `attempt`, `handler`, `trace_id`, `span_id` and
//!    `parent_span_id`, and with the context available through [`TraceContext::current`].
//!
//! A handler that publishes a follow-up message calls [`propagate`] (or
//! `TraceContext::current()` + [`TraceContext::inject`]) so the child carries the same trace id;
//! a bus that calls [`ensure_traceparent`] on every publish does that for it.
//!
//! ```
//! use switchyard_core::{Envelope, Topic};
//! use switchyard_middleware::trace::{TraceContext, propagate};
//!
//! let incoming: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
//! let mut parent = Envelope::new(Topic::new("orders.placed")?, "{}");
//! incoming.inject(&mut parent);
//! let mut child = Envelope::new(Topic::new("mail.send")?, "{}").caused_by(&parent);
//! propagate(&parent, &mut child);
//! assert_eq!(TraceContext::from_envelope(&child).map(|c| c.trace_id()), Some(incoming.trace_id()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod context;
mod layer;
mod service;

pub use context::{
    Scoped, SpanId, TRACEPARENT, TRACESTATE, TraceContext, TraceId, TraceparentError,
};
pub use layer::TraceLayer;
pub use service::{Trace, TraceFuture};
pub(crate) use service::{delivery_span, end_span};

use switchyard_core::Envelope;

/// For the bus's publish path: makes sure `env` carries a `traceparent`. A valid one is kept;
/// otherwise the current handler's context ([`TraceContext::current`]) is used, or, in a
/// handler with no trace or resilience layer, the handled message's own `traceparent`, so a
/// message published while handling another joins its trace without any handler code;
/// otherwise a new trace starts ([`TraceContext::root_for`]: its id is the correlation id).
/// Returns the context the envelope carries.
///
/// Doing this at publish time (rather than leaving it to each subscriber's [`TraceLayer`]) gives
/// every subscriber of one message the same trace.
pub fn ensure_traceparent(env: &mut Envelope) -> TraceContext {
    if let Some(ctx) = TraceContext::from_envelope(env) {
        return ctx;
    }
    let ctx = TraceContext::current()
        .or_else(handled_context)
        .unwrap_or_else(|| TraceContext::root_for(env));
    ctx.inject(env);
    ctx
}

/// The trace context of the message being handled on this thread (the bus's delivered
/// envelope), for a handler without a trace or resilience layer: what it publishes joins
/// that message's trace, as [`propagate`] does with no current context.
fn handled_context() -> Option<TraceContext> {
    switchyard_core::delivered::with(|handled| TraceContext::from_envelope(handled)).flatten()
}

/// Gives `child` the trace of `parent`: the child's `traceparent` is the parent's (its
/// parent-id is the span that handled `parent`). When `parent` has no valid context, the
/// handler's current one ([`TraceContext::current`]) is used, and failing that a new trace is
/// started. Returns the context written.
pub fn propagate(parent: &Envelope, child: &mut Envelope) -> TraceContext {
    // Inside the handler of `parent`, the current context is the handler's own span in the
    // parent's trace (the resilience stack leaves the parent's header as it was published).
    let current = TraceContext::current();
    let ctx = match (TraceContext::from_envelope(parent), current) {
        (Some(p), Some(c)) if p.trace_id() == c.trace_id() => c,
        (Some(p), _) => p,
        (None, c) => c.unwrap_or_else(|| TraceContext::root_for(parent)),
    };
    ctx.inject(child);
    if let Some(state) = parent.header(TRACESTATE) {
        let state = state.to_owned();
        child.headers_mut().insert(TRACESTATE, state);
    }
    ctx
}
