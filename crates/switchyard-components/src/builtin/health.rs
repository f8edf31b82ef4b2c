//! The health checker: signs of life (heartbeats, status updates) and errors per component.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::Message;
use tokio::time::Instant;

use super::SYSTEM_DOMAIN;
use crate::component::ComponentBuilder;
use crate::context::{ErrorReport, StatusUpdate};
use crate::role::Role;

/// Published on `<domain>.health.heartbeat` by a component that is alive
/// (see [`Running::heartbeat`](crate::Running::heartbeat)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The component.
    pub component: SmolStr,
    /// Its role.
    pub role: Role,
    /// Its domain.
    pub domain: SmolStr,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

impl Message for Heartbeat {
    const TOPIC: &'static str = "system.health.heartbeat";
}

/// Health of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Seen recently, few errors.
    Healthy,
    /// Seen recently, but the share of failed requests in the window is above the threshold.
    Degraded,
    /// Not seen for longer than the staleness limit.
    Unresponsive,
}

/// What the health checker knows about one component.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// The component.
    pub component: SmolStr,
    /// Its status now.
    pub status: HealthStatus,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Status updates received.
    pub updates: u64,
    /// The component's own failures received: original errors and its handler's errors and
    /// panics (`ErrorReport::handler_failure`), not the failures it passed on from below.
    pub errors: u64,
    /// Milliseconds since it was last seen.
    pub last_seen_ms: u64,
}

struct Seen {
    last: Instant,
    heartbeats: u64,
    updates: u64,
    errors: u64,
    ended: u64,
}

/// Tracks signs of life and errors per component from `*.health.heartbeat`, `*.status.update`
/// and `*.error`. A component's errors are its own failures (original ones and its handler's
/// errors and panics); failures it only propagates from a lower layer are not counted.
#[derive(Clone)]
pub struct HealthChecker {
    seen: Arc<Mutex<BTreeMap<SmolStr, Seen>>>,
    stale_after: Duration,
    degraded_error_ratio: f64,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("stale_after", &self.stale_after)
            .finish()
    }
}

impl HealthChecker {
    /// The component name.
    pub const NAME: &'static str = "health-checker";

    /// A checker calling a component unresponsive after `stale_after` without a sign of life,
    /// and degraded when more than `degraded_error_ratio` of its ended requests failed.
    pub fn new(stale_after: Duration, degraded_error_ratio: f64) -> Self {
        Self {
            seen: Arc::new(Mutex::new(BTreeMap::new())),
            stale_after,
            degraded_error_ratio,
        }
    }

    fn touch(&self, component: &SmolStr, f: impl FnOnce(&mut Seen)) {
        let mut seen = self.seen.lock();
        let s = seen.entry(component.clone()).or_insert_with(|| Seen {
            last: Instant::now(),
            heartbeats: 0,
            updates: 0,
            errors: 0,
            ended: 0,
        });
        s.last = Instant::now();
        f(s);
    }

    /// The component to add to an assembly.
    pub fn component(&self) -> ComponentBuilder {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        ComponentBuilder::new(Self::NAME, Role::System, SYSTEM_DOMAIN)
            .on::<Heartbeat, _, _, _, _>("*.health.heartbeat", move |hb, _cx| {
                let me = a.clone();
                async move {
                    me.touch(&hb.component, |s| s.heartbeats += 1);
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .on::<StatusUpdate, _, _, _, _>("*.status.update", move |u, _cx| {
                let me = b.clone();
                async move {
                    me.touch(&u.component, |s| {
                        s.updates += 1;
                        if u.to.is_terminal() {
                            s.ended += 1;
                        }
                    });
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .on::<ErrorReport, _, _, _, _>("*.error", move |e, _cx| {
                let me = c.clone();
                async move {
                    // Its own failures count; a failure passed on from below is the lower
                    // component's (counted there).
                    if !e.propagated || e.handler_failure {
                        me.touch(&e.component, |s| s.errors += 1);
                    }
                    Ok::<_, std::convert::Infallible>(())
                }
            })
    }

    /// Health of every component seen, sorted by name.
    pub fn report(&self) -> Vec<ComponentHealth> {
        let now = Instant::now();
        self.seen
            .lock()
            .iter()
            .map(|(name, s)| {
                let idle = now.saturating_duration_since(s.last);
                let ratio = if s.ended == 0 {
                    0.0
                } else {
                    s.errors as f64 / s.ended as f64
                };
                let status = if idle > self.stale_after {
                    HealthStatus::Unresponsive
                } else if ratio > self.degraded_error_ratio {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Healthy
                };
                ComponentHealth {
                    component: name.clone(),
                    status,
                    heartbeats: s.heartbeats,
                    updates: s.updates,
                    errors: s.errors,
                    last_seen_ms: idle.as_millis() as u64,
                }
            })
            .collect()
    }

    /// Health of one component (None if never seen).
    pub fn status(&self, component: &str) -> Option<HealthStatus> {
        self.report()
            .into_iter()
            .find(|h| h.component == component)
            .map(|h| h.status)
    }
}
