//! Errors of the operations the core traits do not cover.

use std::time::Duration;

use switchyard_core::TransportError;

/// Connecting (and creating the configured streams) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The configured address.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A configured stream could not be created or updated.
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        /// The stream name.
        stream: String,
        /// The server's answer.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// The configuration is inconsistent.
    #[error("invalid NATS transport config: {0}")]
    InvalidConfig(String),
}

/// A core NATS request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Nobody subscribes to the request subject: the server said so at once.
    #[error("no responders for {subject}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// No reply within the deadline.
    #[error("no reply within {deadline:?}")]
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The reply was not a valid message (its subject is not a topic).
    #[error("invalid reply: {0}")]
    InvalidReply(String),
    /// The transport is closed.
    #[error("transport is closed")]
    Closed,
    /// The request's payload and encoded headers together exceed the server's
    /// `max_payload`; refused before anything was sent.
    #[error(transparent)]
    TooLarge(#[from] switchyard_core::TooLarge),
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
