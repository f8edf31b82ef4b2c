use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tokio::time::Instant;
use tower::Service;

use super::registry::Ended;
use super::{MetricsRegistry, TopicLabel, names};

/// Records counters, histograms and the in-flight gauge for each call.
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    handler: SmolStr,
    topic_label: TopicLabel,
    registry: MetricsRegistry,
}

impl<S> Metrics<S> {
    /// Wraps `inner`.
    pub fn new(
        inner: S,
        handler: SmolStr,
        topic_label: TopicLabel,
        registry: MetricsRegistry,
    ) -> Self {
        Self {
            inner,
            handler,
            topic_label,
            registry,
        }
    }
}

impl<S> Service<Envelope> for Metrics<S>
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
        let topic = self.topic_label.value(&env).to_owned();
        let handler = self.handler.to_string();
        let timestamp = env.timestamp;
        let registry = self.registry.clone();
        let labels = [("topic", topic.clone()), ("handler", handler.clone())];
        ::metrics::counter!(names::DELIVERED, &labels).increment(1);
        ::metrics::gauge!(names::IN_FLIGHT, "handler" => handler.clone()).increment(1.0);
        registry.started(&topic, &handler);
        let start = Instant::now();
        let fut = self.inner.call(env);
        Box::pin(async move {
            let mut guard = InFlight {
                registry: registry.clone(),
                topic: topic.clone(),
                handler: handler.clone(),
                armed: true,
            };
            let result = fut.await;
            guard.armed = false;
            let duration = start.elapsed();
            let end_to_end = SystemTime::now()
                .duration_since(timestamp)
                .unwrap_or_default();
            let (name, ended) = match &result {
                Ok(Outcome::Ack | Outcome::Reply(_)) => (names::ACKED, Ended::Acked),
                Ok(Outcome::Retry { .. }) => (names::RETRIED, Ended::Retried),
                Ok(Outcome::Reject { .. }) => (names::REJECTED, Ended::Rejected),
                Err(_) => (names::FAILED, Ended::Failed),
            };
            ::metrics::counter!(name, &labels).increment(1);
            ::metrics::histogram!(names::HANDLER_DURATION, &labels).record(duration.as_secs_f64());
            ::metrics::histogram!(names::END_TO_END_LATENCY, &labels)
                .record(end_to_end.as_secs_f64());
            ::metrics::gauge!(names::IN_FLIGHT, "handler" => handler.clone()).decrement(1.0);
            registry.finished(&topic, &handler, ended, duration, end_to_end);
            result
        })
    }
}

/// Takes a call out of the in-flight figures when its future is dropped before it ends.
struct InFlight {
    registry: MetricsRegistry,
    topic: String,
    handler: String,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            ::metrics::gauge!(names::IN_FLIGHT, "handler" => self.handler.clone()).decrement(1.0);
            self.registry.abandoned(&self.topic, &self.handler);
        }
    }
}
