//! Circuit breaker per handler: closed → open after too many failures in a window,
//! half-open after a cool-down with a limited number of trial calls, closed again once the
//! trials succeed.
//!
//! While the breaker is open, [`Breaker::poll_ready`](tower::Service::poll_ready) returns
//! `Pending` until the cool-down ends. A bus that polls readiness before taking the next
//! message off a subscription queue therefore *pauses intake*: messages stay queued (the
//! queue's backpressure policy applies) instead of being burnt into the dead-letter queue.
//! A call made without readiness while the breaker is open fails fast with
//! [`BreakerOpenError`] (retryable).
//!
//! What counts as a failure: any error, and `Outcome::Retry` unless
//! [`BreakerConfig::count_retry_outcomes`] is off. `Ack`, `Reply` and `Reject` are successes (a
//! rejection is a verdict on the message, not on the handler's health). A custom predicate can
//! replace this ([`BreakerConfig::failure_predicate`]).
//!
//! Left out altogether (neither a call nor a failure; a half-open trial that ends in one gives
//! its slot back without closing or reopening the breaker):
//! - a [`HandBack`](switchyard_core::HandBack) anywhere in the error's chain ("not mine, give it
//!   back to the transport"), whatever the predicate;
//! - a message that does not decode (a [`CodecError`] of direction `Decode` anywhere in the
//!   error's chain: dead-lettered), unless a custom predicate is set (which is then asked, as
//!   for any result). The payload is the sender's fault, not a sign that the handler or what
//!   it depends on is unhealthy: counted as a failure, a burst of bad input would open the
//!   breaker and hold every good message; counted as a success, it would dilute a
//!   [`FailureThreshold::Ratio`] and keep a failing handler's breaker closed.
//!
//! State is visible through a cheap-clone [`BreakerHandle`] and every transition is published
//! to the observer set with [`BreakerConfig::on_transition`] (the bus turns them into
//! `switchyard.breaker.opened` / `.half_opened` / `.closed` events, see
//! [`BreakerEvent::topic`]) and to the `switchyard_breaker_state` gauge.
//!
//! Defaults ([`BreakerConfig::default`]): open after 5 failures within 60 s, 30 s cool-down,
//! 1 trial call.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer, BreakerState, FailureThreshold};
//!
//! let layer = BreakerLayer::new(
//!     "billing",
//!     BreakerConfig::default()
//!         .threshold(FailureThreshold::Ratio { ratio: 0.5, min_calls: 20 })
//!         .cool_down(Duration::from_secs(10))
//!         .on_transition(|ev| println!("{} -> {} ({})", ev.from, ev.to, ev.topic())),
//! );
//! let handle = layer.handle();
//! assert_eq!(handle.state(), BreakerState::Closed);
//! ```

mod error;
mod layer;
mod service;
mod state;

pub use error::BreakerOpenError;
pub use layer::BreakerLayer;
pub(crate) use service::{Admitted, Gate};
pub use service::{Breaker, BreakerFuture};
pub(crate) use state::Shared as BreakerShared;
pub use state::{BreakerEvent, BreakerHandle, BreakerSnapshot, BreakerState};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{BoxError, CodecDirection, CodecError, HandBack, Outcome};

/// When the breaker opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureThreshold {
    /// After this many failures within the window.
    Count(u32),
    /// When at least `min_calls` calls were made within the window and at least `ratio`
    /// (0.0..=1.0) of them failed.
    Ratio {
        /// Failed share that opens the breaker.
        ratio: f64,
        /// Calls needed before the ratio is trusted.
        min_calls: u32,
    },
}

type Observer = Arc<dyn Fn(&BreakerEvent) + Send + Sync>;
type FailurePredicate = Arc<dyn Fn(&Result<Outcome, BoxError>) -> bool + Send + Sync>;

/// Configuration of one breaker. Every default is listed on [`BreakerConfig::default`].
#[derive(Clone)]
pub struct BreakerConfig {
    pub(crate) threshold: FailureThreshold,
    pub(crate) window: Duration,
    pub(crate) cool_down: Duration,
    pub(crate) trial_calls: u32,
    pub(crate) count_retry_outcomes: bool,
    pub(crate) failure_predicate: Option<FailurePredicate>,
    pub(crate) observer: Option<Observer>,
}

impl Default for BreakerConfig {
    /// `Count(5)` failures within a 60 s window, 30 s cool-down, 1 trial call, `Retry`
    /// outcomes count as failures, no observer.
    fn default() -> Self {
        Self {
            threshold: FailureThreshold::Count(5),
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
            trial_calls: 1,
            count_retry_outcomes: true,
            failure_predicate: None,
            observer: None,
        }
    }
}

impl fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("threshold", &self.threshold)
            .field("window", &self.window)
            .field("cool_down", &self.cool_down)
            .field("trial_calls", &self.trial_calls)
            .field("count_retry_outcomes", &self.count_retry_outcomes)
            .field("failure_predicate", &self.failure_predicate.is_some())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl BreakerConfig {
    /// When to open.
    pub fn threshold(mut self, threshold: FailureThreshold) -> Self {
        self.threshold = threshold;
        self
    }

    /// Shorthand for `threshold(FailureThreshold::Count(n))`.
    pub fn failures(self, n: u32) -> Self {
        self.threshold(FailureThreshold::Count(n.max(1)))
    }

    /// The sliding window failures are counted in (kept in 10 buckets).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(10));
        self
    }

    /// How long the breaker stays open before it lets trial calls through.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// Trial calls admitted while half-open (at least 1); all must succeed to close.
    pub fn trial_calls(mut self, n: u32) -> Self {
        self.trial_calls = n.max(1);
        self
    }

    /// Whether `Outcome::Retry` counts as a failure (default: true).
    pub fn count_retry_outcomes(mut self, yes: bool) -> Self {
        self.count_retry_outcomes = yes;
        self
    }

    /// Replaces the failure test: return true when the result means the handler is unhealthy.
    /// It is not asked about a hand-back (`HandBack` in the error's chain), which never counts;
    /// it is asked about a message that does not decode, which the default test leaves out.
    pub fn failure_predicate<F>(mut self, f: F) -> Self
    where
        F: Fn(&Result<Outcome, BoxError>) -> bool + Send + Sync + 'static,
    {
        self.failure_predicate = Some(Arc::new(f));
        self
    }

    /// Calls `f` on every state change, in order. `f` runs on the thread that caused the
    /// change and must be quick (e.g. push to a channel); it may read the handle.
    pub fn on_transition<F>(mut self, f: F) -> Self
    where
        F: Fn(&BreakerEvent) + Send + Sync + 'static,
    {
        self.observer = Some(Arc::new(f));
        self
    }

    /// Whether an observer is set ([`on_transition`](Self::on_transition)).
    pub fn is_observed(&self) -> bool {
        self.observer.is_some()
    }

    #[inline]
    pub(crate) fn is_failure(&self, result: &Result<Outcome, BoxError>) -> bool {
        if let Some(p) = &self.failure_predicate {
            return p(result);
        }
        match result {
            // Undecodable input was left out before (`is_neutral`).
            Err(_) => true,
            Ok(Outcome::Retry { .. }) => self.count_retry_outcomes,
            Ok(_) => false,
        }
    }

    /// Whether the breaker leaves `result` out altogether, neither a call nor a failure: a
    /// [`HandBack`] anywhere in the error's chain ("not mine, give it back to the transport"),
    /// whatever the failure predicate; and, under the default test (no predicate), a message
    /// that does not decode, which is the sender's fault and says nothing about the handler's
    /// health (it goes to the dead-letter queue).
    #[inline]
    pub(crate) fn is_neutral(&self, result: &Result<Outcome, BoxError>) -> bool {
        match result {
            Ok(_) => false,
            Err(e) => {
                has_hand_back(&**e) || (self.failure_predicate.is_none() && is_decode_failure(&**e))
            }
        }
    }
}

/// Whether a [`HandBack`] is anywhere in `result`'s error chain.
#[inline]
pub(crate) fn is_hand_back(result: &Result<Outcome, BoxError>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => has_hand_back(&**e),
    }
}

#[cold]
fn has_hand_back(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<HandBack>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether `e` (or an error it wraps) is a [`CodecError`] raised while decoding the input.
fn is_decode_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<CodecError>()
            .is_some_and(|c| c.direction == CodecDirection::Decode)
        {
            return true;
        }
        cur = err.source();
    }
    false
}
