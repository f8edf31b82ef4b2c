use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use switchyard_core::{BoxError, Envelope, Outcome, Topic};
use switchyard_middleware::trace::{TRACEPARENT, TraceContext, TraceLayer, propagate};
use tower::{Layer, ServiceExt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::common::env;

type Seen = Arc<Mutex<Vec<(TraceContext, Option<String>, Envelope)>>>;

/// A handler stage: records the current context and the incoming header, then publishes one
/// child message (carrying the trace) into `outbox`.
async fn stage(name: &'static str, input: Envelope, seen: Seen, outbox: Arc<Mutex<Vec<Envelope>>>) {
    let svc = TraceLayer::new(name).layer(tower::service_fn(move |env: Envelope| {
        let seen = seen.clone();
        let outbox = outbox.clone();
        async move {
            let current = TraceContext::current().expect("inside the trace layer");
            let mut child = Envelope::new(Topic::new("next.step")?, "{}").caused_by(&env);
            propagate(&env, &mut child);
            seen.lock()
                .unwrap()
                .push((current, env.header(TRACEPARENT).map(str::to_owned), env));
            outbox.lock().unwrap().push(child);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    svc.oneshot(input).await.unwrap();
}

#[tokio::test]
async fn a_chain_of_handlers_keeps_one_trace_id() {
    let seen: Seen = Arc::default();
    let outbox: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let mut next = env("orders.placed");
    assert!(next.header(TRACEPARENT).is_none());
    for name in ["a", "b", "c"] {
        stage(name, next, seen.clone(), outbox.clone()).await;
        next = outbox.lock().unwrap().pop().unwrap();
    }
    let seen = seen.lock().unwrap();
    let trace = seen[0].0.trace_id();
    for (ctx, header, env) in seen.iter() {
        assert_eq!(ctx.trace_id(), trace);
        // The handler's envelope carries the delivery's own context.
        assert_eq!(header.as_deref(), Some(ctx.to_string().as_str()));
        assert_eq!(TraceContext::from_envelope(env), Some(*ctx));
    }
    assert_eq!(
        TraceContext::from_envelope(&next).unwrap().trace_id(),
        trace,
        "the last child too"
    );
    let spans: std::collections::HashSet<_> = seen.iter().map(|s| s.0.span_id()).collect();
    assert_eq!(spans.len(), 3, "one span per delivery");
    // Correlation is kept by caused_by alongside the trace.
    assert_eq!(seen[2].2.correlation_id, seen[0].2.correlation_id);
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_and_a_bad_one_replaced() {
    let seen: Seen = Arc::default();
    let outbox: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let upstream: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let mut e = env("a.b");
    upstream.inject(&mut e);
    stage("a", e, seen.clone(), outbox.clone()).await;
    let ctx = seen.lock().unwrap()[0].0;
    assert_eq!(ctx.trace_id(), upstream.trace_id());
    assert_ne!(ctx.span_id(), upstream.span_id());

    let bad = env("a.b").with_header(TRACEPARENT, "not-a-traceparent");
    stage("a", bad, seen.clone(), outbox).await;
    let ctx2 = seen.lock().unwrap()[1].0;
    assert_ne!(ctx2.trace_id(), upstream.trace_id());
    assert_eq!(
        seen.lock().unwrap()[1].1.as_deref(),
        Some(ctx2.to_string().as_str())
    );
}

type SpanRecord = (String, BTreeMap<String, String>);

#[derive(Default, Clone)]
struct Capture(Arc<Mutex<Vec<SpanRecord>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields));
    }
}

/// Calls `svc` with `e` until `capture` has seen a `switchyard.deliver` span. Other tests run
/// traced code concurrently with no subscriber, which can leave a callsite's cached interest
/// at "never" for a moment; the interest is recomputed and the call tried again (three tries).
async fn deliver_until_spanned<S>(svc: &S, e: &Envelope, capture: &Capture)
where
    S: tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone,
{
    for _ in 0..3 {
        tracing::callsite::rebuild_interest_cache();
        svc.clone().oneshot(e.clone()).await.unwrap();
        if capture
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.0 == "switchyard.deliver")
        {
            break;
        }
    }
}

#[tokio::test]
async fn delivery_span_has_the_identifying_fields() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let mut e = env("orders.placed");
    e.delivery.attempt = 2;
    let svc = TraceLayer::new("shipper").layer(tower::service_fn(|_e: Envelope| async {
        Ok::<_, BoxError>(Outcome::Ack)
    }));
    deliver_until_spanned(&svc, &e, &capture).await;
    let spans = capture.0.lock().unwrap();
    let (name, fields) = spans.iter().find(|s| s.0 == "switchyard.deliver").unwrap();
    assert_eq!(name, "switchyard.deliver");
    assert_eq!(fields["topic"], "orders.placed");
    assert_eq!(fields["message_id"], e.id.to_string());
    assert_eq!(fields["correlation_id"], e.correlation_id.to_string());
    assert_eq!(fields["attempt"], "2");
    assert_eq!(fields["handler"], "shipper");
    assert_eq!(fields["trace_id"].len(), 32);
}

#[tokio::test]
async fn ensure_traceparent_keeps_continues_or_starts() {
    use switchyard_middleware::trace::ensure_traceparent;

    // Outside any handler: a new trace, written into the envelope.
    let mut fresh = env("a.b");
    let root = ensure_traceparent(&mut fresh);
    assert_eq!(TraceContext::from_envelope(&fresh), Some(root));
    // Already carrying one: kept as is.
    let mut again = fresh.clone();
    assert_eq!(ensure_traceparent(&mut again), root);
    assert_eq!(again.header(TRACEPARENT), fresh.header(TRACEPARENT));
    // Inside a handler (the trace layer's scope): the handler's trace, with no handler code.
    let published: Arc<Mutex<Option<Envelope>>> = Arc::default();
    let p = published.clone();
    let svc = TraceLayer::new("h").layer(tower::service_fn(move |_e: Envelope| {
        let p = p.clone();
        async move {
            let mut child = Envelope::new(Topic::new("c.d")?, "{}");
            ensure_traceparent(&mut child); // what the bus's publish would do
            *p.lock().unwrap() = Some(child);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    svc.oneshot(fresh).await.unwrap();
    let child = published.lock().unwrap().take().unwrap();
    assert_eq!(
        TraceContext::from_envelope(&child).unwrap().trace_id(),
        root.trace_id()
    );
}

/// Outcomes recorded on `switchyard.deliver` spans after they were made.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<String>>>);

impl<S> tracing_subscriber::Layer<S> for Outcomes
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if ctx
            .span(id)
            .is_some_and(|s| s.name() == "switchyard.deliver")
        {
            let mut fields = BTreeMap::new();
            values.record(&mut Fields(&mut fields));
            if let Some(outcome) = fields.remove("outcome") {
                self.0.lock().unwrap().push(outcome);
            }
        }
    }
}

/// The fused stack keeps its delivery span only when a subscriber wants it (a disabled one is
/// dropped at the call): with one, the span has the identifying fields, the handler runs
/// inside it, and the outcome is recorded on it when the call ends.
#[tokio::test]
async fn fused_stack_span_with_a_subscriber() {
    use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};

    let capture = Capture::default();
    let outcomes = Outcomes::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(capture.clone())
            .with(outcomes.clone()),
    );
    let inside: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = inside.clone();
    let svc = ResilienceLayer::new("shipper", ResilienceConfig::default()).layer(
        tower::service_fn(move |_e: Envelope| {
            let seen = seen.clone();
            async move {
                tokio::task::yield_now().await;
                let current = tracing::Span::current();
                seen.lock()
                    .unwrap()
                    .push(current.metadata().map(|m| m.name().to_owned()));
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }),
    );
    let e = env("orders.placed");
    deliver_until_spanned(&svc, &e, &capture).await;
    let spans = capture.0.lock().unwrap();
    let (_, fields) = spans.iter().find(|s| s.0 == "switchyard.deliver").unwrap();
    assert_eq!(fields["topic"], "orders.placed");
    assert_eq!(fields["handler"], "shipper");
    let inside = inside.lock().unwrap();
    assert_eq!(
        inside.last().cloned().flatten().as_deref(),
        Some("switchyard.deliver"),
        "the handler is polled inside the delivery span, after a yield too"
    );
    assert_eq!(
        outcomes.0.lock().unwrap().last().map(String::as_str),
        Some("ack")
    );
}
