use smol_str::SmolStr;
use tower::Layer;

use super::Trace;

/// Opens a `switchyard.deliver` span per call and propagates W3C trace context (see the
/// [module docs](super)).
#[derive(Debug, Clone, Default)]
pub struct TraceLayer {
    handler: SmolStr,
}

impl TraceLayer {
    /// A layer for the handler named `handler` (recorded in the span).
    pub fn new(handler: impl Into<SmolStr>) -> Self {
        Self {
            handler: handler.into(),
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner, self.handler.clone())
    }
}
