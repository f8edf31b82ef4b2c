//! The alert manager: rules over error rates, latency, anomalies, health, resources and queue
//! depth; deduplicated alerts with history; notification channels as bus topics and webhooks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::{Bus, Message, PublishError};

use super::SYSTEM_DOMAIN;
use super::health::{HealthChecker, HealthStatus};
use super::performance::Anomaly;
use super::resource::ResourceBreach;
use crate::component::{ComponentBuilder, ComponentCtx};
use crate::context::{Completion, RequestState, StatusUpdate, unix_ms};
use crate::role::Role;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information.
    Info,
    /// Needs attention.
    Warning,
    /// Needs action now.
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Share of failed requests among the last `window` ended requests of a domain.
    ErrorRate {
        /// Above this share (0..1) the alert fires.
        max_ratio: f64,
        /// Ended requests considered.
        window: usize,
        /// Fewer ended requests than this: no verdict.
        min_requests: usize,
    },
    /// 99th percentile of request duration per component over the last `window` results.
    LatencyP99 {
        /// Above this many milliseconds the alert fires.
        max_ms: f64,
        /// Results considered.
        window: usize,
    },
    /// Any performance anomaly (from the performance tracker).
    Anomaly,
    /// Any resource breach (from the resource monitor).
    ResourceBreach,
    /// A component not healthy (checked by [`AlertManager::evaluate_health`]).
    Unhealthy,
    /// A subscription queue deeper than `max` (checked by [`AlertManager::evaluate_bus`]).
    QueueDepth {
        /// Above this depth the alert fires.
        max: usize,
    },
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// Name (part of the deduplication key).
    pub name: String,
    /// Severity of its alerts.
    pub severity: Severity,
    /// What it watches.
    pub condition: Condition,
}

/// An alert: one rule firing for one subject (a domain, component or subscription).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule.
    pub rule: String,
    /// Its severity.
    pub severity: Severity,
    /// What it is about.
    pub subject: String,
    /// What happened (the latest firing).
    pub message: String,
    /// Firings while active (1 when raised).
    pub count: u64,
    /// When it was raised, in ms since the Unix epoch.
    pub first_ms: u64,
    /// When it last fired.
    pub last_ms: u64,
    /// False once the condition cleared.
    pub active: bool,
}

impl Message for Alert {
    const TOPIC: &'static str = "system.alert.warning";
}

/// Where raised alerts are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Published on the bus on `system.alert.<severity>`.
    Topic,
    /// POSTed as JSON to an `http://host:port/path` URL (plain HTTP/1.1, 2 s timeout).
    Webhook {
        /// The URL.
        url: String,
    },
}

/// Counters of the alert manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AlertStats {
    /// Alerts raised (notifications sent out).
    pub raised: u64,
    /// Firings absorbed by an active alert (deduplicated).
    pub deduplicated: u64,
    /// Alerts resolved.
    pub resolved: u64,
    /// Webhook deliveries that succeeded.
    pub webhook_ok: u64,
    /// Webhook deliveries that failed.
    pub webhook_failed: u64,
}

#[derive(Default)]
struct State {
    active: BTreeMap<(String, String), Alert>,
    history: VecDeque<Alert>,
    outcomes: HashMap<SmolStr, VecDeque<bool>>,
    latencies: HashMap<SmolStr, VecDeque<f64>>,
    stats: AlertStats,
}

const MAX_HISTORY: usize = 1_000;

/// Evaluates [`AlertRule`]s on what the system reports and notifies [`Channel`]s once per
/// alert (deduplicated by rule and subject until it resolves).
#[derive(Clone)]
pub struct AlertManager {
    rules: Arc<Vec<AlertRule>>,
    channels: Arc<Vec<Channel>>,
    state: Arc<Mutex<State>>,
    webhook_ok: Arc<AtomicU64>,
    webhook_failed: Arc<AtomicU64>,
}

impl std::fmt::Debug for AlertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertManager")
            .field("rules", &self.rules.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// What a firing did.
enum Fired {
    Raised(Alert),
    Deduplicated,
}

fn percentile(values: &VecDeque<f64>, p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

impl AlertManager {
    /// The component name.
    pub const NAME: &'static str = "alert-manager";

    /// An alert manager with these rules and channels.
    pub fn new(rules: Vec<AlertRule>, channels: Vec<Channel>) -> Self {
        Self {
            rules: Arc::new(rules),
            channels: Arc::new(channels),
            state: Arc::new(Mutex::new(State::default())),
            webhook_ok: Arc::new(AtomicU64::new(0)),
            webhook_failed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counters.
    pub fn stats(&self) -> AlertStats {
        let mut s = self.state.lock().stats;
        s.webhook_ok = self.webhook_ok.load(Ordering::Relaxed);
        s.webhook_failed = self.webhook_failed.load(Ordering::Relaxed);
        s
    }

    /// Active alerts, sorted by rule and subject.
    pub fn active(&self) -> Vec<Alert> {
        self.state.lock().active.values().cloned().collect()
    }

    /// Every alert raised (the last 1000), oldest first, with its count and state as raised.
    pub fn history(&self) -> Vec<Alert> {
        self.state.lock().history.iter().cloned().collect()
    }

    fn fire(&self, rule: &AlertRule, subject: &str, message: String) -> Fired {
        let now = unix_ms(SystemTime::now());
        let mut st = self.state.lock();
        let key = (rule.name.clone(), subject.to_owned());
        if let Some(a) = st.active.get_mut(&key) {
            a.count += 1;
            a.last_ms = now;
            a.message = message;
            st.stats.deduplicated += 1;
            return Fired::Deduplicated;
        }
        let alert = Alert {
            rule: rule.name.clone(),
            severity: rule.severity,
            subject: subject.to_owned(),
            message,
            count: 1,
            first_ms: now,
            last_ms: now,
            active: true,
        };
        st.active.insert(key, alert.clone());
        if st.history.len() >= MAX_HISTORY {
            st.history.pop_front();
        }
        st.history.push_back(alert.clone());
        st.stats.raised += 1;
        Fired::Raised(alert)
    }

    fn clear(&self, rule: &AlertRule, subject: &str) {
        let mut st = self.state.lock();
        if st
            .active
            .remove(&(rule.name.clone(), subject.to_owned()))
            .is_some()
        {
            st.stats.resolved += 1;
        }
    }

    /// Sends a raised alert to every channel. Topic channels publish through `cx` (or `bus`
    /// when called outside a handler); webhooks are posted from a blocking task.
    async fn notify(&self, alert: Alert, cx: Option<&ComponentCtx>) -> Result<(), PublishError> {
        tracing::warn!(rule = %alert.rule, subject = %alert.subject, severity = alert.severity.as_str(),
            message = %alert.message, "alert raised");
        for ch in self.channels.iter() {
            match ch {
                Channel::Topic => {
                    if let Some(cx) = cx {
                        let topic = format!("system.alert.{}", alert.severity.as_str());
                        cx.publish_to(&topic, alert.clone()).await?;
                    }
                }
                Channel::Webhook { url } => {
                    let (url, ok, failed) = (
                        url.clone(),
                        self.webhook_ok.clone(),
                        self.webhook_failed.clone(),
                    );
                    let body = serde_json::to_vec(&alert).unwrap_or_default();
                    // The blocking task owns the request; it ends after at most the 2 s
                    // connect/read/write timeouts.
                    let task = tokio::task::spawn_blocking(move || {
                        post_json(&url, &body, Duration::from_secs(2))
                    });
                    match task.await {
                        Ok(Ok(())) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "alert webhook failed");
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "alert webhook task failed");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn fire_and_notify(
        &self,
        rule: &AlertRule,
        subject: &str,
        message: String,
        cx: Option<&ComponentCtx>,
    ) -> Result<(), PublishError> {
        match self.fire(rule, subject, message) {
            Fired::Raised(a) => self.notify(a, cx).await,
            Fired::Deduplicated => Ok(()),
        }
    }

    async fn on_status(&self, u: StatusUpdate, cx: &ComponentCtx) -> Result<(), PublishError> {
        if !u.to.is_terminal() {
            return Ok(());
        }
        for rule in self.rules.iter() {
            let Condition::ErrorRate {
                max_ratio,
                window,
                min_requests,
            } = rule.condition
            else {
                continue;
            };
            let ratio = {
                let mut st = self.state.lock();
                let q = st.outcomes.entry(u.domain.clone()).or_default();
                if q.len() >= window.max(1) {
                    q.pop_front();
                }
                q.push_back(u.to == RequestState::Failed);
                (q.len() >= min_requests)
                    .then(|| q.iter().filter(|f| **f).count() as f64 / q.len() as f64)
            };
            match ratio {
                Some(r) if r > max_ratio => {
                    let msg = format!(
                        "{:.0}% of the last requests of {} failed (limit {:.0}%)",
                        r * 100.0,
                        u.domain,
                        max_ratio * 100.0
                    );
                    self.fire_and_notify(rule, &u.domain, msg, Some(cx)).await?;
                }
                Some(_) => self.clear(rule, &u.domain),
                None => {}
            }
        }
        Ok(())
    }

    async fn on_completion(
        &self,
        done: Completion<serde_json::Value>,
        cx: &ComponentCtx,
    ) -> Result<(), PublishError> {
        for rule in self.rules.iter() {
            let Condition::LatencyP99 { max_ms, window } = rule.condition else {
                continue;
            };
            let p99 = {
                let mut st = self.state.lock();
                let q = st.latencies.entry(done.component.clone()).or_default();
                if q.len() >= window.max(1) {
                    q.pop_front();
                }
                q.push_back(done.duration_ms as f64);
                percentile(q, 0.99)
            };
            if p99 > max_ms {
                let msg = format!(
                    "p99 latency of {} is {p99:.0} ms (limit {max_ms:.0} ms)",
                    done.component
                );
                self.fire_and_notify(rule, &done.component, msg, Some(cx))
                    .await?;
            } else {
                self.clear(rule, &done.component);
            }
        }
        Ok(())
    }

    async fn on_matching(
        &self,
        pick: impl Fn(&Condition) -> bool,
        subject: &str,
        message: String,
        cx: &ComponentCtx,
    ) -> Result<(), PublishError> {
        for rule in self.rules.iter().filter(|r| pick(&r.condition)) {
            self.fire_and_notify(rule, subject, message.clone(), Some(cx))
                .await?;
        }
        Ok(())
    }

    /// Checks the health rules against a health checker's report (raises for components that
    /// are not healthy, resolves the others). Topic channels are not used from here (no
    /// handler context); webhooks are. Returns the alerts raised.
    pub async fn evaluate_health(&self, health: &HealthChecker) -> Vec<Alert> {
        let mut raised = Vec::new();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.condition == Condition::Unhealthy)
        {
            for h in health.report() {
                if h.status == HealthStatus::Healthy {
                    self.clear(rule, &h.component);
                    continue;
                }
                let msg = format!("{} is {:?}", h.component, h.status).to_lowercase();
                if let Fired::Raised(a) = self.fire(rule, &h.component, msg) {
                    // Cannot fail: topic channels are skipped without a handler context.
                    let _ = self.notify(a.clone(), None).await;
                    raised.push(a);
                }
            }
        }
        raised
    }

    /// Checks the queue-depth rules against the bus's registry. Returns the alerts raised.
    pub async fn evaluate_bus(&self, bus: &Bus) -> Vec<Alert> {
        let mut raised = Vec::new();
        for rule in self.rules.iter() {
            let Condition::QueueDepth { max } = rule.condition else {
                continue;
            };
            for sub in bus.registry() {
                if sub.depth <= max {
                    self.clear(rule, &sub.name);
                    continue;
                }
                let msg = format!(
                    "queue of {} holds {} messages (limit {max})",
                    sub.name, sub.depth
                );
                if let Fired::Raised(a) = self.fire(rule, &sub.name, msg) {
                    let _ = self.notify(a.clone(), None).await;
                    raised.push(a);
                }
            }
        }
        raised
    }

    /// The component to add to an assembly.
    pub fn component(&self) -> ComponentBuilder {
        let mut b = ComponentBuilder::new(Self::NAME, Role::System, SYSTEM_DOMAIN)
            .publishes("system.alert.*");
        let me = self.clone();
        b = b.on::<StatusUpdate, _, _, _, _>("*.status.update", move |u, cx| {
            let me = me.clone();
            async move { me.on_status(u, &cx).await }
        });
        for phase in [
            Role::Processor.result_phase(),
            Role::Handler.result_phase(),
            Role::Service.result_phase(),
            Role::Manager.result_phase(),
        ] {
            let me = self.clone();
            b = b.on::<Completion<serde_json::Value>, _, _, _, _>(
                &format!("*.*.{phase}"),
                move |done, cx| {
                    let me = me.clone();
                    async move { me.on_completion(done, &cx).await }
                },
            );
        }
        let me = self.clone();
        b = b.on::<Anomaly, _, _, _, _>(Anomaly::TOPIC, move |a, cx| {
            let me = me.clone();
            async move {
                let subject = format!("{}/{}", a.component, a.action);
                let msg = format!(
                    "{} {} = {:.1}, baseline {:.1} ± {:.1}",
                    subject, a.metric, a.value, a.mean, a.deviation
                );
                me.on_matching(|c| *c == Condition::Anomaly, &subject, msg, &cx)
                    .await
            }
        });
        let me = self.clone();
        b.on::<ResourceBreach, _, _, _, _>(ResourceBreach::TOPIC, move |r, cx| {
            let me = me.clone();
            async move {
                let msg = format!("{} = {:.0} (limit {:.0})", r.metric, r.value, r.limit);
                me.on_matching(|c| *c == Condition::ResourceBreach, &r.metric, msg, &cx)
                    .await
            }
        })
    }
}

/// A webhook delivery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// Only `http://host[:port]/path` URLs are supported.
    #[error("unsupported webhook URL {0:?} (expected http://host[:port]/path)")]
    Url(String),
    /// Connecting, writing or reading failed.
    #[error("webhook I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with a non-2xx status.
    #[error("webhook answered {0:?}")]
    Status(String),
}

/// POSTs `body` as JSON to a plain-HTTP URL and checks for a 2xx answer.
fn post_json(url: &str, body: &[u8], timeout: Duration) -> Result<(), WebhookError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| WebhookError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(WebhookError::Url(url.to_owned()));
    }
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| WebhookError::Url(url.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(WebhookError::Status(status))
    }
}
