//! # switchyard-log
//!
//! The embedded durable log transport of switchyard: no server to install, like SQLite is for
//! databases. Topics map to *streams* by pattern; each stream is a directory of append-only
//! segment files whose records carry a length, a CRC32C and the encoded envelope.
//!
//! - **Durability**: [`Durability::Always`] (the default) resolves `publish` only after an
//!   `fdatasync` that many concurrent publishers share (group commit); `Interval` and `Never`
//!   trade that for speed.
//! - **Consumer groups** keep committed offsets on disk, with the messages settled above them
//!   (so a restart redelivers only what was unsettled); each message goes to one member;
//!   ack / nack (with delay) / term; unsettled messages come back after the ack wait; after
//!   `max_deliver` deliveries (hand-backs, `Delivery::hand_back`, not counted) a message
//!   goes to the dead-letter sink (or, with none, to the
//!   log's own store, never dropped); messages with the same
//!   ordering key (a header) are handed out one at a time, in order.
//! - **Retention** by size and age, and compaction of segments every group has consumed.
//! - **Recovery**: a torn tail (after `kill -9` or power loss) is truncated to the last good
//!   record with a warning saying how many bytes were dropped; damage anywhere else is a typed
//!   [`Corruption`] error, as is a segment missing at either end of a stream (each stream
//!   keeps a small manifest of its oldest and newest segment). Group offsets left past the
//!   recovered end are moved back to it. A file lock stops two processes from opening one
//!   log.
//! - **Inspect**: [`LogTransport::streams`], [`LogTransport::group_lags`],
//!   [`LogTransport::read_range`].
//!
//! [`LogTransport`] implements the core [`Publisher`](switchyard_core::Publisher) and
//! [`Subscriber`](switchyard_core::Subscriber) traits, so the bus runs on it unchanged.
#![forbid(unsafe_code)]

mod config;
mod error;
mod fsio;
mod group;
mod health;
mod intake;
mod manifest;
mod offsets;
mod record;
mod stream;
mod transport;
mod writer;

pub use config::{
    DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, Durability, LogConfig, Recovery, Retention, StartPosition,
    StreamSpec,
};
pub use error::{Corruption, CorruptionKind, OpenError, ReadError};
pub use health::WriteFailure;
pub use transport::{GroupLag, LogStats, LogSubscription, LogTransport, StoredRecord, StreamInfo};
