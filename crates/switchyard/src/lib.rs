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
//! #[derive(Serialize, Deserialize)]
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

mod bus;
mod command;
mod handler;
pub mod lifecycle;
mod pending;
mod queue;
#[cfg(feature = "middleware")]
pub mod resilience;
mod router;
pub mod session;
mod subscription;
pub mod testkit;
mod transport_link;

pub use bus::{
    BatchPublishError, BuildError, Bus, BusBuilder, HandlerFailure, HandlerWrap, MetricsSnapshot,
    PublishHook, ShutdownReport, WaitReport,
};
pub use command::CommandResult;
pub use handler::{BoxBatchHandler, BoxHandler, Ctx, IntoOutcome, boxed, handler_fn};
pub use queue::Overflow;
pub use session::Session;
pub use subscription::{
    Filter, OrderingKey, Subscription, SubscriptionBuilder, SubscriptionInfo, SubscriptionKind,
    SubscriptionStats,
};
pub use switchyard_core::*;
/// The layers of `switchyard-middleware` (feature `middleware`).
#[cfg(feature = "middleware")]
pub use switchyard_middleware as middleware;

/// The README's quick start, compiled as a doc test so it cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
