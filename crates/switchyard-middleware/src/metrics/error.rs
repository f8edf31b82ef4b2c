/// Installing the Prometheus recorder failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsInstallError {
    /// Another global recorder is already installed in this process.
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
    /// The exporter refused its configuration.
    #[error("prometheus exporter: {0}")]
    Build(String),
}
