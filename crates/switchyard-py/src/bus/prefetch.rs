//! Prefetching Python subscriptions: the bus's worker hands the loop up to `prefetch`
//! queued messages at once (`Bus::subscribe_prefetch`), the loop runs the handler on each in
//! order and answers each through [`PyReplies`], stopping after a message that did not
//! succeed (so that it is retried before the next one is handled). One hand-over, one
//! wake-up and one answer per `prefetch` messages instead of per message.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use switchyard::{BoxError, BoxPrefetchHandler, Envelope, Outcome};
use tokio::sync::oneshot;
use tower::service_fn;
use tower::util::BoxCloneService;

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

/// Answers the messages of one prefetch hand-over, in order. The loop runs the handler on
/// each message until one does not succeed; it records that one's answer with one of the
/// methods below (the same as [`PyReply`](super::PyReply)'s, so the same Python code
/// settles either), then `finish(acked)` sends `acked` acks (the messages before it)
/// followed by the recorded answer. Messages after those were not handled: the bus hands
/// them over again once the answered ones are settled.
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
    /// The failed message is handled after all, with a reply payload (for the message
    /// after the acked ones; used by command handlers).
    #[pyo3(signature = (payload, acked=0))]
    fn reply(&self, payload: &[u8], acked: usize) -> bool {
        let n = self.answers.lock().unwrap_or_else(|p| p.into_inner()).len() + acked;
        match self.envs.get(n) {
            Some(env) => {
                let reply = env.reply(bytes::Bytes::copy_from_slice(payload));
                self.push(Ok(Outcome::reply(reply)))
            }
            None => false,
        }
    }

    /// The message is refused for good (dead-lettered at once).
    fn reject(&self, reason: String) -> bool {
        self.push(Ok(Outcome::reject(reason)))
    }

    /// The message is tried again (after `after` seconds, or the retry delay).
    #[pyo3(signature = (after=None))]
    fn retry(&self, after: Option<f64>) -> PyResult<bool> {
        Ok(self.push(super::reply::retry_answer(after)?))
    }

    /// The message goes back to its transport (after `after` seconds, or at once).
    #[pyo3(signature = (reason, after=None))]
    fn hand_back(&self, reason: String, after: Option<f64>) -> PyResult<bool> {
        Ok(self.push(super::reply::hand_back_answer(reason, after)?))
    }

    /// The message failed with `error` (exception and traceback as text).
    #[pyo3(signature = (error, permanent=false))]
    fn fail(&self, error: String, permanent: bool) -> bool {
        self.push(super::reply::failed_answer(error, permanent))
    }

    /// The message's payload did not decode (dead-lettered at once, raw bytes kept).
    fn undecodable(&self, error: String) -> bool {
        self.push(super::reply::undecodable_answer(error))
    }

    /// Sends the answers to the bus: `acked` acks, then the recorded answers (at most one
    /// per message handed over). Once; later calls do nothing and return False, as when the
    /// bus no longer waits for them.
    #[pyo3(signature = (acked=0))]
    fn finish(&self, acked: usize) -> bool {
        let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        let recorded = std::mem::take(&mut *self.answers.lock().unwrap_or_else(|p| p.into_inner()));
        let acked = acked.min(self.envs.len());
        let mut answers: Vec<HandlerResult> = Vec::with_capacity(acked + recorded.len());
        answers.extend((0..acked).map(|_| Ok(Outcome::Ack)));
        answers.extend(recorded);
        answers.truncate(self.envs.len());
        tx.send(answers).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::Topic;

    fn replies(n: usize) -> (PyReplies, oneshot::Receiver<Vec<HandlerResult>>) {
        let (tx, rx) = oneshot::channel();
        let envs = (0..n)
            .map(|_| {
                Arc::new(Envelope::new(
                    Topic::new("t.x").unwrap(),
                    bytes::Bytes::new(),
                ))
            })
            .collect();
        let r = PyReplies {
            tx: Mutex::new(Some(tx)),
            answers: Mutex::new(Vec::new()),
            envs,
        };
        (r, rx)
    }

    #[test]
    fn finish_sends_the_acks_then_the_recorded_answer_once() {
        let (r, mut rx) = replies(4);
        assert!(r.fail("boom".into(), false));
        assert!(r.finish(2));
        let answers = rx.try_recv().unwrap();
        assert_eq!(
            answers.len(),
            3,
            "two acks and the failure; the 4th not handled"
        );
        assert!(matches!(answers[0], Ok(Outcome::Ack)));
        assert!(matches!(answers[1], Ok(Outcome::Ack)));
        assert!(matches!(&answers[2], Err(e) if e.to_string() == "boom"));
        assert!(!r.finish(4), "a second finish sends nothing");
    }

    #[test]
    fn finish_never_answers_more_messages_than_were_handed_over() {
        let (r, mut rx) = replies(2);
        assert!(r.reject("no".into()));
        assert!(r.finish(2));
        let answers = rx.try_recv().unwrap();
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|a| matches!(a, Ok(Outcome::Ack))));
    }
}
