//! Test kit: deterministic tests without sleeps.
//!
//! - [`VirtualClock`]: pauses tokio's clock so timeouts, retries and deadlines run instantly
//!   and in order (tokio's `test-util`; enable the `testkit` feature).
//! - [`Bus::run_until_idle`](crate::Bus::run_until_idle): waits until every accepted message
//!   is settled.
//! - [`Recorder`]: a subscription that records what it receives and lets a test wait for it.
//! - [`FaultyTransport`]: wraps a transport and drops, delays and duplicates deliveries and
//!   loses acks ([`Faults`]), to check what a bus or application promises on a transport that
//!   misbehaves. `switchyard-conformance` runs its bus suite through it.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::{Envelope, Outcome, SubscribeError};
use tokio::sync::Notify;

mod faulty;
pub use faulty::{FaultCounter, FaultCounts, Faults, FaultyTransport};

use crate::bus::Bus;
use crate::handler::handler_fn;
use crate::subscription::Subscription;

/// Waiting for a recorder timed out.
#[derive(Debug, thiserror::Error)]
#[error("expected {expected} message(s) within {timeout:?}, got {got}")]
pub struct WaitTimeout {
    /// How many were expected.
    pub expected: usize,
    /// How many arrived.
    pub got: usize,
    /// How long the test waited.
    pub timeout: Duration,
}

/// A fresh subscription name per recorder (`recorder-1`, `recorder-2`, ...): on a transport the
/// name is the consumer group, and two recorders sharing one would split the messages.
fn recorder_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "recorder-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A subscription that records every envelope it receives, in arrival order.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use switchyard::{Bus, Envelope, Topic, testkit::Recorder};
/// let bus = Bus::new();
/// let rec = Recorder::start(&bus, "orders.#").await?;
/// bus.publish_envelope(Envelope::new(Topic::new("orders.created")?, "{}")).await?;
/// let got = rec.wait_for(1, Duration::from_secs(1)).await?;
/// assert_eq!(got[0].topic.as_str(), "orders.created");
/// # Ok(()) }
/// ```
pub struct Recorder {
    seen: Arc<Mutex<Vec<Envelope>>>,
    notify: Arc<Notify>,
    subscription: Subscription,
}

impl Recorder {
    /// Subscribes to `pattern` and records.
    pub async fn start(bus: &Bus, pattern: &str) -> Result<Self, SubscribeError> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let (s, n) = (seen.clone(), notify.clone());
        let handler = handler_fn(move |env: Envelope| {
            let (s, n) = (s.clone(), n.clone());
            async move {
                s.lock().push(env);
                n.notify_waiters();
                Ok::<_, std::convert::Infallible>(Outcome::Ack)
            }
        });
        let subscription = bus
            .subscribe(&recorder_name(), pattern, handler)
            .queue_capacity(1 << 20)
            .start()
            .await?;
        Ok(Self {
            seen,
            notify,
            subscription,
        })
    }

    /// Everything recorded so far.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.seen.lock().clone()
    }

    /// Waits until at least `n` envelopes were recorded, at most `timeout`.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Envelope>, WaitTimeout> {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let seen = self.envelopes();
                if seen.len() >= n {
                    return seen;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| WaitTimeout {
                expected: n,
                got: self.envelopes().len(),
                timeout,
            })
    }

    /// The underlying subscription (for its stats).
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }
}

/// Controls tokio's clock for deterministic tests (requires the `testkit` feature and a
/// current-thread runtime, e.g. `#[tokio::test(start_paused = true)]`).
#[cfg(feature = "testkit")]
#[derive(Debug, Clone, Copy)]
pub struct VirtualClock;

#[cfg(feature = "testkit")]
impl VirtualClock {
    /// Freezes time: it now moves only by `advance`, or automatically when every task waits
    /// on a timer.
    pub fn pause() -> Self {
        tokio::time::pause();
        Self
    }

    /// Moves time forward by `d`, firing every timer due meanwhile.
    pub async fn advance(&self, d: Duration) {
        tokio::time::advance(d).await;
    }

    /// Virtual now.
    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}
