//! Whether the log can store what is published: the writer records a failed batch here (a
//! full disk, a file-size limit, a segment that cannot be created) and clears it when a
//! batch is stored again or a probe write succeeds. Read by
//! [`LogTransport::write_failure`](crate::LogTransport::write_failure).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::AppendError;

/// How often the writer, while writes fail, probes whether the disk takes writes again
/// (writing a block past a stream's end and cutting it off again).
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The log's writes are failing: publishes are refused with
/// [`TransportErrorKind::Io`](switchyard_core::TransportErrorKind) until the disk takes
/// writes again.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let log = switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path()))?;
/// // A log that stores what it is given reports no failure.
/// assert!(log.write_failure().is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteFailure {
    /// The last failure's error, as the refused publishes were told.
    pub error: String,
    /// When the first of the failures in a row happened.
    pub since: SystemTime,
    /// Batches refused since then (each answered every publish in it).
    pub failed_batches: u64,
}

/// The shared slot the writer sets and clears.
#[derive(Debug, Default)]
pub(crate) struct FailureState {
    slot: Mutex<Option<WriteFailure>>,
}

impl FailureState {
    /// Records a failed batch.
    pub(crate) fn failed(&self, error: &AppendError) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(f) => {
                f.error = error.to_string();
                f.failed_batches += 1;
            }
            None => {
                tracing::error!(%error, "log: writes are failing; publishes are refused until the disk takes writes again");
                *slot = Some(WriteFailure {
                    error: error.to_string(),
                    since: SystemTime::now(),
                    failed_batches: 1,
                });
            }
        }
    }

    /// Writes work again.
    pub(crate) fn recovered(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = slot.take() {
            tracing::info!(failed_batches = f.failed_batches, "log: writes work again");
        }
    }

    /// The failure, while writes fail.
    pub(crate) fn get(&self) -> Option<WriteFailure> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
