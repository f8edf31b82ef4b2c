//! Waiting for SIGINT or SIGTERM.

use std::future::Future;

/// Which signal asked for the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves on the first of
/// them. From the moment this returns, those signals no longer kill the process: they resolve the
/// future instead. Pass it to [`RunningPipeline::run_until`](crate::RunningPipeline::run_until).
///
/// Must be called inside a Tokio runtime. Fails only if the handlers cannot be installed.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ShutdownSignal> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => ShutdownSignal::Interrupt,
            _ = terminate.recv() => ShutdownSignal::Terminate,
        }
    })
}

/// Returns a future that resolves on Ctrl-C (the only portable signal off Unix).
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ShutdownSignal> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        ShutdownSignal::Interrupt
    })
}
