use smol_str::SmolStr;
use tower::Layer;

use super::{Retry, RetryPolicy};

/// Wraps a handler in [`Retry`] with a [`RetryPolicy`].
#[derive(Debug, Clone, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
    handler: Option<SmolStr>,
}

impl RetryLayer {
    /// A layer with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            handler: None,
        }
    }

    /// Names the handler (used as the `handler` label of the retry metric and in logs).
    pub fn handler(mut self, name: impl Into<SmolStr>) -> Self {
        self.handler = Some(name.into());
        self
    }
}

impl RetryLayer {
    /// The policy.
    pub(crate) fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone(), self.handler.clone())
    }
}
