//! # switchyard
//!
//! A message bus for Rust systems built from components that talk only through
//! publish/subscribe: events (0..n subscribers), commands (exactly one handler, a result
//! back), requests with deadlines, hierarchical topics with `*` and `#` wildcards, typed
//! messages, bounded queues with explicit backpressure, per-key ordering, dead-lettering,
//! panic isolation and graceful shutdown.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use switchyard::{Bus, Command, Kind, Message};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct CreateUser { name: String }
//! impl Message for CreateUser { const TOPIC: &'static str = "users.create"; const KIND: Kind = Kind::Command; }
//! impl Command for CreateUser { type Output = u64; }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::new();
//! let _h = bus.handle(|cmd: CreateUser, _ctx| async move { Ok::<_, std::io::Error>(cmd.name.len() as u64) })
//!     .start().await?;
//! let id: u64 = bus.send(CreateUser { name: "ada".into() }).await?;
//! assert_eq!(id, 3);
//! # Ok(()) }
//! ```
//!
//! See the guides in `docs/` and ARCHITECTURE.md for how a message flows.
#![forbid(unsafe_code)]

mod attempt;
mod batch;
mod builder;
mod bus;
mod command;
mod config;
mod ctx;
mod deadline;
mod deferred;
mod dispatch;
mod expired;
mod handler;
mod held;
mod inline;
mod intake;
mod keep_alive;
pub mod lifecycle;
mod pending;
mod prefetch;
mod publish;
mod pump;
mod queue;
mod remote_reply;
mod reply;
#[cfg(feature = "middleware")]
pub mod resilience;
mod router;
mod schedule;
pub mod session;
mod shutdown;
mod state;
mod stats;
mod subscription;
pub mod testkit;
mod transport_link;
mod upcast;

pub use builder::{BuildError, BusBuilder, DEFAULT_MAX_MESSAGE_BYTES};
pub use bus::{Bus, MetricsSnapshot};
pub use config::{DEFAULT_MAX_HOLD, Filter, OrderingKey, SubscriptionKind};
pub use ctx::Ctx;
pub use deadline::after as deadline_after;
pub use handler::{
    BoxBatchHandler, BoxHandler, BoxPrefetchHandler, IntoOutcome, boxed, handler_fn,
};
pub use intake::{IntakeVerdict, TransportCodec};
pub use publish::{BatchPublishError, HandlerFailure, WaitReport};
pub use queue::Overflow;
pub use reply::CommandResult;
pub use session::Session;
pub use state::{DELIVER_AT_HEADER, HandlerWrap, PublishHook, ShutdownReport, WrapTarget};
pub use stats::{RetryCounter, SubscriptionInfo, SubscriptionStats};
pub use subscription::{Subscription, SubscriptionBuilder};
pub use switchyard_core::*;
/// The layers of `switchyard-middleware` (feature `middleware`).
#[cfg(feature = "middleware")]
pub use switchyard_middleware as middleware;
pub use upcast::Upcast;

/// The README's quick start, compiled as a doc test so it cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The guides under `docs/` that are about this crate and its transports, compiled as doc tests
/// so their examples cannot rot.
#[cfg(doctest)]
pub mod guides {
    /// docs/bus.md
    #[doc = include_str!("../../../docs/bus.md")]
    pub struct Bus;
    /// docs/features.md
    #[doc = include_str!("../../../docs/features.md")]
    pub struct Features;
    /// docs/middleware.md
    #[doc = include_str!("../../../docs/middleware.md")]
    pub struct Middleware;
    /// docs/log.md
    #[doc = include_str!("../../../docs/log.md")]
    pub struct Log;
    /// docs/nats.md
    #[doc = include_str!("../../../docs/nats.md")]
    pub struct Nats;
}
