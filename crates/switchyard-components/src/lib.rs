//! # switchyard-components
//!
//! The layered component model of switchyard, made real and enforced:
//!
//! - [`Role`]s (`Cpm`, `Manager`, `Service`, `Handler`, `Processor`, plus `Frontend` and
//!   `System`) and the [`Rule`]s of which role may send to which ([`check_edge`]). Modules are
//!   plain Rust owned by a processor and never appear on the bus.
//! - The [`Component`] trait (name, role, domain, subscriptions, publications) and
//!   [`ComponentBuilder`] for components made of closures; an [`Assembly`] validates the
//!   [`Topology`] before start and registers every handler with a [`ComponentBus`] that stamps
//!   the source and refuses forbidden publishes at runtime (`PublishError::LayerViolation`,
//!   [`EnforcementMode::Strict`]) or only counts and logs them ([`EnforcementMode::Warn`]).
//! - Topic convention `<domain>.<action>.<phase>` ([`topic_name`], [`Role::request_phase`],
//!   [`Role::result_phase`]).
//! - Per-request [`Context`]s with the state machine Pending → Running → Completed | Failed |
//!   Cancelled, whose transitions publish `<domain>.status.update`, `<domain>.error` and
//!   [`Completion`]s, kept in a [`ContextTable`] cleaned on completion, failure and timeout.
//! - Built-in system components: [`builtin::StateTracker`], [`builtin::ErrorHandler`],
//!   [`builtin::HealthChecker`], [`builtin::PerformanceTracker`], [`builtin::AlertManager`],
//!   [`builtin::ResourceMonitor`].
//! - Topology export as Mermaid and DOT (declared and observed) and [`trace`]: the causal tree
//!   of one correlation id.
//!
//! See `docs/components.md` for a guide.
#![forbid(unsafe_code)]

pub mod builtin;
mod component;
mod context;
mod declaration;
mod enforce;
mod role;
mod topology;
pub mod trace;

pub use component::{
    Assembly, AssemblyStatus, Component, ComponentBuilder, ComponentCtx, DeclarationError,
    Handlers, HeartbeatTask, Running, StartError, spec_of,
};
pub use context::{
    Completion, CompletionStatus, Context, ContextConfig, ContextMetrics, ContextStats,
    ContextTable, ErrorInfo, ErrorReport, FailedRequest, REQUEST_HEADER, RequestContext, RequestId,
    RequestIdError, RequestState, StatusUpdate, TransitionError,
};
pub use enforce::{ComponentBus, EnforcementMode, EnforcementStats, Enforcer};
pub use role::{
    Endpoint, Role, Rule, check_edge, check_message, check_phase, error_topic, exhausted_topic,
    heartbeat_topic, retry_topic, status_topic, topic_name,
};
pub use topology::{
    ComponentSpec, Edge, ObservedEdge, Topology, TopologyError, Violation, patterns_overlap,
};

/// `env` as a consequence of `parent`, the message being handled: caused by it, in its flow
/// and in its session (its `session-id` header, unless `env` has one), as the bus's own
/// `ctx.publish` makes consequences.
pub(crate) fn consequence_of(
    env: switchyard::Envelope,
    parent: &switchyard::Envelope,
) -> switchyard::Envelope {
    use switchyard::session::SESSION_HEADER;
    let env = env.caused_by(parent);
    match parent.header(SESSION_HEADER) {
        Some(session) if env.header(SESSION_HEADER).is_none() => {
            env.with_header(SESSION_HEADER, session)
        }
        _ => env,
    }
}

/// docs/components.md, compiled as doc tests so its examples cannot rot.
#[doc = include_str!("../../../docs/components.md")]
#[cfg(doctest)]
pub struct ComponentsGuide;
