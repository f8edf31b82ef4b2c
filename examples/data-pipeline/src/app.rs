//! The app's components (managers, relays, processors, the CPM), [`DemoApp`] and [`run_demo`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::{BoxError, Bus, Message, MessageId, PublishError};
use switchyard_components::builtin::{
    AlertManager, AlertRule, Channel, Condition, ErrorHandler, ErrorHandlerStats, HealthChecker,
    PerformanceTracker, ResourceMonitor, ResourceThresholds, RetryExhausted, RetryPolicy,
    RetryRequest, Severity, StateTracker,
};
use switchyard_components::trace::TraceRecorder;
use switchyard_components::{
    Assembly, Completion, ComponentBuilder, ComponentBus, ComponentCtx, ContextConfig, ErrorInfo,
    Role, Running, StartError, Topology, exhausted_topic, retry_topic, topic_name,
};
use tokio::sync::mpsc;

use crate::frontend_api::{
    RunIdInUse, RunRecord, Runs, RunsSink, now_ms, on_performance_anomalies, staged_input,
    start_queries,
};
use crate::modules::{self, ModuleError, Store};
use crate::outage::Outages;
use crate::{
    BenchStats, DATASET, DOMAINS, DemoConfig, DemoError, DemoReport, Job, PipelineCancel,
    PipelineRequest, RunOutcome, raw_hop_baseline,
};

mod demo;

pub use demo::run_demo;

pub(crate) fn total_len<T>(m: &BTreeMap<String, Vec<T>>) -> usize {
    m.values().map(Vec::len).sum()
}

/// The module of `domain`'s processor, called on the store.
async fn work(domain: &str, s: &Store, j: &Job) -> Result<Value, ModuleError> {
    let run = &j.run_id;
    match domain {
        "staging" => modules::stage(s, run, &j.dataset)
            .await
            .map(|n| json!({ "rows_staged": n })),
        "quality" => modules::validate(s, run)
            .await
            .map(|(v, i)| json!({ "valid": v, "issues": i })),
        "analytics" => modules::compute_features(s, run).await.map(|f| {
            json!({ "rows": f.rows, "total_revenue": f.total_revenue, "days": f.daily_revenue.len() })
        }),
        "insight" => modules::detect_insights(s, run, 2.5)
            .await
            .map(|i| json!({ "anomalies": i.anomalies.len(), "trend": i.trend })),
        "report" => modules::render_report(s, run)
            .await
            .map(|n| json!({ "bytes": n })),
        _ => modules::recommend(s, run)
            .await
            .map(|r| json!({ "recommendations": r.len() })),
    }
}

fn name(domain: &str, role: Role) -> String {
    format!("{domain}-{role}")
}

fn job_of(metadata: &BTreeMap<String, String>) -> Result<Job, BoxError> {
    let text = metadata
        .get("job")
        .ok_or_else(|| BoxError::from("context has no job metadata"))?;
    Ok(serde_json::from_str(text)?)
}

/// Begins the manager's context for `job` and submits it to the domain's service.
async fn manager_begin(cx: &ComponentCtx, d: &str, a: &str, job: Job) -> Result<(), BoxError> {
    let ctx = cx.begin(a).await?;
    ctx.set_metadata("job", serde_json::to_string(&job)?)?;
    ctx.set_metadata("run_id", job.run_id.clone())?;
    ctx.start().await?;
    ctx.publish_to(&topic_name(d, a, Role::Service.request_phase()), job)
        .await?;
    Ok(())
}

/// A domain manager: starts on `trigger`, submits to its service, completes when the service
/// reports success, resubmits on the error handler's retry request, fails when it gives up.
/// A run the CPM cancelled takes no further step: the manager neither starts on it nor
/// resubmits it (its open context ends cancelled).
fn manager(
    d: &'static str,
    a: &'static str,
    previous: Option<(&'static str, &'static str)>,
    runs: Runs,
) -> ComponentBuilder {
    let mut b = ComponentBuilder::new(name(d, Role::Manager), Role::Manager, d)
        .publishes(&topic_name(d, a, Role::Service.request_phase()));
    let start_runs = runs.clone();
    b = match previous {
        None => b.on::<Job, _, _, _, _>(&topic_name(d, a, "request"), move |job, cx| {
            let runs = start_runs.clone();
            async move {
                if runs.is_cancelled(&job.run_id) {
                    return Ok(());
                }
                manager_begin(&cx, d, a, job).await
            }
        }),
        Some((pd, pa)) => b.on::<Completion<Value>, _, _, _, _>(
            &topic_name(pd, pa, Role::Manager.result_phase()),
            move |done, cx| {
                let runs = start_runs.clone();
                async move {
                    if !done.is_ok() {
                        return Ok(());
                    }
                    let mut job = job_of(&done.metadata)?;
                    if runs.is_cancelled(&job.run_id) {
                        return Ok(());
                    }
                    job.attempt = 1;
                    manager_begin(&cx, d, a, job).await
                }
            },
        ),
    };
    b.on::<Completion<Value>, _, _, _, _>(
        &topic_name(d, a, Role::Service.result_phase()),
        move |done, cx| async move {
            let Some(ctx) = cx.context_for(&done) else {
                return Ok::<_, BoxError>(());
            };
            if done.is_ok() {
                ctx.complete(&done.result.unwrap_or(Value::Null)).await?;
            } else {
                // Wait for the error handler: a retry request or its giving up.
                let failures = ctx
                    .snapshot()
                    .and_then(|c| c.metrics.values.get("failures").copied());
                ctx.record("failures", failures.unwrap_or(0.0) + 1.0)?;
            }
            Ok(())
        },
    )
    .on::<RetryRequest, _, _, _, _>(&retry_topic(d), move |req, cx| {
        let runs = runs.clone();
        async move {
            let Some(ctx) = cx.context() else {
                return Ok::<_, BoxError>(());
            };
            let Some(snapshot) = ctx.snapshot() else {
                return Ok(());
            };
            let mut job = job_of(&snapshot.metadata)?;
            if runs.is_cancelled(&job.run_id) {
                ctx.cancel(format!("run {} was cancelled", job.run_id))
                    .await?;
                return Ok(());
            }
            job.attempt = req.attempt;
            ctx.record("attempts", f64::from(req.attempt))?;
            ctx.publish_to(&topic_name(d, a, Role::Service.request_phase()), job)
                .await?;
            Ok(())
        }
    })
    .on::<RetryExhausted, _, _, _, _>(&exhausted_topic(d), move |ex, cx| async move {
        if let Some(ctx) = cx.context() {
            let info = ErrorInfo {
                error_type: ex.error_type,
                message: format!("gave up after {} attempt(s): {}", ex.attempts, ex.message),
                retryable: false,
            };
            ctx.fail_propagated(&info).await?;
        }
        Ok::<_, BoxError>(())
    })
}

/// A service or handler: passes the job one layer down, and the result one layer up.
fn relay(d: &'static str, a: &'static str, role: Role, below: Role) -> ComponentBuilder {
    ComponentBuilder::new(name(d, role), role, d)
        .publishes(&topic_name(d, a, below.request_phase()))
        .on::<Job, _, _, _, _>(
            &topic_name(d, a, role.request_phase()),
            move |job, cx| async move {
                let ctx = cx.begin(a).await?;
                ctx.set_metadata("attempt", job.attempt.to_string())?;
                ctx.start().await?;
                ctx.publish_to(&topic_name(d, a, below.request_phase()), job)
                    .await?;
                Ok::<_, BoxError>(())
            },
        )
        .on::<Completion<Value>, _, _, _, _>(
            &topic_name(d, a, below.result_phase()),
            move |done, cx| async move {
                let Some(ctx) = cx.context_for(&done) else {
                    return Ok::<_, BoxError>(());
                };
                match (done.is_ok(), done.error) {
                    (true, _) => ctx.complete(&done.result.unwrap_or(Value::Null)).await?,
                    (false, Some(e)) => ctx.fail_propagated(&e).await?,
                    (false, None) => {
                        let e = ErrorInfo {
                            error_type: "Unknown".into(),
                            message: "lower layer failed".into(),
                            retryable: false,
                        };
                        ctx.fail_propagated(&e).await?
                    }
                }
                Ok(())
            },
        )
}

/// A processor: calls its module on the store and reports the result or the failure.
fn processor(
    d: &'static str,
    a: &'static str,
    store: Store,
    fail: Option<(u32, Arc<AtomicU32>)>,
    (slow_delay, hold_limit, runs, outages): (Duration, Duration, Runs, Outages),
) -> ComponentBuilder {
    let mut b = ComponentBuilder::new(name(d, Role::Processor), Role::Processor, d);
    if d == DOMAINS[0].0 {
        let store = store.clone();
        b = b.on::<Job, _, _, _, _>(
            &topic_name(d, "preview", Role::Processor.request_phase()),
            move |job, cx| {
                let store = store.clone();
                async move {
                    let ctx = cx.begin("preview").await?;
                    ctx.start().await?;
                    match modules::preview(&store, &job.dataset).await {
                        Ok((lines, header)) => {
                            ctx.complete(&json!({ "lines": lines, "header": header }))
                                .await?
                        }
                        Err(e) => ctx.fail(e.kind, e.message, e.retryable).await?,
                    }
                    Ok::<_, BoxError>(())
                }
            },
        );
    }
    b.on::<Job, _, _, _, _>(
        &topic_name(d, a, Role::Processor.request_phase()),
        move |job, cx| {
            let (store, fail, runs) = (store.clone(), fail.clone(), runs.clone());
            let outages = outages.clone();
            async move {
                let ctx = cx.begin(a).await?;
                ctx.set_metadata("run_id", job.run_id.clone())?;
                ctx.start().await?;
                if job.slow.as_deref() == Some(d) {
                    // Latency injection: the step takes longer than its baseline.
                    tokio::time::sleep(slow_delay).await;
                }
                if job.hold.as_deref() == Some(d) {
                    // Hold injection: the step stays under way until the run is cancelled.
                    let _ =
                        tokio::time::timeout(hold_limit, runs.until_cancelled(&job.run_id)).await;
                }
                let injected = job.fail.as_deref() == Some(d)
                    || fail
                        .as_ref()
                        .is_some_and(|(times, n)| n.fetch_add(1, Ordering::Relaxed) < *times);
                let result = if injected {
                    Err(ModuleError {
                        kind: "InjectedFailure".into(),
                        message: format!(
                            "{d} processor failed on purpose (attempt {})",
                            job.attempt
                        ),
                        retryable: true,
                    })
                } else if let Some(e) = outages.failure(d, &job, &cx.envelope().id) {
                    Err(e)
                } else {
                    work(d, &store, &job).await
                };
                match result {
                    Ok(v) => ctx.complete(&v).await?,
                    Err(e) => ctx.fail(e.kind, e.message, e.retryable).await?,
                }
                Ok::<_, BoxError>(())
            }
        },
    )
}

/// The CPM: receives the frontend's request, starts staging, follows every domain's
/// completion, and reports the whole run to the frontend.
fn cpm(store: Store, runs: Runs) -> ComponentBuilder {
    let done_runs = runs.clone();
    let (first_d, first_a) = DOMAINS[0];
    let mut b = ComponentBuilder::new("cpm", Role::Cpm, "cpm")
        .publishes(&topic_name(first_d, first_a, "request"))
        .publishes(&topic_name(
            first_d,
            "preview",
            Role::Processor.request_phase(),
        ))
        .on::<Completion<Value>, _, _, _, _>(
            &topic_name(first_d, "preview", Role::Processor.result_phase()),
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    match done.error {
                        None => ctx.complete(&done.result).await?,
                        Some(e) => ctx.fail_propagated(&e).await?,
                    }
                }
                Ok::<_, BoxError>(())
            },
        )
        .on::<PipelineCancel, _, _, _, _>(PipelineCancel::TOPIC, {
            let runs = runs.clone();
            move |c, cx| {
                let runs = runs.clone();
                async move {
                    // Marks the run cancelled (managers check it before each further step),
                    // then ends the CPM's context of the run as cancelled.
                    if let Some(id) = runs.cancel(&c.run_id)
                        && let Some(ctx) = cx.context_by_id(id)
                    {
                        ctx.cancel(format!("run {} cancelled by the frontend", c.run_id))
                            .await?;
                    }
                    Ok::<_, BoxError>(())
                }
            }
        })
        .on::<PipelineRequest, _, _, _, _>(PipelineRequest::TOPIC, move |req, cx| {
            let (store, runs) = (store.clone(), runs.clone());
            async move {
                // The file to stage, written only once the run is registered: a refused start
                // must not overwrite the file of the run under way with its id.
                let (dataset, input, contents) = staged_input(&req);
                let ctx = cx.begin("pipeline").await?;
                ctx.set_metadata("run_id", req.run_id.clone())?;
                let registered = runs.started(RunRecord {
                    run_id: req.run_id.clone(),
                    correlation_id: ctx.correlation_id().to_string(),
                    dataset: dataset.clone(),
                    input: input.into(),
                    fail: req.fail.clone(),
                    slow: req.slow.clone(),
                    started_ms: now_ms(),
                    finished_ms: None,
                    status: "running".into(),
                    error: None,
                    domains: Vec::new(),
                    results: BTreeMap::new(),
                    dead_letters: Vec::new(),
                    performance_anomalies: Vec::new(),
                });
                if let Err(refused) = registered {
                    // This request's own context ends failed (its `cpm.pipeline.complete`
                    // says why); the run under way keeps its record, file and rows.
                    ctx.fail(RunIdInUse::ERROR_TYPE, refused.to_string(), false)
                        .await?;
                    return Ok(());
                }
                runs.set_request(&req.run_id, ctx.id());
                if let Some(contents) = contents
                    && let Err(e) = store.write_file(&dataset, contents).await
                {
                    let info = ErrorInfo {
                        error_type: "StagingFile".into(),
                        message: format!("cannot write {dataset}: {e}"),
                        retryable: false,
                    };
                    runs.finished(&req.run_id, Some(info.clone()));
                    ctx.fail(info.error_type, info.message, false).await?;
                    return Ok(());
                }
                ctx.start().await?;
                let job = Job {
                    run_id: req.run_id,
                    dataset,
                    attempt: 1,
                    fail: req.fail,
                    slow: req.slow,
                    hold: req.hold,
                    outage: req.outage,
                };
                ctx.publish_to(&topic_name(first_d, first_a, "request"), job)
                    .await?;
                Ok::<_, BoxError>(())
            }
        });
    for (i, (d, a)) in DOMAINS.iter().enumerate() {
        let last = i + 1 == DOMAINS.len();
        let runs = done_runs.clone();
        b = b.on::<Completion<Value>, _, _, _, _>(
            &topic_name(d, a, Role::Manager.result_phase()),
            move |done, cx| {
                let runs = runs.clone();
                async move {
                    let Some(ctx) = cx.context() else {
                        return Ok::<_, BoxError>(());
                    };
                    let run_id = ctx
                        .snapshot()
                        .and_then(|c| c.metadata.get("run_id").cloned())
                        .unwrap_or_default();
                    if !done.is_ok() {
                        let e = done.error.unwrap_or(ErrorInfo {
                            error_type: "Unknown".into(),
                            message: "domain failed".into(),
                            retryable: false,
                        });
                        let info = ErrorInfo {
                            message: format!("{} failed: {}", done.domain, e.message),
                            ..e
                        };
                        runs.finished(&run_id, Some(info.clone()));
                        ctx.fail_propagated(&info).await?;
                        return Ok(());
                    }
                    ctx.record(format!("{}_ms", done.domain), done.duration_ms as f64)?;
                    ctx.set_metadata(
                        done.domain.to_string(),
                        done.result
                            .clone()
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    )?;
                    // Recorded last, after the context's metadata: the handler that records
                    // the run's last domain (whichever domain's result came in last, not the
                    // last domain of the chain) completes it with every domain in. A run with
                    // no record (evicted) completes with the chain's last domain.
                    let recorded =
                        runs.domain_done(&run_id, &done.domain, done.duration_ms, done.result);
                    if recorded.map_or(last, |n| n == DOMAINS.len()) {
                        let summary = ctx
                            .snapshot()
                            .map(|c| serde_json::to_value(&c.metadata).unwrap_or(Value::Null))
                            .unwrap_or(Value::Null);
                        runs.finished(&run_id, None);
                        ctx.complete(&summary).await?;
                    }
                    Ok(())
                }
            },
        );
    }
    on_performance_anomalies(b, done_runs)
}

/// Waits for the frontend to receive the result of flow `correlation_id`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Completion<Value>>,
    correlation_id: MessageId,
    timeout: Duration,
    run_id: &str,
) -> Result<Completion<Value>, DemoError> {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(done) if done.correlation_id == correlation_id => return Ok(done),
                Some(_) => continue,
                None => return Err(DemoError::FrontendGone),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| DemoError::Timeout {
            run_id: run_id.to_owned(),
            after: timeout,
        })?
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The reference app assembled on a bus the caller owns (a node's, for example): every
/// component subscribed, the CSV written to its store, ready for [`submit`](Self::submit).
/// [`run_demo`] is this on a fresh bus, plus a preview, a refused publish and a report.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use data_pipeline::{DemoApp, DemoConfig, DATASET};
/// let bus = switchyard::Bus::new();
/// let mut app = DemoApp::start(&bus, &DemoConfig { rows: 60, ..DemoConfig::default() }).await?;
/// let ok = app.run("run-1", DATASET, Duration::from_secs(10)).await?;
/// assert!(ok.ok);
/// let failed = app.run("run-2", "missing.csv", Duration::from_secs(10)).await?;
/// assert!(!failed.ok); // the error handler gave up: one dead letter
/// app.stop();
/// # Ok(()) }
/// ```
pub struct DemoApp {
    running: Running,
    front: ComponentBus,
    results: mpsc::UnboundedReceiver<Completion<Value>>,
    topology: Topology,
    store: Store,
    tracker: StateTracker,
    errors: ErrorHandler,
    health: HealthChecker,
    alerts: AlertManager,
    resources: ResourceMonitor,
    runs: Runs,
    queries: Vec<switchyard::Subscription>,
}

impl std::fmt::Debug for DemoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoApp")
            .field("components", &self.topology.components().len())
            .field("errors", &self.errors.stats())
            .finish_non_exhaustive()
    }
}

impl DemoApp {
    /// Opens the store `config.database_url` names (SQLite in memory or in
    /// `config.data_dir` by default; PostgreSQL for a `postgres://` URL, migrated), then
    /// [`start_on`](Self::start_on) it.
    pub async fn start(bus: &Bus, config: &DemoConfig) -> Result<DemoApp, DemoError> {
        let store = Store::open(
            config.database_url.as_deref(),
            &config.database_schema,
            config.data_dir.clone(),
        )
        .await?;
        Self::start_on(bus, config, store).await
    }

    /// Writes the generated CSV (`config.rows`, `config.seed`) to `store` (its `files` table,
    /// or its directory), assembles the frontend, the CPM, the error handler, the observers
    /// (when `config.observers`) and the four layers of every domain on `bus`, starts them
    /// and sends one heartbeat. `config.runs`, `show_violation` and `run_timeout` are
    /// [`run_demo`]'s; the caller decides what to submit.
    pub async fn start_on(
        bus: &Bus,
        config: &DemoConfig,
        store: Store,
    ) -> Result<DemoApp, DemoError> {
        store
            .write_file(DATASET, modules::generate_csv(config.rows, config.seed))
            .await?;
        let tracker = StateTracker::new(100_000);
        let runs = Runs::stored(store.shared_database()).await.map_err(|e| {
            modules::StoreError::Unavailable {
                url: store.describe(),
                message: format!("run history: {e}"),
            }
        })?;
        let outages = Outages::default();
        // Retried at once: the demo's failures are injected, not a dependency recovering.
        let errors = ErrorHandler::new(
            RetryPolicy::attempts(config.max_attempts).initial_delay(Duration::ZERO),
        )
        .dead_letters(Arc::new(RunsSink {
            runs: runs.clone(),
            bus: bus.clone(),
        }));
        let health = HealthChecker::new(Duration::from_secs(60), 0.5);
        let p = config.performance;
        let perf = PerformanceTracker::new(p.alpha, p.k, p.floor_ms, p.warmup);
        let alerts = AlertManager::new(
            vec![
                AlertRule {
                    name: "domain-error-rate".into(),
                    severity: Severity::Critical,
                    condition: Condition::ErrorRate {
                        max_ratio: 0.5,
                        window: 20,
                        min_requests: 5,
                    },
                },
                AlertRule {
                    name: "latency-anomaly".into(),
                    severity: Severity::Warning,
                    condition: Condition::Anomaly,
                },
                AlertRule {
                    name: "component-health".into(),
                    severity: Severity::Warning,
                    condition: Condition::Unhealthy,
                },
            ],
            vec![Channel::Topic],
        );
        let resources = ResourceMonitor::new(ResourceThresholds::default());
        let (tx, results) = mpsc::unbounded_channel::<Completion<Value>>();

        let to_runner = move |done: Completion<Value>, _cx| {
            let tx = tx.clone();
            async move {
                // The receiver is gone only when the app was dropped; nothing to tell then.
                let _ = tx.send(done);
                Ok::<_, std::convert::Infallible>(())
            }
        };
        let frontend = ComponentBuilder::new("frontend", Role::Frontend, "frontend")
            .publishes(PipelineRequest::TOPIC)
            .publishes(PipelineCancel::TOPIC)
            .publishes("cpm.query.*")
            .on::<Completion<Value>, _, _, _, _>(
                &topic_name("cpm", "pipeline", Role::Cpm.result_phase()),
                to_runner.clone(),
            )
            .on::<Completion<Value>, _, _, _, _>(
                &topic_name("cpm", "preview", Role::Cpm.result_phase()),
                to_runner,
            );
        let mut assembly = Assembly::new(bus)
            .contexts(ContextConfig {
                timeout: config.context_timeout,
                ..ContextConfig::default()
            })
            .component(frontend)
            .component(cpm(store.clone(), runs.clone()))
            .component(errors.component());
        if config.observers {
            assembly = assembly
                .component(tracker.component())
                .component(health.component())
                .component(perf.component())
                .component(alerts.component())
                .component(resources.component());
        }
        for (i, (d, a)) in DOMAINS.iter().enumerate() {
            let previous = i.checked_sub(1).map(|p| DOMAINS[p]);
            let fail = config
                .fail
                .as_ref()
                .filter(|f| f.domain == *d)
                .map(|f| (f.times, Arc::new(AtomicU32::new(0))));
            assembly = assembly
                .component(manager(d, a, previous, runs.clone()))
                .component(relay(d, a, Role::Service, Role::Handler))
                .component(relay(d, a, Role::Handler, Role::Processor))
                .component(processor(
                    d,
                    a,
                    store.clone(),
                    fail,
                    (
                        config.slow_delay,
                        config.hold_limit,
                        runs.clone(),
                        outages.clone(),
                    ),
                ));
        }
        let topology = assembly.topology().map_err(StartError::from)?;
        let running = assembly.start().await?;
        let front = running
            .component_bus("frontend")
            .ok_or(DemoError::FrontendGone)?;
        running.heartbeat().await?;
        let perf_settings = config.observers.then_some(config.performance);
        let queries = start_queries(bus, runs.clone(), store.clone(), perf_settings).await?;
        Ok(DemoApp {
            running,
            front,
            results,
            topology,
            store,
            tracker,
            errors,
            health,
            alerts,
            resources,
            runs,
            queries,
        })
    }

    /// The CPM's registry of runs (what `cpm.query.runs` answers).
    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// The declared topology (every component, its role and its edges).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The started assembly (contexts, enforcement, observed edges).
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// The store the processors' modules read and write.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The health checker (heartbeats, status updates, errors per component).
    pub fn health(&self) -> &HealthChecker {
        &self.health
    }

    /// The error handler's counters.
    pub fn errors(&self) -> ErrorHandlerStats {
        self.errors.stats()
    }

    /// The frontend asks the CPM to run the pipeline on `dataset` (a file in the store;
    /// [`DATASET`] is the generated one, any other name fails in staging). Returns the
    /// flow's correlation id; its result arrives through [`next_result`](Self::next_result).
    pub async fn submit(&self, run_id: &str, dataset: &str) -> Result<MessageId, DemoError> {
        self.submit_request(PipelineRequest::file(run_id, dataset))
            .await
    }

    /// The frontend sends `request` to the CPM (generated rows, CSV text, the failure and
    /// latency switches). Returns the flow's correlation id.
    pub async fn submit_request(&self, request: PipelineRequest) -> Result<MessageId, DemoError> {
        let env = request.to_envelope()?;
        let correlation_id = env.correlation_id.clone();
        self.front.publish_envelope(env).await?;
        Ok(correlation_id)
    }

    /// The next result the frontend received (a completed or failed flow), in arrival order.
    /// `None` once the app's components are gone.
    pub async fn next_result(&mut self) -> Option<Completion<Value>> {
        self.results.recv().await
    }

    /// Submits one run and waits up to `timeout` for its result (results of other flows
    /// arriving meanwhile are skipped).
    pub async fn run(
        &mut self,
        run_id: &str,
        dataset: &str,
        timeout: Duration,
    ) -> Result<RunOutcome, DemoError> {
        let t0 = Instant::now();
        let correlation_id = self.submit(run_id, dataset).await?;
        let done = wait_for(&mut self.results, correlation_id.clone(), timeout, run_id).await?;
        Ok(RunOutcome {
            run_id: run_id.to_owned(),
            correlation_id,
            ok: done.is_ok(),
            error: done.error.clone(),
            latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Unsubscribes every component.
    pub fn stop(self) {
        drop(self.queries);
        self.running.stop();
    }
}
