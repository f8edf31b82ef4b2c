//! Read-only Python views of envelopes and dead letters.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use switchyard::{DeadLetter, DeadLetterReason, Envelope};

/// A message as the bus carries it: ids, topic, headers and the raw payload.
///
/// Handlers get it as their second argument (or as the only one when they take no typed
/// message); its ids are what correlation and causation are built from.
#[pyclass(name = "Envelope", module = "switchyard._switchyard", frozen)]
pub struct PyEnvelope {
    pub(crate) inner: Arc<Envelope>,
}

impl PyEnvelope {
    pub(crate) fn new(inner: Arc<Envelope>) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl PyEnvelope {
    /// The message id: a ULID string when switchyard made it, else the foreign id as it came.
    #[getter]
    fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// The topic it was published on.
    #[getter]
    fn topic(&self) -> &str {
        self.inner.topic.as_str()
    }

    /// `event`, `command`, `request` or `reply`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }

    /// The id shared by every message of one flow.
    #[getter]
    fn correlation_id(&self) -> String {
        self.inner.correlation_id.to_string()
    }

    /// The id of the message whose handler published this one, if any.
    #[getter]
    fn causation_id(&self) -> Option<String> {
        self.inner.causation_id().map(ToString::to_string)
    }

    /// The raw payload (JSON unless the publisher sent other bytes).
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }

    /// Header values by name.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.headers().iter() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// One header, or `None`.
    fn header(&self, name: &str) -> Option<String> {
        self.inner.header(name).map(str::to_owned)
    }

    /// The session it belongs to (header `session-id`), if any.
    #[getter]
    fn session_id(&self) -> Option<String> {
        self.inner
            .header(switchyard::session::SESSION_HEADER)
            .map(str::to_owned)
    }

    /// Delivery attempt, 1-based (0 before the first delivery).
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.delivery.attempt
    }

    /// Message priority, 0–255 (128 normal).
    #[getter]
    fn priority(&self) -> u8 {
        self.inner.priority.0
    }

    /// The payload's type name (the Rust type or Python class name), if set.
    #[getter]
    fn type_name(&self) -> Option<&str> {
        self.inner.type_name.as_deref()
    }

    /// The payload's schema version (`version=` of `@event` / `@command`; 1 by default).
    #[getter]
    fn type_version(&self) -> u32 {
        self.inner.type_version
    }

    /// The component that published it, if set.
    #[getter]
    fn source(&self) -> Option<&str> {
        self.inner.source()
    }

    /// When it was created, seconds since the Unix epoch.
    #[getter]
    fn timestamp(&self) -> f64 {
        self.inner
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    fn __repr__(&self) -> String {
        format!(
            "Envelope(id={}, topic={}, kind={}, correlation_id={}, payload={} bytes)",
            self.inner.id,
            self.inner.topic,
            self.inner.kind.as_str(),
            self.inner.correlation_id,
            self.inner.payload.len()
        )
    }
}

fn reason_name(r: DeadLetterReason) -> &'static str {
    match r {
        DeadLetterReason::HandlerFailed => "handler_failed",
        DeadLetterReason::Panicked => "panicked",
        DeadLetterReason::Rejected => "rejected",
        DeadLetterReason::DecodeFailed => "decode_failed",
        DeadLetterReason::Dropped => "dropped",
        DeadLetterReason::Shutdown => "shutdown",
        DeadLetterReason::MaxDeliveries => "max_deliveries",
        DeadLetterReason::Unroutable => "unroutable",
        DeadLetterReason::Expired => "expired",
    }
}

/// A message the bus gave up on, with the story of its failure.
#[pyclass(name = "DeadLetter", module = "switchyard._switchyard", frozen)]
pub struct PyDeadLetter {
    letter: DeadLetter,
}

impl PyDeadLetter {
    pub(crate) fn new(letter: DeadLetter) -> Self {
        Self { letter }
    }
}

#[pymethods]
impl PyDeadLetter {
    /// The original message, raw payload included.
    #[getter]
    fn envelope(&self) -> PyEnvelope {
        PyEnvelope::new(Arc::new(self.letter.envelope.clone()))
    }

    /// `handler_failed`, `rejected`, `decode_failed`, `shutdown`, `dropped`, `expired`
    /// (its deadline passed while it was queued: never handled), ...
    #[getter]
    fn reason(&self) -> &'static str {
        reason_name(self.letter.reason)
    }

    /// The error text; for a Python handler, the exception and its traceback.
    #[getter]
    fn error(&self) -> &str {
        &self.letter.error
    }

    /// The subscription or handler that gave up.
    #[getter]
    fn handler(&self) -> Option<&str> {
        self.letter.handler.as_deref()
    }

    /// Attempts made.
    #[getter]
    fn attempts(&self) -> u32 {
        self.letter.attempts
    }

    fn __repr__(&self) -> String {
        format!(
            "DeadLetter(id={}, topic={}, reason={}, handler={:?}, attempts={})",
            self.letter.envelope.id,
            self.letter.envelope.topic,
            reason_name(self.letter.reason),
            self.letter.handler,
            self.letter.attempts
        )
    }
}
