use std::sync::Arc;
use std::time::Duration;

use super::Classifier;
use crate::rng::SplitMix;

/// How the backoff delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniformly random between zero and the capped exponential delay (the default): spreads
    /// retries of many messages so they do not hit a recovering dependency together.
    #[default]
    Full,
    /// Exactly the capped exponential delay.
    None,
}

/// When and how often the retry layer tries again. Cheap to clone (clones share the random
/// source).
///
/// Every default is listed on [`RetryPolicy::default`].
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: u32,
    jitter: Jitter,
    honor_retry_after: bool,
    classifier: Classifier,
    rng: Arc<SplitMix>,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms initial delay, 10 s max delay, multiplier 2, [`Jitter::Full`],
    /// `Outcome::Retry { after }` honoured, the default [`Classifier`], a random seed.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            multiplier: 2,
            jitter: Jitter::Full,
            honor_retry_after: true,
            classifier: Classifier::default(),
            rng: Arc::new(SplitMix::from_entropy()),
        }
    }
}

impl RetryPolicy {
    /// The default policy (see [`RetryPolicy::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Total attempts per call, the first included (at least 1; 1 means never retry).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Delay cap before the first retry.
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Upper bound of any delay.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Growth factor of the delay cap per attempt (at least 1).
    pub fn multiplier(mut self, m: u32) -> Self {
        self.multiplier = m.max(1);
        self
    }

    /// Randomisation of delays.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether `Outcome::Retry { after: Some(d) }` waits `d` (capped at the max delay) instead
    /// of the backoff delay.
    pub fn honor_retry_after(mut self, yes: bool) -> Self {
        self.honor_retry_after = yes;
        self
    }

    /// The error classifier.
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Seeds the random source, for reproducible delays in tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Arc::new(SplitMix::new(seed));
        self
    }

    /// Configured total attempts.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The classifier in use.
    pub fn get_classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// The delay cap after `failed_attempts` failures (1 after the first):
    /// `min(max_delay, initial_delay * multiplier^(failed_attempts - 1))`.
    pub fn cap(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1);
        let factor = self.multiplier.checked_pow(exp).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// The delay before the next attempt after `failed_attempts` failures, drawing from the
    /// policy's random source; `hint` is the handler's `Retry { after }`.
    pub fn next_delay(&self, failed_attempts: u32, hint: Option<Duration>) -> Duration {
        if let (true, Some(after)) = (self.honor_retry_after, hint) {
            return after.min(self.max_delay);
        }
        let cap = self.cap(failed_attempts);
        match self.jitter {
            Jitter::None => cap,
            Jitter::Full => {
                let cap_nanos = crate::clock::nanos(cap);
                let r = self.rng.next_u64();
                let nanos = if cap_nanos == u64::MAX {
                    r
                } else {
                    r % (cap_nanos + 1)
                };
                Duration::from_nanos(nanos)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_grows_and_saturates() {
        let p = RetryPolicy::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        assert_eq!(p.cap(1), Duration::from_millis(100));
        assert_eq!(p.cap(2), Duration::from_millis(200));
        assert_eq!(p.cap(4), Duration::from_millis(800));
        assert_eq!(p.cap(5), Duration::from_secs(1));
        assert_eq!(p.cap(500), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_in_bounds_and_spreads() {
        let p = RetryPolicy::default().seed(7);
        let mut distinct = std::collections::HashSet::new();
        for n in 1..200u32 {
            let failed = n % 8 + 1;
            let d = p.next_delay(failed, None);
            assert!(d <= p.cap(failed), "{d:?} > cap {:?}", p.cap(failed));
            distinct.insert(d);
        }
        assert!(
            distinct.len() > 150,
            "jitter barely varies: {}",
            distinct.len()
        );
    }

    #[test]
    fn seed_reproduces() {
        let a = RetryPolicy::default().seed(42);
        let b = RetryPolicy::default().seed(42);
        let c = RetryPolicy::default().seed(43);
        let da: Vec<_> = (1..6).map(|n| a.next_delay(n, None)).collect();
        let db: Vec<_> = (1..6).map(|n| b.next_delay(n, None)).collect();
        let dc: Vec<_> = (1..6).map(|n| c.next_delay(n, None)).collect();
        assert_eq!(da, db);
        assert_ne!(da, dc);
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
}
