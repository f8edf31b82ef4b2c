//! Alerts for `GET /v1/alerts`: firing ones and a bounded history of raised and resolved ones.
//!
//! Two sources: the node's own signals (a handler's circuit breaker open, the transport
//! disconnected), raised and resolved as they change; and alerts an application publishes on
//! `system.alert.<severity>` (the components crate's alert manager with its topic channel),
//! seen by the bus's publish hook. Such an alert stays firing until a message with
//! `"active": false` for the same rule and subject arrives.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard::Envelope;
use switchyard_middleware::breaker::{BreakerEvent, BreakerState};

/// Alerts kept in the history (oldest dropped first).
const MAX_HISTORY: usize = 200;
/// Topic prefix of alerts published on the bus.
const BUS_PREFIX: &str = "system.alert.";

/// One alert as `/v1/alerts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct AlertJson {
    /// Rule name: `breaker_open`, `transport_down`, or the application's rule.
    pub(crate) rule: String,
    /// `info`, `warning` or `critical`.
    pub(crate) severity: String,
    /// What it is about (a handler, the transport, a domain...).
    pub(crate) subject: String,
    /// The latest message.
    pub(crate) message: String,
    /// `node` (the node's own signals) or `bus` (published on `system.alert.*`).
    pub(crate) source: &'static str,
    /// Firings while active (1 when raised).
    pub(crate) count: u64,
    /// When it was raised, ms since the Unix epoch.
    pub(crate) first_ms: u64,
    /// When it last fired.
    pub(crate) last_ms: u64,
    /// When it was resolved (`null` while firing).
    pub(crate) resolved_ms: Option<u64>,
    /// True while firing.
    pub(crate) active: bool,
}

/// `{"firing": [...], "history": [...]}`: firing alerts oldest first, the history newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct AlertsJson {
    /// Alerts firing now.
    pub(crate) firing: Vec<AlertJson>,
    /// Raised alerts, newest first, with their resolution when resolved.
    pub(crate) history: Vec<AlertJson>,
}

/// What an application publishes on `system.alert.*` (the alert manager's `Alert`).
#[derive(Debug, Deserialize)]
struct BusAlert {
    rule: String,
    subject: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Default)]
struct Inner {
    /// (rule, subject) → index-free copy of the firing alert.
    active: BTreeMap<(String, String), AlertJson>,
    history: VecDeque<AlertJson>,
}

/// The node's alert log.
#[derive(Default)]
pub(crate) struct AlertLog {
    inner: Mutex<Inner>,
    /// Where raised and resolved alerts are announced (`alert` events of `/v1/stream`).
    live: Option<std::sync::Arc<crate::live::Live>>,
}

impl AlertLog {
    /// A log announcing every change on `live`'s event stream.
    pub(crate) fn with_live(live: std::sync::Arc<crate::live::Live>) -> Self {
        Self {
            inner: Mutex::default(),
            live: Some(live),
        }
    }

    fn announce(&self, alert: &AlertJson) {
        if let Some(live) = &self.live {
            live.emit("alert", alert);
        }
    }

    /// Alerts firing now.
    pub(crate) fn firing(&self) -> usize {
        self.lock().active.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises an alert, or counts one more firing of the active one.
    fn raise(
        &self,
        rule: &str,
        severity: &str,
        subject: &str,
        message: &str,
        source: &'static str,
    ) {
        let now = now_ms();
        let mut st = self.lock();
        let key = (rule.to_owned(), subject.to_owned());
        if let Some(a) = st.active.get_mut(&key) {
            a.count += 1;
            a.last_ms = now;
            message.clone_into(&mut a.message);
            let a = a.clone();
            if let Some(h) = st
                .history
                .iter_mut()
                .rev()
                .find(|h| h.active && h.rule == a.rule && h.subject == a.subject)
            {
                *h = a.clone();
            }
            drop(st);
            self.announce(&a);
            return;
        }
        let alert = AlertJson {
            rule: rule.to_owned(),
            severity: severity.to_owned(),
            subject: subject.to_owned(),
            message: message.to_owned(),
            source,
            count: 1,
            first_ms: now,
            last_ms: now,
            resolved_ms: None,
            active: true,
        };
        st.active.insert(key, alert.clone());
        if st.history.len() >= MAX_HISTORY {
            st.history.pop_front();
        }
        st.history.push_back(alert.clone());
        drop(st);
        self.announce(&alert);
    }

    /// Resolves the active alert of `rule` and `subject`, if any.
    fn resolve(&self, rule: &str, subject: &str) {
        let now = now_ms();
        let mut st = self.lock();
        if st
            .active
            .remove(&(rule.to_owned(), subject.to_owned()))
            .is_none()
        {
            return;
        }
        if let Some(h) = st
            .history
            .iter_mut()
            .rev()
            .find(|h| h.active && h.rule == rule && h.subject == subject)
        {
            h.active = false;
            h.resolved_ms = Some(now);
            let resolved = h.clone();
            drop(st);
            self.announce(&resolved);
        }
    }

    /// A circuit breaker changed: open raises `breaker_open` for its handler, closed resolves
    /// it (half-open keeps it firing).
    pub(crate) fn breaker(&self, event: &BreakerEvent) {
        let handler = event.handler.to_string();
        match event.to {
            BreakerState::Open => self.raise(
                "breaker_open",
                "warning",
                &handler,
                &format!("circuit breaker of {handler:?} is open"),
                "node",
            ),
            BreakerState::HalfOpen => {}
            BreakerState::Closed => self.resolve("breaker_open", &handler),
        }
    }

    /// The transport's connectivity now: `Some(problem)` raises `transport_down`, `None`
    /// resolves it.
    pub(crate) fn transport(&self, kind: &str, problem: Option<&str>) {
        match problem {
            Some(p) if !self.is_active("transport_down", kind) => {
                self.raise("transport_down", "critical", kind, p, "node");
            }
            Some(_) => {}
            None => self.resolve("transport_down", kind),
        }
    }

    fn is_active(&self, rule: &str, subject: &str) -> bool {
        self.lock()
            .active
            .contains_key(&(rule.to_owned(), subject.to_owned()))
    }

    /// A message published on the bus: records it when it is an alert (`system.alert.*`
    /// with the alert manager's JSON); anything else is ignored.
    pub(crate) fn published(&self, env: &Envelope) {
        let Some(severity) = env.topic.as_str().strip_prefix(BUS_PREFIX) else {
            return;
        };
        let Ok(a) = serde_json::from_slice::<BusAlert>(&env.payload) else {
            return;
        };
        if a.active {
            let severity = a.severity.as_deref().unwrap_or(severity);
            self.raise(&a.rule, severity, &a.subject, &a.message, "bus");
        } else {
            self.resolve(&a.rule, &a.subject);
        }
    }

    /// Firing alerts (oldest first) and the history (newest first).
    pub(crate) fn snapshot(&self) -> AlertsJson {
        let st = self.lock();
        let mut firing: Vec<_> = st.active.values().cloned().collect();
        firing.sort_by_key(|a| a.first_ms);
        AlertsJson {
            firing,
            history: st.history.iter().rev().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus_alert(body: &str) -> Envelope {
        Envelope::new(
            switchyard::Topic::new("system.alert.warning").unwrap(),
            body.as_bytes().to_vec(),
        )
    }

    #[test]
    fn a_bus_alert_fires_deduplicates_and_resolves() {
        let log = AlertLog::default();
        let raise =
            r#"{"rule":"error-rate","subject":"billing","message":"12% failing","active":true}"#;
        log.published(&bus_alert(raise));
        log.published(&bus_alert(raise));
        let s = log.snapshot();
        assert_eq!(s.firing.len(), 1);
        assert_eq!(s.firing[0].count, 2);
        assert_eq!(s.firing[0].severity, "warning");
        assert_eq!(s.firing[0].source, "bus");
        assert_eq!(s.history.len(), 1);
        log.published(&bus_alert(
            r#"{"rule":"error-rate","subject":"billing","active":false}"#,
        ));
        let s = log.snapshot();
        assert!(s.firing.is_empty());
        assert!(!s.history[0].active);
        assert!(s.history[0].resolved_ms.is_some());
    }

    #[test]
    fn other_topics_and_other_payloads_are_ignored() {
        let log = AlertLog::default();
        log.published(&bus_alert("not json"));
        log.published(&Envelope::new(
            switchyard::Topic::new("orders.placed").unwrap(),
            br#"{"rule":"x","subject":"y"}"#.to_vec(),
        ));
        assert!(log.snapshot().history.is_empty());
    }

    #[test]
    fn the_transport_alert_is_raised_once_and_resolved() {
        let log = AlertLog::default();
        log.transport("nats", Some("NATS connection is Disconnected"));
        log.transport("nats", Some("NATS connection is Disconnected"));
        assert_eq!(log.snapshot().firing[0].count, 1);
        log.transport("nats", None);
        let s = log.snapshot();
        assert!(s.firing.is_empty());
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.history[0].severity, "critical");
    }
}
