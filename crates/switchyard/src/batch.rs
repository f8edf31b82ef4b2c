//! Batch subscriptions (`Bus::on_batch`): a worker collects up to `max_size` messages (or
//! what arrives within `max_wait` of the first) and hands them to the handler together; the
//! batch succeeds or fails, and is retried, as a whole.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use switchyard_core::{DeadLetterReason, Envelope, SendError};

use crate::dispatch::Attempt;
use crate::handler::BoxBatchHandler;
use crate::pending::Settled;
use crate::queue::Entry;
use crate::reply::Answer;
use crate::state::{BusInner, Parent, SubShared};
use crate::stats::inc;

impl SubShared {
    /// One batch worker: waits for a first message, then collects more until the batch is
    /// full or `max_wait` has passed since the first, and hands them over together.
    pub(crate) async fn run_batch_worker(self: Arc<Self>, worker: usize, mut svc: BoxBatchHandler) {
        let Some(batch) = self.config.batch else {
            return self.worker_exited();
        };
        while let Some(first) = self.queue.pop(worker).await {
            let deadline = crate::deadline::after(batch.max_wait);
            let mut taken = vec![first];
            while taken.len() < batch.max_size {
                match tokio::time::timeout_at(deadline, self.queue.pop(worker)).await {
                    Ok(Some(t)) => taken.push(t),
                    Ok(None) | Err(_) => break,
                }
            }
            let Some(bus) = self.bus.upgrade() else { break };
            let taken = self.drop_expired(&bus, worker, taken).await;
            if taken.is_empty() {
                continue;
            }
            let mut settle = Vec::with_capacity(taken.len());
            let mut envs = Vec::with_capacity(taken.len());
            for t in taken {
                let seq = t.seq();
                let Entry {
                    env,
                    reply,
                    lane,
                    delivery,
                    accepted,
                    ..
                } = t.entry;
                settle.push((seq, lane, reply, delivery, accepted));
                envs.push(Arc::unwrap_or_clone(env));
            }
            let result = self.process_batch(&bus, &mut svc, envs).await;
            let how = if result.is_ok() {
                Settled::Acked
            } else {
                Settled::DeadLettered
            };
            for (seq, lane, reply, delivery, accepted) in settle {
                if let Some(delivery) = delivery {
                    self.settle(*delivery, result.is_ok()).await;
                }
                if let Some(reply) = reply {
                    let answer = match &result {
                        Ok(attempts) => Ok(Answer {
                            reply: None,
                            typed: None,
                            attempts: *attempts,
                        }),
                        Err((error, attempts)) => Err(SendError::Failed {
                            error: error.clone(),
                            attempts: *attempts,
                        }),
                    };
                    // A queued command's reply always has a channel: nothing comes back.
                    let _ = reply.send(answer);
                }
                self.queue.complete(worker, seq, lane.as_ref());
                accepted.settle(how);
            }
        }
        self.worker_exited();
    }

    /// Handles one batch: all messages succeed or fail together.
    pub(crate) async fn process_batch(
        &self,
        bus: &BusInner,
        svc: &mut BoxBatchHandler,
        mut envs: Vec<Envelope>,
    ) -> Result<u32, (String, u32)> {
        let c = &self.counters;
        let Some(first) = envs.first().cloned().map(Arc::new) else {
            return Ok(0);
        };
        loop {
            for env in envs.iter_mut() {
                env.delivery.attempt += 1;
                env.delivery
                    .first_delivered_at
                    .get_or_insert_with(switchyard_core::clock::now);
            }
            let attempt_no = envs[0].delivery.attempt;
            c.delivered.fetch_add(envs.len() as u64, Ordering::Relaxed);
            let (reason, error) = match self
                .attempt(
                    svc,
                    || envs.clone(),
                    Parent::of(&first),
                    &envs[0],
                    attempt_no,
                    false,
                )
                .await
            {
                Attempt::Done(_) => {
                    c.acked.fetch_add(envs.len() as u64, Ordering::Relaxed);
                    return Ok(attempt_no);
                }
                Attempt::Rejected(reason) => (DeadLetterReason::Rejected, reason),
                Attempt::Undecodable { text, .. } => (DeadLetterReason::DecodeFailed, text),
                // A batch has no one delivery to hand back: a failure, at once.
                Attempt::HandedBack(text, _) => {
                    inc(&c.failed);
                    (DeadLetterReason::HandlerFailed, text)
                }
                Attempt::Failed {
                    reason,
                    error,
                    delay,
                    permanent,
                    // A batch handler takes no retry layer (those take one envelope), and the
                    // messages of a batch keep their own counts.
                    last_attempt: _,
                } => {
                    if !permanent && attempt_no < self.config.max_attempts {
                        inc(&c.retried);
                        let delay =
                            delay.unwrap_or_else(|| self.config.backoff.delay_for(attempt_no));
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    (reason, error)
                }
            };
            for env in envs {
                inc(&c.dead_lettered);
                bus.dead_letter(self.letter(env, reason, error.clone()));
            }
            return Err((error, attempt_no));
        }
    }
}
