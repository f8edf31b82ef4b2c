//! Error types of the pipeline crate: one per operation, with a small `Copy` kind where callers
//! branch on it.

use std::fmt;
use std::time::Duration;

use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, PublishError, SubscribeError};

/// Broad class of a stage failure. The runner maps it to a dead-letter reason
/// ([`Decode`](Self::Decode) becomes `DecodeFailed`, everything else `HandlerFailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StageErrorKind {
    /// The input could not be decoded or parsed.
    Decode,
    /// The input was well-formed but not acceptable.
    Invalid,
    /// The stage did not finish in time.
    Timeout,
    /// A local I/O error (file, socket).
    Io,
    /// Something the stage needs is not available right now; retrying may help.
    Unavailable,
    /// The stage panicked; the panic was caught by the runner.
    Panicked,
    /// Anything else.
    Other,
}

impl StageErrorKind {
    /// Lower-case name, used as the default error type in the [`Monitor`](crate::Monitor).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Unavailable => "unavailable",
            Self::Panicked => "panicked",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for StageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage failed on one input.
///
/// `error_type` is what the [`Monitor`](crate::Monitor) counts errors by: the kind's name unless
/// set explicitly or taken from the source error's type.
///
/// ```
/// use switchyard_pipeline::{StageError, StageErrorKind};
/// let e = StageError::invalid("negative reading");
/// assert_eq!(e.kind, StageErrorKind::Invalid);
/// assert_eq!(e.error_type(), "invalid");
/// let e = StageError::decode("x".parse::<u32>().unwrap_err());
/// assert_eq!(e.error_type(), "ParseIntError");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StageError {
    /// Broad class of the failure.
    pub kind: StageErrorKind,
    /// Name the monitor counts this error under.
    pub error_type: SmolStr,
    /// What happened, for people.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

/// The last path segment of a type name, without generic arguments.
pub(crate) fn short_type_name(full: &'static str) -> &'static str {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// The name an error type is counted under: its last path segment, except that a bare `Error`
/// keeps the nearest module that is not itself called `error` (`serde_json::Error`, `io::Error`),
/// so different crates' errors stay apart.
pub(crate) fn error_type_name(full: &'static str) -> SmolStr {
    let base = full.split('<').next().unwrap_or(full);
    let mut segments = base.rsplit("::");
    let last = segments.next().unwrap_or(base);
    if last != "Error" {
        return SmolStr::new_static(last);
    }
    match segments.find(|m| *m != "error" && *m != "errors") {
        Some(module) => SmolStr::new(format!("{module}::Error")),
        None => SmolStr::new_static(last),
    }
}

impl StageError {
    /// An error of `kind` without an underlying cause.
    pub fn new(kind: StageErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            error_type: SmolStr::new_static(kind.as_str()),
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`; the error type is the source's type name.
    pub fn with_source<E>(kind: StageErrorKind, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self {
            kind,
            error_type: error_type_name(std::any::type_name::<E>()),
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// The input could not be decoded.
    pub fn decode<E: std::error::Error + Send + Sync + 'static>(source: E) -> Self {
        Self::with_source(StageErrorKind::Decode, source)
    }

    /// The input was not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StageErrorKind::Invalid, message)
    }

    /// The stage ran longer than `limit`.
    pub fn timeout(limit: Duration) -> Self {
        Self::new(
            StageErrorKind::Timeout,
            format!("stage did not finish within {limit:?}"),
        )
    }

    /// A local I/O error.
    pub fn io(source: std::io::Error) -> Self {
        Self::with_source(StageErrorKind::Io, source)
    }

    /// Any other error.
    pub fn other<E: std::error::Error + Send + Sync + 'static>(source: E) -> Self {
        Self::with_source(StageErrorKind::Other, source)
    }

    /// Overrides the name the monitor counts this error under.
    pub fn with_error_type(mut self, error_type: impl Into<SmolStr>) -> Self {
        self.error_type = error_type.into();
        self
    }

    /// The name the monitor counts this error under.
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The error and its chain of sources as one line.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        // The message already holds the first source's text; only add deeper causes.
        if let Some(first) = cur {
            cur = first.source();
        }
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// Starting a pipeline failed; nothing was left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A stage's `init` returned an error.
    #[error("stage {stage} failed to initialise: {source}")]
    Init {
        /// The stage's name.
        stage: String,
        /// What `init` returned.
        #[source]
        source: StageError,
    },
    /// A stage task ended before reporting whether it initialised (it panicked in `init`).
    #[error("stage {stage} stopped during initialisation")]
    InitAborted {
        /// The stage's name.
        stage: String,
    },
    /// A bus hand-off could not subscribe to its topic.
    #[error("bus hand-off on {topic} failed: {source}")]
    Handoff {
        /// The hand-off topic.
        topic: String,
        /// The hand-off's error.
        #[source]
        source: HandoffError,
    },
    /// A configuration value is out of range.
    #[error("invalid runner configuration: {0}")]
    InvalidConfig(&'static str),
}

/// A source could not hand a message to the pipeline because the pipeline is shutting down.
/// The message was not accepted; it is given back with its origin.
#[derive(thiserror::Error)]
#[error("pipeline is shutting down; message not accepted")]
pub struct FeedError<T> {
    /// The refused value.
    pub value: T,
    /// The raw message it came from, if the source gave one.
    pub origin: Option<Envelope>,
}

impl<T> fmt::Debug for FeedError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedError")
            .field("origin", &self.origin.as_ref().map(|e| e.id.clone()))
            .finish_non_exhaustive()
    }
}

/// A source failed and stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Opening the socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Receiving failed for good.
    #[error("receive failed on {endpoint}: {source}")]
    Receive {
        /// The endpoint.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// A bus hand-off failed.
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    /// The source was configured wrongly.
    #[error("invalid source configuration: {0}")]
    InvalidConfig(String),
}

/// Opening a socket (ZeroMQ source or sink) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The socket could not bind its endpoint.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint asked for.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// The socket could not connect to its endpoint.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint asked for.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// A SUB socket could not subscribe to a prefix.
    #[error("cannot subscribe to prefix {prefix:?}: {source}")]
    Subscribe {
        /// The prefix.
        prefix: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
}

/// A bus hand-off failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// Publishing the envelope failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Subscribing to the hand-off topic failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The hand-off was closed.
    #[error("hand-off closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_type_defaults_to_kind_or_source_type() {
        assert_eq!(StageError::invalid("x").error_type(), "invalid");
        let e = StageError::io(std::io::Error::other("disk"));
        assert_eq!(e.error_type(), "io::Error");
        assert_eq!(e.kind, StageErrorKind::Io);
        let e = StageError::other(Outer(std::io::Error::other("inner"))).with_error_type("custom");
        assert_eq!(e.error_type(), "custom");
        assert_eq!(e.chain(), "other: outer: inner");
    }

    #[test]
    fn short_names() {
        assert_eq!(short_type_name("a::b::C<d::E>"), "C");
        assert_eq!(short_type_name("C"), "C");
        assert_eq!(
            error_type_name("serde_json::error::Error"),
            "serde_json::Error"
        );
        assert_eq!(error_type_name("std::io::error::Error"), "io::Error");
        assert_eq!(
            error_type_name("core::num::error::ParseIntError"),
            "ParseIntError"
        );
        assert_eq!(error_type_name("Error"), "Error");
    }
}
