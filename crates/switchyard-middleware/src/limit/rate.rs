use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::{BoxError, Envelope, Outcome};
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Layer, Service};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    tokens_per_sec: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let last = *self.last.get_or_insert(now);
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.tokens_per_sec).min(self.capacity);
        self.last = Some(now);
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            let secs = missing / self.tokens_per_sec;
            // Round up to the next microsecond so the token is really there on wake-up.
            Err(Duration::from_micros((secs * 1e6).ceil() as u64).max(Duration::from_micros(1)))
        }
    }

    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }
}

/// A token-bucket rate limit for one handler (see the [module docs](super)).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer {
    rate: u32,
    per: Duration,
    burst: u32,
}

impl RateLimitLayer {
    /// At most `rate` calls per `per` on average (both at least 1 / 1 ns); the burst defaults
    /// to `rate`.
    pub fn new(rate: u32, per: Duration) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            per: per.max(Duration::from_nanos(1)),
            burst: rate,
        }
    }

    /// Calls allowed back to back after a quiet period (bucket size, at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(self.burst),
                capacity: f64::from(self.burst),
                tokens_per_sec: f64::from(self.rate) / self.per.as_secs_f64(),
                last: None,
            })),
            holds_token: false,
            sleep: None,
        }
    }
}

/// A handler behind a token bucket shared by its clones.
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    holds_token: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("holds_token", &self.holds_token)
            .finish()
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            holds_token: false,
            sleep: None,
        }
    }
}

impl<S> Drop for RateLimit<S> {
    fn drop(&mut self) {
        if self.holds_token {
            self.bucket.lock().give_back();
        }
    }
}

impl<S> Service<Envelope> for RateLimit<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        while !self.holds_token {
            let now = Instant::now();
            let taken = self.bucket.lock().take(now);
            match taken {
                Ok(()) => {
                    self.holds_token = true;
                    self.sleep = None;
                }
                Err(wait) => {
                    let sleep = self
                        .sleep
                        .insert(Box::pin(sleep_until(crate::clock::deadline(now, wait))));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        // A call without readiness is a caller bug; it goes through without a token.
        self.holds_token = false;
        self.inner.call(env)
    }
}
