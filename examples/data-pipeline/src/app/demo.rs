//! [`run_demo`]: the reference pipeline run end to end on a fresh in-process bus.

use super::*;

/// Runs the reference pipeline `config.runs` times on a fresh in-process bus and reports what
/// happened. Takes well under a second for the defaults.
pub async fn run_demo(config: DemoConfig) -> Result<DemoReport, DemoError> {
    let bus = Bus::new();
    let recorder = TraceRecorder::start(&bus, 200_000).await?;
    let mut app = DemoApp::start(&bus, &config).await?;
    let topology = app.topology.clone();
    let front = app.front.clone();

    let violation_demo = if config.show_violation {
        let job = Job::new("rogue", DATASET);
        match front.publish_to("staging.load.execute", job).await {
            Err(PublishError::LayerViolation(v)) => Some(v.detail),
            Err(e) => Some(format!("refused: {e}")),
            Ok(()) => Some("not refused (warn mode)".into()),
        }
    } else {
        None
    };

    // The CPM asks the staging processor directly for a preview of the file.
    let preview = {
        let cpm_bus = app
            .running
            .component_bus("cpm")
            .ok_or(DemoError::FrontendGone)?;
        let ctx = app
            .running
            .contexts()
            .begin(&cpm_bus, "preview", None)
            .await?;
        ctx.start().await?;
        let correlation_id = ctx.correlation_id();
        let job = Job::new("preview", DATASET);
        ctx.publish_to(
            &topic_name(DOMAINS[0].0, "preview", Role::Processor.request_phase()),
            job,
        )
        .await?;
        let done = wait_for(
            &mut app.results,
            correlation_id,
            config.run_timeout,
            "preview",
        )
        .await?;
        done.result
    };

    let mut runs = Vec::new();
    let started_all = Instant::now();
    for i in 0..config.runs.max(1) {
        let run_id = format!("run-{:03}", i + 1);
        runs.push(app.run(&run_id, DATASET, config.run_timeout).await?);
    }
    let elapsed = started_all.elapsed();
    // Trailing status updates and completions: wait until the bus is idle (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), bus.run_until_idle()).await;

    let first = runs
        .first()
        .map(|r| r.correlation_id.clone())
        .unwrap_or_default();
    let trace = recorder.trace(first);
    let recorded = recorder.envelopes();
    let in_runs = recorded
        .iter()
        .filter(|e| runs.iter().any(|r| r.correlation_id == e.correlation_id))
        .count();
    let mut lat: Vec<f64> = runs.iter().map(|r| r.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let messages_per_run = in_runs as f64 / runs.len().max(1) as f64;
    let p50 = percentile(&lat, 0.5);
    let bench = BenchStats {
        runs: runs.len(),
        runs_per_second: runs.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: p50,
        p99_ms: percentile(&lat, 0.99),
        messages_per_run,
        per_message_us: if messages_per_run > 0.0 {
            p50 * 1000.0 / messages_per_run
        } else {
            0.0
        },
        raw_hop_us: None,
    };
    let mut bench = bench;
    if runs.len() > 1 {
        bench.raw_hop_us =
            Some(raw_hop_baseline(messages_per_run.round() as usize, runs.len().min(200)).await?);
    }
    let DemoApp {
        running,
        store,
        tracker,
        errors,
        health,
        alerts,
        resources,
        ..
    } = app;
    let files_written = store.persist().await?;
    let flow = running.topology().retain(|c| c.role() != Role::System);
    let report = DemoReport {
        files_written,
        preview,
        tables: store.snapshot().await,
        trace,
        topology_mermaid: topology.to_mermaid(),
        topology_dot: topology.to_dot(),
        observed_mermaid: flow.observed_mermaid(&running.observed()),
        observed_dot: flow.observed_dot(&running.observed()),
        enforcement: running.enforcement(),
        violation_demo,
        state_anomalies: tracker.anomalies(),
        status_updates: tracker.updates(),
        errors: errors.stats(),
        dead_letters: bus
            .dead_letters()
            .map(|d| d.list())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| {
                runs.iter()
                    .any(|r| r.correlation_id == l.envelope.correlation_id)
            })
            .collect(),
        health: health.report(),
        alerts: {
            alerts.evaluate_health(&health).await;
            alerts.history()
        },
        resources: resources.sample().ok(),
        contexts: running.contexts().stats(),
        contexts_left: running.contexts().len(),
        bench,
        runs,
    };
    running.stop();
    Ok(report)
}
