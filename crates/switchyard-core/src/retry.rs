//! The one vocabulary for trying again: [`Backoff`] (how long to wait) and [`RetryPolicy`]
//! (how often to try, which errors are worth it, and the backoff between tries).
//!
//! Every retry in switchyard uses these types: the bus's own retries
//! (`BusBuilder::backoff`), the middleware's `RetryLayer` and resilience stack, the
//! pipeline's `with_retry` and the components' `ErrorHandler`.
//!
//! The delay after `n` failed attempts is capped at
//! `min(max_delay, initial_delay * multiplier^(n-1))` and then randomised by the [`Jitter`]:
//! - [`Jitter::Full`]: uniformly in `0 ..= cap` (the default; spreads retries of many
//!   messages so they do not hit a recovering dependency together);
//! - [`Jitter::Equal`]: uniformly in `cap/2 ..= cap` (never shorter than half the cap);
//! - [`Jitter::None`]: exactly the cap.
//!
//! The random draw comes from a per-thread generator, or from a seeded one shared by the
//! clones of a policy ([`Backoff::seed`]) so tests get the same delays on every run.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::retry::{Backoff, Jitter, RetryPolicy};
//! let policy = RetryPolicy::default()
//!     .max_attempts(5)
//!     .initial_delay(Duration::from_millis(100))
//!     .multiplier(2)
//!     .max_delay(Duration::from_secs(1))
//!     .jitter(Jitter::Equal)
//!     .seed(7);
//! for failed in 1..5 {
//!     let cap = policy.backoff().cap(failed);
//!     let d = policy.delay_for(failed);
//!     assert!(d >= cap / 2 && d <= cap);
//! }
//! assert_eq!(Backoff::fixed(Duration::from_millis(50)).delay_for(9), Duration::from_millis(50));
//! ```

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Permanent;

/// How a backoff delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniformly random between zero and the capped exponential delay (the default).
    #[default]
    Full,
    /// Half the capped delay plus a uniformly random part of the other half.
    Equal,
    /// Exactly the capped exponential delay.
    None,
}

/// Where the random part of a delay comes from. Cheap to clone: the clones of a seeded
/// source share one generator.
#[derive(Clone, Default)]
enum JitterSource {
    /// The calling thread's own generator.
    #[default]
    Thread,
    /// A seeded generator shared by clones, for reproducible delays.
    Seeded(Arc<Mutex<fastrand::Rng>>),
}

impl JitterSource {
    /// A random value in `0 ..= max`.
    fn below_or_at(&self, max: u64) -> u64 {
        match self {
            Self::Thread => fastrand::u64(..=max),
            Self::Seeded(rng) => rng.lock().u64(..=max),
        }
    }
}

impl fmt::Debug for JitterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Thread => f.write_str("Thread"),
            Self::Seeded(_) => f.write_str("Seeded"),
        }
    }
}

/// The delays between attempts: exponential growth from an initial delay, capped, with
/// [`Jitter`]. Cheap to clone.
///
/// Defaults ([`Backoff::default`]): 100 ms initial delay, multiplier 2, 10 s max delay,
/// [`Jitter::Full`], a per-thread random source.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: Jitter,
    source: JitterSource,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: Jitter::Full,
            source: JitterSource::Thread,
        }
    }
}

impl Backoff {
    /// Exponential backoff from `initial_delay` (the other settings at their defaults:
    /// multiplier 2, at most 10 s, full jitter).
    pub fn exponential(initial_delay: Duration) -> Self {
        Self::default().initial_delay(initial_delay)
    }

    /// The same delay every time: multiplier 1, no jitter.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            initial_delay: delay,
            multiplier: 1.0,
            max_delay: delay,
            jitter: Jitter::None,
            source: JitterSource::Thread,
        }
    }

    /// The delay cap after the first failure.
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Growth factor of the delay cap per failure (at least 1; not a number counts as 1).
    pub fn multiplier(mut self, m: impl Into<f64>) -> Self {
        let m = m.into();
        self.multiplier = if m.is_nan() { 1.0 } else { m.max(1.0) };
        self
    }

    /// Upper bound of any delay.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Randomisation of delays.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Draws the random part of delays from a generator seeded with `seed`, shared by this
    /// backoff's clones: the same seed gives the same sequence of delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.source = JitterSource::Seeded(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))));
        self
    }

    /// The configured initial delay.
    pub fn get_initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// The configured multiplier.
    pub fn get_multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The configured max delay.
    pub fn get_max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The configured jitter.
    pub fn get_jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay cap after `failed_attempts` failures (1 after the first):
    /// `min(max_delay, initial_delay * multiplier^(failed_attempts - 1))`, no jitter.
    pub fn cap(&self, failed_attempts: u32) -> Duration {
        let exp = i32::try_from(failed_attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let nanos = self.initial_delay.as_nanos() as f64 * self.multiplier.powi(exp);
        let max = self.max_delay.as_nanos() as f64;
        if nanos.is_nan() || nanos >= max {
            return self.max_delay;
        }
        // Below `max_delay`, so it fits in a `Duration`; rounding keeps integral products exact.
        let nanos = nanos.round() as u128;
        let secs = (nanos / 1_000_000_000) as u64;
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }

    /// The delay before the next attempt after `failed_attempts` failures: the
    /// [`cap`](Self::cap) randomised by the jitter.
    pub fn delay_for(&self, failed_attempts: u32) -> Duration {
        let cap = self.cap(failed_attempts);
        match self.jitter {
            Jitter::None => cap,
            Jitter::Full => self.draw(Duration::ZERO, cap),
            Jitter::Equal => self.draw(cap / 2, cap),
        }
    }

    /// A uniformly random duration in `low ..= high`.
    fn draw(&self, low: Duration, high: Duration) -> Duration {
        let span = nanos(high.saturating_sub(low));
        low.saturating_add(Duration::from_nanos(self.source.below_or_at(span)))
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Decides whether an error is worth another attempt. Implemented for closures taking the
/// error; `switchyard_middleware::retry::Classifier` implements it too.
pub trait Classify: Send + Sync + 'static {
    /// True when the same input may succeed on another attempt.
    fn is_retryable(&self, err: &(dyn Error + 'static)) -> bool;
}

impl<F> Classify for F
where
    F: Fn(&(dyn Error + 'static)) -> bool + Send + Sync + 'static,
{
    fn is_retryable(&self, err: &(dyn Error + 'static)) -> bool {
        self(err)
    }
}

/// When and how often to try again: the total attempts, the [`Backoff`] between them, whether
/// a handler's own `Retry { after }` delay is honoured, and optionally which errors are worth
/// it. Cheap to clone (clones share a seeded random source).
///
/// Without a [`classifier`](Self::classifier), the user of the policy applies its own default:
/// the middleware's `Classifier::default()`, the pipeline's transient stage errors; errors
/// marked [`Permanent`] are never retried (see [`is_retryable`](Self::is_retryable)).
///
/// Every default is listed on [`RetryPolicy::default`].
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    honor_retry_after: bool,
    classifier: Option<Arc<dyn Classify>>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("honor_retry_after", &self.honor_retry_after)
            .field("classifier", &self.classifier.is_some())
            .finish()
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, [`Backoff::default`] (100 ms initial delay, multiplier 2, 10 s max delay,
    /// full jitter), `Retry { after }` honoured, no classifier of its own.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            honor_retry_after: true,
            classifier: None,
        }
    }
}

impl RetryPolicy {
    /// The default policy (see [`RetryPolicy::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The default policy with `max_attempts` attempts.
    pub fn attempts(max_attempts: u32) -> Self {
        Self::default().max_attempts(max_attempts)
    }

    /// Total attempts, the first included (at least 1; 1 means never retry).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Replaces the whole backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// See [`Backoff::initial_delay`].
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.backoff = self.backoff.initial_delay(d);
        self
    }

    /// See [`Backoff::max_delay`].
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.backoff = self.backoff.max_delay(d);
        self
    }

    /// See [`Backoff::multiplier`].
    pub fn multiplier(mut self, m: impl Into<f64>) -> Self {
        self.backoff = self.backoff.multiplier(m);
        self
    }

    /// See [`Backoff::jitter`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// See [`Backoff::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.backoff = self.backoff.seed(seed);
        self
    }

    /// Whether a handler's `Retry { after: Some(d) }` waits `d` (capped at the max delay)
    /// instead of the backoff delay. Default true.
    pub fn honor_retry_after(mut self, yes: bool) -> Self {
        self.honor_retry_after = yes;
        self
    }

    /// Decides which errors are retried (instead of the default of whoever applies the
    /// policy).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// Configured total attempts.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The classifier given with [`classifier`](Self::classifier), if any.
    pub fn get_classifier(&self) -> Option<&dyn Classify> {
        self.classifier.as_deref()
    }

    /// Whether `err` is worth another attempt: never when a [`Permanent`] (or a
    /// [`HandBack`](crate::HandBack)) is in its chain;
    /// otherwise the policy's classifier decides, or `default` when it has none.
    pub fn is_retryable(&self, err: &(dyn Error + 'static), default: &dyn Classify) -> bool {
        let mut link = Some(err);
        while let Some(e) = link {
            if e.is::<Permanent>() || e.is::<crate::error::HandBack>() {
                return false;
            }
            link = e.source();
        }
        match &self.classifier {
            Some(c) => c.is_retryable(err),
            None => default.is_retryable(err),
        }
    }

    /// The delay before the next attempt after `failed_attempts` failures
    /// ([`Backoff::delay_for`]).
    pub fn delay_for(&self, failed_attempts: u32) -> Duration {
        self.backoff.delay_for(failed_attempts)
    }

    /// Like [`delay_for`](Self::delay_for), but a handler's own delay (`hint`, from
    /// `Retry { after }`) wins, capped at the max delay, when the policy honours it.
    pub fn next_delay(&self, failed_attempts: u32, hint: Option<Duration>) -> Duration {
        match (self.honor_retry_after, hint) {
            (true, Some(after)) => after.min(self.backoff.max_delay),
            _ => self.delay_for(failed_attempts),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn cap_grows_and_saturates() {
        let b = Backoff::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        assert_eq!(b.cap(1), Duration::from_millis(100));
        assert_eq!(b.cap(2), Duration::from_millis(200));
        assert_eq!(b.cap(4), Duration::from_millis(800));
        assert_eq!(b.cap(5), Duration::from_secs(1));
        assert_eq!(b.cap(u32::MAX), Duration::from_secs(1));
        let half = Backoff::default().multiplier(1.5).max_delay(Duration::MAX);
        assert_eq!(half.cap(3), Duration::from_millis(225));
        let huge = Backoff::exponential(Duration::MAX).max_delay(Duration::MAX);
        assert_eq!(huge.cap(40), Duration::MAX, "no overflow, the max");
    }

    #[test]
    fn a_multiplier_below_one_or_nan_counts_as_one() {
        let b = Backoff::exponential(Duration::from_millis(10)).multiplier(0.5);
        assert_eq!(b.cap(5), Duration::from_millis(10));
        let b = b.multiplier(f64::NAN);
        assert_eq!(b.cap(5), Duration::from_millis(10));
    }

    #[test]
    fn full_jitter_stays_in_bounds_and_spreads() {
        let b = Backoff::default().seed(7);
        let mut distinct = HashSet::new();
        for n in 1..200u32 {
            let failed = n % 8 + 1;
            let d = b.delay_for(failed);
            assert!(d <= b.cap(failed), "{d:?} > cap {:?}", b.cap(failed));
            distinct.insert(d);
        }
        assert!(
            distinct.len() > 150,
            "jitter barely varies: {}",
            distinct.len()
        );
    }

    #[test]
    fn equal_jitter_keeps_at_least_half_the_cap() {
        let b = Backoff::default().jitter(Jitter::Equal);
        let mut distinct = HashSet::new();
        for failed in (1..8).cycle().take(200) {
            let (d, cap) = (b.delay_for(failed), b.cap(failed));
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside {:?}..={cap:?}",
                cap / 2
            );
            distinct.insert(d);
        }
        assert!(
            distinct.len() > 150,
            "jitter barely varies: {}",
            distinct.len()
        );
    }

    #[test]
    fn no_jitter_and_fixed_are_exact() {
        let b = Backoff::exponential(Duration::from_millis(10)).jitter(Jitter::None);
        let d: Vec<_> = (1..5).map(|n| b.delay_for(n)).collect();
        assert_eq!(d, [10, 20, 40, 80].map(Duration::from_millis));
        let f = Backoff::fixed(Duration::from_millis(30));
        assert!((1..50).all(|n| f.delay_for(n) == Duration::from_millis(30)));
    }

    #[test]
    fn seed_reproduces_and_clones_share_the_sequence() {
        let a = RetryPolicy::default().seed(42);
        let b = RetryPolicy::default().seed(42);
        let c = RetryPolicy::default().seed(43);
        let da: Vec<_> = (1..6).map(|n| a.delay_for(n)).collect();
        let db: Vec<_> = (1..6).map(|n| b.delay_for(n)).collect();
        let dc: Vec<_> = (1..6).map(|n| c.delay_for(n)).collect();
        assert_eq!(da, db);
        assert_ne!(da, dc);
        // A clone continues the same generator rather than replaying it.
        let fresh = RetryPolicy::default().seed(42);
        let first = fresh.delay_for(5);
        assert_ne!(
            fresh.clone().delay_for(5),
            first,
            "clone replayed the sequence"
        );
    }

    #[test]
    fn retry_after_hint_is_capped() {
        let p = RetryPolicy::default().max_delay(Duration::from_secs(2));
        assert_eq!(
            p.next_delay(1, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
        let ignore = p.honor_retry_after(false).jitter(Jitter::None);
        assert_eq!(
            ignore.next_delay(1, Some(Duration::from_secs(60))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn classification_permanent_then_classifier_then_default() {
        #[derive(Debug, thiserror::Error)]
        #[error("fatal")]
        struct Fatal;
        let yes = |_: &(dyn Error + 'static)| true;
        let permanent: Box<dyn Error + Send + Sync> = Permanent::new("no").into();
        assert!(!RetryPolicy::default().is_retryable(&*permanent, &yes));
        assert!(RetryPolicy::default().is_retryable(&Fatal, &yes));
        let p = RetryPolicy::default().classifier(|e: &(dyn Error + 'static)| !e.is::<Fatal>());
        assert!(!p.is_retryable(&Fatal, &yes));
        assert!(p.get_classifier().is_some());
        assert_eq!(RetryPolicy::attempts(0).get_max_attempts(), 1);
    }
}
