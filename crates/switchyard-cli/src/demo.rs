//! `switchyard demo`: an in-process flow that shows events, wildcards, commands, causation,
//! dead-lettering and shutdown.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Command, Kind, Message};

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing the report failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// A bus operation failed.
    #[error("bus error: {0}")]
    Bus(String),
    /// The demo ran, but some of its pipeline runs failed (the summary says why).
    #[error("{failed} of {runs} run(s) failed")]
    RunsFailed {
        /// Runs that failed.
        failed: usize,
        /// Runs made.
        runs: usize,
    },
}

fn bus_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Bus(e.to_string())
}

/// A frontend asks for a feature to be computed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FeatureRequested {
    dataset: String,
    feature: String,
}
impl Message for FeatureRequested {
    const TOPIC: &'static str = "analytics.feature.request";
}

/// The command a manager sends to the service that computes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ComputeFeature {
    dataset: String,
    feature: String,
}
impl Message for ComputeFeature {
    const TOPIC: &'static str = "analytics.feature.compute";
    const KIND: Kind = Kind::Command;
}
impl Command for ComputeFeature {
    type Output = f64;
}

/// Published when the feature is ready.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FeatureComplete {
    feature: String,
    value: f64,
}
impl Message for FeatureComplete {
    const TOPIC: &'static str = "analytics.feature.complete";
}

/// `switchyard demo pipeline`: the components crate's reference app, on the database
/// `DATABASE_URL` names (SQLite in memory when unset; PostgreSQL for `postgres://...`, tables
/// in the schema `DATABASE_SCHEMA`, default `data_pipeline`).
pub async fn run_pipeline(rows: usize, runs: usize) -> Result<(), DemoError> {
    let config = data_pipeline::DemoConfig {
        rows,
        runs,
        ..Default::default()
    }
    .with_env_database();
    let report = data_pipeline::run_demo(config).await.map_err(bus_err)?;
    print!("{}", report.summary());
    let failed = report.runs.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(DemoError::RunsFailed {
            failed,
            runs: report.runs.len(),
        });
    }
    Ok(())
}

/// `switchyard demo zmq`: the pipeline crate's ZeroMQ demo, until SIGINT/SIGTERM.
pub async fn run_zmq(endpoint: String, output: std::path::PathBuf) -> Result<(), DemoError> {
    let config = data_pipeline::sensors::DemoConfig {
        endpoint,
        output,
        ..Default::default()
    };
    let signal = switchyard_pipeline::shutdown_signal()?;
    data_pipeline::sensors::run_zmq_demo(config, signal)
        .await
        .map_err(bus_err)?;
    Ok(())
}

/// Runs the demo and writes a readable account to `out`.
pub async fn run(out: &mut impl Write) -> Result<(), DemoError> {
    let bus = Bus::builder()
        .retry_delay(Duration::from_millis(5))
        .build()
        .map_err(bus_err)?;
    writeln!(
        out,
        "switchyard demo: one in-process bus, no external services\n"
    )?;

    let audit = Recorder::start(&bus, "analytics.#")
        .await
        .map_err(bus_err)?;
    writeln!(
        out,
        "  subscribe  audit            -> analytics.#  (wildcard: every analytics message)"
    )?;

    let _service = bus
        .handle(|cmd: ComputeFeature, _ctx| async move {
            let value = (cmd.dataset.len() * 10 + cmd.feature.len()) as f64 / 2.0;
            Ok::<_, std::io::Error>(value)
        })
        .start()
        .await
        .map_err(bus_err)?;
    writeln!(
        out,
        "  handle     feature-service  -> analytics.feature.compute  (exactly one handler)"
    )?;

    let manager = bus
        .on(
            "analytics-manager",
            |req: FeatureRequested, ctx| async move {
                let value = ctx
                    .send(ComputeFeature {
                        dataset: req.dataset,
                        feature: req.feature.clone(),
                    })
                    .await?;
                ctx.publish(FeatureComplete {
                    feature: req.feature,
                    value,
                })
                .await?;
                Ok::<_, switchyard::BoxError>(())
            },
        )
        .start()
        .await
        .map_err(bus_err)?;
    writeln!(
        out,
        "  subscribe  analytics-manager -> analytics.feature.request"
    )?;

    let broken = bus
        .on("broken-report", |_: FeatureComplete, _ctx| async move {
            Err::<(), _>(std::io::Error::other("report store unavailable"))
        })
        .max_attempts(2)
        .start()
        .await
        .map_err(bus_err)?;
    writeln!(
        out,
        "  subscribe  broken-report    -> analytics.feature.complete  (always fails: shows dead-lettering)\n"
    )?;

    let started = Instant::now();
    let request = FeatureRequested {
        dataset: "sales-2026".into(),
        feature: "mean_basket".into(),
    };
    bus.publish(request).await.map_err(bus_err)?;
    writeln!(
        out,
        "  publish    analytics.feature.request {{dataset: sales-2026, feature: mean_basket}}"
    )?;
    bus.run_until_idle().await;
    writeln!(out, "  idle after {:?}\n", started.elapsed())?;

    writeln!(
        out,
        "what the audit subscriber saw (one correlation id, causation chain):"
    )?;
    let seen = audit.envelopes();
    for env in &seen {
        let cause = env
            .causation_id()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "  {:<28} {:<7} id={} caused_by={} correlation={}\n    payload {}",
            env.topic.as_str(),
            env.kind.as_str(),
            env.id,
            cause,
            env.correlation_id,
            String::from_utf8_lossy(&env.payload)
        )?;
    }

    let direct = bus
        .request(
            ComputeFeature {
                dataset: "d".into(),
                feature: "f".into(),
            },
            Duration::from_secs(1),
        )
        .await
        .map_err(bus_err)?;
    writeln!(
        out,
        "\nrequest analytics.feature.compute with a 1 s deadline -> {direct}"
    )?;

    writeln!(out, "\ndead letters:")?;
    // The demo's bus keeps the default in-memory store.
    let letters = bus.dead_letters().map(|d| d.list()).unwrap_or_default();
    for letter in letters {
        writeln!(
            out,
            "  {} from {} after {} attempt(s): {:?}: {}",
            letter.envelope.topic,
            letter.handler.as_deref().unwrap_or("-"),
            letter.attempts,
            letter.reason,
            letter.error
        )?;
    }

    let stats = manager.stats();
    writeln!(
        out,
        "\nanalytics-manager: delivered {} acked {}",
        stats.delivered, stats.acked
    )?;
    let stats = broken.stats();
    writeln!(
        out,
        "broken-report:     delivered {} failed {} dead-lettered {}",
        stats.delivered, stats.failed, stats.dead_lettered
    )?;

    drop(audit);
    let report = bus
        .shutdown(Duration::from_secs(5))
        .await
        .map_err(bus_err)?;
    writeln!(
        out,
        "\nshutdown: drained {} message(s), {} left unprocessed",
        report.drained,
        report.left.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn demo_shows_the_whole_flow() {
        let mut out = Vec::new();
        super::run(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "analytics.feature.request",
            "analytics.feature.compute",
            "analytics.feature.complete",
            "broken-report after 2 attempt(s): HandlerFailed: report store unavailable",
            "\"value\":55.5",
            "-> 5.5",
            "0 left unprocessed",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
