use std::time::Duration;

use switchyard_core::BoxError;

/// Broad class of a [`RetryError`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryErrorKind {
    /// Every attempt failed with a retryable error or asked for a retry.
    Exhausted,
    /// An attempt failed with an error the classifier calls permanent.
    Permanent,
    /// The message's deadline passed, or would before the next attempt could start.
    Deadline,
}

/// The retry layer gave up on a message. The source is the last error (shown by walking the
/// chain, e.g. with [`crate::dlq::error_chain`], not repeated in this error's own text).
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// Every attempt failed with a retryable error or asked for a retry.
    #[error("gave up after {attempts} attempt(s)")]
    Exhausted {
        /// Attempts made inside this call.
        attempts: u32,
        /// The last failure ([`RetryRequested`] when the handler asked for a retry).
        #[source]
        source: BoxError,
    },
    /// The message's deadline (`delivery.deadline`, a request's) passed, or would before the
    /// next attempt could start: its sender has stopped waiting, so no attempt is started nor
    /// backoff waited past it.
    #[error(
        "gave up after {attempts} attempt(s): the message's deadline passes before another attempt \
         ({left:?} left, the next due in {next:?})"
    )]
    Deadline {
        /// Attempts made inside this call.
        attempts: u32,
        /// What was left of the deadline when the layer gave up (zero once it passed).
        left: Duration,
        /// When the next attempt would have started (the backoff; zero when the deadline
        /// passed while the layer waited for the handler to be ready).
        next: Duration,
        /// The last failure.
        #[source]
        source: BoxError,
    },
    /// An attempt failed with an error that is not worth retrying.
    #[error("permanent failure on attempt {attempt}")]
    Permanent {
        /// The delivery attempt number on which it failed.
        attempt: u32,
        /// The error.
        #[source]
        source: BoxError,
    },
}

impl RetryError {
    /// The broad class.
    pub fn kind(&self) -> RetryErrorKind {
        match self {
            Self::Exhausted { .. } => RetryErrorKind::Exhausted,
            Self::Permanent { .. } => RetryErrorKind::Permanent,
            Self::Deadline { .. } => RetryErrorKind::Deadline,
        }
    }

    /// The `RetryError` in an error's chain (the retry layer returns it wrapped in
    /// `switchyard_core::Permanent`).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RetryError> {
        let mut link = Some(err);
        while let Some(e) = link {
            if let Some(r) = e.downcast_ref::<RetryError>() {
                return Some(r);
            }
            link = e.source();
        }
        None
    }

    /// The number of attempts made inside the layer (for `Permanent`, the attempt number it
    /// failed on).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Exhausted { attempts, .. } | Self::Deadline { attempts, .. } => *attempts,
            Self::Permanent { attempt, .. } => *attempt,
        }
    }

    /// The number of the last attempt made, for a call that started at delivery attempt
    /// `base` (the retry layer numbers its attempts `base`, `base + 1`, ...; 0 counts as 1):
    /// what a bus reports as the message's attempts when it gives up.
    pub fn last_attempt(&self, base: u32) -> u32 {
        match self {
            Self::Exhausted { attempts, .. } | Self::Deadline { attempts, .. } => {
                base.max(1).saturating_add(attempts.saturating_sub(1))
            }
            Self::Permanent { attempt, .. } => *attempt,
        }
    }

    /// The last underlying error.
    pub fn last_error(&self) -> &BoxError {
        match self {
            Self::Exhausted { source, .. }
            | Self::Permanent { source, .. }
            | Self::Deadline { source, .. } => source,
        }
    }
}

/// The handler answered `Outcome::Retry` on the last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("handler asked for a retry")]
pub struct RetryRequested;
