use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use ::metrics::{Counter, Gauge, Histogram, Label};
use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tokio::time::Instant;
use tower::Service;

use super::registry::{Counters, Ended};
use super::{MetricsRegistry, TopicLabel, names};

/// Metric handles of one topic label, registered on first use.
struct TopicHandles {
    delivered: Counter,
    acked: Counter,
    retried: Counter,
    rejected: Counter,
    failed: Counter,
    duration: Histogram,
    end_to_end: Histogram,
    counters: Arc<Counters>,
}

/// State shared by the services of one [`MetricsLayer`](super::MetricsLayer).
pub(crate) struct Shared {
    pub(crate) handler: SmolStr,
    pub(crate) topic_label: TopicLabel,
    pub(crate) registry: MetricsRegistry,
    in_flight: OnceLock<Gauge>,
    topics: RwLock<HashMap<SmolStr, Arc<TopicHandles>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("handler", &self.handler)
            .field("topic_label", &self.topic_label)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        handler: SmolStr,
        topic_label: TopicLabel,
        registry: MetricsRegistry,
    ) -> Self {
        Self {
            handler,
            topic_label,
            registry,
            in_flight: OnceLock::new(),
            topics: RwLock::new(HashMap::new()),
        }
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(
            || ::metrics::gauge!(names::IN_FLIGHT, "handler" => self.handler.to_string()),
        )
    }

    fn handles(&self, topic: &str) -> Arc<TopicHandles> {
        if let Some(h) = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return h.clone();
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        topics
            .entry(SmolStr::new(topic))
            .or_insert_with(|| {
                let labels = [
                    Label::new("topic", topic.to_owned()),
                    Label::new("handler", self.handler.to_string()),
                ];
                Arc::new(TopicHandles {
                    delivered: ::metrics::counter!(names::DELIVERED, labels.iter()),
                    acked: ::metrics::counter!(names::ACKED, labels.iter()),
                    retried: ::metrics::counter!(names::RETRIED, labels.iter()),
                    rejected: ::metrics::counter!(names::REJECTED, labels.iter()),
                    failed: ::metrics::counter!(names::FAILED, labels.iter()),
                    duration: ::metrics::histogram!(names::HANDLER_DURATION, labels.iter()),
                    end_to_end: ::metrics::histogram!(names::END_TO_END_LATENCY, labels.iter()),
                    counters: self.registry.counters(topic, &self.handler),
                })
            })
            .clone()
    }
}

/// Records counters, histograms and the in-flight gauge for each call.
///
/// Metric handles are registered with the recorder the first time a topic is seen, so install
/// the recorder ([`install_prometheus`](super::install_prometheus)) before messages flow.
pub struct Metrics<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The handles of the topic label this clone saw last (most subscriptions see one).
    last: Option<(SmolStr, Arc<TopicHandles>)>,
}

impl<S: Clone> Clone for Metrics<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Metrics<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            last: None,
        }
    }

    fn handles_for(&mut self, env: &Envelope) -> Arc<TopicHandles> {
        let label = self.shared.topic_label.value(env);
        if let Some((topic, handles)) = &self.last
            && topic == label
        {
            return handles.clone();
        }
        let handles = self.shared.handles(label);
        self.last = Some((SmolStr::new(label), handles.clone()));
        handles
    }
}

/// Takes a call out of the in-flight figures when its future is dropped before it ends.
struct InFlight {
    gauge: Gauge,
    handles: Arc<TopicHandles>,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            self.gauge.decrement(1.0);
            self.handles.counters.abandoned();
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
        let handles = self.handles_for(&env);
        let gauge = self.shared.in_flight().clone();
        let timestamp = env.timestamp;
        handles.delivered.increment(1);
        handles.counters.started();
        gauge.increment(1.0);
        let start = Instant::now();
        let fut = self.inner.call(env);
        Box::pin(async move {
            let mut guard = InFlight {
                gauge,
                handles,
                armed: true,
            };
            let result = fut.await;
            guard.armed = false;
            let duration = start.elapsed();
            let end_to_end = SystemTime::now()
                .duration_since(timestamp)
                .unwrap_or_default();
            let h = &guard.handles;
            let (counter, ended) = match &result {
                Ok(Outcome::Ack | Outcome::Reply(_)) => (&h.acked, Ended::Acked),
                Ok(Outcome::Retry { .. }) => (&h.retried, Ended::Retried),
                Ok(Outcome::Reject { .. }) => (&h.rejected, Ended::Rejected),
                Err(_) => (&h.failed, Ended::Failed),
            };
            counter.increment(1);
            h.duration.record(duration.as_secs_f64());
            h.end_to_end.record(end_to_end.as_secs_f64());
            guard.gauge.decrement(1.0);
            h.counters.finished(ended, duration, end_to_end);
            result
        })
    }
}
