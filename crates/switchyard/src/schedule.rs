//! Delayed publishes: held in memory until due (reported by shutdown if never due), or
//! handed to a transport at once with a `deliver-at` header.

use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_core::{DeadLetter, DeadLetterReason, Envelope, Message, MessageId, PublishError};

use crate::bus::Bus;
use crate::pending::Settled;
use crate::publish::{inherit_parent, is_command};
use crate::state::{DELIVER_AT_HEADER, RUNNING, Scheduled};

impl Bus {
    /// Publishes `msg` after `delay`. Returns the message id once the message is accepted.
    ///
    /// In memory, the message waits in the bus: it counts as pending, and a shutdown before it
    /// is due dead-letters and reports it. On a transport it is handed to the transport at
    /// once with a `deliver-at` header (wall-clock milliseconds since the Unix epoch), so a
    /// durable transport keeps it across restarts; a subscription that receives it early
    /// hands it back with a nack delayed until it is due.
    ///
    /// Only events are delayed: a command or request (`Kind::Command`, `Kind::Request`) is
    /// refused with [`PublishError::DelayedCommand`] on every transport, since a command goes
    /// to its one handler, which answers its sender; send it when it is due.
    pub async fn publish_after<M: Message>(
        &self,
        delay: Duration,
        msg: M,
    ) -> Result<MessageId, PublishError> {
        self.schedule_envelope(crate::deadline::after(delay), msg.to_envelope()?)
            .await
    }

    /// Publishes `msg` at `at` (tokio time, so tests can drive it with the virtual clock);
    /// see [`publish_after`](Self::publish_after).
    pub async fn publish_at<M: Message>(
        &self,
        at: tokio::time::Instant,
        msg: M,
    ) -> Result<MessageId, PublishError> {
        self.schedule_envelope(at, msg.to_envelope()?).await
    }

    /// Publishes an envelope at `at`; see [`publish_after`](Self::publish_after). A command
    /// or request envelope is refused ([`PublishError::DelayedCommand`]), on every transport.
    pub async fn schedule_envelope(
        &self,
        at: tokio::time::Instant,
        mut env: Envelope,
    ) -> Result<MessageId, PublishError> {
        if is_command(&env) {
            return Err(PublishError::DelayedCommand { kind: env.kind });
        }
        if self.inner.transport.is_none() {
            return self.schedule(at, env);
        }
        let now = std::time::SystemTime::now();
        let millis = now
            .checked_add(at.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(now)
            .duration_since(std::time::UNIX_EPOCH)
            // rounded up: a delayed message is never due before the instant asked for
            .map(|d| d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0))
            .unwrap_or(0);
        env.headers_mut()
            .insert(DELIVER_AT_HEADER, millis.to_string());
        let id = env.id.clone();
        self.publish_envelope(env).await?;
        Ok(id)
    }

    /// Schedules an envelope for `at`, in memory (the bus holds it until it is due, whether
    /// or not it runs on a transport). [`schedule_envelope`](Self::schedule_envelope) hands
    /// it to a transport instead when there is one. A command or request envelope is refused
    /// ([`PublishError::DelayedCommand`]).
    pub fn schedule(
        &self,
        at: tokio::time::Instant,
        mut env: Envelope,
    ) -> Result<MessageId, PublishError> {
        self.check_running()?;
        if is_command(&env) {
            return Err(PublishError::DelayedCommand { kind: env.kind });
        }
        inherit_parent(&mut env);
        self.run_hooks(&mut env)?;
        let id = env.id.clone();
        let key = id.clone();
        let accepted = self.inner.pending.accept();
        // Holding the table lock while spawning: the task looks itself up first thing, so it
        // cannot miss its own entry even when `at` is already past.
        let mut scheduled = self.inner.scheduled.lock();
        let bus = self.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let entry = bus.inner.scheduled.lock().remove(&key);
            let Some(Scheduled { env, accepted, .. }) = entry else {
                return;
            };
            match bus.publish_envelope(env.clone()).await {
                // Handed on: its deliveries are pending (and settled) on their own, so this
                // count is released (dropped), not settled.
                Ok(()) => drop(accepted),
                Err(e) => {
                    tracing::warn!(message_id = %key, error = %e, "delayed publish failed; dead-lettered");
                    bus.inner.dead_letter(DeadLetter::new(
                        env,
                        DeadLetterReason::Dropped,
                        format!("delayed publish failed: {e}"),
                    ));
                    accepted.settle(Settled::DeadLettered);
                }
            }
        });
        // Checked under the lock shutdown drains: a message scheduled during shutdown is
        // refused, never left behind unreported.
        if self.inner.state.load(Ordering::SeqCst) != RUNNING {
            task.abort();
            drop(scheduled);
            drop(accepted);
            return Err(PublishError::ShuttingDown);
        }
        scheduled.insert(
            id.clone(),
            Scheduled {
                env,
                task,
                accepted,
            },
        );
        Ok(id)
    }
}
