use std::time::Duration;

use tower::Layer;

use super::{DEFAULT_TIMEOUT, Timeout};

/// Applies a per-call [`Timeout`] to a handler.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer that fails calls taking longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// The configured limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for TimeoutLayer {
    /// [`DEFAULT_TIMEOUT`] (30 s).
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout)
    }
}
