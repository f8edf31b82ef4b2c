//! Shutdown: stop intake, drain until the deadline, then report (and dead-letter or hand
//! back) what is left. Runs once, in a task of its own (so a call dropped midway loses
//! nothing); later and concurrent calls get the same report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_core::{CloseError, DeadLetter, DeadLetterReason};

use crate::bus::Bus;
use crate::config::SubscriptionKind;
use crate::pending::Settled;
use crate::state::{SHUTTING_DOWN, STOPPED, Scheduled, ShutdownReport, SubShared};

/// The least time the transport gets to close at the end of a shutdown, past its deadline if
/// need be.
const TRANSPORT_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long past its deadline the shutdown waits for the inline command runs it stopped to
/// end: each ends at its sender's next poll.
const INLINE_STOP_GRACE: Duration = Duration::from_millis(100);

/// Where the shutdown of one bus stands, shared by every call (`BusInner::shutdown`).
#[derive(Debug, Clone, Default)]
pub(crate) enum ShutdownPhase {
    /// No call has started it yet.
    #[default]
    NotStarted,
    /// Its task is running.
    Running,
    /// It finished: later calls return this report.
    Done(ShutdownReport),
    /// Its task ended without a report (it panicked, or its runtime dropped it): the next
    /// call starts it again.
    Lost,
}

/// Marks the shutdown `Lost` if its task ends without storing its report.
struct LostGuard(Bus);

impl Drop for LostGuard {
    fn drop(&mut self) {
        self.0.inner.shutdown.send_if_modified(|phase| {
            let running = matches!(phase, ShutdownPhase::Running);
            if running {
                *phase = ShutdownPhase::Lost;
            }
            running
        });
    }
}

impl Bus {
    /// Stops intake, drains queued and in-flight work until `deadline`, then reports what is
    /// left: dead-lettered when it lived only in memory, returned to the transport (which
    /// redelivers it) when it came from one. New publishes get `ShuttingDown` from the moment
    /// this is called. Finally closes the transport, flushing pending publishes (given at
    /// least one second for that, even past `deadline`).
    ///
    /// Idempotent: a second call (from any clone) returns the first call's report, and one
    /// made while the first is still draining waits for it (the first call's `deadline`
    /// applies). Cancellation-safe: the drain runs in a task of its own, started by the first
    /// call, so a call whose future is dropped (a `timeout` around it, a handler of this bus
    /// aborted at the deadline while awaiting it) does not stop it; the next call waits for
    /// it and returns the full report. The error is kept for compatibility; a transport that
    /// does not close cleanly is logged, not returned.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, CloseError> {
        let mut phase = self.inner.shutdown.subscribe();
        loop {
            if self.inner.shutdown.send_if_modified(|p| {
                let start = matches!(p, ShutdownPhase::NotStarted | ShutdownPhase::Lost);
                if start {
                    *p = ShutdownPhase::Running;
                }
                start
            }) {
                let drain = self.start_shutdown(deadline);
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(drain);
                    }
                    // Polled outside a runtime: the drain runs in this call, as it did before
                    // it had a task of its own (its timers need a runtime all the same).
                    Err(_) => drain.await,
                }
            }
            let done = match phase
                .wait_for(|p| matches!(p, ShutdownPhase::Done(_) | ShutdownPhase::Lost))
                .await
            {
                Ok(seen) => match &*seen {
                    ShutdownPhase::Done(report) => Some(report.clone()),
                    _ => None,
                },
                // Not reached: the sender lives in the bus this call borrows.
                Err(_) => Some(ShutdownReport::default()),
            };
            if let Some(report) = done {
                return Ok(report);
            }
            // Lost: the loop starts it again.
        }
    }

    /// Starts the shutdown: at once, on the calling task, stops intake and reports the
    /// delayed publishes (no await, so no cancellation point); the drain goes on in a
    /// spawned task that stores the report in the bus (`ShutdownPhase::Done`): the future
    /// returned, to spawn.
    fn start_shutdown(&self, deadline: Duration) -> impl Future<Output = ()> + Send + 'static {
        let inner = &self.inner;
        inner.state.store(SHUTTING_DOWN, Ordering::SeqCst);
        // Pairs with the fence in `publish_via`: a publish that counted its owed deliveries
        // before this point is seen by the wait for them below; one that did not sees this
        // state and is refused.
        std::sync::atomic::fence(Ordering::SeqCst);
        let settled_before = inner.pending.settled();
        let until = crate::deadline::after(deadline);
        let mut report = ShutdownReport::default();
        // Delayed publishes that are not due yet will not be: report them.
        let scheduled: Vec<_> = inner.scheduled.lock().drain().collect();
        for (
            id,
            Scheduled {
                env,
                task,
                accepted,
            },
        ) in scheduled
        {
            task.abort();
            report.left.push(id);
            inner.dead_letter(DeadLetter::new(
                env,
                DeadLetterReason::Shutdown,
                "delayed publish not due before shutdown",
            ));
            accepted.settle(Settled::LeftOver);
        }
        let guard = LostGuard(self.clone());
        async move {
            let report = guard.0.drain_and_close(until, settled_before, report).await;
            guard
                .0
                .inner
                .shutdown
                .send_replace(ShutdownPhase::Done(report));
        }
    }

    /// The drain of [`shutdown`](Self::shutdown), in its own task: waits for what the
    /// transport owes, stops the pumps, waits for workers and inline runs until `until`,
    /// aborts and reports what is left, closes the transport.
    async fn drain_and_close(
        &self,
        until: tokio::time::Instant,
        settled_before: u64,
        mut report: ShutdownReport,
    ) -> ShutdownReport {
        let inner = &self.inner;
        // What this bus published through its transport for its own subscriptions, and the
        // transport has not delivered yet, is work it accepted like a queued message: keep the
        // pumps running until it arrived (or the deadline passed), so a transport that keeps
        // nothing (in memory) does not lose it when intake stops. A delivery that went to a
        // member of the group in another process never arrives here: then this waits until
        // the deadline.
        if inner.transport.is_some()
            && tokio::time::timeout_at(until, inner.pending.owed_delivered())
                .await
                .is_err()
        {
            tracing::warn!(
                "deliveries the transport owes this bus did not arrive before the shutdown deadline"
            );
        }
        let subs = inner.subs();
        for sub in &subs {
            sub.deactivate();
        }
        for sub in &subs {
            sub.stop_pump(until).await;
        }
        report.nacked.append(&mut inner.handed_back.lock());
        let mut handles: Vec<_> = subs
            .iter()
            .flat_map(|s| std::mem::take(&mut *s.workers.lock()))
            .collect();
        // A handle is awaited at most once to completion (awaiting it again would panic).
        let mut running = Vec::new();
        for mut h in handles.drain(..) {
            if !running.is_empty() || tokio::time::timeout_at(until, &mut h).await.is_err() {
                running.push(h);
            }
        }
        // Commands run on their senders' tasks (`inline.rs`) drain like workers until the
        // deadline; then they are stopped as the workers are aborted.
        let mut stopped_inline = false;
        for sub in &subs {
            if tokio::time::timeout_at(until, sub.queue.inline_finished())
                .await
                .is_err()
            {
                sub.queue.abort_inline();
                stopped_inline = true;
            }
        }
        if !running.is_empty() || stopped_inline {
            // Stopped: each run ends at its next poll, its message left in flight. Its sender
            // polls it, not this task: one that does not poll it for a while (busy in another
            // branch of a `select!`, or awaiting this shutdown) does not hold the shutdown past
            // a short grace (review rev1). Its message is reported in flight all the same, and
            // the run, stopped, never calls its handler again.
            let grace = until.max(tokio::time::Instant::now() + INLINE_STOP_GRACE);
            for sub in &subs {
                if tokio::time::timeout_at(grace, sub.queue.inline_finished())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        subscription = %sub.name(),
                        "a command run on its sender's task was stopped at the shutdown deadline, but its sender has not polled it since: reported in flight"
                    );
                }
            }
            for h in &running {
                h.abort();
            }
            for h in running {
                // Cancelled or finished: either way the task no longer touches its queue.
                let _ = h.await;
            }
            for sub in &subs {
                self.report_leftovers(sub, &mut report).await;
            }
        }
        // Lower priority groups still being fed find closed queues and dead-letter the rest;
        // wait for that so nothing is still in their hands when shutdown returns.
        let dispatchers: Vec<_> = std::mem::take(&mut *inner.dispatchers.lock());
        // They only need to reach closed queues: a short grace even past the deadline.
        let grace = until.max(tokio::time::Instant::now() + Duration::from_millis(100));
        for mut task in dispatchers {
            if tokio::time::timeout_at(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        // Leftovers are settled as such, so they are not in this count.
        report.drained = inner.pending.settled() - settled_before;
        // Deliveries still owed will not arrive here (the pumps stopped): they stay with the
        // transport (a durable one delivers them to the next consumer of the group), and no
        // longer count as pending.
        let owed = inner.pending.forget_owed();
        if owed > 0 {
            tracing::warn!(
                owed,
                "deliveries the transport owed were left with it at shutdown"
            );
        }
        // The transport gets at least a short grace to flush and close, even when draining
        // used up the deadline: closed with no time left it cannot finish (the log then keeps
        // its lock, so the same log cannot be opened again while this bus lives).
        let close_by = until.max(tokio::time::Instant::now() + TRANSPORT_CLOSE_GRACE);
        if let Some(transport) = &inner.transport
            && let Err(e) = transport
                .close(
                    std::time::Instant::now()
                        + close_by.saturating_duration_since(tokio::time::Instant::now()),
                )
                .await
        {
            tracing::warn!(error = %e, "transport did not close cleanly");
        }
        inner.state.store(STOPPED, Ordering::Release);
        if report.left.is_empty() && report.nacked.is_empty() {
            tracing::info!(drained = report.drained, "bus shut down cleanly");
        } else {
            tracing::warn!(
                left = report.left.len(),
                nacked = report.nacked.len(),
                drained = report.drained,
                "bus shut down with unprocessed messages (dead-lettered or returned to the transport)"
            );
        }
        report
    }

    /// After the drain deadline: settles what one subscription did not handle.
    async fn report_leftovers(&self, sub: &SubShared, report: &mut ShutdownReport) {
        let inner = &self.inner;
        // In-flight messages were cancelled with their worker or inline run (their pending
        // count went with it). Those from a transport lost their (unsettled) delivery with it, so the
        // transport redelivers them.
        let fed = inner.transport.is_some() && sub.kind == SubscriptionKind::Event;
        for env in sub.queue.in_flight_envelopes() {
            if fed {
                report.nacked.push(env.id.clone());
            } else {
                report.left.push(env.id.clone());
                crate::stats::inc(&sub.counters.dead_lettered);
                inner.dead_letter(
                    DeadLetter::new(
                        Arc::unwrap_or_clone(env),
                        DeadLetterReason::Shutdown,
                        "in flight at the shutdown deadline",
                    )
                    .with_handler(sub.name()),
                );
            }
        }
        for entry in sub.queue.drain_waiting() {
            let id = entry.env.id.clone();
            match sub.hand_back_unhandled(inner, entry).await {
                // Never handled: not a failed delivery.
                Ok(()) => report.nacked.push(id),
                Err(entry) => {
                    report.left.push(entry.env.id.clone());
                    sub.give_up(
                        inner,
                        entry,
                        DeadLetterReason::Shutdown,
                        "not processed before the shutdown deadline".into(),
                    );
                }
            }
        }
        inner.forget_subscription(sub.id);
    }
}
