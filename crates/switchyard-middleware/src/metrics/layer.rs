use std::sync::{Arc, OnceLock};

use smol_str::SmolStr;
use switchyard_core::Envelope;
use tower::Layer;

use super::service::Shared;
use super::{Metrics, MetricsRegistry};

/// What the `topic` label of a handler's metrics holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopicLabel {
    /// The message's topic (fine for a bounded set of topics).
    #[default]
    Topic,
    /// A fixed value, usually the subscription pattern (`users.#`): bounded cardinality.
    Fixed(SmolStr),
}

impl TopicLabel {
    pub(crate) fn value<'a>(&'a self, env: &'a Envelope) -> &'a str {
        match self {
            Self::Topic => env.topic.as_str(),
            Self::Fixed(s) => s.as_str(),
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
