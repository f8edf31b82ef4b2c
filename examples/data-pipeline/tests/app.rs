//! The reference app end to end: database contents, report, trace, state machine, retries and
//! the dead-letter queue; every test once on SQLite and once on PostgreSQL (a fresh schema of
//! the local `test` database; skipped loudly when it is unreachable and CI is unset).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use data_pipeline::modules::{Store, StoreError};
use data_pipeline::testdb::{self, TestPg};
use data_pipeline::{
    DATASET, DOMAINS, DemoApp, DemoConfig, DemoError, FailurePlan, PerformanceSettings,
    PipelineRequest, run_demo,
};

/// The database a test runs on.
enum Db {
    Sqlite,
    Postgres(TestPg),
}

impl Db {
    /// `c` on this database.
    fn config(&self, c: DemoConfig) -> DemoConfig {
        match self {
            Db::Sqlite => c,
            Db::Postgres(pg) => DemoConfig {
                database_url: Some(testdb::url()),
                database_schema: pg.schema().to_owned(),
                ..c
            },
        }
    }

    fn pg(&self) -> Option<&TestPg> {
        match self {
            Db::Sqlite => None,
            Db::Postgres(pg) => Some(pg),
        }
    }
}

/// Defines, for each `async fn name(db: &Db) { ... }`, a module `name` with two tests:
/// `sqlite` and `postgres`.
macro_rules! on_both_stores {
    ($(async fn $name:ident($db:ident: &Db) $body:block)*) => {$(
        mod $name {
            use super::*;

            async fn body($db: &Db) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body(&Db::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(pg) = TestPg::new(stringify!($name)).await else {
                    return;
                };
                let db = Db::Postgres(pg);
                body(&db).await;
                if let Db::Postgres(pg) = db {
                    pg.finish().await;
                }
            }
        }
    )*};
}

fn config() -> DemoConfig {
    DemoConfig {
        rows: 600,
        ..DemoConfig::default()
    }
}

on_both_stores! {
    async fn the_pipeline_runs_end_to_end(db: &Db) {
    let report = run_demo(db.config(config())).await.unwrap();
    assert_eq!(report.runs.len(), 1);
    let run = &report.runs[0];
    assert!(run.ok, "{:?}", run.error);

    // Database contents: 600 lines staged, 1 in 25 invalid and recorded as a quality issue.
    let t = &report.tables;
    assert!(t.files.contains_key(DATASET));
    assert_eq!(t.raw_rows[&run.run_id].len(), 600);
    assert_eq!(t.sales[&run.run_id].len(), 576);
    let issues = &t.quality_issues[&run.run_id];
    assert_eq!(issues.len(), 24);
    for rule in [
        "rule.units_non_negative",
        "schema.required",
        "rule.known_region",
        "schema.integer",
        "schema.columns",
    ] {
        assert!(issues.iter().any(|i| i.rule == rule), "no issue for {rule}");
    }
    let f = &t.features[&run.run_id];
    assert_eq!(f.rows, 576);
    assert_eq!(f.daily_revenue.len(), 30);
    let total: f64 = t.sales[&run.run_id].iter().map(|r| r.revenue()).sum();
    assert!((f.total_revenue - total).abs() < 1e-6);
    // The spike on day 18 (index 17) is found, and the trend is rising.
    let ins = &t.insights[&run.run_id];
    assert_eq!(
        ins.anomalies.iter().map(|a| a.day).collect::<Vec<_>>(),
        vec![17]
    );
    assert_eq!(ins.trend, "rising");
    // The report and the recommendations.
    let md = &t.reports[&run.run_id];
    assert!(md.contains("- valid rows: 576"), "{md}");
    assert!(md.contains("- quality issues: 24"), "{md}");
    assert!(md.contains("anomaly: day 18"), "{md}");
    let recs = &t.recommendations[&run.run_id];
    assert!(recs.iter().any(|r| r.action == "investigate day 18"));
    assert!(recs.iter().any(|r| r.priority == "high"));
    // On PostgreSQL, the rows are in the test's schema, as plain SQL sees them.
    if let Some(pg) = db.pg() {
        let n = |table: &str| {
            let sql = format!("SELECT COUNT(*) FROM {{schema}}.{table} WHERE run = 'run-001'");
            async move { pg.count(&sql).await }
        };
        assert_eq!(n("raw_rows").await, 600);
        assert_eq!(n("sales").await, 576);
        assert_eq!(n("quality_issues").await, 24);
        assert_eq!(n("anomalies").await, 1);
        assert_eq!(n("reports").await, 1);
        assert_eq!(n("recommendations").await, recs.len() as i64);
        let total = pg
            .count("SELECT ROUND(total_revenue)::BIGINT FROM {schema}.features WHERE run = 'run-001'")
            .await;
        assert_eq!(total, f.total_revenue.round() as i64);
    }

    // Lifecycle: every context ended, every status update followed the state machine.
    assert_eq!(report.contexts_left, 0);
    // cpm + 6 domains × 4 layers, plus the preview (cpm and staging processor)
    assert_eq!(report.contexts.created, 27);
    assert_eq!(report.contexts.completed, 27);
    assert!(
        report.state_anomalies.is_empty(),
        "{:?}",
        report.state_anomalies
    );
    assert_eq!(report.status_updates, 81);
    // The direct CPM → processor preview.
    let preview = report.preview.as_ref().unwrap();
    assert_eq!(preview["lines"], 600);
    assert_eq!(preview["header"], "date,region,product,units,unit_price");
    let observed = &report.observed_mermaid;
    assert!(
        observed.contains("cpm -- \"staging.preview.execute ×1\" --> staging_processor"),
        "{observed}"
    );
    assert!(
        observed.contains("staging_processor -- \"staging.preview.processed ×1\" --> cpm"),
        "{observed}"
    );
    assert_eq!(report.errors.errors, 0);

    // Enforcement: only the deliberate violation.
    assert_eq!(report.enforcement.refused, 1);
    let v = report.violation_demo.as_deref().unwrap();
    assert!(
        v.contains("`frontend`") && v.contains("`staging-processor`"),
        "{v}"
    );
    assert!(report.topology_mermaid.contains("staging_manager"));
    assert!(report.observed_mermaid.contains("staging.load.submit ×1"));
    assert!(
        report
            .health
            .iter()
            .all(|h| h.status == switchyard_components::builtin::HealthStatus::Healthy)
    );
}

    async fn the_trace_of_one_request_is_the_expected_causal_tree(db: &Db) {
    let report = run_demo(db.config(config())).await.unwrap();
    let t = report
        .trace
        .pruned(|n| !n.topic.ends_with(".status.update"));
    assert_eq!(t.roots.len(), 1, "{}", t.render());
    let root = &t.roots[0];
    assert_eq!(root.topic, "cpm.pipeline.request");
    assert_eq!(root.source.as_deref(), Some("frontend"));
    // Without status updates the flow is one chain: request → each domain down and up → result.
    let mut expected = vec![
        ("cpm.pipeline.request".to_owned(), "frontend".to_owned()),
        ("staging.load.request".to_owned(), "cpm".to_owned()),
    ];
    for (d, a) in DOMAINS {
        for (phase, by) in [
            ("submit", "manager"),
            ("dispatch", "service"),
            ("execute", "handler"),
            ("processed", "processor"),
            ("handled", "handler"),
            ("served", "service"),
            ("complete", "manager"),
        ] {
            expected.push((format!("{d}.{a}.{phase}"), format!("{d}-{by}")));
        }
    }
    expected.push(("cpm.pipeline.complete".to_owned(), "cpm".to_owned()));
    let mut chain = Vec::new();
    let mut node = root;
    loop {
        chain.push((
            node.topic.to_string(),
            node.source.clone().unwrap_or_default().to_string(),
        ));
        match node.children.as_slice() {
            [] => break,
            [only] => node = only,
            many => panic!(
                "{} has {} children: {:?}",
                node.topic,
                many.len(),
                many.iter().map(|n| n.topic.as_str()).collect::<Vec<_>>()
            ),
        }
    }
    assert_eq!(chain, expected);
    // With status updates: every component's three updates hang under the message that caused them.
    assert_eq!(report.trace.len(), 45 + 75);
    let all = report.trace.roots[0].walk();
    assert!(all.iter().all(|n| n.at_ms >= 0.0));
}

    async fn an_injected_failure_is_retried_and_the_pipeline_completes(db: &Db) {
    let report = run_demo(db.config(DemoConfig {
        fail: Some(FailurePlan {
            domain: "analytics".into(),
            times: 2,
        }),
        ..config()
    }))
    .await
    .unwrap();
    assert!(report.runs[0].ok, "{:?}", report.runs[0].error);
    assert_eq!(report.errors.retries, 2);
    assert_eq!(report.errors.gave_up, 0);
    assert_eq!(
        report.errors.errors - report.errors.propagated,
        2,
        "two original failures"
    );
    assert!(report.dead_letters.is_empty());
    assert_eq!(report.contexts_left, 0);
    assert!(
        report.state_anomalies.is_empty(),
        "{:?}",
        report.state_anomalies
    );
    assert!(report.tables.reports.contains_key(&report.runs[0].run_id));
}

    async fn after_max_attempts_the_flow_lands_in_the_dlq_with_its_correlation_id(db: &Db) {
    let report = run_demo(db.config(DemoConfig {
        fail: Some(FailurePlan {
            domain: "analytics".into(),
            times: u32::MAX,
        }),
        max_attempts: 3,
        ..config()
    }))
    .await
    .unwrap();
    let run = &report.runs[0];
    assert!(!run.ok);
    let err = run.error.as_ref().unwrap();
    assert_eq!(err.error_type, "InjectedFailure");
    assert!(
        err.message.contains("gave up after 3 attempt(s)"),
        "{}",
        err.message
    );
    assert_eq!(report.errors.retries, 2);
    assert_eq!(report.errors.gave_up, 1);
    assert_eq!(report.dead_letters.len(), 1);
    let letter = &report.dead_letters[0];
    assert_eq!(letter.envelope.correlation_id, run.correlation_id);
    assert!(
        letter.error.contains(&run.correlation_id.to_string()),
        "{}",
        letter.error
    );
    // The dead letter is the request the analytics processor failed on (its last attempt):
    // replaying it runs that step again.
    assert_eq!(
        letter.envelope.topic.as_str(),
        "analytics.features.execute"
    );
    assert_eq!(
        letter.handler.as_deref(),
        Some("analytics-processor:analytics.features.execute")
    );
    assert_eq!(letter.attempts, 3);
    // Nothing after analytics ran; nothing leaked.
    assert!(!report.tables.insights.contains_key(&run.run_id));
    assert!(!report.tables.features.contains_key(&run.run_id));
    assert_eq!(report.contexts_left, 0);
    assert!(
        report.state_anomalies.is_empty(),
        "{:?}",
        report.state_anomalies
    );
}

    async fn several_runs_give_benchmark_figures(db: &Db) {
    let report = run_demo(db.config(DemoConfig {
        runs: 5,
        rows: 100,
        show_violation: false,
        ..DemoConfig::default()
    }))
    .await
    .unwrap();
    assert_eq!(report.runs.len(), 5);
    assert!(report.runs.iter().all(|r| r.ok));
    assert_eq!(report.tables.reports.len(), 5);
    assert!(report.bench.p50_ms > 0.0 && report.bench.p99_ms >= report.bench.p50_ms);
    assert!((report.bench.messages_per_run - 120.0).abs() < 1e-9);
    assert_eq!(report.contexts_left, 0);
    assert_eq!(report.enforcement.violations, 0);
}

    async fn a_slow_domain_is_flagged_on_its_run_against_the_performance_baselines(db: &Db) {
    let warmup = 3;
    let bus = switchyard::Bus::new();
    let mut app = DemoApp::start(
        &bus,
        &db.config(DemoConfig {
            rows: 60,
            performance: PerformanceSettings {
                warmup,
                ..PerformanceSettings::default()
            },
            ..config()
        }),
    )
    .await
    .unwrap();
    // The CPM's subscription declares a System → CPM edge, which the layer rules allow.
    let t = app.topology();
    assert!(
        t.edges().iter().any(|e| e.from == "performance-tracker"
            && e.to == "cpm"
            && e.topic == "system.performance.anomaly"),
        "{:?}",
        t.edges()
    );
    assert!(t.violations().is_empty(), "{:?}", t.violations());
    let timeout = std::time::Duration::from_secs(20);
    // Warm-up: one latency sample per step and run; none can be flagged yet.
    for i in 0..warmup {
        let out = app.run(&format!("warm-{i}"), DATASET, timeout).await.unwrap();
        assert!(out.ok, "{:?}", out.error);
    }
    // The slow run: the analytics processor waits 400 ms before its work.
    let slow = PipelineRequest {
        slow: Some("analytics".into()),
        ..PipelineRequest::file("slow-1", DATASET)
    };
    let correlation = app.submit_request(slow).await.unwrap();
    let done = tokio::time::timeout(timeout, async {
        loop {
            let d = app.next_result().await.unwrap();
            if d.correlation_id == correlation {
                return d;
            }
        }
    })
    .await
    .unwrap();
    assert!(done.is_ok(), "{:?}", done.error);
    // The tracker's anomalies travel on their own topic: wait until every handler ran.
    tokio::time::timeout(timeout, bus.run_until_idle())
        .await
        .unwrap();
    for i in 0..warmup {
        let r = app.runs().get(&format!("warm-{i}")).unwrap();
        assert!(
            r.performance_anomalies.is_empty(),
            "warm-up run flagged: {:?}",
            r.performance_anomalies
        );
    }
    let r = app.runs().get("slow-1").unwrap();
    assert_eq!(r.slow.as_deref(), Some("analytics"));
    let defaults = PerformanceSettings::default();
    // Every layer of the analytics domain took the delay: processor, handler, service and
    // manager are each flagged, tied to this run by its correlation id.
    for role in ["processor", "handler", "service", "manager"] {
        let component = format!("analytics-{role}");
        let f = r
            .performance_anomalies
            .iter()
            .find(|f| f.component == component)
            .unwrap_or_else(|| panic!("{component} not flagged: {:?}", r.performance_anomalies));
        assert_eq!(f.domain.as_deref(), Some("analytics"));
        assert_eq!(f.action, "features");
        assert_eq!(f.metric, "latency_ms");
        assert!(f.value >= 400.0, "{f:?}");
        assert!(
            f.value - f.mean > (defaults.k * f.deviation).max(defaults.floor_ms),
            "{f:?}"
        );
    }
    // The CPM's context of the whole run took the delay too (flagged unless the whole run's
    // baseline is wide, on a loaded machine). Other steps are not asserted unflagged: a
    // scheduling hiccup beyond the 50 ms floor may flag one.
    if let Some(cpm) = r.performance_anomalies.iter().find(|f| f.component == "cpm") {
        assert_eq!(
            (cpm.domain.as_deref(), cpm.action.as_str()),
            (Some("cpm"), "pipeline")
        );
    }
    app.stop();
}

    async fn an_upstream_outage_is_dead_lettered_as_the_request_whose_replay_reruns_the_step(db: &Db) {
    let bus = switchyard::Bus::new();
    let config = db.config(DemoConfig {
        rows: 60,
        max_attempts: 2,
        ..config()
    });
    let mut app = DemoApp::start(&bus, &config).await.unwrap();
    let timeout = std::time::Duration::from_secs(20);
    let outage = PipelineRequest {
        outage: Some("report".into()),
        ..PipelineRequest::file("outage-1", DATASET)
    };
    let correlation = app.submit_request(outage).await.unwrap();
    let done = tokio::time::timeout(timeout, async {
        loop {
            let d = app.next_result().await.unwrap();
            if d.correlation_id == correlation {
                return d;
            }
        }
    })
    .await
    .unwrap();
    assert!(!done.is_ok());
    let err = done.error.unwrap();
    assert_eq!(err.error_type, "UpstreamUnavailable");
    assert!(err.message.contains("gave up after 2 attempt(s)"), "{}", err.message);
    tokio::time::timeout(timeout, bus.run_until_idle())
        .await
        .unwrap();
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.envelope.topic.as_str(), "report.render.execute");
    assert_eq!(letter.envelope.correlation_id, correlation);
    assert_eq!(
        letter.handler.as_deref(),
        Some("report-processor:report.render.execute")
    );
    assert!(letter.error.contains("UpstreamUnavailable"), "{}", letter.error);
    let tables = app.store().run_tables("outage-1").await.unwrap();
    assert!(tables.features.contains_key("outage-1"), "analytics ran before the report");
    assert!(!tables.reports.contains_key("outage-1"), "no report in the outage");

    // The replay: the same message again. The report step runs and writes the report; it
    // is not dead-lettered again.
    bus.publish_envelope(letter.envelope.clone()).await.unwrap();
    tokio::time::timeout(timeout, bus.run_until_idle())
        .await
        .unwrap();
    let tables = app.store().run_tables("outage-1").await.unwrap();
    assert!(tables.reports.contains_key("outage-1"), "the replayed step rendered the report");
    assert_eq!(bus.dead_letters().unwrap().list().len(), 1);
    app.stop();
}

    async fn with_a_data_directory_the_csv_tables_and_report_are_files(db: &Db) {
    let dir =
        std::env::temp_dir().join(format!("switchyard-demo-{}", switchyard::MessageId::new()));
    let report = run_demo(db.config(DemoConfig {
        rows: 100,
        data_dir: Some(dir.clone()),
        show_violation: false,
        ..DemoConfig::default()
    }))
    .await
    .unwrap();
    let run = &report.runs[0];
    assert!(run.ok, "{:?}", run.error);
    assert!(
        report.tables.files.is_empty(),
        "the CSV is on disk, not in the table"
    );
    let csv = std::fs::read_to_string(dir.join(DATASET)).unwrap();
    assert_eq!(csv.lines().count(), 101);
    let md = std::fs::read_to_string(dir.join(format!("report-{}.md", run.run_id))).unwrap();
    assert!(md.contains("- valid rows: 96"), "{md}");
    let store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("store.json")).unwrap()).unwrap();
    assert_eq!(store["sales"][&run.run_id].as_array().unwrap().len(), 96);
    assert_eq!(
        store["quality_issues"][&run.run_id]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(report.files_written.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
}

// docs/app.md "Its database": the run history (the CPM's registry) is kept in the app's
// database, so an app restarted on the same database lists the runs of before.
on_both_stores! {
    async fn the_run_history_survives_a_restart(db: &Db) {
    let dir =
        std::env::temp_dir().join(format!("switchyard-history-{}", switchyard::MessageId::new()));
    let cfg = db.config(DemoConfig {
        rows: 50,
        data_dir: Some(dir.clone()),
        show_violation: false,
        ..DemoConfig::default()
    });
    let bus = switchyard::Bus::new();
    let mut app = DemoApp::start(&bus, &cfg).await.unwrap();
    let out = app
        .run("history-1", DATASET, std::time::Duration::from_secs(20))
        .await
        .unwrap();
    assert!(out.ok, "{:?}", out.error);
    // Written by the registry's own task: wait until the stored record says completed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stored = app.store().database().run_records(10).await.unwrap();
        if stored.iter().any(|r| r.contains("\"history-1\"") && r.contains("\"completed\"")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stored: {stored:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop();
    bus.shutdown(std::time::Duration::from_secs(5)).await.unwrap();

    let bus = switchyard::Bus::new();
    let app = DemoApp::start(&bus, &cfg).await.unwrap();
    let runs = app.runs().list(10);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].run_id, "history-1");
    assert_eq!(runs[0].status, "completed");
    assert_eq!(runs[0].domains.len(), DOMAINS.len(), "{runs:?}");
    app.stop();
    bus.shutdown(std::time::Duration::from_secs(5)).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
}

#[tokio::test]
async fn database_url_selects_the_store() {
    // Unset or empty: SQLite in memory; sqlite: URLs: SQLite there.
    for url in [None, Some(""), Some("sqlite::memory:"), Some("sqlite:")] {
        let store = Store::open(url, "data_pipeline", None).await.unwrap();
        assert_eq!(store.kind(), "sqlite", "{url:?}");
        assert_eq!(store.describe(), "sqlite::memory:", "{url:?}");
    }
    let dir = std::env::temp_dir().join(format!("switchyard-url-{}", switchyard::MessageId::new()));
    let file = dir.join("app.db");
    let url = format!("sqlite:{}", file.display());
    let store = Store::open(Some(&url), "data_pipeline", None)
        .await
        .unwrap();
    assert_eq!(store.kind(), "sqlite");
    assert!(file.is_file(), "opened at start, not on first use");
    let store = Store::open(Some(&format!("sqlite://{}", file.display())), "x", None)
        .await
        .unwrap();
    assert_eq!(store.describe(), url);
    std::fs::remove_dir_all(&dir).unwrap();

    // An unsupported scheme: an error naming the URL without its password.
    let err = Store::open(Some("mysql://app:s3cret@db/x"), "data_pipeline", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedScheme { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("mysql://app:***@db/x"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    // The app does not start on it.
    let err = DemoApp::start(
        &switchyard::Bus::new(),
        &DemoConfig {
            database_url: Some("redis://localhost".into()),
            ..DemoConfig::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DemoError::Store(_)), "{err}");
    assert!(err.to_string().contains("redis://localhost"), "{err}");

    // An unreachable PostgreSQL server: an error, without the password (port 1: refused).
    let err = Store::open(
        Some("postgres://app:s3cret@127.0.0.1:1/test"),
        "data_pipeline",
        None,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains("postgres://app:***@127.0.0.1:1/test"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    let err = Store::open(Some(&testdb::url()), "Bad-Schema", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidSchema(_)), "{err}");

    // A postgres:// URL: PostgreSQL, migrated.
    let Some(pg) = TestPg::new("select").await else {
        return;
    };
    let store = Store::open(Some(&testdb::url()), pg.schema(), None)
        .await
        .unwrap();
    assert_eq!(store.kind(), "postgres");
    assert!(
        store.describe().contains(pg.schema()),
        "{}",
        store.describe()
    );
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM {schema}.app_migrations")
            .await,
        2
    );
    pg.finish().await;
}
