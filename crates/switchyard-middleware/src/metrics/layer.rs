use std::sync::{Arc, OnceLock};

use smol_str::SmolStr;
use switchyard_core::Envelope;
use tower::Layer;

use super::service::Shared;
use super::{Metrics, MetricsRegistry};

/// What the `topic` label of a handler's metrics holds.
///
/// Every distinct value is a series (and a registry row) per metric, kept for the life of
/// the process: the label must stay bounded. The topics of the messages a wildcard handler
/// receives are whatever publishers choose, so [`Topic`](Self::Topic) is only for a bounded
/// set of topics; the bus's resilience stack labels by the registered pattern
/// ([`Pattern`](Self::Pattern), the default of
/// [`ResilienceConfig`](crate::resilience::ResilienceConfig)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopicLabel {
    /// The message's topic: one series per topic seen, only for a bounded set of topics.
    /// The default of a [`MetricsLayer`] built on its own.
    #[default]
    Topic,
    /// A fixed value, usually the subscription pattern (`users.#`): bounded cardinality.
    Fixed(SmolStr),
    /// The pattern (or command topic) the handler was registered for, filled in by whoever
    /// registers it: the bus's `with_resilience` / `with_default_resilience` make it
    /// [`Fixed`](Self::Fixed)`(pattern)` through
    /// [`ResilienceConfig::registered_for`](crate::resilience::ResilienceConfig::registered_for).
    /// Where no pattern was told (a layer built by hand), it labels as [`Topic`](Self::Topic).
    Pattern,
}

impl TopicLabel {
    /// This label for a handler registered for `pattern`: [`Pattern`](Self::Pattern) becomes
    /// [`Fixed`](Self::Fixed)`(pattern)`, the others stay as they are.
    pub fn registered_for(self, pattern: &str) -> Self {
        match self {
            Self::Pattern => Self::Fixed(pattern.into()),
            other => other,
        }
    }

    pub(crate) fn value<'a>(&'a self, env: &'a Envelope) -> &'a str {
        match self {
            Self::Fixed(s) => s.as_str(),
            Self::Topic | Self::Pattern => env.topic.as_str(),
        }
    }
}

/// Records handler metrics (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    handler: SmolStr,
    topic_label: TopicLabel,
    registry: MetricsRegistry,
    /// Handles shared by every service this layer makes (created on first `layer`).
    shared: Arc<OnceLock<Arc<Shared>>>,
}

impl MetricsLayer {
    /// A layer for the handler named `handler`, with a fresh [`MetricsRegistry`].
    pub fn new(handler: impl Into<SmolStr>) -> Self {
        Self {
            handler: handler.into(),
            topic_label: TopicLabel::Topic,
            registry: MetricsRegistry::new(),
            shared: Arc::default(),
        }
    }

    /// Labels metrics with the subscription pattern (or any fixed text) instead of the topic.
    pub fn topic_label(mut self, label: TopicLabel) -> Self {
        self.topic_label = label;
        self.shared = Arc::default();
        self
    }

    /// Keeps counts in `registry` (shared with other handlers) instead of a fresh one.
    pub fn with_registry(mut self, registry: MetricsRegistry) -> Self {
        self.registry = registry;
        self.shared = Arc::default();
        self
    }

    /// The registry this layer's services count into.
    pub fn registry(&self) -> MetricsRegistry {
        self.registry.clone()
    }
}

impl MetricsLayer {
    /// The state every service of this layer counts into.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared
            .get_or_init(|| {
                Arc::new(Shared::new(
                    self.handler.clone(),
                    self.topic_label.clone(),
                    self.registry.clone(),
                ))
            })
            .clone()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.shared())
    }
}
