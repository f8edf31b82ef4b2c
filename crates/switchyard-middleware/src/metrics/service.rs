use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use ::metrics::{Counter, Gauge, Histogram, Label};
use parking_lot::RwLock;
use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tokio::time::Instant;
use tower::Service;

use super::registry::{Counters, Ended};
use super::{MetricsRegistry, TopicLabel, names};

/// Metric handles of one topic label, registered on first use.
pub(crate) struct TopicHandles {
    delivered: Counter,
    acked: Counter,
    retried: Counter,
    rejected: Counter,
    failed: Counter,
    handed_back: Counter,
    duration: Histogram,
    end_to_end: Histogram,
    in_flight: Gauge,
    counters: Arc<Counters>,
}

impl TopicHandles {
    /// Counts one re-attempt of a call by the stack's retry: a retry
    /// (`switchyard_retried_total`, and the registry's `retried`).
    pub(crate) fn reattempted(&self) {
        self.retried.increment(1);
        self.counters.reattempted();
    }
}

/// State shared by the services of one [`MetricsLayer`](super::MetricsLayer).
pub(crate) struct Shared {
    pub(crate) handler: SmolStr,
    pub(crate) topic_label: TopicLabel,
    pub(crate) registry: MetricsRegistry,
    in_flight: OnceLock<Gauge>,
    /// The first topic label seen, reachable without a reference count: most handlers only
    /// ever see one.
    first: OnceLock<(SmolStr, Arc<TopicHandles>)>,
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
            first: OnceLock::new(),
            topics: RwLock::new(HashMap::new()),
        }
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(
            || ::metrics::gauge!(names::IN_FLIGHT, "handler" => self.handler.to_string()),
        )
    }

    /// The handles of `topic`: `First` when it is the first label this state saw.
    fn topic_ref(&self, topic: &str) -> TopicRef {
        let handles = self.handles(topic);
        let (first, _) = self
            .first
            .get_or_init(|| (SmolStr::new(topic), handles.clone()));
        if first == topic {
            TopicRef::First
        } else {
            TopicRef::Other(handles)
        }
    }

    fn handles(&self, topic: &str) -> Arc<TopicHandles> {
        if let Some(h) = self.topics.read().get(topic) {
            return h.clone();
        }
        let mut topics = self.topics.write();
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
                    handed_back: ::metrics::counter!(names::HANDED_BACK, labels.iter()),
                    duration: ::metrics::histogram!(names::HANDLER_DURATION, labels.iter()),
                    end_to_end: ::metrics::histogram!(names::END_TO_END_LATENCY, labels.iter()),
                    in_flight: self.in_flight().clone(),
                    counters: self.registry.counters(topic, &self.handler),
                })
            })
            .clone()
    }
}

/// Where a call's metric handles are.
#[derive(Clone)]
enum TopicRef {
    /// The shared state's first topic label.
    First,
    /// Any other.
    Other(Arc<TopicHandles>),
}

impl TopicRef {
    #[inline]
    fn get<'a>(&'a self, shared: &'a Shared) -> Option<&'a TopicHandles> {
        match self {
            Self::First => shared.first.get().map(|(_, h)| &**h),
            Self::Other(h) => Some(h),
        }
    }
}

/// The handles of the topic label a service clone saw last, for labels other than the
/// shared state's first, so they are found without touching the shared map.
#[derive(Clone, Default)]
pub(crate) struct TopicCache {
    last: Option<(SmolStr, Arc<TopicHandles>)>,
}

impl TopicCache {
    /// Starts measuring a call of `env`: counts it delivered and in flight.
    #[inline(always)]
    pub(crate) fn begin(&mut self, shared: &Shared, env: &Envelope) -> Measured {
        // A fixed label is its state's first label as soon as there is one: the calls after
        // the first neither read it back nor compare it.
        let topic = match (&shared.topic_label, shared.first.get()) {
            (TopicLabel::Fixed(_), Some(_)) => TopicRef::First,
            _ => self.lookup(shared, env),
        };
        if let Some(h) = topic.get(shared) {
            h.delivered.increment(1);
            h.counters.started();
            h.in_flight.increment(1.0);
        }
        Measured {
            topic,
            timestamp: env.timestamp,
        }
    }

    /// The handles of `env`'s label: the state's first, the one this cache saw last, or
    /// found (and registered) in the shared map.
    #[inline(always)]
    fn lookup(&mut self, shared: &Shared, env: &Envelope) -> TopicRef {
        let label = shared.topic_label.value(env);
        match (shared.first.get(), &self.last) {
            (Some((first, _)), _) if first == label => TopicRef::First,
            (_, Some((last, handles))) if last == label => TopicRef::Other(handles.clone()),
            _ => {
                let topic = shared.topic_ref(label);
                if let TopicRef::Other(handles) = &topic {
                    self.last = Some((SmolStr::new(label), handles.clone()));
                }
                topic
            }
        }
    }
}

/// One call being measured: end it with [`Measured::finish`], or [`Measured::abandon`] when
/// the call is dropped before it ends.
pub(crate) struct Measured {
    topic: TopicRef,
    timestamp: SystemTime,
}

impl Measured {
    /// The envelope's timestamp, where end-to-end latency starts.
    pub(crate) fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// The handles this call counts into, for its re-attempts ([`TopicHandles::reattempted`]).
    pub(crate) fn handles(&self, shared: &Shared) -> Option<Arc<TopicHandles>> {
        match &self.topic {
            TopicRef::First => shared.first.get().map(|(_, h)| h.clone()),
            TopicRef::Other(h) => Some(h.clone()),
        }
    }

    /// Records how the call ended: `duration` of the call, and `end_to_end` from the
    /// envelope's timestamp to the end of the call, both in nanoseconds (what the registry
    /// keeps; the handles get `Duration`s, converted to seconds only when a recorder is
    /// installed).
    #[inline]
    pub(crate) fn finish(
        self,
        shared: &Shared,
        result: &Result<Outcome, BoxError>,
        duration: u64,
        end_to_end: u64,
    ) {
        let Some(h) = self.topic.get(shared) else {
            return;
        };
        let ended = Ended::of(result);
        match ended {
            Ended::Acked => &h.acked,
            Ended::Retried => &h.retried,
            Ended::Rejected => &h.rejected,
            Ended::Failed => &h.failed,
            Ended::HandedBack => &h.handed_back,
        }
        .increment(1);
        // As `Duration`s: converted to seconds only when a recorder is installed.
        h.duration.record(Duration::from_nanos(duration));
        h.end_to_end.record(Duration::from_nanos(end_to_end));
        h.in_flight.decrement(1.0);
        h.counters.finished(ended, duration, end_to_end);
    }

    /// Takes a call that was dropped before it ended out of the in-flight figures.
    pub(crate) fn abandon(self, shared: &Shared) {
        if let Some(h) = self.topic.get(shared) {
            h.in_flight.decrement(1.0);
            h.counters.abandoned();
        }
    }
}

/// A measured call of the [`Metrics`] service; abandoned if dropped unfinished.
struct Call {
    shared: Arc<Shared>,
    measured: Option<Measured>,
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(m) = self.measured.take() {
            m.abandon(&self.shared);
        }
    }
}

/// Records counters, histograms and the in-flight gauge for each call.
///
/// Metric handles are registered with the recorder the first time a topic is seen, so install
/// the recorder ([`install_prometheus`](super::install_prometheus)) before messages flow.
pub struct Metrics<S> {
    inner: S,
    shared: Arc<Shared>,
    cache: TopicCache,
}

impl<S: Clone> Clone for Metrics<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            cache: self.cache.clone(),
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
            cache: TopicCache::default(),
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
        let mut call = Call {
            measured: Some(self.cache.begin(&self.shared, &env)),
            shared: self.shared.clone(),
        };
        let start = Instant::now();
        let fut = self.inner.call(env);
        Box::pin(async move {
            let result = fut.await;
            if let Some(measured) = call.measured.take() {
                let end_to_end = SystemTime::now()
                    .duration_since(measured.timestamp())
                    .unwrap_or_default();
                measured.finish(
                    &call.shared,
                    &result,
                    crate::clock::nanos(start.elapsed()),
                    crate::clock::nanos(end_to_end),
                );
            }
            result
        })
    }
}
