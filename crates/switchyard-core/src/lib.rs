//! # switchyard-core
//!
//! The small, stable contract every part of switchyard shares: the [`Envelope`], validated
//! [`Topic`]s and [`Pattern`]s, the handler [`Outcome`], typed [`Message`]s, the error enums,
//! the dead-letter sink and store, the retry policy and the transport traits.
//!
//! Applications depend on the `switchyard` facade crate, which re-exports all of this.
#![forbid(unsafe_code)]

pub mod clock;
pub mod dead_letter;
pub mod delivered;
pub mod envelope;
pub mod error;
pub mod id;
pub mod local;
pub mod message;
pub mod outcome;
pub mod remote;
pub mod retry;
pub mod shared;
pub mod topic;
pub mod transport;

pub use dead_letter::{
    DEFAULT_DEAD_LETTER_BYTES, DeadLetter, DeadLetterFilter, DeadLetterKey, DeadLetterReason,
    DeadLetterRoute, DeadLetterSink, InMemoryDeadLetters,
};
pub use envelope::{
    DeliveryInfo, Envelope, Headers, JSON, Kind, MessageId, MessageIdError, Priority, ReplyAddress,
};
pub use error::{
    BoxError, CloseError, CodecDirection, CodecError, HandBack, LayerViolation, Permanent,
    PublishError, SendError, SubscribeError, TooLarge, TransportError, TransportErrorKind,
};
pub use local::Local;
pub use message::{Command, Message};
pub use outcome::Outcome;
pub use remote::{
    CommandResponder, CommandResult, IncomingCommand, IncomingCommands, RemoteCommands,
};
pub use retry::{Backoff, Classify, Jitter, RetryPolicy};
pub use shared::{MessageArg, Shared};
pub use topic::{MAX_TOPIC_LEN, Pattern, Topic, TopicError, TopicErrorKind};
pub use transport::{
    AckHandle, BoxFuture, Capabilities, Delivery, DeliveryStream, Publisher, Subscriber,
};

pub use bytes::Bytes;
pub use smol_str::SmolStr;
