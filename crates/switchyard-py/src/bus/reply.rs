//! `Reply`: how Python answers one message the bus handed to a Python handler.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use switchyard::{BoxError, CodecDirection, CodecError, Envelope, HandBack, Outcome, Permanent};
use tokio::sync::oneshot;

use super::{PythonError, seconds};
use crate::inbox::HandlerResult;

/// Answers one invocation of a Python handler. Exactly one of its methods takes effect;
/// later calls are ignored (the worker has moved on).
#[pyclass(name = "Reply", module = "switchyard._switchyard", frozen)]
pub struct PyReply {
    pub(super) tx: Mutex<Option<oneshot::Sender<HandlerResult>>>,
    pub(super) env: Arc<Envelope>,
}

impl PyReply {
    fn send(&self, result: HandlerResult) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        match tx {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }
}

#[pymethods]
impl PyReply {
    /// Handled. Returns False when the bus no longer waits for this answer.
    fn ack(&self) -> bool {
        self.send(Ok(Outcome::Ack))
    }

    /// Handled, with a reply payload for the command's sender.
    fn reply(&self, payload: &[u8]) -> bool {
        let reply = self.env.reply(bytes::Bytes::copy_from_slice(payload));
        self.send(Ok(Outcome::reply(reply)))
    }

    /// Refused for good: dead-lettered at once, the sender gets `Rejected`.
    fn reject(&self, reason: String) -> bool {
        self.send(Ok(Outcome::reject(reason)))
    }

    /// Try again (after `after` seconds, or the subscription's retry delay).
    #[pyo3(signature = (after=None))]
    fn retry(&self, after: Option<f64>) -> PyResult<bool> {
        Ok(self.send(retry_answer(after)?))
    }

    /// Not this process's to handle: the delivery goes back to its transport (after `after`
    /// seconds, or at once), not an attempt and not a failure (`switchyard.HandBack`).
    #[pyo3(signature = (reason, after=None))]
    fn hand_back(&self, reason: String, after: Option<f64>) -> PyResult<bool> {
        Ok(self.send(hand_back_answer(reason, after)?))
    }

    /// Failed with `error` (the exception and traceback as text): retried until the
    /// subscription's attempts run out, then dead-lettered. `permanent` skips the retries.
    #[pyo3(signature = (error, permanent=false))]
    fn fail(&self, error: String, permanent: bool) -> bool {
        self.send(failed_answer(error, permanent))
    }

    /// The payload did not decode into the handler's type: dead-lettered at once with its
    /// raw bytes (reason `decode_failed`).
    fn undecodable(&self, error: String) -> bool {
        self.send(undecodable_answer(error))
    }
}

/// `retry(after)` of a Python handler's answer, shared by [`PyReply`] and the prefetch
/// hand-over's replies.
pub(crate) fn retry_answer(after: Option<f64>) -> PyResult<HandlerResult> {
    let after = after.map(|s| seconds(s, "retry after")).transpose()?;
    Ok(Ok(Outcome::Retry { after }))
}

/// `hand_back(reason, after)`: a [`HandBack`] of the delivery to its transport (a message
/// that did not come from one fails for good with `reason`).
pub(crate) fn hand_back_answer(reason: String, after: Option<f64>) -> PyResult<HandlerResult> {
    let mut back = HandBack::new(PythonError(reason));
    if let Some(after) = after {
        back = back.after(seconds(after, "hand back after")?);
    }
    Ok(Err(Box::new(back)))
}

/// `fail(error, permanent)`: the exception and traceback as text, `Permanent` when asked.
pub(crate) fn failed_answer(error: String, permanent: bool) -> HandlerResult {
    let e: BoxError = if permanent {
        Box::new(Permanent::new(PythonError(error)))
    } else {
        Box::new(PythonError(error))
    };
    Err(e)
}

/// `undecodable(error)`: a decode failure (dead-lettered at once with the raw bytes).
pub(crate) fn undecodable_answer(error: String) -> HandlerResult {
    Err(Box::new(CodecError {
        direction: CodecDirection::Decode,
        type_name: "python message",
        source: Box::new(PythonError(error)),
    }))
}
