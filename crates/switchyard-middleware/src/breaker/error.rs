use smol_str::SmolStr;

use super::BreakerState;

/// A call reached an open breaker without waiting for readiness; the handler was not called.
/// The retry classifier treats it as retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker of {handler} is {state}")]
pub struct BreakerOpenError {
    /// The handler whose breaker refused the call.
    pub handler: SmolStr,
    /// The state it was in (open, or half-open with every trial slot taken).
    pub state: BreakerState,
}
