//! The data-pipeline reference app: a frontend asks the CPM to run the pipeline; the CPM starts
//! the staging domain; each domain (staging → quality → analytics → insight → report →
//! recommendation) is a manager, a service, a handler and a processor; processors call plain
//! modules ([`modules`]) that read and write the [`Store`] (SQLite, or PostgreSQL when
//! `DATABASE_URL` names one) directly;
//! results flow back up one layer at a time, each manager's completion starts the next
//! domain's manager, and the last one's completion reaches the CPM and the frontend. Status
//! updates go to the [`StateTracker`], failures to the [`ErrorHandler`], which asks the failing
//! domain's manager to retry and dead-letters the flow when attempts run out.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use data_pipeline::{run_demo, DemoConfig};
//! let report = run_demo(DemoConfig { rows: 120, ..DemoConfig::default() }).await?;
//! assert!(report.runs[0].ok);
//! assert_eq!(report.contexts_left, 0);
//! # Ok(()) }
//! ```

mod app;
pub mod contracts;
pub mod frontend_api;
pub mod modules;
mod outage;
pub mod sensors;
pub mod testdb;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard::{Bus, DeadLetter, Message, MessageId, PublishError, SubscribeError};
use switchyard_components::builtin::{Alert, ComponentHealth, ErrorHandlerStats, ResourceSample};
use switchyard_components::trace::Trace;
use switchyard_components::{ContextStats, EnforcementStats, ErrorInfo, StartError};
use switchyard_contracts::{Contract, JsonSchema};
use tokio::sync::mpsc;

pub use app::{DemoApp, run_demo};
use app::{percentile, total_len};
use modules::Tables;

/// The domains of the pipeline, in order, with their action.
pub const DOMAINS: [(&str, &str); 6] = [
    ("staging", "load"),
    ("quality", "validate"),
    ("analytics", "features"),
    ("insight", "detect"),
    ("report", "render"),
    ("recommendation", "propose"),
];

/// Name of the file the demo generates and stages.
pub const DATASET: &str = "sales.csv";

/// What the frontend sends to the CPM on `cpm.pipeline.request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
pub struct PipelineRequest {
    /// Identifies the run (keys every table).
    pub run_id: String,
    /// The file to process (ignored when `csv` or `rows` is given).
    pub dataset: String,
    /// Generate a dataset of this many rows for the run (the demo's generator, seed 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// CSV text to stage for the run (header `date,region,product,units,unit_price`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    /// Failure injection: the domain whose processor fails on every attempt of this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// Latency injection: the domain whose processor waits [`DemoConfig::slow_delay`] before
    /// its work in this run (the performance tracker then flags the domain's steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<String>,
    /// Hold injection: the domain whose processor waits until the run is cancelled before its
    /// work (at most [`DemoConfig::hold_limit`]), so a run can be cancelled while it is
    /// certainly under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// Outage injection: the domain whose upstream is unavailable during this run. Its
    /// processor fails every request message of the run the first time it sees it (so the
    /// retries fail too and the error handler dead-letters the request); replaying that dead
    /// letter (the same message again) succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<String>,
}

impl PipelineRequest {
    /// A request to process the file `dataset` of the store.
    pub fn file(run_id: impl Into<String>, dataset: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            dataset: dataset.into(),
            rows: None,
            csv: None,
            fail: None,
            slow: None,
            hold: None,
            outage: None,
        }
    }
}

impl Contract for PipelineRequest {}

impl Message for PipelineRequest {
    const TOPIC: &'static str = "cpm.pipeline.request";
}

/// What the frontend sends to the CPM on `cpm.pipeline.cancel`: stop a running run. The run
/// becomes `cancelled`; the domain step under way finishes, and no further step of the run is
/// taken (no next domain, no retry). A run that is not running is left as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
pub struct PipelineCancel {
    /// The run.
    pub run_id: String,
}

impl Contract for PipelineCancel {}

impl Message for PipelineCancel {
    const TOPIC: &'static str = "cpm.pipeline.cancel";
}

/// The request passed down every domain chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
pub struct Job {
    /// The run.
    pub run_id: String,
    /// The file.
    pub dataset: String,
    /// Attempt number within the domain (1, then 2... after retries).
    pub attempt: u32,
    /// Failure injection: the domain whose processor fails on every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// Latency injection: the domain whose processor waits before its work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<String>,
    /// Hold injection: the domain whose processor waits until the run is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// Outage injection: the domain whose processor fails each request message once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<String>,
}

impl Job {
    /// The first attempt of run `run_id` on `dataset`, with no injection.
    pub fn new(run_id: impl Into<String>, dataset: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            dataset: dataset.into(),
            attempt: 1,
            fail: None,
            slow: None,
            hold: None,
            outage: None,
        }
    }
}

impl Contract for Job {}

impl Message for Job {
    const TOPIC: &'static str = "pipeline.job.request";
}

/// Make one domain's processor fail on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePlan {
    /// The domain whose processor fails (`analytics`).
    pub domain: String,
    /// How many executions fail before it works (`u32::MAX`: always).
    pub times: u32,
}

/// The performance tracker's settings: an EWMA latency baseline per (component, action);
/// once it has `warmup` samples, a step further than `k` deviations (and at least `floor_ms`)
/// from its mean is flagged as an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerformanceSettings {
    /// Smoothing factor of the baselines (0 < alpha ≤ 1). Default 0.2.
    pub alpha: f64,
    /// The band, in mean absolute deviations. Default 6.
    pub k: f64,
    /// The smallest distance from the mean that is flagged, in ms. Default 50.
    pub floor_ms: f64,
    /// Samples of a (component, action) before it can be flagged (one per run and step).
    /// Default 20.
    pub warmup: u64,
}

impl Default for PerformanceSettings {
    fn default() -> Self {
        Self {
            alpha: 0.2,
            k: 6.0,
            floor_ms: 50.0,
            warmup: 20,
        }
    }
}

/// Settings of [`run_demo`].
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Rows in the generated CSV. Default 600.
    pub rows: usize,
    /// Seed of the generated data. Default 7.
    pub seed: u64,
    /// Pipeline runs, one after another (more than one gives benchmark figures). Default 1.
    pub runs: usize,
    /// An injected processor failure. Default none.
    pub fail: Option<FailurePlan>,
    /// Attempts per domain before the error handler gives up. Default 3.
    pub max_attempts: u32,
    /// How long to wait for one run's result. Default 10 s.
    pub run_timeout: Duration,
    /// Request context timeout. Default 30 s.
    pub context_timeout: Duration,
    /// Also show that a forbidden publish (frontend straight to a processor) is refused.
    /// Default true.
    pub show_violation: bool,
    /// Include the observing system components (state tracker, health checker, performance
    /// tracker, alert manager, resource monitor). Default true; false measures the pipeline
    /// without them (the error handler always runs).
    pub observers: bool,
    /// Where the CSV is written and read, where the SQLite database (`pipeline.db`) lives,
    /// and where the tables (`store.json`) and reports (`report-<run>.md`) are exported at the
    /// end. Default none: everything stays in memory.
    pub data_dir: Option<std::path::PathBuf>,
    /// The database, as a `DATABASE_URL`: none (default) or `sqlite:PATH` is SQLite (in
    /// `data_dir` or memory when no path is given), `postgres://...` is PostgreSQL (tables
    /// in `database_schema`, migrations run at start). Any other scheme, or a database that
    /// does not answer, fails [`DemoApp::start`] with [`DemoError::Store`].
    /// [`Store::url_from_env`](modules::Store::url_from_env) reads `DATABASE_URL`.
    pub database_url: Option<String>,
    /// The PostgreSQL schema of the app's tables. Default `data_pipeline`.
    pub database_schema: String,
    /// The performance tracker's baselines and thresholds.
    pub performance: PerformanceSettings,
    /// How long the processor a request names in `slow` waits before its work. Default
    /// 400 ms.
    pub slow_delay: Duration,
    /// The longest the processor a request names in `hold` waits for the run to be
    /// cancelled before it goes on. Default 60 s.
    pub hold_limit: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            rows: 600,
            seed: 7,
            runs: 1,
            fail: None,
            max_attempts: 3,
            run_timeout: Duration::from_secs(10),
            context_timeout: Duration::from_secs(30),
            show_violation: true,
            data_dir: None,
            observers: true,
            database_url: None,
            database_schema: "data_pipeline".into(),
            performance: PerformanceSettings::default(),
            slow_delay: Duration::from_millis(400),
            hold_limit: Duration::from_secs(60),
        }
    }
}

impl DemoConfig {
    /// `self` with the database of the environment: `DATABASE_URL` (when set and not empty)
    /// and `DATABASE_SCHEMA` (the PostgreSQL schema, when set and not empty).
    pub fn with_env_database(mut self) -> Self {
        if let Some(url) = modules::Store::url_from_env() {
            self.database_url = Some(url);
        }
        if let Some(schema) = std::env::var("DATABASE_SCHEMA")
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            self.database_schema = schema;
        }
        self
    }
}

/// The demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The assembly did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The trace recorder could not subscribe.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A run did not finish in time.
    #[error("run {run_id} did not finish within {after:?}")]
    Timeout {
        /// The run.
        run_id: String,
        /// How long the demo waited.
        after: Duration,
    },
    /// The frontend component stopped before the result arrived.
    #[error("the frontend stopped listening")]
    FrontendGone,
    /// The data directory could not be written.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A request context of the demo could not be created or started.
    #[error(transparent)]
    Context(#[from] switchyard_components::TransitionError),
    /// The database could not be opened (unsupported URL, unreachable, migrations refused).
    #[error("store: {0}")]
    Store(#[from] modules::StoreError),
    /// The app's message contracts could not be registered.
    #[error("contracts: {0}")]
    Contracts(#[from] switchyard_contracts::RegistryError),
}

/// The outcome of one pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutcome {
    /// The run.
    pub run_id: String,
    /// Its correlation id.
    pub correlation_id: MessageId,
    /// True when every domain completed.
    pub ok: bool,
    /// The error, when it failed.
    pub error: Option<ErrorInfo>,
    /// Milliseconds from the request to the result at the frontend.
    pub latency_ms: f64,
}

/// Throughput and latency over the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchStats {
    /// Runs measured.
    pub runs: usize,
    /// Runs per second (sequential: one at a time).
    pub runs_per_second: f64,
    /// Median latency of one run.
    pub p50_ms: f64,
    /// 99th percentile latency of one run.
    pub p99_ms: f64,
    /// Messages published per run (all topics).
    pub messages_per_run: f64,
    /// Median latency divided by the messages of one run.
    pub per_message_us: f64,
    /// Baseline: microseconds per hop of a plain relay chain of the same length on a bare bus
    /// (one subscriber per hop, no components, contexts or checks). Measured when more than one
    /// run was asked for.
    pub raw_hop_us: Option<f64>,
}

/// One hop of the baseline relay chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hop {
    n: u64,
}

impl Message for Hop {
    const TOPIC: &'static str = "bench.hop.0";
}

/// Microseconds per hop (median over `runs`) of a chain of `hops` plain subscriptions on a fresh
/// bus, each publishing to the next: what one hop costs without the component model.
pub async fn raw_hop_baseline(hops: usize, runs: usize) -> Result<f64, DemoError> {
    let bus = Bus::new();
    let hops = hops.max(1);
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let mut subs = Vec::with_capacity(hops);
    for i in 0..hops {
        let topic = format!("bench.hop.{i}");
        let next = (i + 1 < hops).then(|| format!("bench.hop.{}", i + 1));
        let (b, tx) = (bus.clone(), tx.clone());
        let sub = bus
            .on::<Hop, _, _, _, _>(&topic, move |h: Hop, _ctx| {
                let (b, tx, next) = (b.clone(), tx.clone(), next.clone());
                async move {
                    match next {
                        Some(t) => b.publish_to(&t, h).await,
                        None => {
                            // The receiver outlives the chain; a send error cannot happen.
                            let _ = tx.send(h.n);
                            Ok(())
                        }
                    }
                }
            })
            .pattern(&topic)
            .start()
            .await?;
        subs.push(sub);
    }
    let mut lat = Vec::with_capacity(runs);
    for n in 0..runs.max(1) as u64 {
        let t0 = Instant::now();
        bus.publish(Hop { n }).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(got)) if got == n => break,
                Ok(Some(_)) => continue,
                Ok(None) => return Err(DemoError::FrontendGone),
                Err(_) => {
                    return Err(DemoError::Timeout {
                        run_id: format!("baseline-{n}"),
                        after: Duration::from_secs(10),
                    });
                }
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    drop(subs);
    Ok(percentile(&lat, 0.5) / hops as f64)
}

/// Everything the demo produced.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// One entry per run.
    pub runs: Vec<RunOutcome>,
    /// What the staging processor answered to the CPM's direct preview request (the one
    /// shortcut the rules allow: CPM → processor and back).
    pub preview: Option<Value>,
    /// The store's tables at the end.
    pub tables: Tables,
    /// Files written to the data directory (none without one).
    pub files_written: Vec<std::path::PathBuf>,
    /// Causal tree of the first run.
    pub trace: Trace,
    /// The declared topology as Mermaid.
    pub topology_mermaid: String,
    /// The declared topology as DOT.
    pub topology_dot: String,
    /// What was observed at runtime, as Mermaid with message counts (the flow: system
    /// components left out for readability).
    pub observed_mermaid: String,
    /// What was observed at runtime, as DOT with message counts (the flow: system components
    /// left out).
    pub observed_dot: String,
    /// Enforcement counters.
    pub enforcement: EnforcementStats,
    /// The refusal text of the deliberate forbidden publish, if shown.
    pub violation_demo: Option<String>,
    /// Status updates that did not follow the state machine (should be empty).
    pub state_anomalies: Vec<String>,
    /// Status updates the state tracker saw.
    pub status_updates: u64,
    /// Error handler counters.
    pub errors: ErrorHandlerStats,
    /// Dead letters of the runs (the requests the error handler gave up on).
    pub dead_letters: Vec<DeadLetter>,
    /// Health per component.
    pub health: Vec<ComponentHealth>,
    /// Alerts raised (error rate per domain, performance anomalies, unhealthy components).
    pub alerts: Vec<Alert>,
    /// The process's resources at the end (None where `/proc` is not available).
    pub resources: Option<ResourceSample>,
    /// Context counters.
    pub contexts: ContextStats,
    /// Contexts left in the table at the end (0 when nothing leaked).
    pub contexts_left: usize,
    /// Throughput and latency.
    pub bench: BenchStats,
}

impl DemoReport {
    /// A readable summary: runs, tables, trace (without status updates), enforcement, errors.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== runs");
        for r in &self.runs {
            let _ = writeln!(
                s,
                "  {} {} in {:.1} ms (correlation {}){}",
                r.run_id,
                if r.ok { "completed" } else { "FAILED" },
                r.latency_ms,
                r.correlation_id,
                r.error
                    .as_ref()
                    .map(|e| format!(": {}: {}", e.error_type, e.message))
                    .unwrap_or_default()
            );
        }
        let t = &self.tables;
        let _ = writeln!(s, "\n== store");
        let _ = writeln!(s, "  raw_rows: {}", total_len(&t.raw_rows));
        let _ = writeln!(s, "  sales (valid rows): {}", total_len(&t.sales));
        let _ = writeln!(s, "  quality_issues: {}", total_len(&t.quality_issues));
        let _ = writeln!(s, "  reports: {}", t.reports.len());
        let _ = writeln!(s, "  recommendations: {}", total_len(&t.recommendations));
        if let Some(report) = t.reports.values().next() {
            let _ = writeln!(s, "\n== report of the first run\n{report}");
        }
        if let Some(recs) = t.recommendations.values().next() {
            let _ = writeln!(s, "== recommendations");
            for r in recs {
                let _ = writeln!(s, "  [{}] {} ({})", r.priority, r.action, r.reason);
            }
        }
        let pruned = self.trace.pruned(|n| !n.topic.ends_with(".status.update"));
        let _ = writeln!(
            s,
            "\n== trace of the first run (status updates hidden; {} messages in all)\n{}",
            self.trace.len(),
            pruned.render()
        );
        let _ = writeln!(
            s,
            "== enforcement: {} publishes checked, {} violations, {} refused",
            self.enforcement.checked, self.enforcement.violations, self.enforcement.refused
        );
        if let Some(p) = &self.preview {
            let _ = writeln!(
                s,
                "  CPM → staging-processor preview (direct, allowed): {p}"
            );
        }
        if let Some(v) = &self.violation_demo {
            let _ = writeln!(s, "  refused on purpose: {v}");
        }
        let _ = writeln!(
            s,
            "== errors: {} reported ({} propagated), {} retries, {} gave up, {} dead letters",
            self.errors.errors,
            self.errors.propagated,
            self.errors.retries,
            self.errors.gave_up,
            self.dead_letters.len()
        );
        for a in &self.alerts {
            let _ = writeln!(
                s,
                "== alert [{}] {} on {}: {} (×{})",
                a.severity.as_str(),
                a.rule,
                a.subject,
                a.message,
                a.count
            );
        }
        if let Some(r) = &self.resources {
            let _ = writeln!(
                s,
                "== process: {:.2} s CPU, {:.1} MiB resident, {} open files",
                r.cpu_seconds,
                r.rss_bytes as f64 / (1024.0 * 1024.0),
                r.open_files
            );
        }
        let _ = writeln!(
            s,
            "== contexts: {} created, {} completed, {} failed, {} left; {} status updates, {} out of order",
            self.contexts.created,
            self.contexts.completed,
            self.contexts.failed,
            self.contexts_left,
            self.status_updates,
            self.state_anomalies.len()
        );
        let b = &self.bench;
        let _ = writeln!(
            s,
            "== bench: {} run(s), {:.1} runs/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} messages/run, {:.1} µs/message",
            b.runs, b.runs_per_second, b.p50_ms, b.p99_ms, b.messages_per_run, b.per_message_us
        );
        if let Some(raw) = b.raw_hop_us {
            let _ = writeln!(
                s,
                "   baseline: {raw:.1} µs per hop on a bare relay chain; checks, contexts, status events, system components and module work add {:.1} µs per hop",
                b.per_message_us - raw
            );
        }
        s
    }
}
