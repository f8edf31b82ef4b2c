use std::sync::Arc;

use smol_str::SmolStr;
use tower::Layer;

use super::store::Store;
use super::{Dedup, DedupConfig, DedupHandle};

/// Wraps a handler in [`Dedup`]. Services made by one layer share one key store: make one
/// layer per handler.
#[derive(Debug, Clone)]
pub struct DedupLayer {
    config: DedupConfig,
    store: Arc<Store>,
    handler: SmolStr,
}

impl DedupLayer {
    /// A layer with its own key store.
    pub fn new(config: DedupConfig) -> Self {
        let store = Arc::new(Store::new(config.ttl, config.capacity));
        Self {
            config,
            store,
            handler: SmolStr::default(),
        }
    }

    /// Names the handler (the `handler` label of the duplicates counter).
    pub fn handler(mut self, name: impl Into<SmolStr>) -> Self {
        self.handler = name.into();
        self
    }

    /// A handle to the key store.
    pub fn handle(&self) -> DedupHandle {
        DedupHandle::new(self.store.clone())
    }
}

impl DedupLayer {
    /// The key extractor and the store, for the fused resilience service.
    pub(crate) fn parts(&self) -> (super::KeyFn, Arc<Store>) {
        (self.config.key.clone(), self.store.clone())
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Dedup::new(
            inner,
            self.config.key.clone(),
            self.store.clone(),
            self.handler.clone(),
        )
    }
}
