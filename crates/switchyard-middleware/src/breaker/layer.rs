use std::sync::Arc;

use smol_str::SmolStr;
use tower::Layer;

use super::state::Shared;
use super::{Breaker, BreakerConfig, BreakerHandle};

/// Wraps a handler in a [`Breaker`]. Every service this layer produces shares one breaker
/// state: make one layer per handler.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    shared: Arc<Shared>,
}

impl BreakerLayer {
    /// A breaker named after `handler` (the name appears in events, errors and metrics).
    pub fn new(handler: impl Into<SmolStr>, config: BreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared::new(handler.into(), config)),
        }
    }

    /// A handle to watch or steer this breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.shared.clone())
    }

    /// The state every service of this layer shares.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, self.shared.clone())
    }
}
