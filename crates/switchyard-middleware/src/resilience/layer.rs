use smol_str::SmolStr;
use tower::Layer;
use tower::util::Either;

use super::ResilienceConfig;
use crate::breaker::{Breaker, BreakerHandle, BreakerLayer};
use crate::catch_panic::{CatchPanic, CatchPanicLayer};
use crate::dedup::{Dedup, DedupHandle, DedupLayer};
use crate::limit::{ConcurrencyLimit, ConcurrencyLimitLayer, RateLimit, RateLimitLayer};
use crate::metrics::{Metrics, MetricsLayer, MetricsRegistry};
use crate::retry::{Retry, RetryLayer};
use crate::timeout::{Timeout, TimeoutLayer};
use crate::trace::{Trace, TraceLayer};

type Guarded<S> = Timeout<CatchPanic<S>>;
type Limited<S> = Either<ConcurrencyLimit<Guarded<S>>, Guarded<S>>;
type Rated<S> = Either<RateLimit<Limited<S>>, Limited<S>>;
type Retried<S> = Retry<Breaker<Rated<S>>>;

/// The service [`ResilienceLayer`] wraps a handler in.
pub type ResilientService<S> = Trace<Metrics<Either<Dedup<Retried<S>>, Retried<S>>>>;

/// The whole default stack as one layer, built for one handler.
///
/// The breaker, dedup store and metrics registry are created once here and shared by every
/// service this layer makes: use one `ResilienceLayer` per handler.
#[derive(Debug, Clone)]
pub struct ResilienceLayer {
    trace: TraceLayer,
    metrics: MetricsLayer,
    dedup: Option<DedupLayer>,
    retry: RetryLayer,
    breaker: BreakerLayer,
    rate: Option<RateLimitLayer>,
    concurrency: Option<usize>,
    timeout: TimeoutLayer,
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
            trace: TraceLayer::new(handler.clone()),
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
        }
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

impl<S> Layer<S> for ResilienceLayer {
    type Service = ResilientService<S>;

    fn layer(&self, handler: S) -> Self::Service {
        let guarded = self.timeout.layer(CatchPanicLayer::new().layer(handler));
        let limited = match self.concurrency {
            Some(max) => Either::Left(ConcurrencyLimitLayer::new(max).layer(guarded)),
            None => Either::Right(guarded),
        };
        let rated = match &self.rate {
            Some(rate) => Either::Left(rate.layer(limited)),
            None => Either::Right(limited),
        };
        let retried = self.retry.layer(self.breaker.layer(rated));
        let deduped = match &self.dedup {
            Some(dedup) => Either::Left(dedup.layer(retried)),
            None => Either::Right(retried),
        };
        self.trace.layer(self.metrics.layer(deduped))
    }
}
