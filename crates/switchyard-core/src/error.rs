//! Error types: one enum per operation, with small `Copy` kinds where callers branch.

use std::time::Duration;

use crate::envelope::Kind;
use crate::topic::{Topic, TopicError};

/// Any error a handler may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure that retrying cannot fix. A handler returning it (or an error whose source chain
/// starts with it) skips the bus's remaining attempts: the message is dead-lettered at once.
/// A retry layer that gave up can wrap its final error in it for the same effect.
///
/// ```
/// use switchyard_core::{BoxError, Permanent};
/// fn validate(amount: i64) -> Result<(), BoxError> {
///     if amount < 0 { return Err(Permanent::new("negative amount").into()); }
///     Ok(())
/// }
/// assert!(validate(-1).unwrap_err().is::<Permanent>());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("permanent failure")]
pub struct Permanent(#[source] pub BoxError);

impl Permanent {
    /// Marks `error` as permanent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }
}

/// Not for this process now: a handler returning it (or an error whose source chain holds
/// it) asks the bus to hand a message that came from a transport back to it (a nack, no
/// delay), to be delivered again: to another member of the subscription's consumer group
/// (another process), or to this one later. The hand-back is not an attempt: the bus neither
/// retries it in place nor dead-letters it, and when it comes back to this process its
/// attempt number does not count the hand-back (one that comes back to another process
/// counts it as a delivery, as the transport does). The bus gives it back with
/// [`Delivery::hand_back`](crate::Delivery::hand_back): the embedded log does not count it
/// towards its `max_deliver`; JetStream counts every nak towards its `max_deliver`. A message that did not come from a transport
/// (in memory, or a batch) has nowhere to go back to: it fails at once, as with
/// [`Permanent`], and is dead-lettered.
#[derive(Debug, thiserror::Error)]
#[error("handed back to the transport")]
pub struct HandBack {
    #[source]
    error: BoxError,
    after: Option<Duration>,
}

impl HandBack {
    /// Asks for a hand-back because of `error` (why this process cannot take it now),
    /// to be delivered again at once.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self {
            error: error.into(),
            after: None,
        }
    }

    /// To be delivered again only after `delay` (a nack with a delay): e.g. long enough
    /// for this process to stop taking the subscription's messages.
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.after = Some(delay);
        self
    }

    /// The delay asked for with [`after`](Self::after).
    pub fn delay(&self) -> Option<Duration> {
        self.after
    }
}

/// Whether a codec was encoding or decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecDirection {
    /// Turning a value into bytes.
    Encode,
    /// Turning bytes into a value.
    Decode,
}

/// A message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot {} {type_name}: {source}", match direction { CodecDirection::Encode => "encode", CodecDirection::Decode => "decode" })]
pub struct CodecError {
    /// Encoding or decoding.
    pub direction: CodecDirection,
    /// The Rust type involved.
    pub type_name: &'static str,
    /// The codec's own error.
    #[source]
    pub source: BoxError,
}

/// Whether `e` itself (one link of an error chain, not its sources) is a codec failure no
/// other attempt mends: any [`CodecError`], and the encoding one a publish or a send reports
/// ([`PublishError::Encode`], [`SendError::Codec`] encoding: their `transparent` variants
/// hide the `CodecError` itself from the `source()` chain, so they are looked at here). The
/// same value encodes (or the same bytes decode) the same way every time.
///
/// The bus's workers and `switchyard_middleware`'s retry classifier both treat such an
/// error anywhere in a handler's error chain as final.
///
/// ```
/// use switchyard_core::{CodecDirection, CodecError, PublishError, error::is_codec_failure};
/// let codec = CodecError {
///     direction: CodecDirection::Encode,
///     type_name: "T",
///     source: "no JSON form".into(),
/// };
/// assert!(is_codec_failure(&PublishError::Encode(codec)));
/// assert!(!is_codec_failure(&PublishError::ShuttingDown));
/// ```
pub fn is_codec_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<CodecError>() {
        return true;
    }
    if let Some(PublishError::Encode(_)) = e.downcast_ref::<PublishError>() {
        return true;
    }
    matches!(
        e.downcast_ref::<SendError>(),
        Some(SendError::Codec(c)) if c.direction == CodecDirection::Encode
    )
}

/// The text of a caught panic's payload (`catch_unwind`'s `Err`): the message of a
/// `panic!("...")` (a `&str` or `String` payload), `None` for any other payload.
///
/// ```
/// use switchyard_core::error::panic_text;
/// let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
/// assert_eq!(panic_text(&*caught), Some("boom 7"));
/// assert_eq!(panic_text(&42u8), None);
/// ```
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Broad class of a transport failure, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportErrorKind {
    /// The broker or storage cannot be reached right now; retrying may help.
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// The broker refused the operation (limits, permissions, configuration).
    Rejected,
    /// A local I/O error.
    Io,
    /// Stored data failed an integrity check.
    Corrupt,
    /// The transport was closed.
    Closed,
    /// The transport cannot do this (see its capabilities).
    Unsupported,
}

/// A transport (memory, log, NATS) failed.
#[derive(Debug, thiserror::Error)]
#[error("transport error ({kind:?}): {message}")]
pub struct TransportError {
    /// Broad class of the failure.
    pub kind: TransportErrorKind,
    /// What happened, for people.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

impl TransportError {
    /// A transport error without an underlying cause.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A transport error caused by `source`.
    pub fn with_source(
        kind: TransportErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Publishing a message failed. Nothing was delivered unless the variant says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not valid.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] CodecError),
    /// One or more subscriptions refused the message because their queue was full.
    /// It was still delivered to `delivered` other subscriptions.
    #[error("queue full for subscription(s) {subscriptions:?} (delivered to {delivered} other(s))")]
    Full {
        /// Names of the subscriptions that refused it.
        subscriptions: Vec<String>,
        /// How many subscriptions did accept it.
        delivered: usize,
    },
    /// The bus is shutting down and accepts no new messages.
    #[error("bus is shutting down")]
    ShuttingDown,
    /// The publisher (component) may not send this message by the layer rules.
    #[error("layer violation: {0}")]
    LayerViolation(Box<LayerViolation>),
    /// A publish hook refused the message (see `BusBuilder::publish_hook`).
    #[error("refused: {0}")]
    Refused(String),
    /// The message is larger than the bus or its transport accepts; nothing was delivered.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The transport failed to accept the message.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A command or request envelope ([`Kind::Command`], [`Kind::Request`]) was given to a
    /// publish. Events are published (to 0..n subscriptions); a command goes to its one
    /// handler with `send` or `request`, which answer it. Nothing was delivered.
    #[error(
        "a {} is not published: send it to its one handler (bus.send / bus.request); publish is for events",
        kind.as_str()
    )]
    NotAnEvent {
        /// The envelope's kind.
        kind: Kind,
    },
    /// A command or request envelope was given to a delayed publish (`publish_after`,
    /// `publish_at`, `schedule_envelope`, `schedule`, or a publish carrying the `deliver-at`
    /// header). A command is sent to its one handler, which answers its sender: it cannot
    /// wait in the bus or a transport with nobody to answer. Nothing was scheduled.
    #[error(
        "commands cannot be delayed: send the {} when it is due (bus.send / bus.request)",
        kind.as_str()
    )]
    DelayedCommand {
        /// The envelope's kind.
        kind: Kind,
    },
}

impl PublishError {
    /// Why a publish refuses a command or request envelope of `kind`:
    /// [`DelayedCommand`](Self::DelayedCommand) when it was to be delivered later,
    /// [`NotAnEvent`](Self::NotAnEvent) otherwise.
    ///
    /// ```
    /// use switchyard_core::{Kind, PublishError};
    /// assert!(matches!(PublishError::refused_command(Kind::Command, true), PublishError::DelayedCommand { .. }));
    /// ```
    #[cold]
    pub fn refused_command(kind: Kind, delayed: bool) -> Self {
        if delayed {
            Self::DelayedCommand { kind }
        } else {
            Self::NotAnEvent { kind }
        }
    }
}

/// A message over a size limit: how big it is, the limit, and whose limit it is.
///
/// ```
/// use switchyard_core::TooLarge;
/// let e = TooLarge { size: 2_097_152, limit: 1_048_576, limit_of: "the NATS server's max_payload" };
/// assert_eq!(
///     e.to_string(),
///     "message of 2097152 bytes is larger than the NATS server's max_payload (1048576 bytes)"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message of {size} bytes is larger than {limit_of} ({limit} bytes)")]
pub struct TooLarge {
    /// The message's size in bytes (its payload; transports that limit the whole frame count
    /// headers too, and say so in `limit_of`).
    pub size: usize,
    /// The limit it broke, in bytes.
    pub limit: usize,
    /// Whose limit it is, for people: `"the bus's max_message_bytes"`, `"the log's
    /// max_record_bytes"`, `"the NATS server's max_payload"`.
    pub limit_of: &'static str,
}

/// A publish the component layer rules forbid (raised by `switchyard-components`' runtime
/// enforcement): which rule, who published, to whom, on which topic.
///
/// ```
/// use switchyard_core::LayerViolation;
/// let v = LayerViolation {
///     rule: "one-layer-at-a-time".into(),
///     from: "shop-manager".into(),
///     to: Some("shop-processor".into()),
///     topic: "shop.order.execute".into(),
///     detail: "`shop-manager` may not send to `shop-processor`".into(),
/// };
/// assert_eq!(v.to_string(), "`shop-manager` may not send to `shop-processor`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct LayerViolation {
    /// Id of the rule broken, e.g. `one-layer-at-a-time`.
    pub rule: String,
    /// Name of the publishing component.
    pub from: String,
    /// Name of the component it would reach (`None` when the rule is about the publisher
    /// alone, such as publishing an undeclared topic).
    pub to: Option<String>,
    /// The topic published.
    pub topic: String,
    /// The whole explanation, for people: both ends with their roles and domains, and the
    /// rule in one sentence.
    pub detail: String,
}

/// Sending a command or request failed, or its handler failed. Also how one event handler's
/// failure is told by `publish_and_wait`, so the handler-side variants (`Full`, `Rejected`,
/// `Failed`, `NotProcessed`) are worded for any message, not only commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The topic is not valid.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The command could not be encoded, or the reply could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// No handler is registered for the command's topic.
    #[error("no handler registered for command topic {topic}")]
    NoHandler {
        /// The command's topic.
        topic: Topic,
    },
    /// The handler's queue is full.
    #[error("the queue of handler {handler} is full")]
    Full {
        /// The handler's name.
        handler: String,
    },
    /// The bus is shutting down.
    #[error("bus is shutting down")]
    ShuttingDown,
    /// The handler refused the message.
    #[error("rejected by the handler: {reason}")]
    Rejected {
        /// The handler's reason.
        reason: String,
    },
    /// The handler failed on every attempt (error or panic); the message was dead-lettered.
    #[error("handler failed after {attempts} attempt(s): {error}")]
    Failed {
        /// The last error, as text.
        error: String,
        /// How many attempts were made (including those of a retry layer inside the
        /// handler), as the dead letter says.
        attempts: u32,
    },
    /// The deadline passed before a reply arrived. The handler may still run; its late
    /// result is discarded.
    #[error("no reply within {deadline:?}")]
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The message was dropped without a result (its handler was unregistered or the bus shut
    /// down before it ran); it is in the dead-letter queue.
    #[error("not processed: {0}")]
    NotProcessed(String),
    /// The command is larger than the bus or its transport accepts; it was not sent.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<PublishError> for SendError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::InvalidTopic(t) => Self::InvalidTopic(t),
            PublishError::Encode(c) => Self::Codec(c),
            PublishError::Full { subscriptions, .. } => Self::Full {
                handler: subscriptions.join(","),
            },
            PublishError::ShuttingDown => Self::ShuttingDown,
            PublishError::LayerViolation(v) => Self::Rejected {
                reason: format!("layer violation: {v}"),
            },
            PublishError::Refused(reason) => Self::Rejected { reason },
            PublishError::TooLarge(t) => Self::TooLarge(t),
            PublishError::Transport(t) => Self::Transport(t),
            e @ (PublishError::NotAnEvent { .. } | PublishError::DelayedCommand { .. }) => {
                Self::Rejected {
                    reason: e.to_string(),
                }
            }
        }
    }
}

/// Registering a subscription or handler failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The pattern is not valid.
    #[error(transparent)]
    InvalidPattern(#[from] TopicError),
    /// A command topic already has its one handler.
    #[error("command topic {topic} already has a handler ({existing})")]
    DuplicateHandler {
        /// The command topic.
        topic: Topic,
        /// Name of the handler already registered.
        existing: String,
    },
    /// A configuration value is out of range.
    #[error("invalid subscription config: {0}")]
    InvalidConfig(&'static str),
    /// The bus is shutting down.
    #[error("bus is shutting down")]
    ShuttingDown,
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Closing a publisher, subscriber or bus failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// Shutdown was already started by another caller.
    #[error("shutdown already in progress")]
    AlreadyShuttingDown,
    /// The transport failed to flush.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
