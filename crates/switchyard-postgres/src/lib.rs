//! PostgreSQL for switchyard: the messages a service owes the world are written in the same
//! transaction as its business data, and the messages it handles are recorded in the same
//! transaction as the handler's writes.
//!
//! - [`Outbox`]: `outbox.publish(&mut tx, msg)` inserts the envelope into `<schema>.outbox`
//!   inside the caller's transaction; a rolled-back transaction publishes nothing.
//! - [`Relay`]: a task that moves committed outbox rows to a [`switchyard::Bus`] (any
//!   transport), in order, marks them sent (or deletes them), and survives crashes: a row is
//!   marked in the same transaction that claimed it, so a crash before the commit leaves it to
//!   be sent again (at-least-once, same message id). Woken by `LISTEN/NOTIFY`, with polling as
//!   a fallback. One relay works at a time per schema (a transaction-scoped advisory lock), so
//!   several relay processes never send concurrently and order is kept.
//! - [`Inbox`]: wraps a handler so the message id is recorded in the transaction the handler
//!   writes in; a redelivered message is acknowledged without running the handler again.
//! - [`PgDeadLetterQueue`]: the dead-letter queue (`switchyard_middleware::dlq::DeadLetterQueue`)
//!   kept in `<schema>.dead_letters`.
//! - Delayed delivery: [`Outbox::publish_at`] / [`Outbox::schedule`] keep a message in the
//!   outbox until it is due; the relay publishes it then, across restarts.
//!
//! Tables are created by [`migrate`], explicitly, in a configurable [`Schema`].
//! See `docs/postgres.md`.

#![forbid(unsafe_code)]

mod dlq;
mod inbox;
mod outbox;
mod relay;
mod row;
mod schema;

pub use dlq::PgDeadLetterQueue;
pub use inbox::{Inbox, InboxFuture};
pub use outbox::{ORDERING_KEY_HEADER, Outbox};
pub use relay::{
    Handoff, ROW_HEADERS_HEADER, ROW_META_HEADER, ROW_SEQ_HEADER, Relay, RelayConfig, RelayHandle,
    Retention, UNDECODABLE_TOPIC,
};
pub use schema::{Schema, migrate};
pub use sqlx;

/// Metric names (the `metrics` facade, like the rest of switchyard).
pub mod names {
    /// Gauge: outbox rows not sent yet and due (label `schema`).
    pub const OUTBOX_BACKLOG: &str = "switchyard_outbox_backlog";
    /// Histogram: seconds from a row's insert to its publish by the relay (label `schema`).
    pub const OUTBOX_LAG: &str = "switchyard_outbox_lag_seconds";
    /// Counter: messages the relay handed to the bus (label `schema`).
    pub const OUTBOX_RELAYED: &str = "switchyard_outbox_relayed_total";
    /// Counter: outbox rows no envelope could be rebuilt from, sent to the bus's dead-letter
    /// sink (reason `DecodeFailed`) and marked instead of relayed (label `schema`).
    pub const OUTBOX_DEAD_LETTERED: &str = "switchyard_outbox_dead_lettered_total";
    /// Counter: relay batches that failed (database or bus error; label `schema`).
    pub const OUTBOX_RELAY_ERRORS: &str = "switchyard_outbox_relay_errors_total";
    /// Counter: redelivered messages the inbox acknowledged without running the handler
    /// (label `consumer`).
    pub const INBOX_DUPLICATES: &str = "switchyard_inbox_duplicates_total";
    /// Counter: dead-letter writes PostgreSQL refused for their data, kept in memory only
    /// (label `schema`; see `PgDeadLetterQueue::unstored`).
    pub const DEAD_LETTERS_UNSTORED: &str = "switchyard_dead_letters_unstored_total";
    /// Counter: dead-letter puts dropped from the full write queue while PostgreSQL was slow
    /// or down, kept in memory only (label `schema`; see `PgDeadLetterQueue::write_dropped`).
    pub const DEAD_LETTERS_WRITE_DROPPED: &str = "switchyard_dead_letters_write_dropped_total";
}

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The schema name is not a plain lower-case identifier PostgreSQL takes unquoted.
    #[error(
        "invalid schema name {0:?}: expected [a-z_][a-z0-9_]*, at most 50 bytes, not a reserved \
         key word of PostgreSQL (such as order or user) and not starting with pg_"
    )]
    InvalidSchema(String),
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An envelope or dead letter could not be encoded or decoded as JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The message could not be turned into an envelope, or the bus refused it.
    #[error("publish: {0}")]
    Publish(#[from] switchyard::PublishError),
    /// The relay task stopped abnormally (it panicked or was cancelled).
    #[error("relay task: {0}")]
    Task(String),
    /// The relay stopped part-way: `relayed` messages went out before `source` stopped it
    /// (handed to the bus, their rows committed as sent). Every error of
    /// [`Relay::drain`] is this one, so a caller always knows what went out (0 when
    /// nothing did); a relay pass that the bus refuses part-way (logged by [`Relay::run`])
    /// says it the same way.
    #[error("relay stopped after {relayed} message(s) relayed: {source}")]
    Relay {
        /// Messages relayed (and their rows committed) before the failure.
        relayed: usize,
        /// What stopped the relay.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// For an [`Error::Relay`], how many messages went out before the failure; `None` for
    /// any other error.
    pub fn relayed(&self) -> Option<usize> {
        match self {
            Self::Relay { relayed, .. } => Some(*relayed),
            _ => None,
        }
    }

    /// What went wrong, past an [`Error::Relay`] (its `source`); any other error is its own
    /// cause. Match on it to tell, say, a closed pool from a refusal of the bus.
    pub fn cause(&self) -> &Error {
        match self {
            Self::Relay { source, .. } => source.cause(),
            other => other,
        }
    }
}

/// docs/postgres.md, compiled as a doc test so its examples cannot rot.
#[doc = include_str!("../../../docs/postgres.md")]
#[cfg(doctest)]
pub struct Guide;
