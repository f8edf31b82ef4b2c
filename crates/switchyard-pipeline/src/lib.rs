//! # switchyard-pipeline
//!
//! Typed stage pipelines: the asynchronous "stage base class + orchestrator + monitor + ZeroMQ
//! socket" people write by hand, done with types that line up at compile time.
//!
//! - [`Stage<In, Out>`](Stage): `init`, `run`, `finish`, native async fns.
//! - [`Pipeline::new(a).then(b)`](Pipeline): compiles only when `a`'s output is `b`'s input;
//!   [`fan_out`](Pipeline::fan_out) sends each value to several branches and merges them again;
//!   [`via_bus`](Pipeline::via_bus) puts a hand-off on the bus ([`Handoff`]).
//! - [`Runner`]: one task per stage, at most N runs in flight, per-stage timing into a
//!   [`Monitor`] (counts, p50/p95/p99 over bounded windows, error types, completed and failed
//!   runs), failed runs into a dead-letter sink with their raw bytes, graceful drain.
//! - With the `zmq` feature (off by default): [`zmq::ZmqSource`] (PULL or SUB, bind or
//!   connect) and [`zmq::ZmqPubSink`].
//!
//! See `docs/pipelines.md` in the repository for the guide.
#![forbid(unsafe_code)]

pub mod error;
pub mod handoff;
pub mod monitor;
pub mod pipeline;
pub mod runner;
pub mod shutdown;
pub mod stage;

#[cfg(feature = "zmq")]
pub mod zmq;
#[cfg(feature = "zmq")]
mod zmtp;

pub use error::{
    FeedError, HandoffError, SocketError, SourceError, StageError, StageErrorKind, StartError,
};
pub use handoff::{
    BusHandoff, BusSink, BusSource, BusStream, DEFAULT_ORDERING_HEADER, Handoff, InMemoryHandoff,
    InMemoryStream, Received, Settle,
};
pub use monitor::{DEFAULT_WINDOW, Monitor, MonitorSnapshot, OpRecorder, OpSnapshot};
pub use pipeline::Pipeline;
pub use runner::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, Feed, IterSource, RunReport, Runner,
    RunningPipeline, Source, StopReason, StopSignal,
};
pub use shutdown::{ShutdownSignal, shutdown_signal};
pub use stage::{
    Backoff, FnStage, Jitter, MapStage, Named, Retry, RetryPolicy, ServiceStage, Stage, StageExt,
    Timeout, map_fn, retry_on, service_stage, stage_fn, transient,
};

/// docs/pipelines.md, compiled as doc tests so its examples cannot rot (its ZeroMQ example
/// needs the `zmq` feature).
#[doc = include_str!("../../../docs/pipelines.md")]
#[cfg(all(doctest, feature = "zmq"))]
pub struct PipelinesGuide;
