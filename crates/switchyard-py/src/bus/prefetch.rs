//! Prefetching Python subscriptions: the bus's worker hands the loop up to `prefetch`
//! queued messages at once (`Bus::subscribe_prefetch`), the loop runs the handler on each in
//! order and answers each through [`PyReplies`], stopping after a message that did not
//! succeed (so that it is retried before the next one is handled). One hand-over, one
//! wake-up and one answer per `prefetch` messages instead of per message.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use switchyard::{
    BoxError, BoxPrefetchHandler, CodecDirection, CodecError, Envelope, Outcome, Permanent,
};
use tokio::sync::oneshot;
use tower::service_fn;
use tower::util::BoxCloneService;

use super::{PythonError, seconds};
use crate::inbox::{CancelOnDrop, HandlerResult, Inbox, Item};

/// The Rust handler of a prefetching Python subscription: hands the messages to the loop
/// and waits for their answers.
pub(super) fn python_prefetch_handler(inbox: Arc<Inbox>, sub: u64) -> BoxPrefetchHandler {
    BoxCloneService::new(service_fn(move |envs: Vec<Envelope>| {
        let inbox = inbox.clone();
        async move {
            let (tx, mut rx) = oneshot::channel();
            let token = inbox.token();
            let mut guard = CancelOnDrop {
                inbox: inbox.clone(),
                token,
                armed: true,
            };
            let active = inbox.push(Item::InvokeMany {
                token,
                sub,
                envs: envs.into_iter().map(Arc::new).collect(),
                reply: tx,
            });
            let answer = match active.then(|| inbox.spin_recv(&mut rx)).flatten() {
                Some(Ok(answer)) => Ok(answer),
                _ => rx.await,
            };
            guard.armed = false;
            answer.map_err(|_| BoxError::from("the Python handler was dropped without answering"))
        }
    }))
}

/// Answers the messages of one prefetch hand-over, in order: each answering method answers
/// the next message (the same methods as [`PyReply`], so the same Python code settles
/// either), and `finish` sends the answers given so far. Messages left unanswered were not
/// handled: the bus hands them over again after the last answered one is settled.
#[pyclass(name = "Replies", module = "switchyard._switchyard", frozen)]
pub struct PyReplies {
    pub(super) tx: Mutex<Option<oneshot::Sender<Vec<HandlerResult>>>>,
    pub(super) answers: Mutex<Vec<HandlerResult>>,
    pub(super) envs: Vec<Arc<Envelope>>,
}

impl PyReplies {
    fn push(&self, result: HandlerResult) -> bool {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.len() >= self.envs.len() {
            return false;
        }
        answers.push(result);
        true
    }
}

#[pymethods]
impl PyReplies {
    /// The next message is handled. False when every message was answered already.
    fn ack(&self) -> bool {
        self.push(Ok(Outcome::Ack))
    }

    /// The next message is handled, with a reply payload.
    fn reply(&self, payload: &[u8]) -> bool {
        let n = self.answers.lock().unwrap_or_else(|p| p.into_inner()).len();
        match self.envs.get(n) {
            Some(env) => {
                let reply = env.reply(bytes::Bytes::copy_from_slice(payload));
                self.push(Ok(Outcome::reply(reply)))
            }
            None => false,
        }
    }

    /// The next message is refused for good (dead-lettered at once).
    fn reject(&self, reason: String) -> bool {
        self.push(Ok(Outcome::reject(reason)))
    }

    /// The next message is tried again (after `after` seconds, or the retry delay).
    #[pyo3(signature = (after=None))]
    fn retry(&self, after: Option<f64>) -> PyResult<bool> {
        let after = after.map(|s| seconds(s, "retry after")).transpose()?;
        Ok(self.push(Ok(Outcome::Retry { after })))
    }

    /// The next message failed with `error` (exception and traceback as text).
    #[pyo3(signature = (error, permanent=false))]
    fn fail(&self, error: String, permanent: bool) -> bool {
        let e: BoxError = if permanent {
            Box::new(Permanent::new(PythonError(error)))
        } else {
            Box::new(PythonError(error))
        };
        self.push(Err(e))
    }

    /// The next message's payload did not decode (dead-lettered at once, raw bytes kept).
    fn undecodable(&self, error: String) -> bool {
        self.push(Err(Box::new(CodecError {
            direction: CodecDirection::Decode,
            type_name: "python message",
            source: Box::new(PythonError(error)),
        })))
    }

    /// Sends the answers given so far to the bus (once; later calls do nothing). False when
    /// the bus no longer waits for them.
    fn finish(&self) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let answers = std::mem::take(&mut *self.answers.lock().unwrap_or_else(|p| p.into_inner()));
        match tx {
            Some(tx) => tx.send(answers).is_ok(),
            None => false,
        }
    }
}
