//! The node's metrics: one Prometheus recorder per node (not the process-wide one), so two
//! nodes in one process, or a node embedded in an application with its own recorder, never
//! mix their figures.
//!
//! Gateway figures are recorded as they happen (requests by route and status with a duration
//! histogram, denials, WebSocket connections and drops); bus figures are read from the bus's
//! snapshot, the handler registry of the resilience stack and the pipeline monitors at scrape
//! time and written as absolute values, so `/metrics` and `/v1/stats` show the same numbers.
//! Those are written into a recorder made for that one scrape (`scrape::render`), not into the
//! node's: a subscription or handler that is gone has no rows in the next scrape (the
//! exporter cannot remove one series, and with WebSocket clients coming and going the node's
//! recorder grew without bound).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use switchyard_pipeline::Monitor;

/// Gateway metric names.
pub mod names {
    /// Counter: HTTP requests (labels: route, method, status).
    pub const REQUESTS: &str = "switchyard_gateway_requests_total";
    /// Histogram: HTTP request time, seconds (labels: route).
    pub const REQUEST_DURATION: &str = "switchyard_gateway_request_duration_seconds";
    /// Counter: refused calls (labels: kind = unauthenticated|forbidden, action).
    pub const DENIALS: &str = "switchyard_gateway_denials_total";
    /// Gauge: WebSocket connections open now.
    pub const WS_CONNECTIONS: &str = "switchyard_gateway_ws_connections";
    /// Counter: WebSocket connections accepted.
    pub const WS_CONNECTIONS_TOTAL: &str = "switchyard_gateway_ws_connections_total";
    /// Counter: outbound WebSocket messages dropped by the slow-client policy.
    pub const WS_DROPPED: &str = "switchyard_gateway_ws_dropped_total";
    /// Counter: WebSocket clients disconnected by the slow-client policy.
    pub const WS_SLOW_DISCONNECTS: &str = "switchyard_gateway_ws_slow_disconnects_total";
    /// Gauge: the most outbound messages one WebSocket connection has had buffered (never more
    /// than `ws.outbound_buffer`).
    pub const WS_BUFFER_HIGH_WATER: &str = "switchyard_gateway_ws_buffer_high_water";
    /// Counter: auto-ack WebSocket deliveries left unsent because their subscriber had gone.
    pub const WS_ABANDONED: &str = "switchyard_gateway_ws_abandoned_total";
    /// Counter: publishes refused by the per-principal rate limit (labels: principal).
    pub const RATE_LIMITED: &str = "switchyard_gateway_rate_limited_total";
}

const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// An empty recorder with the gateway's histogram buckets and the bus's metric descriptions:
/// the node's own, and the one each scrape writes the bus figures into.
pub(crate) fn fresh_recorder() -> PrometheusRecorder {
    // Setting buckets only fails for an empty list; ours is not.
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    with_local_recorder(&recorder, switchyard_middleware::metrics::describe);
    recorder
}

/// The node's recorder and the pipeline monitors it reports.
pub struct GatewayMetrics {
    recorder: PrometheusRecorder,
    monitors: Mutex<Vec<(String, Monitor)>>,
    /// (route, status) → requests, for `/v1/stats`.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    published: AtomicU64,
    rate_limited: AtomicU64,
    ws_open: AtomicI64,
    ws_total: AtomicU64,
    ws_dropped: AtomicU64,
    ws_slow_disconnects: AtomicU64,
    ws_high_water: AtomicU64,
    ws_abandoned: AtomicU64,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// A fresh recorder with the gateway's histogram buckets.
    pub fn new() -> Self {
        Self {
            recorder: fresh_recorder(),
            monitors: Mutex::new(Vec::new()),
            requests: Mutex::new(BTreeMap::new()),
            published: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            ws_open: AtomicI64::new(0),
            ws_total: AtomicU64::new(0),
            ws_dropped: AtomicU64::new(0),
            ws_slow_disconnects: AtomicU64::new(0),
            ws_high_water: AtomicU64::new(0),
            ws_abandoned: AtomicU64::new(0),
        }
    }

    /// Runs `f` with this node's recorder as the `metrics` recorder.
    pub fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&self.recorder, f)
    }

    /// Counts one HTTP request.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_owned(), status))
            .or_default() += 1;
        self.record(|| {
            counter!(names::REQUESTS, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string())
                .increment(1);
            histogram!(names::REQUEST_DURATION, "route" => route.to_owned()).record(took.as_secs_f64());
        });
    }

    /// Counts one rate-limited publish.
    pub fn rate_limited(&self, principal: &str) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        self.record(|| {
            counter!(names::RATE_LIMITED, "principal" => principal.to_owned()).increment(1);
        });
    }

    /// A WebSocket connection opened (`+1`) or closed (`-1`).
    pub fn ws_connection(&self, opened: bool) {
        if opened {
            self.ws_open.fetch_add(1, Ordering::Relaxed);
            self.ws_total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ws_open.fetch_sub(1, Ordering::Relaxed);
        }
        self.record(|| {
            if opened {
                counter!(names::WS_CONNECTIONS_TOTAL).increment(1);
                gauge!(names::WS_CONNECTIONS).increment(1.0);
            } else {
                gauge!(names::WS_CONNECTIONS).decrement(1.0);
            }
        });
    }

    /// Counts outbound WebSocket messages dropped by the slow-client policy.
    pub fn ws_dropped(&self, n: u64) {
        self.ws_dropped.fetch_add(n, Ordering::Relaxed);
        self.record(|| counter!(names::WS_DROPPED).increment(n));
    }

    /// Counts a WebSocket client disconnected by the slow-client policy.
    pub fn ws_slow_disconnect(&self) {
        self.ws_slow_disconnects.fetch_add(1, Ordering::Relaxed);
        self.record(|| counter!(names::WS_SLOW_DISCONNECTS).increment(1));
    }

    /// Records that one WebSocket connection had `n` outbound messages buffered (kept: the
    /// largest).
    pub fn ws_buffered(&self, n: usize) {
        let n = n as u64;
        if self.ws_high_water.fetch_max(n, Ordering::Relaxed) < n {
            self.record(|| gauge!(names::WS_BUFFER_HIGH_WATER).set(n as f64));
        }
    }

    /// Counts auto-ack WebSocket deliveries left unsent because their subscriber had gone.
    pub fn ws_abandoned(&self, n: u64) {
        self.ws_abandoned.fetch_add(n, Ordering::Relaxed);
        self.record(|| counter!(names::WS_ABANDONED).increment(n));
    }

    /// Counts one message published through the gateway (HTTP or WebSocket).
    pub fn published_one(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages published through the gateway.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The gateway's own figures as JSON (what `/v1/stats` shows under `gateway`).
    pub fn gateway_json(&self) -> serde_json::Value {
        let requests: Vec<serde_json::Value> = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((route, status), n)| serde_json::json!({"route": route, "status": status, "count": n}))
            .collect();
        serde_json::json!({
            "requests": requests,
            "published": self.published(),
            "rate_limited": self.rate_limited.load(Ordering::Relaxed),
            "ws_connections": self.ws_open.load(Ordering::Relaxed),
            "ws_connections_total": self.ws_total.load(Ordering::Relaxed),
            "ws_dropped": self.ws_dropped.load(Ordering::Relaxed),
            "ws_slow_disconnects": self.ws_slow_disconnects.load(Ordering::Relaxed),
            "ws_buffer_high_water": self.ws_high_water.load(Ordering::Relaxed),
            "ws_abandoned": self.ws_abandoned.load(Ordering::Relaxed),
        })
    }

    /// Reports a pipeline monitor under `name` (ZeroMQ ingest registers its own).
    pub fn add_monitor(&self, name: impl Into<String>, monitor: Monitor) {
        self.monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), monitor));
    }

    /// The monitors reported, with their names.
    pub fn monitors(&self) -> Vec<(String, Monitor)> {
        self.monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Renders the gateway's own figures (those recorded as they happen) in the Prometheus
    /// text format; `/metrics` adds the bus figures read at scrape time.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}
