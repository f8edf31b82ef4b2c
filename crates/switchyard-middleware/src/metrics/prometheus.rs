use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::MetricsInstallError;

/// Histogram buckets for the `_seconds` metrics: 100 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A handle to the Prometheus recorder: renders the text exposition format.
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
}

impl PrometheusMetrics {
    /// Everything recorded so far, in the Prometheus text format (serve it at `/metrics`).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The exporter's own handle.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}

fn builder() -> Result<PrometheusBuilder, MetricsInstallError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .map_err(|e| MetricsInstallError::Build(e.to_string()))
}

/// Installs a Prometheus recorder as the process-wide `metrics` recorder and describes
/// switchyard's metrics. Call once at start-up, before handlers run.
pub fn install_prometheus() -> Result<PrometheusMetrics, MetricsInstallError> {
    let handle = builder()?.install_recorder().map_err(|e| match e {
        BuildError::FailedToSetGlobalRecorder(_) => MetricsInstallError::AlreadyInstalled,
        other => MetricsInstallError::Build(other.to_string()),
    })?;
    super::describe();
    Ok(PrometheusMetrics { handle })
}

/// Builds a Prometheus recorder without installing it (for `metrics::with_local_recorder` or
/// a custom fan-out), with its rendering handle.
pub fn build_prometheus() -> Result<(PrometheusRecorder, PrometheusMetrics), MetricsInstallError> {
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    Ok((recorder, PrometheusMetrics { handle }))
}
