//! What the app's browser frontend asks the CPM (served by the node at `/app`, docs/app.md):
//! the run registry the CPM keeps as it follows each flow, and the CPM's two queries, plain
//! request/reply commands on the bus the frontend sends through the gateway:
//! [`RunsQuery`] (`cpm.query.runs`: the history) and [`RunQuery`] (`cpm.query.run`: one run
//! with its staged rows, quality checks, insights, recommendations, report and dead letters).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{
    Bus, Command, DeadLetter, DeadLetterSink, Message, MessageId, SubscribeError, Subscription,
};
use switchyard_components::builtin::Anomaly;
use switchyard_components::{ComponentBuilder, ErrorInfo, RequestId};
use switchyard_contracts::{Contract, JsonSchema};

use crate::modules::{Store, Tables};
use crate::{DOMAINS, PerformanceSettings, PipelineRequest};

/// The quality checks of the validation module, in the order a row is checked (a row fails
/// on its first failing check).
pub const QUALITY_CHECKS: [(&str, &str); 9] = [
    ("schema.columns", "five fields per row"),
    ("schema.date", "date is 2026-01-DD"),
    ("rule.known_region", "region is a known region"),
    ("rule.known_product", "product is a known product"),
    ("schema.integer", "units is an integer"),
    ("rule.units_non_negative", "units is not negative"),
    ("schema.required", "unit_price is present"),
    ("schema.number", "unit_price is a number"),
    ("rule.price_positive", "unit_price is positive"),
];

/// The columns of the dataset.
pub const COLUMNS: [&str; 5] = ["date", "region", "product", "units", "unit_price"];

/// Runs the registry remembers (the oldest are forgotten first).
const KEEP_RUNS: usize = 500;

/// `cpm.query.runs`: the history of runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
pub struct RunsQuery {
    /// At most this many (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Contract for RunsQuery {}

impl Message for RunsQuery {
    const TOPIC: &'static str = "cpm.query.runs";
}

impl Command for RunsQuery {
    type Output = Value;
}

/// `cpm.query.run`: one run with its data; `{"run": null}` for an unknown run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
pub struct RunQuery {
    /// The run.
    pub run_id: String,
    /// Staged rows to preview (default 20, at most 500).
    #[serde(default)]
    pub preview_rows: Option<usize>,
}

impl Contract for RunQuery {}

impl Message for RunQuery {
    const TOPIC: &'static str = "cpm.query.run";
}

impl Command for RunQuery {
    type Output = Value;
}

/// A dead letter of a run, as the frontend shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    /// The dead message's id (as in `/v1/dlq`).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// The handler that gave up.
    pub handler: Option<String>,
    /// Why.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// A step of a run that left its latency baseline: the performance tracker's
/// [`Anomaly`] on `system.performance.anomaly`, tied to the run by its correlation id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceFlag {
    /// The domain of the component: one of the pipeline's (`analytics`), or `cpm` for the
    /// CPM's context of the whole run; `None` for another component.
    pub domain: Option<String>,
    /// The component whose step it was (`analytics-processor`).
    pub component: String,
    /// Its action (`features`).
    pub action: String,
    /// The metric (`latency_ms`).
    pub metric: String,
    /// What the step took.
    pub value: f64,
    /// The baseline's mean before this step.
    pub mean: f64,
    /// The baseline's mean absolute deviation before this step.
    pub deviation: f64,
}

impl From<Anomaly> for PerformanceFlag {
    fn from(a: Anomaly) -> Self {
        let domain = DOMAINS
            .iter()
            .find(|(d, _)| {
                a.component
                    .strip_prefix(d)
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .map(|(d, _)| (*d).to_owned())
            .or_else(|| (a.component == "cpm").then(|| "cpm".to_owned()));
        Self {
            domain,
            component: a.component.to_string(),
            action: a.action.to_string(),
            metric: a.metric,
            value: a.value,
            mean: a.mean,
            deviation: a.deviation,
        }
    }
}

/// One run as the CPM saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub run_id: String,
    /// Its flow's correlation id (status updates and results carry it).
    pub correlation_id: String,
    /// The file staged.
    pub dataset: String,
    /// `generated` (rows of the generator), `csv` (text in the request) or `file`.
    pub input: String,
    /// The domain whose processor was told to fail, if any.
    pub fail: Option<String>,
    /// The domain whose processor was told to be slow, if any.
    pub slow: Option<String>,
    /// When the CPM received the request, ms since the Unix epoch.
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The failure.
    pub error: Option<ErrorInfo>,
    /// Milliseconds per completed domain, in completion order.
    pub domains: Vec<(String, u64)>,
    /// What each completed domain reported.
    pub results: BTreeMap<String, Value>,
    /// Dead letters of the run's flow.
    pub dead_letters: Vec<DeadLetterInfo>,
    /// The run's steps the performance tracker flagged, in arrival order.
    pub performance_anomalies: Vec<PerformanceFlag>,
}

/// What a start stages: the file's name, the input kind (`csv`, `generated`, `file`) and the
/// text to write under that name (`None`: a file the store already has).
pub(crate) fn staged_input(req: &PipelineRequest) -> (String, &'static str, Option<String>) {
    match (&req.csv, req.rows) {
        (Some(text), _) => (
            format!("upload-{}.csv", file_safe(&req.run_id)),
            "csv",
            Some(text.clone()),
        ),
        (None, Some(rows)) => (
            format!("generated-{}.csv", file_safe(&req.run_id)),
            "generated",
            Some(crate::modules::generate_csv(rows.min(1_000_000), 7)),
        ),
        (None, None) => (req.dataset.clone(), "file", None),
    }
}

/// A run id as part of a file name.
fn file_safe(run_id: &str) -> String {
    run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A start refused because a run with its id is still under way: the refused request's own
/// context of the CPM fails with error type [`RunIdInUse::ERROR_TYPE`] and this message (on
/// `cpm.pipeline.complete`, which the page follows); the running run is left alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run_id} is already under way")]
pub struct RunIdInUse {
    /// The run id in use.
    pub run_id: String,
}

impl RunIdInUse {
    /// The `error_type` of the refused request's failure.
    pub const ERROR_TYPE: &'static str = "RunIdInUse";
}

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<String>,
    runs: HashMap<String, RunRecord>,
    by_correlation: HashMap<String, String>,
    /// The CPM's request context of each run (to cancel it).
    requests: HashMap<String, RequestId>,
}

/// The CPM's registry of runs (shared, cheap to clone). [`Runs::stored`] keeps each record in
/// the app's database too (written in order by one task), and loads the newest at start, so
/// the run history survives a restart.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    inner: Arc<Mutex<Inner>>,
    /// Woken whenever a run is cancelled (for [`Runs::until_cancelled`]).
    cancelled: Arc<Notify>,
    /// Where changed records go to be written to the database (`None`: in memory only).
    saver: Option<tokio::sync::mpsc::UnboundedSender<RunRecord>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Runs {
    /// A registry kept in `db` too: the newest [`KEEP_RUNS`] records there are loaded (a run
    /// still `running` in them was cut short by a restart: it is listed as failed,
    /// `Interrupted`), and every change of a record is written back, in order, by a task of
    /// its own (a failed write is logged; the registry in memory stays right).
    pub async fn stored(
        db: Arc<dyn crate::modules::AppStore>,
    ) -> Result<Self, crate::modules::ModuleError> {
        let mut records = Vec::new();
        for json in db.run_records(KEEP_RUNS).await? {
            match serde_json::from_str::<RunRecord>(&json) {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::warn!(error = %e, "a stored run record does not decode; left out")
                }
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunRecord>();
        let runs = Self {
            saver: Some(tx),
            ..Self::default()
        };
        {
            let mut g = runs.lock();
            // Oldest first, so `order` ends with the newest.
            for mut r in records.into_iter().rev() {
                if r.status == "running" {
                    r.status = "failed".into();
                    r.error = Some(ErrorInfo {
                        error_type: "Interrupted".into(),
                        message: "the app stopped while the run was under way".into(),
                        retryable: false,
                    });
                    runs.save(&r);
                }
                g.by_correlation
                    .insert(r.correlation_id.clone(), r.run_id.clone());
                g.order.push_back(r.run_id.clone());
                g.runs.insert(r.run_id.clone(), r);
            }
        }
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let json = match serde_json::to_string(&r) {
                    Ok(json) => json,
                    Err(e) => {
                        tracing::warn!(run = %r.run_id, error = %e, "run record not encoded");
                        continue;
                    }
                };
                let started = i64::try_from(r.started_ms).unwrap_or(i64::MAX);
                if let Err(e) = db.put_run_record(&r.run_id, started, &json).await {
                    tracing::warn!(run = %r.run_id, error = %e, "run record not stored");
                }
            }
        });
        Ok(runs)
    }

    /// Hands a changed record to the writer (when the registry is stored).
    fn save(&self, r: &RunRecord) {
        if let Some(tx) = &self.saver {
            let _ = tx.send(r.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a run that starts; refuses it (and changes nothing) while a run with its id is
    /// still under way. A run id whose run has ended may be used again: the new run's record
    /// replaces the ended one's.
    pub(crate) fn started(&self, rec: RunRecord) -> Result<(), RunIdInUse> {
        let mut g = self.lock();
        if g.runs
            .get(&rec.run_id)
            .is_some_and(|r| r.status == "running")
        {
            return Err(RunIdInUse { run_id: rec.run_id });
        }
        if g.order.len() >= KEEP_RUNS
            && let Some(old) = g.order.pop_front()
            && let Some(r) = g.runs.remove(&old)
        {
            g.by_correlation.remove(&r.correlation_id);
            g.requests.remove(&old);
        }
        g.by_correlation
            .insert(rec.correlation_id.clone(), rec.run_id.clone());
        if g.runs.contains_key(&rec.run_id) {
            g.order.retain(|r| r != &rec.run_id);
        }
        g.order.push_back(rec.run_id.clone());
        self.save(&rec);
        g.runs.insert(rec.run_id.clone(), rec);
        Ok(())
    }

    /// Records a domain's result for `run_id` (once per domain) and returns how many of the
    /// run's domains are recorded now (`None`: no record of the run, e.g. evicted). The
    /// domains' results are handled by subscriptions of their own, so they may be recorded in
    /// any order: the run is complete when all are.
    pub(crate) fn domain_done(
        &self,
        run_id: &str,
        domain: &str,
        ms: u64,
        result: Option<Value>,
    ) -> Option<usize> {
        let mut g = self.lock();
        let r = g.runs.get_mut(run_id)?;
        if !r.domains.iter().any(|(d, _)| d == domain) {
            r.domains.push((domain.to_owned(), ms));
        }
        r.results
            .insert(domain.to_owned(), result.unwrap_or(Value::Null));
        self.save(r);
        Some(r.domains.len())
    }

    pub(crate) fn set_request(&self, run_id: &str, id: RequestId) {
        self.lock().requests.insert(run_id.to_owned(), id);
    }

    /// Marks a running run cancelled; returns the CPM's context of it (`None`: unknown, or
    /// not running).
    pub(crate) fn cancel(&self, run_id: &str) -> Option<RequestId> {
        let mut g = self.lock();
        let r = g.runs.get_mut(run_id).filter(|r| r.status == "running")?;
        r.status = "cancelled".into();
        r.finished_ms = Some(now_ms());
        r.error = Some(ErrorInfo {
            error_type: "Cancelled".into(),
            message: "cancelled by the frontend".into(),
            retryable: false,
        });
        self.save(r);
        let id = g.requests.get(run_id).copied();
        drop(g);
        self.cancelled.notify_waiters();
        id
    }

    /// Resolves once `run_id` is cancelled (at once if it already is).
    pub async fn until_cancelled(&self, run_id: &str) {
        loop {
            let notified = self.cancelled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a cancel between the check and the wait wakes it.
            notified.as_mut().enable();
            if self.is_cancelled(run_id) {
                return;
            }
            notified.await;
        }
    }

    /// Whether `run_id` was cancelled.
    pub fn is_cancelled(&self, run_id: &str) -> bool {
        self.lock()
            .runs
            .get(run_id)
            .is_some_and(|r| r.status == "cancelled")
    }

    pub(crate) fn finished(&self, run_id: &str, error: Option<ErrorInfo>) {
        if let Some(r) = self
            .lock()
            .runs
            .get_mut(run_id)
            .filter(|r| r.status != "cancelled")
        {
            r.finished_ms = Some(now_ms());
            r.status = if error.is_none() {
                "completed"
            } else {
                "failed"
            }
            .into();
            r.error = error;
            self.save(r);
        }
    }

    fn dead_letter(&self, correlation_id: MessageId, info: DeadLetterInfo) {
        let mut g = self.lock();
        let key = correlation_id.to_string();
        if let Some(run) = g.by_correlation.get(&key).cloned()
            && let Some(r) = g.runs.get_mut(&run)
        {
            r.dead_letters.push(info);
            self.save(r);
        }
    }

    /// Notes a performance anomaly on the run of `correlation_id` (whatever its status: the
    /// flag of the last domain may arrive after the run's result); other flows' are ignored.
    fn performance_anomaly(&self, correlation_id: &MessageId, anomaly: Anomaly) {
        let mut g = self.lock();
        if let Some(run) = g.by_correlation.get(&correlation_id.to_string()).cloned()
            && let Some(r) = g.runs.get_mut(&run)
        {
            r.performance_anomalies.push(anomaly.into());
            self.save(r);
        }
    }

    /// The run `run_id`.
    pub fn get(&self, run_id: &str) -> Option<RunRecord> {
        self.lock().runs.get(run_id).cloned()
    }

    /// Up to `limit` runs, newest first.
    pub fn list(&self, limit: usize) -> Vec<RunRecord> {
        let g = self.lock();
        g.order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|r| g.runs.get(r).cloned())
            .collect()
    }
}

/// The error handler's dead-letter sink: notes each dead letter on its run, then hands it to
/// the bus's own sink (a node's dead-letter queue).
pub(crate) struct RunsSink {
    pub(crate) runs: Runs,
    pub(crate) bus: Bus,
}

impl DeadLetterSink for RunsSink {
    fn put(&self, letter: DeadLetter) {
        self.runs.dead_letter(
            letter.envelope.correlation_id.clone(),
            DeadLetterInfo {
                id: letter.envelope.id.to_string(),
                topic: letter.envelope.topic.as_str().to_owned(),
                handler: letter.handler.as_ref().map(ToString::to_string),
                error: letter.error.clone(),
                attempts: letter.attempts,
            },
        );
        self.bus.dead_letter(letter);
    }
}

/// The CPM's subscription to the performance tracker's anomalies (a System → CPM edge, which
/// the layer rules allow): each is noted on the run whose correlation id its envelope
/// carries (the tracker publishes it from the handler of the step's completion).
pub(crate) fn on_performance_anomalies(b: ComponentBuilder, runs: Runs) -> ComponentBuilder {
    b.on::<Anomaly, _, _, _, _>(Anomaly::TOPIC, move |a, cx| {
        let runs = runs.clone();
        async move {
            runs.performance_anomaly(&cx.correlation_id(), a);
            Ok::<_, std::convert::Infallible>(())
        }
    })
}

/// The report's figures as CSV (`section,key,value`).
pub fn report_csv(t: &Tables, run: &str) -> Option<String> {
    let f = t.features.get(run)?;
    let mut s = String::from("section,key,value\n");
    let staged = t.raw_rows.get(run).map_or(0, Vec::len);
    let issues = t.quality_issues.get(run).map_or(0, Vec::len);
    let _ = writeln!(s, "quality,rows_staged,{staged}");
    let _ = writeln!(s, "quality,valid_rows,{}", f.rows);
    let _ = writeln!(s, "quality,issues,{issues}");
    let _ = writeln!(s, "revenue,total,{:.2}", f.total_revenue);
    let _ = writeln!(s, "revenue,mean_per_row,{:.2}", f.mean_row_revenue);
    let _ = writeln!(s, "revenue,std_per_row,{:.2}", f.std_row_revenue);
    for (r, v) in &f.revenue_by_region {
        let _ = writeln!(s, "revenue_by_region,{r},{v:.2}");
    }
    for (p, u) in &f.units_by_product {
        let _ = writeln!(s, "units_by_product,{p},{u}");
    }
    for (i, v) in f.daily_revenue.iter().enumerate() {
        let _ = writeln!(s, "daily_revenue,day {},{v:.2}", i + 1);
    }
    if let Some(ins) = t.insights.get(run) {
        let _ = writeln!(s, "insight,trend,{}", ins.trend);
        let _ = writeln!(s, "insight,trend_per_day,{:.2}", ins.trend_per_day);
        for a in &ins.anomalies {
            let _ = writeln!(s, "anomaly,day {},{:.2}", a.day + 1, a.revenue);
        }
    }
    for r in t.recommendations.get(run).into_iter().flatten() {
        let action = r.action.replace('"', "\"\"");
        let _ = writeln!(s, "recommendation,{},\"{action}\"", r.priority);
    }
    Some(s)
}

/// Everything the frontend shows of one run; `performance` is the tracker's settings (`None`:
/// no tracker runs, `"performance_tracker": null`).
pub async fn run_detail(
    store: &Store,
    runs: &Runs,
    performance: Option<PerformanceSettings>,
    q: &RunQuery,
) -> Value {
    let Some(run) = runs.get(&q.run_id) else {
        return json!({ "run": null });
    };
    let t = match store.run_tables(&q.run_id).await {
        Ok(t) => t,
        Err(e) => {
            return json!({ "run": run, "performance_tracker": performance, "store_error": e.message });
        }
    };
    let id = &q.run_id;
    let preview_n = q.preview_rows.unwrap_or(20).min(500);
    let raw = t.raw_rows.get(id);
    let issues = t.quality_issues.get(id);
    let staged = raw.map(|rows| {
        json!({
            "rows": rows.len(),
            "columns": COLUMNS,
            "preview": rows.iter().take(preview_n).collect::<Vec<_>>(),
        })
    });
    let quality = issues.map(|list| {
        let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
        for i in list {
            *by_rule.entry(i.rule.as_str()).or_default() += 1;
        }
        let checks: Vec<Value> = QUALITY_CHECKS
            .iter()
            .map(|(rule, what)| {
                let failed = by_rule.get(rule).copied().unwrap_or(0);
                json!({ "rule": rule, "description": what, "failed": failed, "passed": failed == 0 })
            })
            .collect();
        let failed_rows: Vec<Value> = list
            .iter()
            .take(200)
            .map(|i| {
                let fields = raw
                    .and_then(|rows| rows.iter().find(|r| r.line == i.line))
                    .map(|r| r.fields.clone())
                    .unwrap_or_default();
                json!({ "line": i.line, "column": i.column, "rule": i.rule, "value": i.value, "fields": fields })
            })
            .collect();
        json!({
            "valid": t.sales.get(id).map_or(0, Vec::len),
            "issues": list.len(),
            "checks": checks,
            "failed_rows": failed_rows,
        })
    });
    json!({
        "run": run,
        "performance_tracker": performance,
        "store": store.kind(),
        "staged": staged,
        "quality": quality,
        "features": t.features.get(id),
        "insights": t.insights.get(id),
        "recommendations": t.recommendations.get(id),
        "report": {
            "markdown": t.reports.get(id),
            "csv": report_csv(&t, id),
        },
    })
}

/// Registers the CPM's two queries on `bus`; they end with the returned subscriptions.
pub(crate) async fn start_queries(
    bus: &Bus,
    runs: Runs,
    store: Store,
    performance: Option<PerformanceSettings>,
) -> Result<Vec<Subscription>, SubscribeError> {
    let list = runs.clone();
    let kind = store.kind();
    let history = bus
        .handle::<RunsQuery, _, _, _>(move |q: RunsQuery, _ctx| {
            let runs = list.clone();
            async move {
                let limit = q.limit.unwrap_or(50).min(KEEP_RUNS);
                Ok::<_, std::convert::Infallible>(
                    json!({ "runs": runs.list(limit), "store": kind }),
                )
            }
        })
        .start()
        .await?;
    let one = bus
        .handle::<RunQuery, _, _, _>(move |q: RunQuery, _ctx| {
            let (runs, store) = (runs.clone(), store.clone());
            async move {
                Ok::<_, std::convert::Infallible>(run_detail(&store, &runs, performance, &q).await)
            }
        })
        .start()
        .await?;
    Ok(vec![history, one])
}
