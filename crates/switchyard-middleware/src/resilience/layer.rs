use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::limit::concurrency::future::ResponseFuture as PermitFuture;
use tower::{Layer, Service};

use super::ResilienceConfig;
use super::service::{Core, Resilient};
use crate::breaker::{BreakerHandle, BreakerLayer};
use crate::dedup::{DedupHandle, DedupLayer};
use crate::limit::{ConcurrencyLimit, ConcurrencyLimitLayer, RateLimit, RateLimitLayer};
use crate::metrics::{MetricsLayer, MetricsRegistry};
use crate::retry::RetryLayer;
use crate::timeout::TimeoutLayer;

/// The service [`ResilienceLayer`] wraps a handler in: [`Resilient`] around the handler and
/// its optional rate and concurrency limits.
pub type ResilientService<S> = Resilient<Limited<S>>;

/// A handler behind the optional rate limit (outside) and concurrency limit (inside), as one
/// service: one `match` per call instead of two nested `Either`s, each of which moved the
/// envelope once more.
#[derive(Debug, Clone)]
pub enum Limited<S> {
    /// No limit.
    Plain(S),
    /// A concurrency limit.
    Concurrency(ConcurrencyLimit<S>),
    /// A rate limit.
    Rate(RateLimit<S>),
    /// Both.
    Both(RateLimit<ConcurrencyLimit<S>>),
}

pin_project! {
    /// The future of [`Limited`]: the handler's own, or with a concurrency permit held
    /// (`inner` is that future).
    #[project = LimitedFutureProj]
    #[allow(missing_docs)]
    pub enum LimitedFuture<F> {
        /// Without a permit.
        Plain {
            #[pin]
            inner: F,
        },
        /// Holding a concurrency permit until it ends.
        Permit {
            #[pin]
            inner: PermitFuture<F>,
        },
    }
}

impl<F, T, E> Future for LimitedFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitedFutureProj::Plain { inner } => inner.poll(cx),
            LimitedFutureProj::Permit { inner } => inner.poll(cx),
        }
    }
}

/// A service that takes back the future of a call that ended, to reuse what it was made of
/// (the bus's handlers keep the box their calls' futures run in). [`Resilient::recycle`]
/// hands the first attempt's future of an ended call back through this.
pub trait Recycle: Service<Envelope> {
    /// Takes back `ended`, the future of a call of this service that ended (or that is
    /// dropped unfinished: it is dropped either way).
    fn recycle(&mut self, ended: Self::Future);
}

impl<S> Recycle for Limited<S>
where
    S: Recycle + Service<Envelope, Response = Outcome, Error = BoxError>,
{
    /// An unlimited service's own future goes back to it; a limited one's is dropped.
    #[inline(always)]
    fn recycle(&mut self, ended: LimitedFuture<S::Future>) {
        if let (Self::Plain(s), LimitedFuture::Plain { inner }) = (self, ended) {
            s.recycle(inner);
        }
    }
}

impl<S: Clone> Limited<S> {
    /// Gives back what readiness reserved and no call used (a concurrency permit): the
    /// limiter is replaced by a clone of itself, which holds none. An unlimited or only
    /// rate-limited handler reserves nothing (a rate limit spends its tokens when called).
    pub fn release_readiness(&mut self) {
        if matches!(self, Self::Concurrency(_) | Self::Both(_)) {
            *self = self.clone();
        }
    }
}

impl<S> Limited<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
{
    /// A limited handler's call; out of line, so an unlimited one's inlines without the
    /// jump to the handler's place in each variant (one `call` shared by the four arms).
    #[inline(never)]
    fn call_limited(&mut self, env: Envelope) -> LimitedFuture<S::Future> {
        match self {
            Self::Plain(s) => LimitedFuture::Plain { inner: s.call(env) },
            Self::Concurrency(s) => LimitedFuture::Permit { inner: s.call(env) },
            Self::Rate(s) => LimitedFuture::Plain { inner: s.call(env) },
            Self::Both(s) => LimitedFuture::Permit { inner: s.call(env) },
        }
    }

    /// The readiness of a limited handler; out of line, so an unlimited one's inlines.
    #[inline(never)]
    fn poll_ready_limited(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Plain(s) => s.poll_ready(cx),
            Self::Concurrency(s) => s.poll_ready(cx),
            Self::Rate(s) => s.poll_ready(cx),
            Self::Both(s) => s.poll_ready(cx),
        }
    }
}

impl<S> Service<Envelope> for Limited<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = LimitedFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Plain(s) => s.poll_ready(cx),
            limited => limited.poll_ready_limited(cx),
        }
    }

    #[inline]
    fn call(&mut self, env: Envelope) -> Self::Future {
        match self {
            Self::Plain(s) => LimitedFuture::Plain { inner: s.call(env) },
            limited => limited.call_limited(env),
        }
    }
}

/// The whole default stack as one layer, built for one handler.
///
/// The breaker, dedup store and metrics registry are created once here and shared by every
/// service this layer makes: use one `ResilienceLayer` per handler.
#[derive(Debug, Clone)]
pub struct ResilienceLayer {
    handler: SmolStr,
    metrics: MetricsLayer,
    dedup: Option<DedupLayer>,
    retry: RetryLayer,
    breaker: BreakerLayer,
    rate: Option<RateLimitLayer>,
    concurrency: Option<usize>,
    timeout: TimeoutLayer,
    on_retry: Option<super::OnRetry>,
    called_as_delivered: bool,
}

impl ResilienceLayer {
    /// Builds the layers for the handler named `handler`.
    pub fn new(handler: impl Into<SmolStr>, config: ResilienceConfig) -> Self {
        let handler: SmolStr = handler.into();
        let mut metrics = MetricsLayer::new(handler.clone()).topic_label(config.topic_label);
        if let Some(registry) = config.registry {
            metrics = metrics.with_registry(registry);
        }
        Self {
            handler: handler.clone(),
            metrics,
            dedup: config
                .dedup
                .map(|d| DedupLayer::new(d).handler(handler.clone())),
            retry: RetryLayer::new(config.retry).handler(handler.clone()),
            breaker: BreakerLayer::new(handler, config.breaker),
            rate: config
                .rate
                .map(|(rate, per, burst)| RateLimitLayer::new(rate, per).burst(burst)),
            concurrency: config.concurrency,
            timeout: TimeoutLayer::new(config.timeout),
            on_retry: config.on_retry,
            called_as_delivered: false,
        }
    }

    /// Declares that every call of the services this layer makes comes straight from the bus,
    /// with the envelope the bus delivered ([`switchyard_core::delivered`]) as it is, only its
    /// delivery bookkeeping restamped (no layer outside the stack can have changed it), and
    /// polls the call's future in that same delivered scope. The stack then leaves the
    /// delivered envelope where it is, without comparing it with the one it was called with
    /// (about 100 instructions per message) nor taking a reference to it (two atomic
    /// operations), and copies it from the scope only when a retry happens. The bus sets this
    /// on the stack it wraps outermost around a handler (`BusBuilder::with_default_resilience`);
    /// leave it off anywhere else. Debug builds still compare, and panic if the declaration is
    /// false.
    pub fn called_as_delivered(mut self) -> Self {
        self.called_as_delivered = true;
        self
    }

    /// The breaker's handle (state, trip, reset).
    pub fn breaker(&self) -> BreakerHandle {
        self.breaker.handle()
    }

    /// The dedup store's handle, when dedup is on.
    pub fn dedup(&self) -> Option<DedupHandle> {
        self.dedup.as_ref().map(DedupLayer::handle)
    }

    /// The metrics registry (for `metrics_snapshot()`).
    pub fn metrics(&self) -> MetricsRegistry {
        self.metrics.registry()
    }
}

impl<S: Clone> Layer<S> for ResilienceLayer {
    type Service = ResilientService<S>;

    fn layer(&self, handler: S) -> Self::Service {
        let limited = match (&self.rate, self.concurrency) {
            (None, None) => Limited::Plain(handler),
            (None, Some(max)) => {
                Limited::Concurrency(ConcurrencyLimitLayer::new(max).layer(handler))
            }
            (Some(rate), None) => Limited::Rate(rate.layer(handler)),
            (Some(rate), Some(max)) => {
                Limited::Both(rate.layer(ConcurrencyLimitLayer::new(max).layer(handler)))
            }
        };
        let core = Core {
            handler: self.handler.clone(),
            metrics: self.metrics.shared(),
            breaker: self.breaker.shared(),
            policy: self.retry.policy().clone(),
            timeout: self.timeout.timeout(),
            clock: quanta::Clock::new(),
            dedup: self.dedup.as_ref().map(DedupLayer::parts),
            proto: Mutex::new(limited.clone()),
            on_retry: self.on_retry.clone(),
            called_as_delivered: self.called_as_delivered,
            unix: crate::clock::UnixNanos::new(),
        };
        Resilient::new(limited, Arc::new(core))
    }
}
