//! Health of each component and of the transport for `GET /v1/health`, judged from what the
//! node measures: each subscription's backlog, its recent failures (over the live window) and
//! its handler's circuit breaker. A component is the group of its subscriptions
//! (`<component>:<pattern>`) when a topology is declared; otherwise each subscription is one.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use switchyard::SubscriptionInfo;
use switchyard_components::Topology;
use switchyard_components::builtin::{ComponentHealth, HealthStatus};
use switchyard_middleware::breaker::BreakerState;

use super::Recent;
use super::observed::owner;

/// A queue this full (depth / capacity) makes its component degraded.
pub(crate) const BACKLOG_DEGRADED: f64 = 0.8;
/// This share of failed deliveries in the window makes a component degraded...
pub(crate) const ERRORS_DEGRADED: f64 = 0.05;
/// ...and this share failing.
pub(crate) const ERRORS_FAILING: f64 = 0.5;

/// `healthy`, `degraded` or `failing` (ordered: the worst wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Nothing wrong seen.
    Healthy,
    /// A backlog, some failures, a half-open breaker.
    Degraded,
    /// An open breaker, most deliveries failing, the transport down.
    Failing,
}

/// Health of one component (or lone subscription).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ComponentHealthJson {
    /// Component name (or subscription name).
    pub(crate) name: String,
    /// Its role, when declared.
    pub(crate) role: Option<String>,
    /// Its domain, when declared.
    pub(crate) domain: Option<String>,
    /// The worst of its subscriptions.
    pub(crate) status: Status,
    /// Why it is not healthy (empty when healthy).
    pub(crate) reasons: Vec<String>,
    /// Its subscriptions.
    pub(crate) subscriptions: Vec<String>,
    /// Messages waiting in its queues.
    pub(crate) backlog: u64,
    /// Its queues' capacity.
    pub(crate) capacity: u64,
    /// Deliveries being handled.
    pub(crate) in_flight: u64,
    /// Acked per second over the window.
    pub(crate) handled_per_s: f64,
    /// Failed per second over the window.
    pub(crate) errors_per_s: f64,
    /// Dead-lettered since the node started.
    pub(crate) dead_lettered: u64,
    /// Its handlers' breakers that are open.
    pub(crate) breakers_open: Vec<String>,
    /// What the application's health checker (heartbeats, status updates, errors) says of
    /// it, when one is attached (`Node::set_health_checker`) and has seen it.
    pub(crate) heartbeat: Option<HeartbeatJson>,
}

/// The health checker's view of one component.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct HeartbeatJson {
    /// `healthy`, `degraded` (too many of its requests failed) or `unresponsive` (no sign of
    /// life within the checker's staleness limit).
    pub(crate) status: &'static str,
    /// Milliseconds since its last heartbeat, status update or error.
    pub(crate) last_seen_ms: u64,
    /// Heartbeats received.
    pub(crate) heartbeats: u64,
    /// Status updates received.
    pub(crate) updates: u64,
    /// Original errors received.
    pub(crate) errors: u64,
}

/// The transport's health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct TransportHealthJson {
    /// `memory`, `log` or `nats`.
    pub(crate) kind: &'static str,
    /// `healthy`, or `failing` when disconnected.
    pub(crate) status: Status,
    /// `connected`, or the problem.
    pub(crate) state: String,
    /// Why it is not healthy.
    pub(crate) reasons: Vec<String>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct HealthJson {
    /// The worst of the transport and every component.
    pub(crate) status: Status,
    /// Seconds the rates are measured over.
    pub(crate) window_s: f64,
    /// The transport.
    pub(crate) transport: TransportHealthJson,
    /// Every component, worst first, then by name.
    pub(crate) components: Vec<ComponentHealthJson>,
}

/// Judges every component from the subscriptions, breakers and recent rates, and from the
/// health checker's `checked` components when one is attached: an unresponsive component is
/// failing, a degraded one degraded.
pub(crate) fn report(
    subscriptions: &[SubscriptionInfo],
    breakers: &[(String, BreakerState)],
    recent: &Recent,
    topology: Option<&Topology>,
    transport: TransportHealthJson,
    checked: &[ComponentHealth],
) -> HealthJson {
    let breakers: HashMap<&str, BreakerState> =
        breakers.iter().map(|(h, s)| (h.as_str(), *s)).collect();
    let mut groups: BTreeMap<String, ComponentHealthJson> = BTreeMap::new();
    if let Some(t) = topology {
        for c in t.components() {
            groups.insert(c.name().to_owned(), empty(c.name(), Some(c)));
        }
    }
    for s in subscriptions {
        let name = owner(&s.name, topology);
        let c = groups
            .entry(name.to_owned())
            .or_insert_with(|| empty(name, None));
        c.subscriptions.push(s.name.clone());
        c.backlog += s.depth as u64;
        c.capacity += s.capacity as u64;
        c.in_flight += s.in_flight as u64;
        c.dead_lettered += s.stats.dead_lettered;
        let (handled, errors) = recent.subs.get(&s.name).copied().unwrap_or((0.0, 0.0));
        c.handled_per_s += handled;
        c.errors_per_s += errors;
        let mut judge = |status: Status, reason: String| {
            c.status = c.status.max(status);
            c.reasons.push(reason);
        };
        if s.capacity > 0 && s.depth as f64 >= BACKLOG_DEGRADED * s.capacity as f64 {
            judge(
                Status::Degraded,
                format!("{}: backlog {} of {}", s.name, s.depth, s.capacity),
            );
        }
        if errors > 0.0 {
            let share = errors / (errors + handled);
            let status = if share >= ERRORS_FAILING {
                Status::Failing
            } else if share >= ERRORS_DEGRADED {
                Status::Degraded
            } else {
                Status::Healthy
            };
            if status > Status::Healthy {
                judge(
                    status,
                    format!(
                        "{}: {:.0} % of deliveries failing ({:.1}/s over {:.0} s)",
                        s.name,
                        share * 100.0,
                        errors,
                        recent.seconds
                    ),
                );
            }
        }
        match breakers.get(s.name.as_str()) {
            Some(BreakerState::Open) => {
                c.breakers_open.push(s.name.clone());
                judge(Status::Failing, format!("{}: circuit breaker open", s.name));
            }
            Some(BreakerState::HalfOpen) => judge(
                Status::Degraded,
                format!("{}: circuit breaker half-open", s.name),
            ),
            _ => {}
        }
    }
    for h in checked {
        if let Some(c) = groups.get_mut(h.component.as_str()) {
            judge_heartbeat(c, h);
        }
    }
    let mut components: Vec<_> = groups.into_values().collect();
    components.sort_by(|a, b| b.status.cmp(&a.status).then_with(|| a.name.cmp(&b.name)));
    let status = components
        .iter()
        .map(|c| c.status)
        .chain([transport.status])
        .max()
        .unwrap_or(Status::Healthy);
    HealthJson {
        status,
        window_s: recent.seconds,
        transport,
        components,
    }
}

/// Adds the health checker's view of a component, and its verdict.
fn judge_heartbeat(c: &mut ComponentHealthJson, h: &ComponentHealth) {
    let (status, verdict) = match h.status {
        HealthStatus::Healthy => ("healthy", None),
        HealthStatus::Degraded => (
            "degraded",
            Some((
                Status::Degraded,
                format!(
                    "health checker: too many of its requests failed ({} errors)",
                    h.errors
                ),
            )),
        ),
        HealthStatus::Unresponsive => (
            "unresponsive",
            Some((
                Status::Failing,
                format!(
                    "health checker: no heartbeat or status update for {:.0} s",
                    h.last_seen_ms as f64 / 1000.0
                ),
            )),
        ),
    };
    if let Some((s, reason)) = verdict {
        c.status = c.status.max(s);
        c.reasons.push(reason);
    }
    c.heartbeat = Some(HeartbeatJson {
        status,
        last_seen_ms: h.last_seen_ms,
        heartbeats: h.heartbeats,
        updates: h.updates,
        errors: h.errors,
    });
}

fn empty(name: &str, spec: Option<&switchyard_components::ComponentSpec>) -> ComponentHealthJson {
    ComponentHealthJson {
        name: name.to_owned(),
        role: spec.map(|c| format!("{:?}", c.role())),
        domain: spec.map(|c| c.domain().to_owned()),
        status: Status::Healthy,
        reasons: Vec::new(),
        subscriptions: Vec::new(),
        backlog: 0,
        capacity: 0,
        in_flight: 0,
        handled_per_s: 0.0,
        errors_per_s: 0.0,
        dead_lettered: 0,
        breakers_open: Vec::new(),
        heartbeat: None,
    }
}

/// The transport's health from its connectivity problem, if any.
pub(crate) fn transport(kind: &'static str, problem: Option<String>) -> TransportHealthJson {
    match problem {
        None => TransportHealthJson {
            kind,
            status: Status::Healthy,
            state: "connected".to_owned(),
            reasons: Vec::new(),
        },
        Some(p) => TransportHealthJson {
            kind,
            status: Status::Failing,
            state: p.clone(),
            reasons: vec![p],
        },
    }
}
