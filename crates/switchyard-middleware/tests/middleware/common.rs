//! A miniature bus for the tests: one queue, N workers that wait for the handler to be ready
//! before taking the next message (as the real subscription loop does), and settling by
//! outcome into an ack list or a dead-letter queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switchyard_core::{
    BoxError, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, MessageId, Outcome, Topic,
};
use switchyard_middleware::dlq::{error_chain, failure_reason};
use tower::{Service, ServiceExt};

pub fn env(topic: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), "{}")
}

pub fn envs(topic: &str, n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| Envelope::new(Topic::new(topic).unwrap(), i.to_string()))
        .collect()
}

/// Waits for `cond` with a virtual-time deadline, yielding to other tasks in between.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[derive(Default)]
pub struct Settled {
    pub acked: Mutex<Vec<MessageId>>,
}

impl Settled {
    pub fn acked(&self) -> Vec<MessageId> {
        self.acked.lock().unwrap().clone()
    }
}

/// Settles one result as the bus would.
pub fn settle(
    env: Envelope,
    result: Result<Outcome, BoxError>,
    settled: &Settled,
    dlq: &dyn DeadLetterSink,
) {
    match result {
        Ok(Outcome::Ack | Outcome::Reply(_)) => settled.acked.lock().unwrap().push(env.id),
        Ok(Outcome::Reject { reason }) => {
            dlq.put(DeadLetter::new(env, DeadLetterReason::Rejected, reason).with_handler("h"))
        }
        Ok(Outcome::Retry { .. }) => dlq.put(
            DeadLetter::new(env, DeadLetterReason::HandlerFailed, "retry requested")
                .with_handler("h"),
        ),
        Err(e) => {
            let reason = failure_reason(&*e);
            dlq.put(DeadLetter::new(env, reason, error_chain(&*e)).with_handler("h"))
        }
    }
}

/// Runs every message through `svc` with `workers` workers and returns what was settled.
/// The queue is shared so a test can watch its length.
pub async fn drive<S>(
    svc: S,
    queue: Arc<Mutex<VecDeque<Envelope>>>,
    workers: usize,
    dlq: Arc<dyn DeadLetterSink>,
) -> Arc<Settled>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let settled = Arc::new(Settled::default());
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut svc = svc.clone();
        let queue = queue.clone();
        let settled = settled.clone();
        let dlq = dlq.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                // Readiness first: a paused handler leaves messages in the queue.
                svc.ready().await.unwrap();
                let Some(mut env) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                env.delivery.attempt = 1;
                env.delivery.first_delivered_at = Some(SystemTime::now());
                let result = svc.call(env.clone()).await;
                settle(env, result, &settled, &*dlq);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    settled
}

pub fn queue_of(msgs: Vec<Envelope>) -> Arc<Mutex<VecDeque<Envelope>>> {
    Arc::new(Mutex::new(msgs.into_iter().collect()))
}

/// Compile-time check: the stack satisfies the bus's handler contract.
pub fn assert_handler<S>(_s: &S)
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
}
