use std::time::Duration;

/// A handler call did not finish within its timeout; its result (if any comes) is discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("handler did not finish within {timeout:?}")]
pub struct TimeoutError {
    /// The limit that passed.
    pub timeout: Duration,
}
