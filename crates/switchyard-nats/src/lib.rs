//! # switchyard-nats
//!
//! The NATS JetStream transport of switchyard: when one machine is not enough, the bus API
//! stays the same and only the transport changes.
//!
//! - **Streams** are created or updated on [`NatsTransport::connect`] from
//!   [`NatsConfig::streams`]; topics map 1:1 to subjects, `*` stays `*`, `#` becomes `>`
//!   (`a.#` becomes the two subjects `a` and `a.>`, because `>` needs at least one segment).
//! - **Publish** sends every envelope with its id as `Nats-Msg-Id` (server-side dedup within
//!   the duplicate window) and resolves once JetStream acknowledged all of them; sends are
//!   pipelined, and a message whose acknowledgement is lost (connection loss) is resent with
//!   the same id until `publish_timeout`. Envelope fields travel as NATS headers, the
//!   payload as the body (see [`codec`](crate#headers)).
//! - **Subscribe** uses durable pull consumers (one per group and stream; no group means an
//!   ephemeral consumer). `ack` → `+ACK`, `nack(delay)` → `-NAK` with delay, `term` →
//!   `+TERM`, [`NatsTransport::in_progress`] → `+WPI`; `max_ack_pending` bounds unsettled
//!   messages (backpressure). The delivery after `max_deliver` goes to the dead-letter sink
//!   (with none configured, to the transport's own store, [`NatsTransport::dead_letters`])
//!   with the raw message and is terminated.
//! - **Reconnect**: the client reconnects forever, buffering up to `reconnect_buffer`
//!   commands; [`NatsTransport::health`] reports the state and counters. An acknowledged
//!   publish is stored by the server; an unacknowledged one is an error, never silence.
//! - **Request/reply** over core NATS with deadlines and fast no-responders:
//!   [`NatsTransport::request`], [`NatsTransport::respond`].
//!
//! ## Commands across processes
//!
//! The transport carries commands and requests to handlers in other processes
//! ([`Subscriber::remote_commands`](switchyard_core::Subscriber::remote_commands)): on a bus
//! over NATS, `bus.send` / `bus.request` with no handler in the process go as a core NATS
//! request to `<command_prefix>.<topic>`, which every process with a handler for the topic
//! serves in the queue group `command_group` (each command handled once). No process
//! serving the topic: `SendError::NoHandler` at once (the server's no-responders status).
//! The deadline travels as `Sy-Deadline-Ms` (relative) and `Sy-Deadline-At` (absolute,
//! Unix ms: a command that arrives after it is not run) and is enforced on both sides; a
//! command is refused at once (`Unavailable`) while the client is not connected; `send` without a
//! deadline waits at most [`NatsConfig::command_timeout`]. The handler's typed result or
//! failure comes back in the reply (`Sy-Status`, `Sy-Error`, `Sy-Attempts`, `Sy-Handler`).
//!
//! Commands of the topics in [`NatsConfig::durable_commands`] are durable instead: they go
//! through a JetStream work-queue stream, read by one shared durable consumer per topic, so
//! a command sent while no handler process runs is handled once one starts (the sender gets
//! `SendError::Timeout` if it stopped waiting first), each is handled once, acknowledged
//! after handling, and redelivered when its handler process dies mid-command.
//!
//! ## Headers
//!
//! `Nats-Msg-Id` = id; `Sy-Kind`, `Sy-Correlation-Id`, `Sy-Causation-Id`, `Sy-Source`,
//! `Sy-Target`, `Sy-Priority`, `Sy-Timestamp` (ns since the epoch), `Sy-Content-Type`,
//! `Sy-Type-Name`, `Sy-Type-Version`; each user header as `H-<name>`. Names and values are
//! percent-encoded where NATS would refuse or alter them. Fields at their default are left
//! out.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use switchyard_core::{Envelope, Pattern, Publisher, Subscriber, Topic};
//! use switchyard_nats::{NatsConfig, NatsTransport};
//!
//! let nats = NatsTransport::connect(
//!     NatsConfig::new("nats://127.0.0.1:4222").with_stream("orders", [Pattern::new("orders.#")?]),
//! )
//! .await?;
//! nats.publish(vec![Envelope::new(Topic::new("orders.placed")?, "{}")]).await?;
//! let mut sub = nats.subscribe(&Pattern::new("orders.#")?, Some("billing")).await?;
//! if let Some(d) = sub.next().await {
//!     d.ack().await?;
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod codec;
mod command;
mod config;
mod error;
mod request;
mod subject;
mod transport;

pub use config::{
    DEFAULT_DURABLE_COMMAND_STREAM, DEFAULT_DURABLE_INACTIVE, DEFAULT_EPHEMERAL_INACTIVE,
    DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, NatsConfig, Storage, StreamSpec,
};
pub use error::{ConnectError, RequestError};
pub use request::{IncomingRequest, RequestStream};
pub use transport::{
    ConnectionState, Health, INVALID_SUBJECT_TOPIC, NatsSubscription, NatsTransport,
    RAW_SUBJECT_HEADER,
};
