//! Keeping a held transport delivery alive: a transport that redelivers a delivery not
//! settled within its ack wait (the log, NATS) asks to be told, every so often, that the
//! delivery is still being worked on ([`Delivery::keep_alive_every`]). While a worker handles
//! such a delivery (handler running, in-place retries sleeping), a task of its own holds the
//! delivery and tells the transport; the worker takes it back to settle it. Deliveries that
//! do not ask (and messages with no delivery: the in-memory path) cost one branch.

use std::time::Duration;

use switchyard_core::Delivery;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The task keeping one delivery alive. Dropped without [`stop`](Self::stop) (the worker
/// aborted at the shutdown deadline), it aborts the task, which drops the delivery unsettled:
/// the transport redelivers it, as it would have without keep-alive.
pub(crate) struct Keeper {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Box<Delivery>>,
}

impl Keeper {
    /// Takes `delivery` into a keeper when its transport asks for keep-alive; otherwise
    /// leaves it where it is.
    #[inline]
    pub(crate) fn take(delivery: &mut Option<Box<Delivery>>) -> Option<Self> {
        match delivery {
            None => None,
            Some(_) => Self::take_slow(delivery),
        }
    }

    #[cold]
    #[inline(never)]
    fn take_slow(delivery: &mut Option<Box<Delivery>>) -> Option<Self> {
        let every = delivery.as_ref()?.keep_alive_every()?;
        let held = delivery.take()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep(held, every, stopped));
        Some(Self {
            stop: Some(stop),
            task,
        })
    }

    /// Stops keeping the delivery alive and hands it back (`None` only if the task did not
    /// end normally: the delivery was dropped, i.e. handed back to the transport).
    #[cold]
    #[inline(never)]
    pub(crate) async fn stop(mut self) -> Option<Box<Delivery>> {
        drop(self.stop.take());
        (&mut self.task).await.ok()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tells the transport every `every` that `delivery` is still being worked on, until
/// `stopped`; then returns it. A keep-alive the transport has to send runs on a task of its
/// own, so a slow send never holds the delivery back from being settled.
async fn keep(
    delivery: Box<Delivery>,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> Box<Delivery> {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return delivery,
            _ = tick.tick() => {
                if let Some(send) = delivery.keep_alive() {
                    let id = delivery.envelope.id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = send.await {
                            tracing::debug!(message_id = %id, error = %e, "cannot keep a delivery alive");
                        }
                    });
                }
            }
        }
    }
}
